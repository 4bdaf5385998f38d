"""Findings as files: the case as JSON, and a standalone reproducer script that needs only mxnet and numpy.

The script, in the spirit of the forum thread that started bnprops, makes the exact MXNet call
through the finding's entry point and backend (bnprops.mx.snippets.snippet), prints MXNet's numbers beside the
float64 oracle's, and keeps the reproducer contract (bnprops.base.reproduction): exit status 1 while the
deviation persists (a known deviation's: while MXNet deviates as recorded), 0 once it is gone.  The oracle's
values and the per-element error bounds (bnprops.model.error_model's, for this very case) are embedded
as numbers: they depend on the case alone, so the script judges exactly as the comparator does.
"""

from __future__ import annotations

import json
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from bnprops.base import reproduction
from bnprops.fuzzing.catalogue import ACCURACY, ERROR, KNOWN, STALE, UNRECORDED, VERDICTS, Entry, Signature
from bnprops.judging.judgement import predictions
from bnprops.judging.known_deviations import KNOWN_DEVIATIONS
from bnprops.model import oracle
from bnprops.model.case import Case
from bnprops.model.error_model import indeterminate_quantities
from bnprops.model.evaluation import evaluate
from bnprops.mx.runners import kernel_for
from bnprops.mx.snippets import snippet

T = TypeVar("T")

FINDING_FORMAT = "bnprops.finding/1"
#: What a single call's script prints.
SHOWS = "Makes the call and prints MXNet's numbers beside a float64 oracle's, worst elements first."


def finding_json(entry: Entry) -> str:
    """``findings/ID.json``: the signature, where it runs, and the case (``bnprops repro`` reads it)."""
    data = {
        "format": FINDING_FORMAT,
        "signature": entry.signature.to_dict(),
        "entry": entry.signature.entry,
        "backend": entry.signature.backend,
        "count": entry.count,
        "reduction": entry.reduction,
        "detail": entry.detail,
        "case": entry.case.to_dict(),
    }
    return json.dumps(data, indent=1, sort_keys=True) + "\n"


def with_example(base: str, *, key: str, example: str | None, summary: str) -> str:
    """``findings/ID.json`` for a finding whose example is not a case (a chain, a sequence): ``base``
    (finding_json) plus the example's JSON under ``key`` and its one-line summary under ``key``_summary."""
    data = json.loads(base)
    data[key] = json.loads(example or "null")
    data[f"{key}_summary"] = summary
    return json.dumps(data, indent=1, sort_keys=True) + "\n"


def load_example(path: Path, *, key: str, decode: Callable[[dict[str, Any]], T]) -> T | None:
    """The example a finding file keeps under ``key`` (decoded); None if it keeps none. ValueError if it does not
    read or does not decode, saying which."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path} does not read as a finding ({exc})") from exc
    if not isinstance(data, dict) or data.get(key) is None:
        return None
    try:
        return decode(data[key])
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{path} keeps a {key} that does not decode ({exc})") from exc


def load_finding(path: Path) -> tuple[Case, Signature | None, str | None, str | None]:
    """A finding file (or a bare case JSON): the case, and the signature, entry and backend if it has them."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise ValueError(f"{path}: no such file") from exc
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} does not parse as JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a JSON object (a bnprops finding or case)")
    try:
        if data.get("format") == FINDING_FORMAT:
            sig = Signature.from_dict(data["signature"])
            return Case.from_dict(data["case"]), sig, str(data["entry"]), str(data["backend"])
        return Case.from_dict(data), None, None, None
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{path} is not a bnprops finding or case: {exc}") from exc


def _literal(value: Any) -> str:
    """Python source that evaluates to ``value`` exactly (arrays keep dtype and bits)."""
    if isinstance(value, np.ndarray):
        if not value.size:
            return f"np.zeros({value.shape!r}, dtype={str(value.dtype)!r})"
        if value.dtype == bool:
            return f"np.array({value.tolist()!r}, dtype=bool)"
        data = value.astype(np.float64).tolist()
        return f"np.array({data!r}, dtype=np.float64).astype({str(value.dtype)!r})".replace(
            "inf", "float('inf')"
        ).replace("nan", "float('nan')")
    if isinstance(value, float) and not np.isfinite(value):
        return f"float({str(value)!r})"
    if isinstance(value, bool | int | float | str | tuple | type(None)):
        return repr(value)
    raise TypeError(f"cannot write {type(value).__name__} into a reproducer")


def _focus(sig: Signature) -> list[str]:
    """The quantities whose agreement decides the exit status."""
    if sig.kind == STALE:
        return sorted(next(kd.quantities for kd in KNOWN_DEVIATIONS if kd.id == sig.deviation))
    if sig.kind == ERROR:
        return []
    return [sig.quantity]


def _model(sig: Signature, case: Case, like: str | None = None) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """The deviation's model for the focus quantities: quantity -> (region, values, tolerance)."""
    found: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    ev = evaluate(case)
    kernel = kernel_for(case, sig.backend, sig.entry)
    for kd, p in predictions(case, entry=sig.entry, kernel=kernel, evaluation=ev, like=like):
        if kd.id == sig.deviation and p.quantity in _focus(sig) and p.quantity not in found:
            values, tolerance = p.model(ev)
            found[p.quantity] = (np.ascontiguousarray(p.where), np.ascontiguousarray(values), tolerance)
    return found


