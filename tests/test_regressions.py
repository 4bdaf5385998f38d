"""Cases that once gave a wrong verdict, each judged again through the entry point that showed it.

* float16-dgamma-subnormal-products: a false alarm (issue 8, found by the fuzz job): the float16
  kernel rounds each (x - mean) * dy to float16, and a small one lands among the subnormals with an
  absolute error of 2^-25 that the bound lacked.
* float16-eps-rounded-*: the float16 kernel adds half(eps) to the variance, not eps; the
  float16-normaliser-subnormal deviation missed these where var + eps itself was on float16's grid.
* float16-dgamma-sign-of-rounded-products: a false alarm (found by the entry-point property, nd, eps = 0): the
  float16 kernel's dotp is the sum of float16-rounded products; where the exact dotp nearly cancels its sign can
  differ, and with var + eps rounded to 0 dgamma is inf of the kernel's sign, not the exact one's.
* float16-dot-sum-products-rounded: a false alarm (found by the steered groups, dev profile): the error model
  took dgamma's sum of products for exact where the sum fits float32, but the float16 kernel rounds each product
  to float16 first; the exact regime's dot sum now also needs every product to fit the compute type.
* sym-float16-projection-near-overflow: a false alarm (found by the stacked property): after an inference
  forward, sym's backward forms the float16 projection t from the kernel's dotp (the sum of float16-rounded
  products); the model took the exact dotp, whose t overflowed float16 where the kernel's did not.
* sym-inference-add-float64-dx-ulps: a false alarm (found by the steered groups, dev profile): under grad_req
  'add' sym-inference-backward-trains' dx tolerance carried one rounding of prior + dx where the model's own
  float64 addition rounds as much as MXNet's; it now carries SAFETY times that rounding, as the main bound does.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bnprops.judging.checks import check
from bnprops.model.case import Case
from bnprops.mx.backends import runner_for
from tests.helpers import backend_with_kernel_of

CASES = sorted((Path(__file__).parent / "regressions").glob("*.json"))


#: The entry points a file's case is judged through, by its name's prefix (default: gluon-hybrid and nd).
ENTRIES = {"sym-": ("sym",)}
RUNS = [
    (path, entry)
    for path in CASES
    for entry in next((e for prefix, e in ENTRIES.items() if path.stem.startswith(prefix)), ("gluon-hybrid", "nd"))
]


@pytest.mark.parametrize(("path", "entry"), RUNS, ids=[f"{p.stem}-{e}" for p, e in RUNS])
def test_a_former_wrong_verdict_stays_right(path: Path, entry: str) -> None:
    case = Case.from_json(path.read_text())
    backend = backend_with_kernel_of(case, "onednn", entry=entry)
    outcome = check(case, runner=runner_for(entry, backend), entry=entry, backend=backend)
    assert outcome.ok, outcome.message()


#: False alarms found and not yet fixed, each with what is known of its cause: the verdict they get is wrong,
#: so each is a strict xfail (it fails the suite once fixed, so that it moves up to CASES).
OPEN: dict[str, str] = {}


@pytest.mark.parametrize("name", sorted(OPEN))
def test_an_open_false_alarm_still_gets_the_wrong_verdict(name: str) -> None:
    case = Case.from_json((Path(__file__).parent / "regressions" / "open" / f"{name}.json").read_text())
    backend = backend_with_kernel_of(case, "onednn", entry="sym")
    outcome = check(case, runner=runner_for("sym", backend), entry="sym", backend=backend)
    if not outcome.ok:
        pytest.xfail(OPEN[name])
    pytest.fail(f"{name} is judged right now: move it from regressions/open/ to regressions/ and from OPEN to CASES")
