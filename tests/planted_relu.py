"""A pure-numpy BatchNormWithReLU subject, correct or with one planted fault, for its meta test.

The BatchNorm subject of ``planted`` with a ReLU after it: the head masked where its own rounded y <= 0.
"""

from __future__ import annotations

import numpy as np

from bnprops.model.case import Case, Outputs
from tests.planted import numpy_batchnorm


def numpy_batchnorm_relu(case: Case, *, fault: str | None = None) -> Outputs:
    """relu(BatchNorm(x)); ``fault`` is one of the BatchNorm subject's (e.g. 'dx_off_by_half_percent')."""
    y = np.maximum(numpy_batchnorm(case)["y"], 0)
    out = numpy_batchnorm(case.with_(dy=np.where(y <= 0, np.zeros_like(case.dy), case.dy)), fault=fault)
    out["y"] = y.astype(out["y"].dtype)
    return out
