"""bnprops explain: the forum thread answered completely, every semantic variant found, deviations told apart."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bnprops.commands.cli import main
from bnprops.commands.explanation import KNOWN, SEMANTICS, UNEXPLAINED, Explanation, explain
from bnprops.commands.semantic_variants import FAMILY_VARIANTS, VARIANTS, Call, base, evaluate
from bnprops.commands.semantic_variants import Variant as SemanticVariant
from bnprops.judging.deviations.sym_inference_backward_trains import SYM_INFERENCE_BACKWARD_TRAINS
from bnprops.model.case import Case
from bnprops.mx.runners import with_relu_build_reason

# The forum thread (../shared/seed/): one feature, two samples, LinearRegressionOutput as the head.
FORUM_X = "[[0.18527887], [-1.23678724]]"
FORUM_T = "[[2.57767984], [-1.55019435]]"
FORUM_ARGS = ["explain", "--entry", "sym", "--x", FORUM_X, "--target", FORUM_T, "--loss", "l2"]


def names(result: Explanation) -> set[tuple[str, ...]]:
    """Every combination the explanation offers: the chosen one and its equals."""
    return {result.combination, *result.alternatives}


def test_the_forum_users_numbers_are_fix_gamma_false_at_the_gamma_they_read_back_with_eps_1e_5() -> None:
    result = explain(
        entry="sym",
        x=FORUM_X,
        target=FORUM_T,
        loss="l2",
        gamma_read_back=True,
        expected={"dbeta": "-1.0274856", "dgamma": "-2.127873"},
    )
    assert result.quantity("dbeta").verdict == "agrees"
    dgamma = result.quantity("dgamma")
    assert dgamma.verdict == "differs" and dgamma.cause == SEMANTICS
    assert dgamma.mxnet is not None and dgamma.mxnet.tolist() == [0.0]  # fix_gamma=True: exactly 0
    assert [c.variant for c in dgamma.causes] == ["fix-gamma-default", "eps-1e-05"]
    assert result.combination == ("fix-gamma-default", "eps-1e-05") and not result.alternatives
    fix_gamma, eps = dgamma.causes
    assert "fix_gamma defaults to True" in fix_gamma.description
    assert "gamma = 1, the value MXNet's forward wrote into the gamma array" in fix_gamma.description
    assert "fix_gamma=False" in fix_gamma.fix
    assert "eps = 1e-05" in eps.description and "0.001" in eps.description and "eps = 0.001" in eps.fix
    assert not result.unexplained and result.reproducer is None


def test_the_answers_numbers_match_mxnet_and_differ_from_the_users_by_gamma_zero_and_eps() -> None:
    answer = explain(
        entry="sym", x=FORUM_X, target=FORUM_T, fix_gamma=False, expected={"dbeta": -1.0274855, "dgamma": -4.1237984}
    )
    assert [q.verdict for q in answer.quantities] == ["agrees", "agrees"]
    assert answer.summary == "every number you gave agrees with MXNet"
    # The user's number on the answer's call: gamma = 1 (what the fix_gamma=True forward wrote) and eps = 1e-5,
    # where the answer's call leaves gamma at simple_bind's 0 and keeps eps at 1e-3.
    users = explain(entry="sym", x=FORUM_X, target=FORUM_T, fix_gamma=False, expected={"dgamma": "-2.127873"})
    assert users.combination == ("gamma-written-by-forward", "eps-1e-05") and not users.alternatives
    assert "in this call gamma is 0" in users.quantity("dgamma").causes[0].description


def test_bnprops_explain_is_the_python_entry_and_stays_so_after_its_module_is_imported() -> None:
    import bnprops
    import bnprops.commands.explanation  # a submodule named explain would replace the function here

    result = bnprops.explain(entry="sym", x=FORUM_X, target=FORUM_T, fix_gamma=False, expected={"dgamma": -4.1237984})
    assert isinstance(result, Explanation) and result.quantity("dgamma").verdict == "agrees"


def test_the_forum_example_through_the_command_line(capsys: pytest.CaptureFixture[str]) -> None:
    status = main([*FORUM_ARGS, "--gamma-read-back", "--expect", "dbeta=-1.0274856", "--expect", "dgamma=-2.127873"])
    out = capsys.readouterr().out
    assert status == 0
    assert "dbeta: agrees" in out and "dgamma: differs" in out
    assert "* fix-gamma-default: fix_gamma defaults to True" in out and "* eps-1e-05" in out
    assert "fix: pass fix_gamma=False" in out
    status = main([*FORUM_ARGS, "--fix-gamma", "false", "--expect", "dgamma=-4.1237984", "--json"])
    data = json.loads(capsys.readouterr().out)
    assert status == 0 and data["quantities"][0]["verdict"] == "agrees"


def planted_case(variant: SemanticVariant) -> Case:
    """A call in which ``variant`` applies: 3 samples x 2 channels, every parameter away from its default."""
    fixed = variant.name in ("fix-gamma-default", "gamma-as-initialised")
    x = np.array([[0.5, -1.25], [2.0, 0.75], [-0.875, 1.5]], np.float32)
    return Case(
        x=x,
        dy=np.zeros_like(x),
        gamma=np.array([1.5, 0.75], np.float32),
        beta=np.array([0.25, -0.5], np.float32),
        moving_mean=np.array([0.125, -0.25], np.float32),
        moving_var=np.array([0.5, 2.0], np.float32),
        eps=2e-3,
        momentum=0.8,
        fix_gamma=fixed,
        is_train=variant.name != "training-statistics",
        output_mean_var=True,
    )


TARGET = [[1.0, -0.5], [0.25, 2.0], [-1.5, 0.5]]


def planted_numbers(call: Call, combo: list[SemanticVariant]) -> dict[str, str]:
    """The quantities the combination changes, printed to 9 digits as a user would paste them."""
    a = base(call)
    for v in combo:
        changed = v.apply(call, a)
        assert changed is not None, f"{v.name} does not apply to the planted call"
        a = changed
    plain, user = evaluate(call, base(call)), evaluate(call, a)
    numbers = {q: json.dumps([float(f"{v:.9g}") for v in user[q].ravel()]) for q in user if q in plain}
    changed_q = [q for q in numbers if not np.allclose(plain[q], user[q], rtol=1e-6, atol=1e-9)]
    assert changed_q, f"{[v.name for v in combo]} changes nothing on the planted call"
    return {q: numbers[q] for q in [*changed_q, "dbeta"]}


#: BatchNorm's own variants (the family's need calls of their own member: below).
OWN = [v for v in VARIANTS if v not in FAMILY_VARIANTS]


@pytest.mark.parametrize("variant", OWN, ids=[v.name for v in OWN])
def test_each_semantic_variant_planted_alone_is_named(variant: SemanticVariant) -> None:
    case = planted_case(variant)
    call = Call(case, "nd", np.array(TARGET), "l2")
    expected = planted_numbers(call, [variant])
    result = explain(entry="nd", case=case, target=json.dumps(TARGET), expected=expected)
    assert (variant.name,) in names(result), result.format()
    assert all(q.cause in (None, SEMANTICS) for q in result.quantities), result.format()


@pytest.mark.parametrize(
    "combo",
    [("eps-1e-05", "unbiased-variance"), ("fix-gamma-default", "eps-0", "head-doubled")],
    ids=["two", "three"],
)
def test_combinations_of_two_and_three_differences_are_found(combo: tuple[str, ...]) -> None:
    chosen = [v for v in VARIANTS if v.name in combo]
    case = planted_case(chosen[0])
    call = Call(case, "nd", np.array(TARGET), "l2")
    expected = planted_numbers(call, chosen)
    result = explain(entry="nd", case=case, target=json.dumps(TARGET), expected=expected)
    assert combo in names(result), result.format()


#: The member (and devices) each family variant is a mix-up of.
FAMILY_CALLS: dict[str, dict[str, Any]] = {
    "global-statistics": {"member": "batchnorm", "devices": 2},
    "per-device-statistics": {"member": "sync", "devices": 2},
    "relu-mask-dropped": {"member": "relu"},
    "relu-mask-applied": {"member": "batchnorm"},
    "batch-statistics-after-fold": {"member": "folded"},
    "onnx-fix-gamma-kept": {"member": "onnx"},
}


def family_case(variant: SemanticVariant) -> Case:
    """float32 (4, 2, 2, 2) with both signs in every channel (BatchNormWithReLU runs 4-D float32 only), the
    parameters away from their defaults; fix_gamma where the variant is about it."""
    x = (np.arange(32, dtype=np.float32).reshape(4, 2, 2, 2) * 0.37 % 2.3 - 1.1).astype(np.float32)
    x[2:] = x[2:] * 1.75 + 0.5  # the second device's slice: another mean and spread
    return Case(
        x=x,
        dy=np.zeros_like(x),
        gamma=np.array([1.5, 0.75], np.float32),
        beta=np.array([0.25, -0.5], np.float32),
        moving_mean=np.array([0.125, -0.25], np.float32),
        moving_var=np.array([0.5, 2.0], np.float32),
        eps=2e-3,
        momentum=0.8,
        fix_gamma=variant.name == "onnx-fix-gamma-kept",
    )


def skip_unless_member_runs(where: dict[str, Any]) -> None:
    """explain runs BatchNormWithReLU in MXNet, which has no kernel on a build without oneDNN (mxnet-native)."""
    reason = with_relu_build_reason() if where.get("member") == "relu" else None
    if reason is not None:
        pytest.skip(reason)


@pytest.mark.parametrize("variant", FAMILY_VARIANTS, ids=[v.name for v in FAMILY_VARIANTS])
def test_each_family_variant_planted_alone_is_named(variant: SemanticVariant) -> None:
    """The family's mix-ups, each planted on a call of its member (evaluated by the oracle alone) and named."""
    case, where = family_case(variant), FAMILY_CALLS[variant.name]
    skip_unless_member_runs(where)
    target = np.linspace(-1.0, 1.5, case.x.size).reshape(case.shape)
    call = Call(case, "nd", target, "l2", **where)
    compared = ("y", "dx", "dgamma", "dbeta", "moving_mean", "moving_var")  # mean and invstd: no output_mean_var
    expected = {q: v for q, v in planted_numbers(call, [variant]).items() if q in compared}
    result = explain(entry="nd", case=case, target=json.dumps(target.tolist()), expected=expected, **where)
    assert (variant.name,) in names(result), result.format()
    assert all(q.cause in (None, SEMANTICS) for q in result.quantities), result.format()


