"""The exact relations in the fuzz job: a broken one is caught, catalogued, shrunk, reported, reproduced and replayed.

The planted fault (tests/planted_relations.py, ``large_input_path``) sits on top of the real MXNet
runners and shows only where some input is at least 2^28 in magnitude, which no drawn case has: the
oracle never sees it, only a relation's call scaled by a large 2^k does. So every new finding of the
planted campaign is a relation's.
"""

from __future__ import annotations

import functools
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bnprops.commands import cli
from bnprops.fuzzing import campaign, plan
from bnprops.fuzzing.catalogue import RELATION, Entry, Signature, case_flags, value_regime
from bnprops.fuzzing.relation_findings import RelationDraw, check_relation
from bnprops.fuzzing.relation_reproducer import script
from bnprops.fuzzing.report.model import Report
from bnprops.judging.relations import RELATIONS, ScalingRelation, compare_scaled
from bnprops.model.case import DTYPES, Case
from bnprops.mx import backends
from bnprops.mx.backends import runner_for
from bnprops.mx.runners import IN_PROCESS_BACKEND, Runner, adapt
from tests.helpers import FOCUSED, first_finding, one_channel_case
from tests.planted import numpy_batchnorm
from tests.planted_relations import plant

FAULT = "large_input_path"
#: A small float64 campaign through one entry point on the in-process backend, a relation on every example.
SMALL: dict[str, object] = dict(
    backends=(IN_PROCESS_BACKEND,), dtypes=("float64",), relation_every=1, chunk_size=25, seed=1, **FOCUSED
)


def planted_runners(entry: str, backend: str) -> Runner:
    return functools.partial(plant, runner_for(entry, backend), fault=FAULT)


def small_campaign(out: Path, *, max_examples: int, entry: str = "sym", **factory: plan.RunnerFactory) -> Report:
    config = plan.CampaignConfig(out=out, entries=(entry,), max_examples=max_examples, **SMALL)  # type: ignore[arg-type]
    return campaign.run(config, **factory)


@pytest.fixture(scope="module")
def planted_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Report]:
    out = tmp_path_factory.mktemp("planted-relation")
    return out, small_campaign(out, max_examples=400, runner_factory=planted_runners)


def the_calls(entry: Entry) -> tuple[Case, Case]:
    """A relation finding's two cases, as its reproducer makes them."""
    assert entry.relation is not None
    name, choice = entry.relation
    case = adapt(entry.signature.entry, entry.case)
    return case, RELATIONS[name].transform(case, RELATIONS[name].parameters(case, choice))


def test_a_broken_relation_is_caught_catalogued_under_kind_relation_and_shrunk(
    planted_run: tuple[Path, Report],
) -> None:
    _, report = planted_run
    assert report.new, "the planted relation fault was not found"
    for entry in report.new:
        sig = entry.signature
        assert sig.kind == RELATION
        assert sig.quantity in {"scale-data:y", "scale-head:y", "scale-affine:y"}, sig.quantity
        assert entry.relation is not None and entry.relation[0] == sig.quantity.partition(":")[0]
        assert entry.reduction == "shrunk"
        assert entry.case.x.size == 1, f"not shrunk: {entry.case.describe()}"
        assert f"breaks relation {entry.relation[0]!r}" in entry.detail and "y: 1 of 1 elements" in entry.detail
    # Each broken check falls under one signature (only y breaks), and the report counts them all.
    broken = sum(cell.get("broken", 0) for cell in report.relation_checks.values())
    assert sum(e.count for e in report.new) == broken > 0
    assert report.totals()["failed"] == 0, "the oracle saw the planted fault: it is not a relation-only fault"


def test_the_report_lists_relation_findings_with_their_draw_and_a_reproducer(planted_run: tuple[Path, Report]) -> None:
    out, report = planted_run
    data = json.loads((out / "report.json").read_text())
    assert {e["signature"]["kind"] for e in data["catalogue"]["new"]} == {RELATION}
    for e in data["catalogue"]["new"]:
        finding = json.loads((out / e["case_file"]).read_text())
        if Path(e["case_file"]).stem == e["id"]:  # its own files (the others point at their cause's smallest example)
            assert finding["relation"]["name"] == e["relation"]["name"]
            assert finding["relation"]["choice"] == e["relation"]["choice"]
        assert finding["relation"]["params"].startswith("k=")
        assert (out / e["reproducer"]).exists()
    assert data["relation_checks"] == report.relation_checks
    markdown = (out / "report.md").read_text()
    assert "## Exact relations" in markdown and "| scale-data |" in markdown
    assert f"`{report.new[0].signature.ident}`" in markdown