def _as_recorded_lines(model: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]) -> list[str]:
    """``as_recorded(q)``: every element that deviates from the oracle lies in the REGION and matches the MODEL."""
    if not model:
        return []
    return [
        "def as_recorded(q):",
        "    if q not in actual or np.shape(actual[q]) != expected[q].shape:",
        "        return False",
        "    a = np.asarray(actual[q], dtype=np.float64)",
        "    off = differs(expected[q], a, BOUND[q], JUDGED[q], OUT_DTYPE[q])",
        "    if q not in MODEL:",
        "        return not off.any()",
        "    matches = REGION[q] & ~differs(MODEL[q], a, MODEL_TOL[q], REGION[q], OUT_DTYPE[q])",
        "    return bool(not (off & ~matches).any())",
        "",
        "",
    ]


def script(entry: Entry) -> str:
    """The standalone reproducer for a catalogue entry."""
    sig, case = entry.signature, entry.case
    body, meaning = call_body(entry)
    about = [f"{sig.describe()}", f"Example ({entry.reduction}): {case.describe()}", "", SHOWS]
    return reproduction.script(
        kind=sig.kind,
        ident=sig.ident,
        title="a single BatchNorm call",
        about=about,
        persists=meaning,
        body=body,
        recorded=sig.deviation if sig.kind == KNOWN else "",
    )


