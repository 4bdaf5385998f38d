"""The case and its ground truth: the Case value, MXNet's parameter parsing, the float64 oracle, the error model
(exactness, bounds) and where power-of-two scaling is exact. Imports only bnprops.base.
"""
