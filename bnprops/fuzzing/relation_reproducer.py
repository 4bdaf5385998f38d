"""The standalone reproducer of a relation finding: both calls and their bit-for-bit comparison, mxnet and numpy only.

The script makes the original call and the transformed one through the finding's entry point and
backend (bnprops.mx.snippets.snippet, each in a function of its own) and compares their results as
relations.compare_scaled does: per quantity, the second call's array must be the first call's (its
channels reordered, for permute-channels) times 2^shift, bit for bit, NaN for NaN; with a shift,
elements whose last rounding is subnormal or overflows are not judged. By the shared contract
(bnprops.base.reproduction) it exits 1 while the finding's quantity breaks the relation (or, for a
finding that is an exception, while the second call raises), 0 once the relation holds there.
``main(first_call, second_call)`` takes other calls, so that a test can run the very same comparison
on a planted subject's results.
"""

from __future__ import annotations

import textwrap

import numpy as np

from bnprops.base import reproduction
from bnprops.fuzzing.catalogue import Entry
from bnprops.fuzzing.relation_findings import draw_of
from bnprops.judging.relations import RELATIONS
from bnprops.model.case import QUANTITIES, Case
from bnprops.mx.runners import adapt
from bnprops.mx.snippets import snippet

#: The snippet's last lines print every array; the script prints its own comparison instead.
_SNIPPET_TAIL = "\nfor q, value in actual.items():\n    print(q, value)"

_COMPARISON = '''
def compare(q, first, second):
    """(the relation's value for the second call's q, the mask of judged elements that break it); None if the
    arrays do not even match in shape and dtype. As bnprops.judging.relations.compare_scaled judges."""
    a, b = np.asarray(first), np.asarray(second)
    shift, prior = SHIFT.get(q, 0), PRIOR.get(q)
    if ORDER is not None:
        a = np.take(a, ORDER, axis=AXIS.get(q, 0))
        prior = None if prior is None else np.take(prior, ORDER, axis=AXIS.get(q, 0))
    if a.shape != b.shape or a.dtype != b.dtype:
        return None
    info = np.finfo(a.dtype)
    normal_min, largest, unit = float(info.tiny), float(info.max), float(info.eps) / 2
    zone = 2 * normal_min
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    with np.errstate(over='ignore', invalid='ignore'):
        scaled = np.ldexp(a64, shift)
        expected = scaled.astype(a.dtype)
    judged = np.ones(a.shape, dtype=bool)
    finite = np.isfinite(a64)
    if shift != 0:
        # Rounding commutes with 2^shift only in the normal range: subnormal and overflowing results are not judged.
        tiny_a = finite & (a64 != 0) & (np.abs(a64) < zone)
        tiny_e = finite & (scaled != 0) & (np.abs(scaled) < zone)
        over = finite & (np.abs(scaled) > largest)
        under = finite & (a64 == 0) & (b64 != 0) & (np.abs(b64) < zone * max(1.0, 2.0**shift))
        with np.errstate(over='ignore'):
            back = np.abs(np.ldexp(b64, -shift))
        overflowed = np.isinf(a64) & np.isfinite(b64) & (np.sign(a64) == np.sign(b64))
        overflowed &= back >= largest * (1 - 2 * unit)
        judged &= ~(tiny_a | tiny_e | over | under | overflowed)
    if prior is not None and shift != 0:
        # grad_req 'add': the gradient added to the buffer (out - prior) must itself be normal.
        p64 = prior.astype(np.float64)
        with np.errstate(over='ignore', invalid='ignore'):
            ulp = np.spacing(np.abs(a).astype(a.dtype)).astype(np.float64)
            fresh = np.abs(a64 - p64) - ulp
            top = (np.abs(a64 - p64) + ulp) * max(1.0, 2.0**shift)
        need = 2 * normal_min * max(1.0, 2.0**-shift)
        judged &= ~(finite & (p64 != 0) & ~((fresh >= need) & (top <= largest / 2)))
    bits = 'u%d' % a.dtype.itemsize
    same = (expected.view(bits) == b.view(bits)) | (np.isnan(a64) & np.isnan(b64))
    return expected, judged & ~same


def bits(value):
    return '0x%0*x' % (value.dtype.itemsize * 2, int(value.view('u%d' % value.dtype.itemsize)))


def main(first_call=first_call, second_call=second_call):
    """Both calls, compared quantity by quantity; the contract's verdict on the finding's quantity."""
    first = first_call()
    try:
        second = second_call()
    except Exception as exc:
        raised = f'the second call raised {type(exc).__name__}: {exc}'
        if FOCUS is None:
            return verdict(True, raised + ': relation still broken')
        return verdict(False, raised + ', but not what this finding is')
    broken = set()
    for q in QUANTITIES:
        if q not in first and q not in second:
            continue
        if (q in first) != (q in second):
            print(f"{q}: BREAKS ({'the second' if q in first else 'the first'} call did not return it)")
            broken.add(q)
            continue
        found = compare(q, first[q], second[q])
        if found is None:
            print(f'{q}: BREAKS (shape/dtype {second[q].dtype}{second[q].shape}, expected {first[q].dtype}'
                  f'{first[q].shape})')
            broken.add(q)
            continue
        expected, wrong = found
        if not wrong.any():
            print(f'{q}: holds')
            continue
        broken.add(q)
        i = tuple(int(j) for j in np.argwhere(wrong)[0])
        e, a = expected[i], np.asarray(second[q])[i]
        print(f'{q}: BREAKS in {int(wrong.sum())} of {wrong.size} elements; first at index {i}:')
        print(f'    the relation makes it {e!r} ({bits(e)}), the second call gave {a!r} ({bits(a)})')
    if FOCUS is None:
        return verdict(False, 'the second call no longer raises: the finding is gone')
    if FOCUS in broken:
        return verdict(True, f'{FOCUS} breaks the relation: relation still broken')
    return verdict(False, f'{FOCUS} keeps the relation here now: the finding is gone')
'''


