"""The family members' correct numpy subjects, each able to carry planted faults, by member name.

A member registers its subject here beside its own tests (the family contract's planted subject) with the
faults it can carry; the registry's meta test (test_family) plants each 0.5% error (5% for int8, whose own
resolution is 1/127 of its range) in each member's subject and asserts it is caught.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from bnprops.model.case import Case, Outputs
from tests.emulated_fold import emulated_fold
from tests.emulated_int8 import emulated_int8
from tests.emulated_sync import sync_subject
from tests.planted import numpy_batchnorm
from tests.planted_amp import bfloat16_batchnorm
from tests.planted_folded import folded_subject
from tests.planted_relu import numpy_batchnorm_relu

#: A 0.5% error in one gradient: (the property that must catch it, the fault's name).
GRADIENT_FAULTS = (("data_gradient", "dx_off_by_half_percent"), ("parameter_gradients", "dgamma_off_by_half_percent"))


@dataclasses.dataclass(frozen=True)
class Subject:
    """A correct float kernel of a member, ``run(case, *, fault=None)``, and the faults it can carry."""

    run: Callable[..., Outputs]
    faults: tuple[tuple[str, str], ...] = GRADIENT_FAULTS


#: member name -> its subject.
SUBJECTS: dict[str, Subject] = {
    "BatchNormWithReLU": Subject(numpy_batchnorm_relu),
    "BatchNorm_v1": Subject(numpy_batchnorm),  # v1 computes BatchNorm's function on the cases it can express
    "SyncBatchNorm": Subject(sync_subject),
    # The rewrites and the export are inference: y is what they produce.
    "oneDNN Convolution fold": Subject(emulated_fold, (("forward_output", "y_off_by_half_percent"),)),
    "int8 BatchNorm": Subject(emulated_int8, (("forward_output", "y_off_by_five_percent"),)),
    "ONNX export": Subject(folded_subject, (("forward_output", "y_off_by_half_percent"),)),
    "AMP bfloat16": Subject(bfloat16_batchnorm),
    "AMP float16": Subject(numpy_batchnorm),  # a lone BatchNorm stays float32 under float16 AMP on CPU
    "gluon options": Subject(numpy_batchnorm),
}


def subject(member: str) -> Callable[[Case], Outputs]:
    return SUBJECTS[member].run


def segfaults(spec: dict[str, object]) -> Outputs:
    """A member call that kills its process as a segfault inside MXNet does (MXNet's handler reports it, exits 255)."""
    import os
    import signal

    os.kill(os.getpid(), signal.SIGSEGV)
    raise AssertionError("still alive after SIGSEGV")
