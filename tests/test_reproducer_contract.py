"""One reproducer contract for every kind of finding: the same header, and exit 1 while the deviation persists.

Each kind's script is generated from a finding and run with the fault there (a planted subject, or MXNet
1.9.1 showing a recorded deviation) and gone (the correct subject, or one without the deviation), through
its ``main``: the shared ending exits with what ``main`` returns. One script runs in a subprocess, for the
exit status itself: a recorded sequence deviation's, which used to exit 0 while it persisted.
"""

from __future__ import annotations

import dataclasses
import functools
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import bnprops
from bnprops.base import reproduction
from bnprops.fuzzing import network_findings, relation_reproducer, reproducer, sequence_findings
from bnprops.fuzzing.catalogue import KNOWN, NETWORK, RELATION, SEQUENCE, Entry, Signature, case_flags, classify
from bnprops.judging import in_network
from bnprops.judging.checks import check
from bnprops.judging.deviations.onednn_blocked_input_native_batchnorm_backward_raises import (
    ONEDNN_BLOCKED_INPUT_NATIVE_BN_BACKWARD_RAISES,
)
from bnprops.judging.known_deviations import (
    FROZEN_LAYER_KEEPS_MOVING_STATS,
    KNOWN_DEVIATIONS,
    RETAINED_GRAPH_UPDATES_AGAIN,
)
from bnprops.judging.relations import RELATIONS
from bnprops.mx.producers import Chain, step
from bnprops.mx.runners import IN_PROCESS_BACKEND, run_symbolic
from bnprops.mx.training import AutogradSession
from tests import planted_networks, planted_sessions
from tests.helpers import one_channel_case, one_sequence
from tests.planted import numpy_batchnorm
from tests.planted_relations import faulty_batchnorm

Main = Callable[..., int]


@pytest.fixture(scope="module", autouse=True)
def _stop_workers() -> object:
    yield
    in_network.close_workers()


def loaded(text: str) -> dict[str, Any]:
    """A script's namespace, as ``python script.py`` would make it but without running ``main``."""
    namespace: dict[str, Any] = {"__name__": "reproducer"}
    exec(compile(text, "reproducer", "exec"), namespace)
    return namespace


def contract_lines(text: str, sig: Signature) -> list[str]:
    """The lines every reproducer shares, with what names this finding put back as placeholders."""
    lines = text.splitlines()
    head = lines[: lines.index('"""', 1) + 1]
    shared = [
        head[0],
        head[1].partition(":")[0],
        *[ln for ln in head if ln.startswith(("bnprops ", "Needs only", "Exit status"))],
    ]
    shared = [ln.replace(sig.ident, "ID").replace(f"kind {sig.kind}", "kind KIND") for ln in shared]
    shared = [ln.partition(", as ")[0] if ln.startswith("Exit status 1") else ln for ln in shared]
    start = lines.index("def verdict(persists, difference):")
    return shared + lines[start : start + 8] + lines[-2:]


# The findings, one (or two) per kind, each with its script.


def single_call_known() -> tuple[Entry, str]:
    """A recorded single-call deviation MXNet 1.9.1 shows (the symbolic executor, float64: the native kernel)."""
    kd = next(kd for kd in KNOWN_DEVIATIONS if kd.id == "native-zero-variance-eps0")
    case = kd.reproducer()
    sig = next(s for s in classify(check(case, runner=run_symbolic, entry="sym"), backend="onednn") if s.kind == KNOWN)
    entry = Entry(sig, 1, case, "smallest seen")
    return entry, reproducer.script(entry)


def relation_finding() -> tuple[Entry, str]:
    case = one_channel_case([1.0, 2.0, 4.0])
    sig = Signature(RELATION, "scale-head:dx", "sym", "onednn", case.dtype, case_flags(case), "ordinary")
    entry = Entry(sig, 1, case, "shrunk", relation=("scale-head", 0))
    return entry, relation_reproducer.script(entry)


def network_finding(quantity: str = "differs:dx") -> tuple[Entry, str]:
    chain = Chain(api="nd", input_shape=(2, 3, 5), steps=(step("conv", dims=1, channels=5, kernel=1, pad=0),))
    chain = chain.with_(dtype="float64")  # the native kernel wherever it runs: in-network equals plain bit for bit
    sig = Signature(NETWORK, quantity, "nd", IN_PROCESS_BACKEND, "float64", (), network_findings.REGIME)
    call = network_findings.call_of(chain, in_network.check_chain(chain, backend=IN_PROCESS_BACKEND))
    entry = Entry(sig, 1, call, "shrunk", network=chain.to_json())
    return entry, network_findings.script(entry)


