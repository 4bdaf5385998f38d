"""One declaration per deviation: each module of the registry declares its own, ids are unique, and the
generated deviations page is the rendering of the declarations."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from bnprops.commands import cli
from bnprops.judging import deviation_table, deviations, known_deviations
from bnprops.judging.declarations import KnownDeviation, NetworkDeviation, SequenceDeviation
from bnprops.mx.runners import ALL_BACKENDS

ROOT = Path(__file__).resolve().parent.parent


def test_every_module_declares_its_deviations_and_the_registry_holds_each_exactly_once() -> None:
    declared = [d for module in deviations.modules() for d in module.DEVIATIONS]
    assert declared and sorted(map(id, declared)) == sorted(map(id, deviations.ALL))
    ids = [d.id for d in deviations.ALL]
    assert len(ids) == len(set(ids)) and ids == sorted(ids) and len(set(deviations.ALL)) == len(ids)
    for module in deviations.modules():
        # Named after its deviation, or after the family whose ids share the start of its name.
        stem = module.__name__.rsplit(".", 1)[1].replace("_", "-")
        words = list(zip(*(d.id.split("-") for d in module.DEVIATIONS), strict=False))
        shared = "-".join(w[0] for w in itertools.takewhile(lambda w: len(set(w)) == 1, words))
        assert stem == shared if len(module.DEVIATIONS) == 1 else stem.startswith(shared), module.__name__


def test_the_kinds_are_the_registrys_and_the_old_names_still_import() -> None:
    kinds = (
        known_deviations.KNOWN_DEVIATIONS,
        known_deviations.INPUT_DEVIATIONS,
        known_deviations.NETWORK_DEVIATIONS,
        known_deviations.SEQUENCE_DEVIATIONS,
        known_deviations.LIFECYCLE_DEVIATIONS,
    )
    assert sum(len(k) for k in kinds) == len(deviations.ALL) and all(kinds)
    assert deviations.by_id("add-request-ignored") in known_deviations.KNOWN_DEVIATIONS
    with pytest.raises(KeyError, match="no deviation"):
        deviations.by_id("no-such-deviation")


def test_a_declaration_says_what_tests_need_of_it() -> None:
    for d in deviations.ALL:
        assert d.summary and d.conditions and d.model and d.evidence and d.upstream, d.id
        if isinstance(d, KnownDeviation | NetworkDeviation) and d.needs_backend is not None:
            assert d.needs_backend in ALL_BACKENDS, d.id
        if isinstance(d, SequenceDeviation):
            # Replayed by the sequence checks, or needs an engine they do not run (probed apart).
            assert (d.shortest_on is None) == (d.engine is not None), d.id


def test_two_modules_declaring_one_id_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    [first, *_] = deviations.modules()

    class Twice:
        __name__ = "bnprops.judging.deviations.twice"
        DEVIATIONS = first.DEVIATIONS

    monkeypatch.setattr(deviations, "modules", lambda: (first, Twice))
    with pytest.raises(ValueError, match="declared twice"):
        deviations._collect()
    monkeypatch.setattr(Twice, "DEVIATIONS", ())
    with pytest.raises(TypeError, match="declares no DEVIATIONS"):
        deviations._collect()


def test_the_deviations_page_is_the_rendering_of_the_registry() -> None:
    page = ROOT / deviation_table.PAGE
    stale = f"{deviation_table.PAGE} is stale: regenerate it with  {deviation_table.REGENERATE}"
    assert page.is_file(), f"{deviation_table.PAGE} is missing: write it with  {deviation_table.REGENERATE}"
    assert page.read_text() == deviation_table.markdown(), stale


def test_the_page_has_a_row_and_a_section_per_deviation() -> None:
    page = deviation_table.markdown()
    for d in deviations.ALL:
        assert f"| [`{d.id}`](#{d.id}) | {d.KIND} |" in page and f"\n### {d.id}\n" in page


def test_the_command_writes_and_checks_the_page(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "deviations.md"
    assert cli.main(["deviations", "--markdown", "--out", str(out)]) == cli.EXIT_OK
    assert out.read_text() == deviation_table.markdown()
    assert cli.main(["deviations", "--check", str(out)]) == cli.EXIT_OK
    out.write_text(out.read_text().replace("single call", "one call", 1))
    assert cli.main(["deviations", "--check", str(out)]) == cli.EXIT_FOUND
    assert deviation_table.REGENERATE in capsys.readouterr().err
    assert cli.main(["deviations"]) == cli.EXIT_OK
    listed = capsys.readouterr().out
    assert all(d.id in listed for d in deviations.ALL)


def test_the_help_says_how_to_regenerate_the_page(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        cli.main(["deviations", "--help"])
    out = capsys.readouterr().out
    assert done.value.code == 0 and "--markdown" in out and "--check" in out
    assert " ".join(deviation_table.REGENERATE.split()) in " ".join(out.split())


def test_every_declaration_names_its_upstream_change_or_says_what_was_searched() -> None:
    from bnprops.judging.declarations import NO_UPSTREAM, none_found, upstream_problem

    problems = {d.id: upstream_problem(d.upstream) for d in deviations.ALL}
    assert not {i: p for i, p in problems.items() if p}, problems
    assert upstream_problem(NO_UPSTREAM) and upstream_problem("fixed upstream, somewhere")
    assert upstream_problem(none_found("searched apache/mxnet issues for 'x y z'")) is None
    assert upstream_problem("fixed by apache/mxnet#18500") is None


def test_every_release_scope_was_probed_or_says_what_source_it_rests_on() -> None:
    for d in deviations.ALL:
        scope = d.releases
        assert scope.probed or scope.basis, f"{d.id}: a scope neither probed nor read from the source history"
        assert not scope.contradictions(), (d.id, scope.contradictions())
        page_row = next(line for line in deviation_table.markdown().splitlines() if line.startswith(f"| [`{d.id}`]"))
        assert ("(not probed)" in page_row) == (not scope.probed), page_row
