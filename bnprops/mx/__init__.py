"""MXNet itself: the runners of the five entry points, the backend workers, stacked calls, the version and the
release environments, training sessions, producer chains (networks) and the reproducer templates.
Imports only bnprops.base and bnprops.model.
"""

import os

# Quiet the per-bind "Subgraph backend MKLDNN is activated" log line before mxnet loads.
os.environ.setdefault("MXNET_SUBGRAPH_VERBOSE", "0")
# The native kernel logs a "storage type fallback" paragraph per call when oneDNN is disabled.
os.environ.setdefault("MXNET_STORAGE_FALLBACK_LOG_VERBOSE", "0")
# The synchronous engine runs the same kernels without the threaded engine's scheduling, which
# costs more than a small BatchNorm and makes per-call times jump between two levels (commands.bench).
# A user's own MXNET_ENGINE_TYPE wins.
os.environ.setdefault("MXNET_ENGINE_TYPE", "NaiveEngine")
# MXNet's OpenMP threads (libgomp) spin after each operator, holding the cores that the judging threads
# (judging.fused) and the other fuzz worker need: bnprops bench's fused judging at M = 2 10^5 took
# 53 ms after an MXNet call against 38 ms with passive waiting. Waiting changes who gets a core, not a result
# (MXNet's outputs were the same bits either way); a user's own OMP_WAIT_POLICY wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
