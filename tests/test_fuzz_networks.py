"""BatchNorm inside networks in the fuzz job: a planted fault is caught, catalogued, shrunk, reported and replayed.

The planted in-network runners (tests/planted_networks.py) sit on top of the real network and change
only what BatchNorm returns inside it: the plain call and the oracle see nothing, so every new finding
of a planted campaign is a network one.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bnprops.commands import cli
from bnprops.fuzzing import campaign, plan
from bnprops.fuzzing.catalogue import KNOWN, NETWORK, Signature
from bnprops.fuzzing.explorer import Explorer
from bnprops.fuzzing.network_findings import REGIME, applies, chain_of, chance, check_network
from bnprops.fuzzing.relation_findings import RelationDraw
from bnprops.fuzzing.report.model import Report
from bnprops.judging import in_network
from bnprops.judging.deviations.onednn_blocked_input_native_batchnorm_backward_raises import (
    ONEDNN_BLOCKED_INPUT_NATIVE_BN_BACKWARD_RAISES,
)
from bnprops.model.case import Case
from bnprops.mx.backends import runner_for
from bnprops.mx.producers import Chain, chain_step_names, step
from bnprops.mx.runners import IN_PROCESS_BACKEND
from tests.helpers import first_finding, one_channel_case, one_sequence

PLANTED = "tests.planted_networks:"
#: A small float64 campaign (the native kernel wherever it runs: in-network must equal plain bit for bit)
#: through nd on the in-process backend, a chain on every example, no relations.
SMALL: dict[str, object] = dict(
    entries=("nd",),
    backends=(IN_PROCESS_BACKEND,),
    dtypes=("float64",),
    relation_every=0,
    network_every=1,
    sequence_every=0,
    seed=3,
)


@pytest.fixture(scope="module", autouse=True)
def _stop_workers() -> object:
    yield
    in_network.close_workers()


def small_campaign(out: Path, *, max_examples: int, runner: str | None = None, **changes: object) -> Report:
    options = {**SMALL, "chunk_size": 20, **changes}
    if runner is not None:
        options["network_runner"] = PLANTED + runner
    return campaign.run(plan.CampaignConfig(out=out, max_examples=max_examples, **options))  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def planted_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Report]:
    out = tmp_path_factory.mktemp("planted-network")
    return out, small_campaign(out, max_examples=60, runner="dx_one_element_off")


def network_entries(report: Report) -> list[object]:
    return [e for e in report.catalogue.entries.values() if e.signature.regime == REGIME]


def test_an_in_network_result_that_differs_from_the_plain_call_is_caught_catalogued_and_shrunk(
    planted_run: tuple[Path, Report],
) -> None:
    _, report = planted_run
    assert report.new, "the planted in-network fault was not found"
    for entry in report.new:
        sig = entry.signature
        assert sig.kind == NETWORK and sig.quantity == "differs:dx", sig
        assert (sig.entry, sig.backend, sig.dtype, sig.regime) == ("nd", IN_PROCESS_BACKEND, "float64", REGIME)
        chain = chain_of(entry)
        assert dict(sig.flags) == {"chain": chain_step_names(chain)}  # the producer chain is in the signature
        assert entry.reduction == "shrunk"
        assert chain.api == "nd" and chain.seed == 0, f"not shrunk: {chain.describe()}"
        assert "differ from the plain call's" in entry.detail and "dx:" in entry.detail
        assert entry.case.regime == "in-network" and entry.case.x.shape == chain.bn_input_shape
    checks = report.network_checks[f"nd/{IN_PROCESS_BACKEND}"]
    assert checks["differs"] == sum(e.count for e in report.new) > 0
    assert report.totals()["failed"] == 0, "the oracle saw the planted fault: it is not an in-network-only fault"


def test_the_report_lists_network_findings_with_their_chain_and_a_reproducer(planted_run: tuple[Path, Report]) -> None:
    out, report = planted_run
    data = json.loads((out / "report.json").read_text())
    assert {e["signature"]["kind"] for e in data["catalogue"]["new"]} == {NETWORK}
    for e in data["catalogue"]["new"]:
        finding = json.loads((out / e["case_file"]).read_text())
        if Path(e["case_file"]).stem == e["id"]:  # its own files (the others point at their cause's smallest example)
            assert Chain.from_dict(finding["chain"]) == Chain.from_dict(e["chain"])
        assert (out / e["reproducer"]).exists()
    assert data["network_checks"] == report.network_checks
    markdown = (out / "report.md").read_text()
    assert "## BatchNorm inside networks" in markdown and f"| nd/{IN_PROCESS_BACKEND} |" in markdown
    entry = report.new[0]
    assert f"`{entry.signature.ident}`" in markdown and chain_of(entry).describe() in markdown
    assert "networks: " in report.summary()


def test_a_network_reproducer_exits_1_on_the_planted_run_and_0_on_mxnet(planted_run: tuple[Path, Report]) -> None:
    from tests import planted_networks

    out, report = planted_run
    path = out / "findings" / f"{first_finding(report)}.py"
    text = path.read_text()
    assert "import bnprops" not in text and "from bnprops" not in text and "from tests" not in text
    namespace: dict[str, object] = {"__name__": "reproducer"}  # defines main, runs nothing
    exec(compile(text, str(path), "exec"), namespace)
    assert namespace["main"](planted_networks.dx_one_element_off) == 1  # type: ignore[operator]
    assert namespace["main"](planted_networks.raises) == 1  # type: ignore[operator]
    done = subprocess.run([sys.executable, str(path)], capture_output=True, text=True, check=False, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "dx           bit for bit" in done.stdout


def test_bnprops_repro_replays_a_network_finding_and_says_whether_it_persists(
    planted_run: tuple[Path, Report], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    out, report = planted_run
    finding = out / "findings" / f"{first_finding(report)}.json"
    assert cli.main(["repro", str(finding)]) == cli.EXIT_OK  # MXNet itself: in-network equals plain
    assert "is gone" in capsys.readouterr().out
    monkeypatch.setattr(in_network, "DEFAULT_RUNNER", PLANTED + "dx_one_element_off")
    assert cli.main(["repro", str(finding)]) == cli.EXIT_FOUND
    shown = capsys.readouterr().out
    assert "persists" in shown and "dx:" in shown


def test_the_next_run_replays_stored_network_findings_even_with_networks_off(
    planted_run: tuple[Path, Report], tmp_path: Path
) -> None:
    out, first = planted_run
    again = tmp_path / "again"
    shutil.copytree(out / "db", again / "db")
    shutil.copy(out / plan.INDEX_FILE, again / plan.INDEX_FILE)
    second = small_campaign(again, max_examples=5, runner="dx_one_element_off", network_every=0)
    assert {r["id"] for r in second.replays} == {e.signature.ident for e in first.new}
    assert {r["status"] for r in second.replays} == {"reproduced"}
    assert {e.signature for e in second.new} == {e.signature for e in first.new}
    assert not second.network_checks, "networks were off: only the replays ran chains"
    fixed = small_campaign(again, max_examples=5, network_every=0)  # MXNet itself: the finding is gone
    assert fixed.replays and all(r["status"].startswith("did not reproduce") for r in fixed.replays)
    assert not fixed.new


def test_a_planted_raise_is_caught_as_raises(tmp_path: Path) -> None:
    report = small_campaign(tmp_path, max_examples=10, runner="raises")
    assert report.new
    for entry in report.new:
        assert entry.signature.kind == NETWORK and entry.signature.quantity == "raises:RuntimeError"
        assert "planted: the producer refused this chain" in entry.detail
        assert entry.reduction == "shrunk"


def example(chain: Chain, case: Case | None = None) -> plan.Example:
    case = case if case is not None else one_channel_case([1.0, 2.0, 4.0])
    return (("nd", IN_PROCESS_BACKEND), [case], RelationDraw("repeat", 0), chain, one_sequence("train_step"))


def worker(tmp_path: Path, **changes: object) -> Explorer:
    config = plan.CampaignConfig(out=tmp_path, max_examples=100, **{**SMALL, "dtypes": ("float32",), **changes})  # type: ignore[arg-type]
    return Explorer(
        config,
        worker=0,
        targets=[("nd", IN_PROCESS_BACKEND)],
        runner_factory=runner_for,
        deadline=None,
        stop_requested=lambda: False,
        progress=None,
    )


def counts(w: Explorer) -> dict[str, int]:
    """The worker's chain counts for nd on the in-process backend, without the time they took."""
    return {k: v for k, v in w.result.networks[f"nd/{IN_PROCESS_BACKEND}"].items() if k != "ms"}


