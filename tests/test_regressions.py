"""Cases that once gave a wrong verdict, each judged again through the entry point that showed it.

* float16-dgamma-subnormal-products: a false alarm (issue 8, found by the fuzz job): the float16
  kernel rounds each (x - mean) * dy to float16, and a small one lands among the subnormals with an
  absolute error of 2^-25 that the bound lacked.
* float16-eps-rounded-*: the float16 kernel adds half(eps) to the variance, not eps; the
  float16-normaliser-subnormal deviation missed these where var + eps itself was on float16's grid.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bnprops.judging.checks import check
from bnprops.model.case import Case
from bnprops.mx.backends import runner_for

CASES = sorted((Path(__file__).parent / "regressions").glob("*.json"))


@pytest.mark.parametrize("path", CASES, ids=[p.stem for p in CASES])
@pytest.mark.parametrize("entry", ["gluon-hybrid", "nd"])
def test_a_former_wrong_verdict_stays_right(path: Path, entry: str) -> None:
    case = Case.from_json(path.read_text())
    outcome = check(case, runner=runner_for(entry, "onednn"), entry=entry, backend="onednn")
    assert outcome.ok, outcome.message()
