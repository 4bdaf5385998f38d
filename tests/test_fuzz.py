"""The fuzz campaign: shards, budgets, the catalogue of a planted fault, the database replay, interrupts."""

from __future__ import annotations

import hashlib
import itertools
import json
from pathlib import Path

import planted_runners as planted
import pytest

from bnprops.fuzzing import campaign, plan
from bnprops.fuzzing.catalogue import ERROR, MISMATCH
from bnprops.fuzzing.report.model import LARGE_EXAMPLE, Report
from bnprops.model.case import Case, Outputs
from bnprops.mx.backends import runner_for
from bnprops.mx.runners import BACKENDS, IN_PROCESS_BACKEND, Runner
from tests.helpers import FOCUSED


def planted_campaign(out: Path, **overrides: object) -> Report:
    """A small float64 campaign against the planted dbeta fault."""
    params: dict[str, object] = dict(out=out, dtypes=("float64",), max_examples=60, chunk_size=30, seed=1, **FOCUSED)
    params.update(overrides)
    config = plan.CampaignConfig(**params)  # type: ignore[arg-type]
    return campaign.run(config, runner_factory=planted.dbeta_off_by_one_percent)


@pytest.fixture(scope="module")
def planted_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Report]:
    out = tmp_path_factory.mktemp("planted")
    return out, planted_campaign(out)


@pytest.mark.parametrize(("shards", "workers"), [(1, 1), (1, 3), (4, 1), (3, 2)])
def test_shards_and_workers_run_disjoint_chunks_that_together_make_the_unsharded_run(shards: int, workers: int) -> None:
    per_runner = {
        (s, w): list(
            itertools.islice(plan.chunk_indices(shard_index=s, shard_count=shards, worker=w, workers=workers), 50)
        )
        for s in range(shards)
        for w in range(workers)
    }
    everything = [i for chunks in per_runner.values() for i in chunks]
    assert len(everything) == len(set(everything)), f"a chunk runs twice: {per_runner}"
    assert sorted(everything) == list(range(len(everything))), "the shards skip chunks an unsharded run would run"


def test_every_chunk_has_its_own_seed() -> None:
    seeds = {plan.chunk_seed(7, i) for i in range(10_000)}
    assert len(seeds) == 10_000
    assert plan.chunk_seed(7, 0) != plan.chunk_seed(8, 0)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"max_examples": None, "time_limit": None}, "give a budget"),
        ({"max_examples": 0}, "max_examples must be at least 1"),
        ({"time_limit": -1.0}, "positive number of seconds"),
        ({"shard_index": 2, "shard_count": 2}, "shard index 2 is not in 0..1"),
        ({"workers": 0}, "workers must be at least 1"),
        ({"dtypes": ("float8",)}, "unknown dtypes"),
        ({"entries": ()}, "entries must not be empty"),
    ],
)
def test_a_bad_configuration_is_a_usage_error_that_says_what_was_expected(
    tmp_path: Path, overrides: dict[str, object], message: str
) -> None:
    params: dict[str, object] = {"out": tmp_path, "max_examples": 1, **overrides}
    with pytest.raises(plan.UsageError, match=message):
        plan.CampaignConfig(**params)  # type: ignore[arg-type]


def test_a_planted_fault_is_catalogued_once_per_signature_with_a_shrunk_case(planted_run: tuple[Path, Report]) -> None:
    _, report = planted_run
    assert report.cases == 60
    assert report.new, "the planted dbeta fault was not found"
    for entry in report.new:
        sig = entry.signature
        assert (sig.kind, sig.quantity, sig.dtype, dict(sig.flags)["fix_gamma"]) == (
            MISMATCH,
            "dbeta",
            "float64",
            "False",
        )
        assert entry.reduction == "shrunk"
        assert entry.case.x.size == 1, f"not shrunk: {entry.case.describe()}"
        assert "dbeta" in entry.detail
    # Every case that failed falls under exactly one signature (it fails in dbeta only).
    assert sum(e.count for e in report.new) == report.totals()["failed"] > 0
    assert len({e.signature for e in report.new}) == len(report.new)


def test_the_report_lists_known_deviations_apart_from_new_ones(planted_run: tuple[Path, Report]) -> None:
    out, _ = planted_run
    data = json.loads((out / "report.json").read_text())
    assert {e["signature"]["kind"] for e in data["catalogue"]["new"]} == {MISMATCH}
    assert all(e["signature"]["kind"] == "known" for e in data["catalogue"]["known"])
    for e in data["catalogue"]["new"]:
        assert (out / e["case_file"]).exists() and (out / e["reproducer"]).exists()
    for e in data["catalogue"]["known"]:
        # A known deviation shown only by a large case keeps no files (its own reproducer shows it).
        if Case.from_dict(e["case"]).x.size > LARGE_EXAMPLE:
            assert e["reproducer"] is None and e["case_file"] is None
        else:
            assert (out / e["case_file"]).exists() and (out / e["reproducer"]).exists()


