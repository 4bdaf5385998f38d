"""A frozen sym executor does not write 1.0 into gamma under fix_gamma."""

from __future__ import annotations

from bnprops.judging.declarations import PROBED_IN_EVERY_RELEASE, SequenceDeviation, none_found
from bnprops.mx import mxversion

FROZEN_SYM_KEEPS_GAMMA = SequenceDeviation(
    id="frozen-sym-executor-keeps-gamma",
    releases=mxversion.Releases(
        probed=PROBED_IN_EVERY_RELEASE.probed,
        basis="the write of 1.0 into gamma under fix_gamma is skipped where the executor requests no gradient; "
        "probed by the sequence checks' replay of its shortest sequence (tests/test_training.py) in each "
        "release's environment",
    ),
    upstream=none_found(
        "searched apache/mxnet issues for 'fix_gamma gamma not set to 1 grad_req null executor' (no report; "
        "apache/mxnet#9624 and apache/mxnet#3037 are about fix_gamma's stored gamma in general)"
    ),
    summary="A sym executor with no gradient for BatchNorm's inputs does not write 1.0 into gamma under fix_gamma",
    conditions="mx.sym executor; fix_gamma=True; grad_req 'null' for data, gamma and beta (a frozen layer, or any "
    "executor bound with grad_req='null', as inference executors are); any forward (training or inference); both "
    "CPU kernels. nd, npx and gluon write the 1.0 in the same situation",
    model="gamma keeps every bit of its value (the forward does not write 1.0 into it); y, the moving statistics "
    "and the gradients around the layer are as the single-call oracle says (they use gamma = 1)",
    evidence="x float32 [[1], [3]], gamma 0.5, fix_gamma=True: bound with grad_req 'null' for data, gamma and beta "
    "(with or without a learnable layer after it), forward(is_train=True or False) leaves gamma 0.5 and gives "
    "y = [-0.9995, 0.9995] (training), the gamma = 1 result; bound with any one of them 'write', the same forward "
    "writes 1.0 into gamma (the spec's 'the forward also writes 1.0 into the gamma array'), as mx.nd.BatchNorm "
    "does with or without autograd.record. Found by the state machines of tests/test_training.py (issue 10): "
    "shortest sequence inference_step on a frozen sym layer.",
    sequence=("inference_step",),
    affects="gamma",
    entries=frozenset({"sym"}),
    shortest_on=("sym", {"grad_req": ("null", "null", "null"), "fix_gamma": True}),
)

DEVIATIONS = (FROZEN_SYM_KEEPS_GAMMA,)