def test_a_chain_that_kills_its_process_is_a_crashes_finding_and_the_fuzz_worker_goes_on(tmp_path: Path) -> None:
    w = worker(tmp_path, network_runner=PLANTED + "aborts")
    chain = Chain(api="nd", input_shape=(2, 3, 5), steps=(step("conv", dims=1, channels=5, kernel=1, pad=0),))
    assert w.explore(example(chain))  # found: the search would now shrink it
    assert w.findings.hunting is not None and (w.findings.hunting.kind, w.findings.hunting.quantity) == (
        NETWORK,
        "crashes",
    )
    assert "died (exit status" in w.findings.pending[w.findings.hunting].detail
    assert w.result.cases == 1 and counts(w) == {"checks": 1, "crashes": 1}


def test_the_recorded_onednn_raise_is_catalogued_as_known_not_new(tmp_path: Path) -> None:
    kd = ONEDNN_BLOCKED_INPUT_NATIVE_BN_BACKWARD_RAISES
    if kd.needs_backend != IN_PROCESS_BACKEND:
        pytest.skip(f"{kd.id} needs {kd.needs_backend}")
    w = worker(tmp_path)
    assert not w.explore(example(kd.reproducer()))  # nothing new to hunt
    assert w.findings.hunting is None and not w.findings.pending
    [entry] = [e for e in w.findings.catalogue.entries.values() if e.signature.regime == REGIME]
    sig = entry.signature
    assert (sig.kind, sig.deviation, sig.quantity) == (KNOWN, kd.id, "raises:MXNetError")
    assert "matches the recorded deviation" in sig.describe() and "Check failed: !is_view" in entry.detail
    assert counts(w) == {"checks": 1, "known": 1}
    # Its reproducer is the chain's own script, which raises on MXNet 1.9.1: exit status 1.
    from bnprops.fuzzing.network_findings import script

    done = subprocess.run(
        [sys.executable, "-c", script(entry)], capture_output=True, text=True, check=False, timeout=300
    )
    assert done.returncode == 1 and "Check failed: !is_view" in done.stdout, done.stdout + done.stderr