def _call(case: Case, *, name: str, what: str, entry: str, backend: str) -> str:
    body = snippet(case, entry=entry, backend=backend)
    if body.endswith(_SNIPPET_TAIL):
        body = body[: -len(_SNIPPET_TAIL)]
    return f'def {name}():\n    """{what}"""\n{textwrap.indent(body, "    ")}\n    return actual\n'


def script(entry: Entry) -> str:
    """The standalone reproducer for a relation finding (kind "relation")."""
    sig, draw = entry.signature, draw_of(entry)
    relation = RELATIONS[draw.relation]
    case = adapt(sig.entry, entry.case)
    params = relation.parameters(case, draw.choice)
    if params is None:
        raise ValueError(f"{sig.ident}: relation {draw.relation!r} has no instance for its case any more")
    second = relation.transform(case, params)
    expected = relation.expectation(case, params)
    what = sig.quantity.partition(":")[2]
    focus = what if what in QUANTITIES else None
    meaning = (
        f"the second call's {focus} is not what the relation makes of the first call's, bit for bit"
        if focus
        else f"the second call raises ({what})"
    )
    order = None if expected.order is None else list(expected.order)
    axes = {q: expected.axis(q) for q in QUANTITIES}
    lines = [
        "# The calls below spell non-finite values as nan and inf.",
        "nan, inf = float('nan'), float('inf')",
        "",
        "",
        _call(case, name="first_call", what="The original call: MXNet's results by quantity.", **_where(entry)),
        "",
        _call(second, name="second_call", what=f"The transformed call ({params}).", **_where(entry)),
        "",
        "# What the relation makes of the first call's results: per quantity, the first call's array (its channels",
        "# put in ORDER along AXIS[q], for permute-channels) times 2**SHIFT[q], bit for bit. PRIOR: the first call's",
        "# gradient buffers requested with 'add'.",
        f"SHIFT = {dict(expected.shifts)!r}",
        f"ORDER = {order!r}",
        f"AXIS = {axes!r}",
        f"PRIOR = {{{', '.join(f'{q!r}: {_array(p)}' for q, p in expected.priors.items())}}}",
        f"QUANTITIES = {list(QUANTITIES)!r}",
        f"FOCUS = {focus!r}  # the quantity whose break is the finding (None: the second call raising is)",
        _COMPARISON,
    ]
    about = [
        sig.describe(),
        f"Relation {relation.name}: {relation.statement}",
        f"Parameters: {params} (parameter choice {draw.choice}); example {entry.reduction}",
        f"First call:  {case.describe()}",
        f"Second call: {second.describe()}",
        "",
        "Makes both calls and compares them bit for bit, no oracle involved.",
    ]
    return reproduction.script(
        kind=sig.kind,
        ident=sig.ident,
        title="two BatchNorm calls an exact relation ties",
        about=about,
        persists=meaning,
        body="\n".join(lines),
    )


def _array(a: np.ndarray) -> str:
    """Python source for ``a``, bit for bit: float64 reprs are exact and cast back to the original dtype."""
    return f"np.array({a.astype(np.float64).tolist()!r}, dtype=np.float64).astype({str(a.dtype)!r})"


def _where(entry: Entry) -> dict[str, str]:
    return {"entry": entry.signature.entry, "backend": entry.signature.backend}