def network_known() -> tuple[Entry, str]:
    kd = ONEDNN_BLOCKED_INPUT_NATIVE_BN_BACKWARD_RAISES
    chain = kd.reproducer()
    sig = Signature(KNOWN, "raises:MXNetError", "nd", "onednn", chain.dtype, (), network_findings.REGIME, kd.id)
    entry = Entry(sig, 1, network_findings.call_of(chain), "shrunk", network=chain.to_json())
    return entry, network_findings.script(entry)


def sequence_finding(session: str, *rules: str) -> tuple[Entry, str]:
    """A new sequence finding, as the fuzz job keeps it: the replay written when the planted session failed."""
    checked = sequence_findings.check_sequence(
        one_sequence(*rules), entry="nd", backend=IN_PROCESS_BACKEND, session="tests.planted_sessions:" + session
    )
    [sig] = checked.signatures
    entry = Entry(
        sig,
        1,
        sequence_findings.entry_case(checked.sequence),
        "shrunk",
        sequence=checked.sequence.to_json(),
        replay=checked.run.script,
    )
    return entry, sequence_findings.script(entry)


def sequence_known(*rules: str, **config: object) -> tuple[Entry, str]:
    checked = sequence_findings.check_sequence(one_sequence(*rules, **config), entry="nd", backend=IN_PROCESS_BACKEND)
    [sig] = checked.signatures
    entry = Entry(sig, 1, sequence_findings.entry_case(checked.sequence), "shrunk", sequence=checked.sequence.to_json())
    return entry, sequence_findings.script(entry)


@functools.cache
def every_kind() -> dict[str, tuple[Entry, str]]:
    return {
        "single call, known": single_call_known(),
        "relation": relation_finding(),
        "network": network_finding(),
        "network, oracle": network_finding("oracle:dx"),
        "network, known": network_known(),
        "sequence": sequence_finding("moving_stats_updated_twice", "train_step", "train_step"),
        "sequence, raises": sequence_finding("second_step_refused", "train_step", "train_step"),
        "sequence, known": sequence_known("train_step", "backward_again"),
        "sequence, known frozen": sequence_known("train_step", grad_req=("null", "null", "null")),
    }


# The header and the ending.


def test_every_kind_of_reproducer_has_the_same_header_and_ending() -> None:
    scripts = every_kind()
    shared = {name: contract_lines(text, entry.signature) for name, (entry, text) in scripts.items()}
    first = next(iter(shared.values()))
    assert first[:2] == ["#!/usr/bin/env python3", '"""bnprops reproducer']
    assert f"bnprops {bnprops.__version__}; kind KIND; finding ID" in first
    assert "Exit status 1 while the deviation persists" in first
    assert "Exit status 0 once it is gone. The last line printed says which." in first
    assert first[-2:] == ["if __name__ == '__main__':", "    sys.exit(main())"]
    different = {name: lines for name, lines in shared.items() if lines != first}
    assert not different, f"reproducers that do not share the contract's lines: {sorted(different)}"


def test_a_recorded_deviation_says_so_and_a_new_finding_says_as_found() -> None:
    for name, (entry, text) in every_kind().items():
        persists = next(ln for ln in text.splitlines() if ln.startswith("Exit status 1"))
        if entry.signature.kind == KNOWN:
            assert f"as recorded (known deviation {entry.signature.deviation})" in persists, name
        else:
            assert ", as found: " in persists, name
        assert "import bnprops" not in text and "from bnprops" not in text and "from tests" not in text, name


# Exit 1 while the fault is there, 0 once it is gone: each kind.


def test_a_single_call_reproducer_persists_while_mxnet_shows_the_recorded_deviation() -> None:
    _, text = every_kind()["single call, known"]
    namespace = loaded(text)  # makes the call through MXNet 1.9.1, which shows the deviation
    assert namespace["main"]() == reproduction.PERSISTS
    # An MXNet that returns the oracle's values no longer shows it.
    namespace["actual"] = {q: np.array(v) for q, v in namespace["expected"].items()}
    assert namespace["main"]() == reproduction.GONE