def test_the_next_run_replays_the_stored_failures_first(planted_run: tuple[Path, Report], tmp_path: Path) -> None:
    out, first = planted_run
    again = tmp_path / "again"
    (again / "db").mkdir(parents=True)
    # A copy, so the module's fixture stays as it was.
    for path in (out / "db").rglob("*"):
        target = again / "db" / path.relative_to(out / "db")
        target.parent.mkdir(parents=True, exist_ok=True)
        if path.is_file():
            target.write_bytes(path.read_bytes())
    (again / plan.INDEX_FILE).write_bytes((out / plan.INDEX_FILE).read_bytes())
    second = planted_campaign(again, max_examples=5, seed=99)
    assert {r["id"] for r in second.replays} == {e.signature.ident for e in first.new}
    assert {r["status"] for r in second.replays} == {"reproduced"}
    assert {e.signature for e in first.new} <= {e.signature for e in second.new}

    # Once the fault is gone, the replays say so and the database index forgets them.
    fixed = campaign.run(plan.CampaignConfig(out=again, dtypes=("float64",), max_examples=5, seed=99, **FOCUSED))
    assert fixed.replays and all(r["status"].startswith("did not reproduce") for r in fixed.replays)
    assert not fixed.new
    assert json.loads((again / plan.INDEX_FILE).read_text())["signatures"] == []


def test_a_database_of_the_layout_before_the_coins_is_listed_not_replayed(
    planted_run: tuple[Path, Report], tmp_path: Path
) -> None:
    out, first = planted_run
    again = tmp_path / "again"
    again.mkdir()
    index = json.loads((out / plan.INDEX_FILE).read_text())
    (again / plan.INDEX_FILE).write_text(json.dumps({**index, "format": "bnprops.db-index/1"}))
    second = planted_campaign(again, max_examples=5, seed=99)
    assert {r["id"] for r in second.replays} == {e.signature.ident for e in first.new}
    assert all(r["status"].startswith("not replayed: stored by an earlier bnprops") for r in second.replays)
    rewritten = json.loads((again / plan.INDEX_FILE).read_text())
    assert rewritten["format"] == "bnprops.db-index/2"
    assert {json.dumps(s, sort_keys=True) for s in rewritten["signatures"]} == {
        json.dumps(e.signature.to_dict(), sort_keys=True) for e in second.new if e.reduction == "shrunk"
    }


def test_shards_judge_different_cases(tmp_path: Path) -> None:
    judged: dict[int, set[str]] = {0: set(), 1: set()}

    def recording(shard: int) -> plan.RunnerFactory:
        def factory(entry: str, backend: str) -> Runner:
            real = runner_for(entry, backend)

            def run(case: Case) -> Outputs:
                judged[shard].add(hashlib.sha1(case.to_json().encode()).hexdigest())
                return real(case)

            return run

        return factory

    reports = []
    for shard in (0, 1):
        config = plan.CampaignConfig(
            out=tmp_path / f"s{shard}", max_examples=40, chunk_size=20, shard_index=shard, shard_count=2, **FOCUSED
        )
        reports.append(campaign.run(config, runner_factory=recording(shard)))
    # The runner sees each stacked call: only Hypothesis's few simplest ones, which start every
    # chunk, may be made by both shards.
    assert len(judged[0] & judged[1]) <= 3, "the shards judged the same cases"
    assert min(r.cases for r in reports) >= 35


def test_a_runner_that_raises_is_catalogued_as_an_error(tmp_path: Path) -> None:
    config = plan.CampaignConfig(out=tmp_path, dtypes=("float64",), max_examples=10, **FOCUSED)
    report = campaign.run(config, runner_factory=planted.raises_for_float64)
    assert [(e.signature.kind, e.signature.quantity) for e in report.new][:1] == [(ERROR, "RuntimeError")]
    assert report.totals()["error"] == 10
    assert "planted: float64 refused" in report.new[0].detail


def test_an_interrupt_stops_the_campaign_and_the_report_is_still_written(tmp_path: Path) -> None:
    config = plan.CampaignConfig(out=tmp_path, max_examples=1000, **FOCUSED)
    report = campaign.run(config, runner_factory=planted.interrupted_after(15))
    assert report.stop_reason == "interrupted"
    # 15 MXNet calls, each a stacked group of up to GROUP_SIZE cases.
    assert 15 <= report.cases <= 15 * plan.GROUP_SIZE
    assert json.loads((tmp_path / "report.json").read_text())["stop_reason"] == "interrupted"


def test_the_time_limit_stops_the_campaign(tmp_path: Path) -> None:
    report = campaign.run(plan.CampaignConfig(out=tmp_path, time_limit=1.5))
    assert report.stop_reason == "time"
    assert report.cases > 0
    assert report.elapsed_s < 1.5 + plan.SHRINK_GRACE_S


def test_worker_processes_share_the_budget(tmp_path: Path) -> None:
    report = campaign.run(plan.CampaignConfig(out=tmp_path, max_examples=12, workers=2, chunk_size=3, **FOCUSED))
    assert report.cases == 12
    assert not report.notes, report.notes


def test_a_backend_that_cannot_run_here_is_skipped_unless_it_was_asked_for(tmp_path: Path) -> None:
    here, other = IN_PROCESS_BACKEND, next(b for b in BACKENDS if b != IN_PROCESS_BACKEND)

    def only_here(entry: str, backend: str) -> Runner:
        if backend != here:
            raise NotImplementedError("needs a worker process")
        return runner_for(entry, backend)

    targets, skipped = plan.resolve_targets(
        plan.CampaignConfig(out=tmp_path, max_examples=1, entries=("sym",), backends=(here, other)), only_here
    )
    assert targets == [("sym", here)] and skipped[0]["backend"] == other
    with pytest.raises(plan.UsageError, match="cannot run here"):
        plan.resolve_targets(
            plan.CampaignConfig(
                out=tmp_path, max_examples=1, entries=("sym",), backends=(other,), backends_explicit=True
            ),
            only_here,
        )
