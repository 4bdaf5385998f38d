"""gamma, beta and the moving statistics of the wrong length are accepted (read out of bounds)."""

from __future__ import annotations

from bnprops.judging.declarations import InputDeviation
from bnprops.mx import mxversion
from bnprops.mx.contract import CHANNELS as CONTRACT_CHANNELS

WRONG_LENGTH_PARAMETERS_ACCEPTED = InputDeviation(
    id="wrong-length-parameters-accepted",
    upstream="fixed on master only: apache/mxnet#20415 ('[BUGFIX] Add checks in BatchNorm's infer shape', for "
    "issue apache/mxnet#19065), in the 2.0 betas and in no 1.x release (1.9.1 accepts)",
    releases=mxversion.Releases(
        probed=(("1.9.1", True),),
        basis="BatchNormShape assigns the parameters' shapes without checking them in every 1.x tag (1.3.1-1.9.1); "
        "the fix, apache/mxnet#20415, is on master only",
    ),
    summary="gamma, beta and the moving statistics of the wrong length are accepted without an error",
    conditions="every entry point (sym via bind() with the user's arrays, nd, npx, gluon via in_channels) on "
    "both CPU kernels; any of the four per-channel arrays longer or shorter than the channel count. Longer: "
    "the first C elements are used; shorter: elements past the end are read (and, for the moving "
    "statistics, written): undefined behaviour that can corrupt the heap.",
    applies=lambda entry, backend, parameter, length: length != CONTRACT_CHANNELS,
    model="the call is accepted, no error raised. No value model: a shorter array is read (and the moving "
    "statistics written) past its end, undefined behaviour that may also crash the process; a longer one is "
    "read in part, which the probes do not pin down either",
    outcomes=lambda length: frozenset({"accepted"} if length > CONTRACT_CHANNELS else {"accepted", "crashed"}),
    evidence="bnprops.mx.contract probes, x (4, 3) float32: all 5 entry points x 2 backends accept length 5 "
    "for each "
    "of the four arrays and length 2 for gamma (gluon: in_channels 5 and 2); with beta of length 2, y in the "
    "third channel was 7.49e+31 (memory past the array). The documentation says gamma and beta have shape "
    "(k,) for k channels, and FInferShape is where MXNet enforces shapes; it does not reject these.",
    reproducer="import mxnet as mx, numpy as np\n"
    "x = mx.nd.array(np.random.default_rng(0).standard_normal((4, 3)))\n"
    "gamma, beta = mx.nd.ones(5), mx.nd.zeros(5)  # 3 channels, length 5: no error\n"
    "print(mx.nd.BatchNorm(x, gamma, beta, mx.nd.zeros(3), mx.nd.ones(3), fix_gamma=False))",
)

DEVIATIONS = (WRONG_LENGTH_PARAMETERS_ACCEPTED,)