def call_body(entry: Entry, *, call: str | None = None, view: str = "", like: str | None = None) -> tuple[str, str]:
    """The body of a single call's reproducer (it defines ``main``) and what its persisting means.

    ``call``: the script of the call (default: the entry point's snippet); ``view``: code that brings ``actual``
    into the form judged, once ``expected`` is defined (a family member's); ``like``: as judgement.predictions.
    """
    sig, case = entry.signature, entry.case
    ev = evaluate(case, "reference")  # (the script holds every array: the reference writes them all)
    expected = ev.expected
    tol = ev.sharp if sig.kind == ACCURACY else ev.bound
    dtypes = ev.dtypes
    undetermined = ev.undetermined
    judged = {}
    for q, e in expected.items():
        mask = np.ones(e.shape, dtype=bool)
        if q in indeterminate_quantities(case) and undetermined.any():
            per_element = e.shape == case.shape
            defined = ~oracle.per_channel(case, undetermined).astype(bool) if per_element else ~undetermined
            mask = np.broadcast_to(defined, e.shape).copy()
        judged[q] = mask
    call = snippet(case, entry=sig.entry, backend=sig.backend) if call is None else call
    focus = _focus(sig)
    model = _model(sig, case, like) if sig.kind in VERDICTS else {}
    deviating = "any(deviates(q) for q in FOCUS)"
    if sig.kind == STALE:
        persists = f"not {deviating}"
        meaning = f"known deviation {sig.deviation} does not show (its declaration in judging.deviations is stale)"
    elif sig.kind == ERROR:
        persists = "error is not None"
        meaning = "MXNet raises"
    elif sig.kind == ACCURACY:
        persists = deviating
        meaning = (
            f"MXNet's {sig.quantity} is beyond the probabilistic error bound around the float64 oracle (within the "
            "deterministic one: it loses more digits than a float sum with random rounding would)"
        )
    elif sig.kind == UNRECORDED:
        persists = f"{deviating} and not all(as_recorded(q) for q in FOCUS)"
        meaning = (
            f"MXNet's {sig.quantity} deviates from the oracle, but not as known deviation {sig.deviation} "
            "records (neither the oracle's values nor its model's)"
        )
    elif sig.kind == KNOWN:
        persists = f"{deviating} and all(as_recorded(q) for q in FOCUS)" if model else deviating
        meaning = f"MXNet's {sig.quantity} deviates from the oracle as the deviation's model says"
    else:
        persists = deviating
        meaning = f"MXNet's {sig.quantity} is outside the error bound around the float64 oracle"
    if sig.kind == ERROR:
        difference = "f'MXNet raised {type(error).__name__}' if error is not None else 'MXNet did not raise'"
    else:
        difference = (
            "', '.join(f\"{q} {'DEVIATES from' if deviates(q) else 'agrees with'} the oracle\" for q in FOCUS) "
            "or 'nothing to judge'"
        )
    if model:
        difference = f"({difference})" + (
            " + '; ' + ('matches the recorded deviation' if all(as_recorded(q) for q in FOCUS) and "
            f"{deviating} else 'deviates, but not as recorded' if {deviating} else "
            f"'agrees with the oracle') + ' ({sig.deviation})'"
        )
    lines = [
        "# The call under test (it leaves MXNet's results in `actual`).",
        "error, actual = None, {}",
        "try:",
        textwrap.indent(call, "    "),
        "except Exception as exc:  # MXNet raising is the finding for error signatures",
        "    error, actual = exc, {}",
        "np.set_printoptions(precision=9, linewidth=120)",
        "",
        "# The float64 oracle's values for this call (bnprops/model/oracle.py).",
        f"expected = {{{', '.join(f'{q!r}: {_literal(np.ascontiguousarray(v))}' for q, v in expected.items())}}}",
        *([view.strip("\n"), ""] if view else []),
        "",
        "# bnprops' per-element error bounds for this case (bnprops/model/error_model.py), which elements are judged",
        "# (invstd is undetermined where var + eps is within rounding of 0) and the dtype MXNet returns each in.",
        f"BOUND = {{{', '.join(f'{q!r}: {_literal(np.ascontiguousarray(b))}' for q, b in tol.items())}}}",
        f"JUDGED = {{{', '.join(f'{q!r}: {_literal(m)}' for q, m in judged.items())}}}",
        f"OUT_DTYPE = {dtypes!r}",
        f"FOCUS = {focus!r}",
        "",
        "",
        "def differs(e, a, b, judged, dtype):",
        "    with np.errstate(over='ignore', invalid='ignore'):",
        "        stored = e.astype(dtype).astype(np.float64)  # inf where the exact value overflows the dtype",
        "        finite = np.isfinite(stored) & np.isfinite(a)",
        "        same = (np.isnan(stored) & np.isnan(a)) | (stored == a)",
        "        err = np.where(judged & finite, np.abs(a - e), 0.0)",
        "    return (judged & ~finite & ~same) | (err > b)",
        "",
        "",
        "def deviates(q):",
        "    t = next((t for t, g in gradient_of.items() if g == q), None)",
        "    if t in null:  # requested with 'null': its buffer must keep every bit (an invariant)",
        "        kept = actual.get(null_buffer_of[t])",
        "        return kept is None or np.asarray(kept).tobytes() != null[t].tobytes()",
        "    if q not in actual:",
        "        return True",
        "    a = np.asarray(actual[q], dtype=np.float64)",
        "    if a.shape != expected[q].shape:",
        "        return True",
        "    if q == 'gamma' and not params['fix_gamma'] and np.asarray(actual[q]).tobytes() != gamma.tobytes():",
        "        return True  # a learnable gamma is left as it was, bit for bit (an invariant)",
        "    if q == 'moving_var' and ((a < 0) & (moving_var >= 0)).any():",
        "        return True  # a moving variance is never negative (an invariant)",
        "    return bool(differs(expected[q], a, BOUND[q], JUDGED[q], OUT_DTYPE[q]).any())",
        "",
        "",
        *_as_recorded_lines(model),
        "def show(q, rows=12):",
        "    e, a, b = expected[q].ravel(), np.asarray(actual[q], dtype=np.float64).ravel(), BOUND[q].ravel()",
        "    with np.errstate(invalid='ignore', over='ignore', divide='ignore'):",
        "        ratio = np.where(b > 0, np.abs(a - e) / b, np.where(np.abs(a - e) > 0, np.inf, 0.0))",
        "    ratio = np.where(np.isnan(ratio) & ~(np.isnan(a) & np.isnan(e)), np.inf, ratio)",
        "    status = 'DEVIATES' if deviates(q) else 'agrees'",
        "    if not JUDGED[q].all():",
        "        status += f' ({int((~JUDGED[q]).sum())} elements not judged: var + eps within rounding of 0)'",
        "    print(f'{q}: {status} (MXNet beside the float64 oracle; worst elements first)')",
        "    model = MODEL[q].ravel() if q in globals().get('MODEL', {}) else None  # a known deviation's",
        "    extra = f\" {'model':>24}\" if model is not None else ''",
        "    print(f\"  {'index':>6} {'MXNet':>24} {'oracle':>24} {'|error|':>11} {'bound':>11}{extra}\")",
        "    for i in np.argsort(-np.nan_to_num(ratio, nan=0.0, posinf=1e300), kind='stable')[:rows]:",
        "        extra = f' {model[i]!r:>24}' if model is not None else ''",
        "        print(f'  {i:>6} {a[i]!r:>24} {e[i]!r:>24} {abs(a[i] - e[i]):>11.3g} {b[i]:>11.3g}{extra}')",
        "",
        "",
        *(
            [
                f"# The model of known deviation {sig.deviation} (docs/deviations.md): what MXNet returns",
                "# in its REGION (NaN and inf exactly), and how far from it MXNet may land.",
                f"MODEL = {{{', '.join(f'{q!r}: {_literal(v)}' for q, (_, v, _) in model.items())}}}",
                f"MODEL_TOL = {{{', '.join(f'{q!r}: {_literal(t)}' for q, (_, _, t) in model.items())}}}",
                f"REGION = {{{', '.join(f'{q!r}: {_literal(w)}' for q, (w, _, _) in model.items())}}}",
                "",
            ]
            if model
            else []
        ),
        "def main():",
        "    if error is not None:",
        "        print(f'MXNet raised {type(error).__name__}: {error}')",
        "    else:",
        "        for q in FOCUS + [q for q in expected if q not in FOCUS]:",
        "            if q in actual:",
        "                show(q, rows=12 if q in FOCUS else 3)",
        f"    return verdict({persists}, {difference})",
    ]
    return "\n".join(lines), meaning
