"""The new Case fields round-trip, the reproducers run through every entry point, and each known deviation
found on the entry points and backends still reproduces exactly as recorded."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from bnprops.judging.checks import check
from bnprops.judging.judgement import predictions
from bnprops.judging.known_deviations import KNOWN_DEVIATIONS, KnownDeviation
from bnprops.model.case import Case
from bnprops.mx import mxversion
from bnprops.mx.backends import runner_for
from bnprops.mx.helper_process import environment_for
from bnprops.mx.runners import BACKENDS, ENTRY_POINTS, kernel_for, unavailable_reason
from bnprops.mx.snippets import snippet
from tests.helpers import skip_unless_available

#: The deviations found on the entry points and backends: checked on every one of them.
EVERY_ENTRY = [kd for kd in KNOWN_DEVIATIONS if kd.every_entry]


def accumulating_case() -> Case:
    x = np.array([[1.0, -2.0], [3.0, 0.5], [-1.0, 2.5]], dtype="float32")
    return Case(
        x=x,
        dy=np.array([[0.5, 1.0], [-1.0, 2.0], [0.25, -0.5]], dtype="float32"),
        gamma=np.array([1.5, 0.5], "float32"),
        beta=np.array([0.1, -0.2], "float32"),
        moving_mean=np.array([0.5, -0.5], "float32"),
        moving_var=np.array([2.0, 0.5], "float32"),
        fix_gamma=False,
        output_mean_var=True,
        grad_req=("add", "write", "add"),
        prior_dx=np.full(x.shape, 3.0, "float32"),
        prior_dbeta=np.array([7.0, -7.0], "float32"),
    )


def test_new_case_fields_round_trip_and_old_json_still_loads() -> None:
    case = accumulating_case().with_(is_train=False)
    assert Case.from_json(case.to_json()) == case
    old = json.loads(case.to_json())
    for key in ("is_train", "grad_req"):
        del old[key]
    for key in ("prior_dx", "prior_dbeta"):
        del old["arrays"][key]
    loaded = Case.from_dict(old)
    assert loaded.is_train and loaded.grad_req == ("write", "write", "write") and loaded.prior_dx is None


def test_a_case_refuses_priors_that_do_not_match_its_requests() -> None:
    case = accumulating_case()
    with pytest.raises(ValueError, match="needs prior_dgamma"):
        case.with_(grad_req=("add", "add", "add"))
    with pytest.raises(ValueError, match="is given but"):
        case.with_(grad_req=("write", "write", "add"))
    with pytest.raises(ValueError, match="nothing to differentiate"):
        case.with_(grad_req=("null", "null", "null"), prior_dx=None, prior_dbeta=None)


@pytest.mark.parametrize("backend", BACKENDS)
def test_every_entry_points_reproducer_runs_and_prints_what_the_runner_returns(backend: str) -> None:
    skip_unless_available(backend)
    case = accumulating_case().with_(output_mean_var=False)
    script = "\n".join(f"print('== {e}')\n" + snippet(case, entry=e, backend=backend) for e in ENTRY_POINTS)
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=environment_for(backend), check=False
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    dbeta = runner_for("nd", backend)(case)["dbeta"]
    sections = proc.stdout.split("== ")[1:]
    assert [section.splitlines()[0] for section in sections] == list(ENTRY_POINTS)
    for entry, section in zip(ENTRY_POINTS, sections, strict=True):
        beta_line = next(line for line in section.splitlines() if line.startswith("dbeta "))
        printed = np.array(beta_line.split("[", 1)[1].rstrip("]").split(), dtype=np.float32)
        np.testing.assert_allclose(printed, dbeta, rtol=1e-6, err_msg=f"{entry}'s reproducer")


@pytest.mark.parametrize("kd", EVERY_ENTRY, ids=[kd.id for kd in EVERY_ENTRY])
def test_the_new_known_deviations_reproduce_as_recorded(kd: KnownDeviation) -> None:
    if not kd.holds_in(mxversion.running()):
        pytest.skip(f"{kd.id} holds in {kd.releases.describe()}, not in MXNet {mxversion.running()}")
    if kd.needs_backend is not None:
        skip_unless_available(kd.needs_backend)
    case = kd.reproducer()
    entries = sorted(kd.entries) if kd.entries else list(ENTRY_POINTS)
    seen = []
    for backend in [b for b in BACKENDS if unavailable_reason(b) is None]:  # a build without oneDNN has one
        for entry in entries:
            if entry.startswith("gluon") and case.fix_gamma:
                continue  # gluon's gamma takes no gradient under scale=False
            outcome = check(case, runner=runner_for(entry, backend), entry=entry, backend=backend)
            assert outcome.ok, outcome.message()
            applies = [p for k, p in predictions(case, entry=entry, kernel=kernel_for(case, backend)) if k is kd]
            if applies:
                assert kd in [k for k, _ in outcome.explained], f"{kd.id} did not show on {entry}/{backend}"
                seen.append((entry, backend))
    assert seen, f"{kd.id}'s reproducer shows it nowhere"