def test_a_relation_reproducer_exits_1_on_the_faulty_calls_and_0_on_mxnet_which_keeps_the_relation(
    planted_run: tuple[Path, Report],
) -> None:
    out, report = planted_run
    [entry] = [e for e in report.new if e.signature.ident == first_finding(report)]  # the cause's files
    path = out / "findings" / f"{entry.signature.ident}.py"
    namespace: dict[str, object] = {"__name__": "reproducer"}  # defines the calls and main, runs neither
    exec(compile(path.read_text(), str(path), "exec"), namespace)
    first, second = the_calls(entry)
    subject = planted_runners(entry.signature.entry, entry.signature.backend)
    main = namespace["main"]
    assert main(lambda: subject(first), lambda: subject(second)) == 1  # type: ignore[operator]
    done = subprocess.run([sys.executable, str(path)], capture_output=True, text=True, check=False, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "y: holds" in done.stdout and "the finding is gone" in done.stdout


def test_a_relation_mxnet_breaks_outside_the_admissible_set_gets_a_reproducer_that_exits_1(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # dmlc's ParseFloat reads str(eps * 4^3) one ulp off 4^3 times what it reads for eps: k = 3 is not
    # admissible for this eps (tests/test_relations.py), and MXNet does break scale-data there.
    rng = np.random.default_rng(0)
    case = Case(
        x=rng.standard_normal((6, 2, 2)),
        dy=rng.standard_normal((6, 2, 2)),
        gamma=np.array([1.5, -0.5]),
        beta=np.array([0.25, 1.0]),
        moving_mean=np.zeros(2),
        moving_var=np.ones(2),
        eps=2.509312092804026,
        fix_gamma=False,
    )
    monkeypatch.setattr(ScalingRelation, "candidates", lambda self, case: [3])
    draw = RelationDraw("scale-data", 0)
    checked = check_relation(case, draw, runner=runner_for("sym", IN_PROCESS_BACKEND), entry="sym", backend="onednn")
    assert checked.result == "broken"
    sig = next(s for s in checked.signatures if s.quantity == "scale-data:y")
    path = tmp_path / "reproducer.py"
    path.write_text(script(Entry(sig, 1, case, "smallest seen", checked.detail(), relation=draw.key)))
    done = subprocess.run([sys.executable, str(path)], capture_output=True, text=True, check=False, timeout=300)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "y: BREAKS" in done.stdout and "relation still broken" in done.stdout


def test_bnprops_repro_replays_a_relation_finding_and_says_whether_it_still_breaks(
    planted_run: tuple[Path, Report], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    out, report = planted_run
    finding = out / "findings" / f"{first_finding(report)}.json"
    assert cli.main(["repro", str(finding)]) == cli.EXIT_OK  # MXNet itself keeps the relation
    assert "holds now" in capsys.readouterr().out
    monkeypatch.setattr(backends, "runner_for", planted_runners)
    assert cli.main(["repro", str(finding)]) == cli.EXIT_FOUND
    shown = capsys.readouterr().out
    [replayed] = [e for e in report.new if e.signature.ident == first_finding(report)]
    assert "still breaks" in shown and f"breaks relation {replayed.relation[0]!r}" in shown  # type: ignore[index]


def test_the_next_run_replays_stored_relation_findings_even_with_relations_off(
    planted_run: tuple[Path, Report], tmp_path: Path
) -> None:
    out, first = planted_run
    again = tmp_path / "again"
    shutil.copytree(out / "db", again / "db")
    shutil.copy(out / plan.INDEX_FILE, again / plan.INDEX_FILE)
    config = plan.CampaignConfig(out=again, entries=("sym",), max_examples=5, **{**SMALL, "relation_every": 0})  # type: ignore[arg-type]
    second = campaign.run(config, runner_factory=planted_runners)
    assert {r["id"] for r in second.replays} == {e.signature.ident for e in first.new}
    assert {r["status"] for r in second.replays} == {"reproduced"}
    assert {e.signature for e in second.new} == {e.signature for e in first.new}
    assert not second.relation_checks, "relations were off: only the replays ran them"

    # MXNet itself keeps the relations: the replays say so, and the database index forgets them.
    fixed = campaign.run(config)
    assert fixed.replays and all(r["status"].startswith("did not reproduce") for r in fixed.replays)
    assert not fixed.new


def test_a_correct_batchnorm_breaks_no_relation_in_the_fuzz_job(tmp_path: Path) -> None:
    report = small_campaign(tmp_path, max_examples=1000, entry="nd", runner_factory=lambda e, b: numpy_batchnorm)
    assert not [e.signature for e in report.catalogue.entries.values() if e.signature.kind == RELATION]
    assert sum(cell.get("held", 0) for cell in report.relation_checks.values()) >= 20
    assert len(report.relation_checks) == len(RELATIONS)


def test_relation_every_below_0_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(plan.UsageError, match="relation_every must be 0"):
        plan.CampaignConfig(out=tmp_path, max_examples=1, relation_every=-1)


# ---------------------------------------------------------------------------------------------------
# The reproducer's comparison is relations.compare_scaled, in numpy alone


@functools.cache
def reproducer_namespace() -> dict[str, object]:
    """A relation reproducer's functions, its calls never made."""
    case = one_channel_case([1.0, 2.0, 4.0])
    sig = Signature(RELATION, "repeat:y", "sym", "onednn", case.dtype, case_flags(case), value_regime(case))
    namespace: dict[str, object] = {"__name__": "reproducer"}
    exec(compile(script(Entry(sig, 1, case, "shrunk", relation=("repeat", 0))), "reproducer", "exec"), namespace)
    return namespace


def special_values(rng: np.random.Generator, dtype: str, size: int) -> np.ndarray:
    """Normal numbers of every magnitude, subnormals, signed zeros, infinities and NaN."""
    info = np.finfo(dtype)
    exponents = rng.integers(int(np.log2(float(info.tiny))) - 12, int(np.log2(float(info.max))) + 1, size)
    pick = rng.integers(0, 8, size)
    with np.errstate(over="ignore", under="ignore"):
        values = rng.uniform(1, 2, size) * np.exp2(exponents.astype(np.float64)) * rng.choice([-1, 1], size)
        values = np.where(pick == 0, rng.choice([0.0, -0.0, np.inf, -np.inf, np.nan], size), values)
        return values.astype(dtype)


@settings(max_examples=150, deadline=None, derandomize=True, database=None)
@given(
    dtype=st.sampled_from(DTYPES),
    shift=st.integers(-40, 40),
    seed=st.integers(0, 2**32 - 1),
    with_prior=st.booleans(),
    permuted=st.booleans(),
)
def test_the_reproducers_comparison_judges_every_element_as_compare_scaled_does(
    dtype: str, shift: int, seed: int, with_prior: bool, permuted: bool
) -> None:
    rng = np.random.default_rng(seed)
    first = special_values(rng, dtype, 24).reshape(6, 4)
    with np.errstate(over="ignore"):
        second = np.ldexp(first.astype(np.float64), shift).astype(dtype)
    order = [int(i) for i in rng.permutation(4)] if permuted else None
    if order is not None:
        second = second[:, order]
    nudged = rng.random(second.shape) < 0.3
    second = np.where(nudged, np.nextafter(second, np.array(np.inf, dtype)), second)
    second = np.where(rng.random(second.shape) < 0.05, special_values(rng, dtype, 24).reshape(6, 4), second)
    prior = special_values(rng, dtype, 24).reshape(6, 4) if with_prior else None
    namespace = reproducer_namespace()
    namespace.update(SHIFT={"dx": shift}, ORDER=order, AXIS={"dx": 1}, PRIOR={} if prior is None else {"dx": prior})
    move = None if order is None else (lambda arr: np.take(arr, order, axis=1))
    reference = compare_scaled("r", "dx", first, second, shift, prior=prior, transform=move)
    found = namespace["compare"]("dx", first, second)  # type: ignore[operator]
    assert found is not None
    _, broken = found
    assert int(broken.sum()) == (0 if reference is None else reference.count)
