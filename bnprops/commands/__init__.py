"""What a user runs: the CLI, the benchmark, the tightness measurement, the version matrix and `explain`.
The top layer: nothing in bnprops imports it except bnprops/__init__ (lazily) and __main__.
"""