@pytest.mark.parametrize("where", [{"member": "batchnorm", "devices": 2}, {"member": "relu"}], ids=["devices", "relu"])
def test_a_members_own_numbers_agree_with_what_mxnet_runs_for_it(where: dict[str, Any]) -> None:
    """Per-device BatchNorm and BatchNormWithReLU run in MXNet: the member's oracle's numbers agree."""
    skip_unless_member_runs(where)
    case = family_case(VARIANTS[0])
    target = np.linspace(-1.0, 1.5, case.x.size).reshape(case.shape)
    call = Call(case, "nd", target, "l2", **where)
    own = evaluate(call, base(call))
    expected = {q: json.dumps([float(f"{v:.9g}") for v in own[q].ravel()]) for q in ("y", "dx", "dgamma", "dbeta")}
    result = explain(entry="nd", case=case, target=json.dumps(target.tolist()), expected=expected, **where)
    assert [q.verdict for q in result.quantities] == ["agrees"] * 4, result.format()


def test_a_member_without_a_runner_says_its_oracle_stands_in() -> None:
    case = family_case(VARIANTS[0])
    result = explain(
        entry="nd",
        case=case,
        dy=json.dumps(np.ones(case.shape).tolist()),
        member="sync",
        devices=2,
        expected={"dbeta": "[8, 8]"},
    )
    assert "MXNet not run" in result.head and "member sync on 2 devices" in result.head


