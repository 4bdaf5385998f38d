"""The family members' correct numpy subjects, each able to carry one of planted's faults, by member name.

A member registers its subject here beside its own tests (the family contract's planted subject); the
registry's meta test (test_family) plants a 0.5% error in one gradient of each and asserts it is caught.
"""

from __future__ import annotations

from collections.abc import Callable

from bnprops.model.case import Case, Outputs
from tests.planted import numpy_batchnorm
from tests.planted_relu import numpy_batchnorm_relu

#: member name -> subject(case, *, fault=None): a correct float kernel of the member, or one with the fault.
SUBJECTS: dict[str, Callable[..., Outputs]] = {
    "BatchNormWithReLU": numpy_batchnorm_relu,
    "BatchNorm_v1": numpy_batchnorm,  # v1 computes BatchNorm's function on the cases it can express
}


def subject(member: str) -> Callable[[Case], Outputs]:
    return SUBJECTS[member]
