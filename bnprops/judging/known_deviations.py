"""The recorded deviations by kind, as the judgement and the fuzzers read them.

Each deviation is declared once, in its module of bnprops.judging.deviations (conditions, model, release
scope, evidence, reproducer, upstream); this module only names the registry's collections, and the
sequence deviations whose checks the state model codes by name.  Inside a single-call deviation's
region MXNet must return the oracle's values or the model's (else it "deviates, but not as recorded");
where one is certain MXNet must show it somewhere (else it is stale); outside every region the oracle
alone judges.
"""

from __future__ import annotations

from bnprops.judging.declarations import (
    InputDeviation,
    KnownDeviation,
    LifecycleDeviation,
    NetworkDeviation,
    SequenceDeviation,
    empty_batch,
)
from bnprops.judging.deviations import (
    INPUT_DEVIATIONS,
    KNOWN_DEVIATIONS,
    LIFECYCLE_DEVIATIONS,
    NETWORK_DEVIATIONS,
    SEQUENCE_DEVIATIONS,
)
from bnprops.judging.deviations.frozen_layer_keeps_moving_statistics import FROZEN_LAYER_KEEPS_MOVING_STATS
from bnprops.judging.deviations.frozen_sym_executor_keeps_gamma import FROZEN_SYM_KEEPS_GAMMA
from bnprops.judging.deviations.retained_graph_backward_updates_again import RETAINED_GRAPH_UPDATES_AGAIN

__all__ = [
    "FROZEN_LAYER_KEEPS_MOVING_STATS",
    "FROZEN_SYM_KEEPS_GAMMA",
    "INPUT_DEVIATIONS",
    "KNOWN_DEVIATIONS",
    "LIFECYCLE_DEVIATIONS",
    "NETWORK_DEVIATIONS",
    "RETAINED_GRAPH_UPDATES_AGAIN",
    "SEQUENCE_DEVIATIONS",
    "InputDeviation",
    "KnownDeviation",
    "LifecycleDeviation",
    "NetworkDeviation",
    "SequenceDeviation",
    "empty_batch",
]