def test_a_number_that_matches_mxnet_agrees() -> None:
    result = explain(entry="gluon", x="[[1.0], [2.0], [4.0]]", dy="[[0.5], [-1.0], [0.25]]", expected={"dbeta": -0.25})
    assert result.quantity("dbeta").verdict == "agrees" and result.quantity("dbeta").cause is None


def test_a_planted_non_semantic_error_is_unexplained_with_a_reproducer_that_runs(tmp_path: Path) -> None:
    call = {"entry": "nd", "x": "[[1.0], [2.0], [4.0]]", "dy": "[[0.5], [-1.0], [0.25]]", "fix_gamma": False}
    truth = explain(**call, expected={"dgamma": 0})  # type: ignore[arg-type]
    off = float(np.asarray(truth.quantity("dgamma").mxnet)[0]) * 1.005
    assert off != 0
    script = tmp_path / "repro.py"
    result = explain(**call, expected={"dgamma": f"{off:.9g}"}, reproducer=script)  # type: ignore[arg-type]
    dgamma = result.quantity("dgamma")
    assert dgamma.verdict == "differs" and dgamma.cause == UNEXPLAINED and result.unexplained
    assert result.reproducer == script and script.exists()
    # MXNet agrees with the oracle: the number is the user's own, not a deviation.
    assert not dgamma.mxnet_deviates and "check your formula" in result.format()
    run = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120, check=False)
    assert run.returncode == 1, run.stderr
    assert "dgamma: MXNet" in run.stdout and "DIFFERS" in run.stdout


