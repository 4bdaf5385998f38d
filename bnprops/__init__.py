"""bnprops: property-based tests that prove, or refute, MXNet BatchNorm's gradients.

Data flows one way: strategies -> Case -> runners and oracle -> comparator -> Verdict -> report.
"""

__version__ = "0.1.0"