def test_a_clean_run_gives_no_network_findings(tmp_path: Path) -> None:
    report = small_campaign(tmp_path, max_examples=300, entries=("nd", "sym", "gluon-hybrid"), chunk_size=50)
    assert not network_entries(report)
    assert sum(c.get("passed", 0) for c in report.network_checks.values()) >= 15
    assert sum(c["checks"] for c in report.network_checks.values()) == sum(
        c.get("passed", 0) for c in report.network_checks.values()
    )


def test_chains_run_only_where_an_api_expresses_the_target_and_their_chance_follows_every() -> None:
    assert applies("nd", "onednn") and applies("gluon-hybrid", "native") and applies("sym", "onednn")
    assert not applies("npx", "onednn") and not applies("nd", "cudnn")
    assert chance("nd", "onednn", every=8) == 1 / 8 and chance("sym", "native", every=1) == 1.0
    assert chance("nd", "onednn", every=0) == 0.0 and chance("npx", "onednn", every=1) == 0.0


def test_the_chain_runs_in_the_targets_api_and_its_signature_names_it() -> None:
    chain = Chain(api="nd", input_shape=(2, 3, 5), steps=(step("conv", dims=1, channels=5, kernel=1, pad=0),))
    checked = check_network(chain, entry="sym", backend=IN_PROCESS_BACKEND, runner=PLANTED + "raises")
    assert checked.chain.api == "sym"
    [sig] = checked.signatures
    assert sig == Signature(
        NETWORK, "raises:RuntimeError", "sym", IN_PROCESS_BACKEND, "float32", (("chain", "conv1d"),), REGIME
    )


def test_networks_below_0_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(plan.UsageError, match="network_every must be 0"):
        plan.CampaignConfig(out=tmp_path, max_examples=1, network_every=-1)