def test_a_planted_mxnet_fault_is_a_possible_new_deviation(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """MXNet's dgamma 0.5% off and the user's number the oracle's: explain must blame MXNet, not the user."""
    from bnprops.commands import explanation

    real = explanation.runner_for

    def nudged(entry: str, backend: str) -> Any:
        run = real(entry, backend)

        def planted(case: Case) -> Any:
            out = dict(run(case))
            out["dgamma"] = np.asarray(out["dgamma"]) * np.float32(1.005)
            return out

        return planted

    call = {"entry": "nd", "x": "[[1.0], [2.0], [4.0]]", "dy": "[[0.5], [-1.0], [0.25]]", "fix_gamma": False}
    truth = explain(**call, expected={"dgamma": 0})  # type: ignore[arg-type]
    oracle = float(np.asarray(truth.quantity("dgamma").oracle)[0])
    monkeypatch.setattr(explanation, "runner_for", nudged)
    result = explain(**call, expected={"dgamma": f"{oracle:.9g}"}, reproducer=tmp_path / "r.py")  # type: ignore[arg-type]
    dgamma = result.quantity("dgamma")
    assert dgamma.cause == UNEXPLAINED and dgamma.mxnet_deviates, result.format()
    assert "unexplained: possibly a new MXNet deviation" in result.format()


def test_a_known_deviation_is_named_as_such() -> None:
    # sym's backward after an inference forward takes the training formula; the user expects the inference dx.
    x, dy = "[[1.0], [2.0], [4.0]]", "[[0.5], [-1.0], [0.25]]"
    call = {"entry": "sym", "x": x, "dy": dy, "gamma": 1.5, "moving_var": 1.0, "is_train": False, "fix_gamma": False}
    oracle_dx = explain(**call, expected={"dx": "[[0], [0], [0]]"})  # type: ignore[arg-type]
    dx = json.dumps([[float(f"{v:.9g}")] for v in np.asarray(oracle_dx.quantity("dx").oracle).ravel()])
    result = explain(**call, expected={"dx": dx})  # type: ignore[arg-type]
    q = result.quantity("dx")
    assert q.verdict == "differs" and q.cause == KNOWN and q.deviation == SYM_INFERENCE_BACKWARD_TRAINS.id
    assert f"known deviation {SYM_INFERENCE_BACKWARD_TRAINS.id}" in result.format()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--x", "[[0.18527887], [-1.2", "--expect", "dgamma=1"], "is not a number or a JSON list"),
        (["--expect", "dgama=-2.1"], "unknown quantity 'dgama'"),
        (["--expect", "dgamma"], "write QUANTITY=VALUE"),
        (["--expect", "dgamma=[1, 2]"], "expected dgamma has 2 value(s)"),
        (["--gamma", "[1, 2, 3]", "--expect", "dgamma=1"], "gamma has 3 values"),
        (["--dy", "[1, 2]", "--expect", "dgamma=1"], "not both"),
        (["--fix-gamma", "maybe", "--expect", "dgamma=1"], "expected true or false"),
        (["--entry", "gluon", "--fix-gamma", "false", "--expect", "dgamma=1"], "give scale"),
        (["--member", "sync", "--devices", "3", "--expect", "dbeta=1"], "does not split into 3"),
        (["--member", "relu", "--devices", "2", "--expect", "dbeta=1"], "devices applies to batchnorm and sync"),
    ],
    ids=[
        "malformed-json",
        "unknown-quantity",
        "no-value",
        "wrong-expected-shape",
        "wrong-gamma-length",
        "two-heads",
        "bad-bool",
        "gluon-fix-gamma",
        "devices-uneven",
        "devices-on-relu",
    ],
)
def test_bad_input_gives_a_clear_error_and_exit_status_2(
    extra: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    args = [*FORUM_ARGS, *extra] if "--x" not in extra else ["explain", "--target", FORUM_T, *extra]
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_help_explains_the_inputs_and_the_exit_status(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["explain", "--help"])
    out = capsys.readouterr().out
    assert exc.value.code == 0
    assert "--gamma-read-back" in out and "--expect Q=VALUE" in out and "exit status" in out
