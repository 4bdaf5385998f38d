"""Training sequences in the fuzz job: a fault that shows only in a sequence is caught, shrunk, reported, replayed.

The planted sessions (tests/planted_sessions.py) go wrong from the second training step on, so a
single-call check cannot see them: every new finding of a planted campaign is a sequence one.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings

from bnprops.commands import cli
from bnprops.fuzzing import campaign, plan
from bnprops.fuzzing.catalogue import KNOWN, SEQUENCE
from bnprops.fuzzing.explorer import Explorer
from bnprops.fuzzing.relation_findings import RelationDraw
from bnprops.fuzzing.report.model import Report
from bnprops.fuzzing.sequence_findings import REGIME, applies, chance, check_sequence, sequence_of
from bnprops.judging import in_network, state_model
from bnprops.judging.known_deviations import FROZEN_LAYER_KEEPS_MOVING_STATS, RETAINED_GRAPH_UPDATES_AGAIN
from bnprops.mx.backends import runner_for
from bnprops.mx.producers import Chain, step
from bnprops.mx.runners import IN_PROCESS_BACKEND
from bnprops.search.sequences import Sequence, sequences
from tests import planted_sessions
from tests.helpers import first_finding, one_channel_case, one_sequence, skip_unless_available

PLANTED = "tests.planted_sessions:"
PLANTED_SESSION = PLANTED + "moving_stats_updated_twice"
PLANTED_QUANTITIES = {"moving_mean", "moving_var", "dx", "dgamma", "dbeta"}
#: A small float64 campaign through nd on the in-process backend: a sequence on every example, nothing else extra.
SMALL: dict[str, object] = dict(
    entries=("nd",),
    backends=(IN_PROCESS_BACKEND,),
    dtypes=("float64",),
    relation_every=0,
    network_every=0,
    sequence_every=1,
    seed=6,
)


@pytest.fixture(scope="module", autouse=True)
def _stop_workers() -> object:
    yield
    in_network.close_workers()


def small_campaign(out: Path, *, max_examples: int, session: str = "", **changes: object) -> Report:
    options = {**SMALL, "chunk_size": 20, "sequence_session": PLANTED + session if session else "", **changes}
    return campaign.run(plan.CampaignConfig(out=out, max_examples=max_examples, **options))  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def planted_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Report]:
    out = tmp_path_factory.mktemp("planted-sequence")
    return out, small_campaign(out, max_examples=1200, session=PLANTED_SESSION.removeprefix(PLANTED))


def test_a_fault_from_the_second_step_on_is_caught_catalogued_and_shrunk_to_a_short_sequence(
    planted_run: tuple[Path, Report],
) -> None:
    _, report = planted_run
    assert report.new, "the planted sequence fault was not found"
    for entry in report.new:
        sig = entry.signature
        # The second backward updates the moving statistics again and adds to 'add' buffers once more.
        rule, _, what = sig.quantity.partition(":")
        assert sig.kind == SEQUENCE and rule == "train_step" and what in PLANTED_QUANTITIES, sig
        assert (sig.entry, sig.backend, sig.dtype, sig.regime) == ("nd", IN_PROCESS_BACKEND, "float64", REGIME)
        assert entry.reduction == "shrunk"
        shrunk = sequence_of(entry)
        # The fault needs two training steps, and shrinking keeps only rules that matter: without any one of them
        # the finding is gone (which others matter depends on the data Hypothesis drew: with x all 0, dgamma's
        # double accumulation shows only under use_global_stats and grad_req 'add').
        assert shrunk.names.count("train_step") == 2, shrunk.names
        for i in range(len(shrunk.rules)):
            fewer = dataclasses.replace(shrunk, rules=shrunk.rules[:i] + shrunk.rules[i + 1 :])
            checked = check_sequence(fewer, entry="nd", backend=IN_PROCESS_BACKEND, session=PLANTED_SESSION)
            assert sig not in checked.signatures, f"{shrunk.names[i]} (rule {i}) does not matter: {shrunk.describe()}"
        assert "must be" in entry.detail or "outside the error bound" in entry.detail
    checks = report.sequence_checks[f"nd/{IN_PROCESS_BACKEND}"]
    assert checks["failed"] > 0 and checks["checks"] >= checks["failed"]
    assert report.totals()["failed"] == 0, "the single-call checks saw the planted fault: it is not a sequence fault"


def test_the_report_lists_sequence_findings_with_their_sequence_and_a_replay_script(
    planted_run: tuple[Path, Report],
) -> None:
    out, report = planted_run
    data = json.loads((out / "report.json").read_text())
    assert {e["signature"]["kind"] for e in data["catalogue"]["new"]} == {SEQUENCE}
    for e in data["catalogue"]["new"]:
        finding = json.loads((out / e["case_file"]).read_text())
        if Path(e["case_file"]).stem == e["id"]:  # its own files (the others point at their cause's smallest example)
            assert Sequence.from_dict(finding["sequence"]).to_json() == Sequence.from_dict(e["sequence"]).to_json()
    assert data["sequence_checks"] == report.sequence_checks
    markdown = (out / "report.md").read_text()
    entry = report.new[0]
    assert "## Training sequences" in markdown and sequence_of(entry).describe() in markdown
    assert "training sequences: " in report.summary()
    script = (out / "findings" / f"{entry.signature.ident}.py").read_text()
    assert "import bnprops" not in script and "from bnprops" not in script and "from tests" not in script
    # The script replays on MXNet's own session, which has no planted fault: it follows the model, exit 0.
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=False, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    rules = sequence_of(entry).names
    assert f"after step {len(rules)}: {rules[-1]}" in done.stdout  # every rule replayed, the last one the finding's


def test_bnprops_repro_replays_a_sequence_finding_and_says_whether_it_persists(
    planted_run: tuple[Path, Report], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    out, report = planted_run
    finding = out / "findings" / f"{first_finding(report)}.json"
    assert cli.main(["repro", str(finding)]) == cli.EXIT_OK  # MXNet itself follows the model
    assert "is gone" in capsys.readouterr().out
    monkeypatch.setattr(state_model, "open_session", planted_sessions.moving_stats_updated_twice)
    assert cli.main(["repro", str(finding)]) == cli.EXIT_FOUND
    assert "persists" in capsys.readouterr().out


def test_the_next_run_replays_stored_sequence_findings(planted_run: tuple[Path, Report], tmp_path: Path) -> None:
    out, first = planted_run
    again = tmp_path / "again"
    again.mkdir()
    (again / "db").symlink_to(out / "db", target_is_directory=True)
    (again / plan.INDEX_FILE).write_text((out / plan.INDEX_FILE).read_text())
    second = small_campaign(again, max_examples=3, session="moving_stats_updated_twice", sequence_every=0)
    assert {r["id"] for r in second.replays} == {e.signature.ident for e in first.new}
    assert {r["status"] for r in second.replays} == {"reproduced"}


def worker(tmp_path: Path, **changes: object) -> Explorer:
    config = plan.CampaignConfig(out=tmp_path, max_examples=100, **{**SMALL, **changes})  # type: ignore[arg-type]
    return Explorer(
        config,
        worker=0,
        targets=[("nd", IN_PROCESS_BACKEND)],
        runner_factory=runner_for,
        deadline=None,
        stop_requested=lambda: False,
        progress=None,
    )


def example(sequence: Sequence) -> plan.Example:
    chain = Chain(api="nd", input_shape=(2, 3, 5), steps=(step("conv", dims=1, channels=5, kernel=1, pad=0),))
    return (("nd", IN_PROCESS_BACKEND), [one_channel_case([1.0, 2.0, 4.0])], RelationDraw("repeat", 0), chain, sequence)


@pytest.mark.parametrize(
    ("rules", "deviation", "config"),
    [
        (("train_step", "backward_again"), RETAINED_GRAPH_UPDATES_AGAIN, {}),
        (("train_step",), FROZEN_LAYER_KEEPS_MOVING_STATS, {"grad_req": ("null", "null", "null")}),
    ],
    ids=["retained-graph", "frozen-layer"],
)
def test_a_recorded_sequence_deviation_is_catalogued_as_known_not_new(
    tmp_path: Path, rules: tuple[str, ...], deviation: object, config: dict[str, object]
) -> None:
    w = worker(tmp_path)
    assert not w.explore(example(one_sequence(*rules, **config)))  # nothing new to hunt
    assert w.findings.hunting is None and not w.findings.pending
    [entry] = [e for e in w.findings.catalogue.entries.values() if e.signature.regime == REGIME]
    assert (entry.signature.kind, entry.signature.deviation) == (KNOWN, deviation.id)  # type: ignore[attr-defined]
    assert entry.signature.quantity == f"{rules[-1]}:moving statistics"
    assert w.result.sequences[f"nd/{IN_PROCESS_BACKEND}"]["known"] == 1


def test_a_session_that_raises_is_a_raises_finding(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuses(entry: str, **kwargs: object) -> object:
        raise RuntimeError("planted: no session today")

    monkeypatch.setattr(state_model, "open_session", refuses)
    checked = check_sequence(one_sequence("train_step"), entry="nd", backend=IN_PROCESS_BACKEND)
    [sig] = checked.signatures
    assert (sig.kind, sig.quantity) == (SEQUENCE, "start:raises:RuntimeError")
    assert checked.result == "raises" and "no session today" in checked.detail(sig)


@pytest.mark.parametrize("backend", ["onednn", "native"])
def test_sequences_run_on_both_cpu_backends(backend: str) -> None:
    """The target's backend decides where: in this process, or in the other backend's worker process."""
    skip_unless_available(backend)
    checked = check_sequence(
        one_sequence("train_step", "backward_again", dtype="float32"), entry="gluon", backend=backend
    )
    assert checked.run.ran == ("train_step", "backward_again")
    assert [s.deviation for s in checked.signatures] == [RETAINED_GRAPH_UPDATES_AGAIN.id]
    assert all(s.backend == backend and s.entry == "gluon" for s in checked.signatures)


def test_sequences_run_only_on_cpu_targets_and_their_chance_follows_every() -> None:
    assert applies("npx", "native") and applies("sym", "onednn") and not applies("nd", "gpu")
    assert chance("sym", "onednn", every=8) == 1 / 8 and chance("nd", "native", every=1) == 1.0
    assert chance("sym", "onednn", every=0) == 0.0 and chance("nd", "gpu", every=1) == 0.0


@settings(max_examples=30, deadline=None)
@given(sequences(dtypes=("float16", "float32", "float64")))
def test_a_sequence_round_trips_through_json(sequence: Sequence) -> None:
    again = Sequence.from_json(sequence.to_json())
    assert again.to_json() == sequence.to_json() and again.describe() == sequence.describe()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"entries": ("gpu",)}, "entries must be some of"), ({"max_rules": 0}, "max_rules must be at least 1")],
)
def test_the_sequence_strategy_validates_its_arguments(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        sequences(**kwargs).example()  # type: ignore[arg-type]


def test_sequences_below_0_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(plan.UsageError, match="sequence_every must be 0"):
        plan.CampaignConfig(out=tmp_path, max_examples=1, sequence_every=-1)
    with pytest.raises(SystemExit) as stopped:
        cli.main(["fuzz", "--max-examples", "1", "--sequences", "-1", "--out", str(tmp_path)])
    assert stopped.value.code == 2 and "--sequences" in capsys.readouterr().err


def test_a_sequence_from_a_file_that_is_not_one_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="not a bnprops sequence"):
        Sequence.from_dict({"format": "something else"})