def test_a_relation_reproducer_persists_while_the_second_call_breaks_the_relation() -> None:
    entry, text = every_kind()["relation"]
    main: Main = loaded(text)["main"]
    relation = RELATIONS["scale-head"]
    first = entry.case
    params = relation.parameters(first, 0)
    assert params is not None
    second = relation.transform(first, params)
    planted = functools.partial(faulty_batchnorm, fault="dx_offset")  # breaks scale-head in dx
    assert main(lambda: planted(first), lambda: planted(second)) == reproduction.PERSISTS
    assert main(lambda: numpy_batchnorm(first), lambda: numpy_batchnorm(second)) == reproduction.GONE


def test_a_network_reproducer_persists_while_in_network_results_differ() -> None:
    main: Main = loaded(every_kind()["network"][1])["main"]
    assert main(planted_networks.dx_one_element_off) == reproduction.PERSISTS
    assert main() == reproduction.GONE  # MXNet itself: in-network equals plain, bit for bit


def test_a_network_oracle_finding_reproduces_the_plain_call_against_the_oracle() -> None:
    namespace = loaded(every_kind()["network, oracle"][1])
    assert namespace["main"]() == reproduction.GONE  # MXNet's plain call agrees with the oracle
    namespace["actual"]["dx"] = namespace["actual"]["dx"] * 1.01
    assert namespace["main"]() == reproduction.PERSISTS


def test_a_recorded_network_deviation_persists_while_the_network_raises_as_recorded() -> None:
    if IN_PROCESS_BACKEND != "onednn":
        pytest.skip("a oneDNN deviation")
    main: Main = loaded(every_kind()["network, known"][1])["main"]
    assert main() == reproduction.PERSISTS  # MXNet 1.9.1 raises 'Check failed: !is_view'
    assert main(planted_networks.raises) == reproduction.GONE  # raising, but not as recorded


def test_a_sequence_reproducer_persists_while_the_planted_session_leaves_the_model() -> None:
    entry, text = every_kind()["sequence"]
    assert entry.signature.kind == SEQUENCE and entry.replay  # the replay written when the planted session failed
    main: Main = loaded(text)["main"]
    assert main(planted_sessions.DoubleUpdateOnSecondStep) == reproduction.PERSISTS
    assert main() == reproduction.GONE  # MXNet's own session follows the model


def test_a_sequence_reproducer_of_a_raising_rule_persists_while_the_rule_raises() -> None:
    entry, text = every_kind()["sequence, raises"]
    assert entry.signature.quantity == "train_step:raises:RuntimeError"
    main: Main = loaded(text)["main"]
    assert main(planted_sessions.RefusesSecondStep) == reproduction.PERSISTS
    assert main() == reproduction.GONE


@pytest.mark.parametrize(
    ("name", "deviation"),
    [
        ("sequence, known", RETAINED_GRAPH_UPDATES_AGAIN.id),
        ("sequence, known frozen", FROZEN_LAYER_KEEPS_MOVING_STATS.id),
    ],
)
def test_a_recorded_sequence_deviation_persists_while_mxnet_shows_it_as_recorded(name: str, deviation: str) -> None:
    entry, text = every_kind()[name]
    assert entry.signature.deviation == deviation
    main: Main = loaded(text)["main"]
    assert main() == reproduction.PERSISTS  # MXNet 1.9.1 shows it


def test_a_recorded_sequence_deviation_is_gone_once_a_second_backward_keeps_the_statistics() -> None:
    main: Main = loaded(every_kind()["sequence, known"][1])["main"]
    assert main(planted_sessions.KeepsStatisticsOnSecondBackward) == reproduction.GONE
    assert issubclass(planted_sessions.KeepsStatisticsOnSecondBackward, AutogradSession)


def test_a_recorded_sequence_deviations_script_exits_1_when_run(tmp_path: Path) -> None:
    """The exit status itself, from a process that has only mxnet and numpy (-I: bnprops cannot be imported)."""
    path = tmp_path / "reproducer.py"
    path.write_text(every_kind()["sequence, known"][1])
    done = subprocess.run(
        [sys.executable, "-I", str(path)], capture_output=True, text=True, cwd=tmp_path, check=False, timeout=300
    )
    assert done.returncode == reproduction.PERSISTS, done.stdout[-3000:] + done.stderr[-3000:]
    last = done.stdout.strip().splitlines()[-1]
    assert last.startswith(reproduction.PERSISTS_LINE) and RETAINED_GRAPH_UPDATES_AGAIN.id in last


def test_a_stored_replay_of_an_older_format_is_written_again() -> None:
    entry, _ = every_kind()["sequence, known"]
    old = dataclasses.replace(entry, replay="print('an older replay')\nsys.exit(0)\n")
    assert "def main(" in sequence_findings.script(old) and "an older replay" not in sequence_findings.script(old)
