"""The ``bnprops`` command: fuzz campaigns, one-case reproduction, and merging shard reports.

Exit status: 0 when no new deviation was found (or the case agrees), 1 when one was (or the
deviation persists), 2 for a usage error (with a message saying what was expected).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, NoReturn, TypeVar

from bnprops.base.family import MEMBER_ENTRIES
from bnprops.base.selection import parse_choices
from bnprops.model.case import DTYPES, QUANTITIES, Case

if TYPE_CHECKING:
    from bnprops.fuzzing.catalogue import Signature

EXIT_OK, EXIT_FOUND, EXIT_USAGE = 0, 1, 2
T = TypeVar("T")
DEFAULT_OUT = "bnprops-out"
DEFAULT_TIME = 120.0

_EPILOG_FUZZ = """\
budget: --max-examples N stops after N cases, --time S after S seconds; with both, whichever comes
first; with neither, --time %(time)g.  A shrink under way when the time is up may take up to 30 s more.

output (all written atomically into --out):
  report.json, report.md   run parameters, counts, the catalogue (new and known deviations), worst errors
  errors.png, plot-data.npz   error/bound against offset/spread per quantity, new findings apart from known ones
  findings/ID.json         one failing case per signature (bnprops repro findings/ID.json)
  findings/ID.py           its standalone reproducer (mxnet and numpy only; exits 1 while it fails)
  db/, db-index.json       the Hypothesis example database: next run replays these first

exit status: 0 no new deviation, 1 new deviation(s) found (or a worker stopped on an error), 2 usage error.
Ctrl-C stops the campaign and still writes the report of what ran."""


_DESCRIPTION_TIGHTNESS = """\
Two measurements per decade of M, the elements per channel (decade d: 10^d <= M < 10^(d+1);
decade 6: 10^6 <= M <= 2*10^6):

  tightness  seeded cases (conv-like (N, C, H, W) or dense (N, C) shapes with 1-4 channels; ordinary
             data and the exact regime; learnable gamma, training, every gradient written) through
             MXNet's symbolic entry point: per quantity the largest error / bound against the
             deterministic and the probabilistic bound, over the cases whose result is not the
             oracle's to the last bit; and the time MXNet and the judging take per case.
  detection  numpy only, float32 and float64: the share of well-conditioned cases in which the oracle,
             rounded to the output dtype with one quantity scaled by 1.005, is flagged (any mismatch,
             accuracy included)."""

_EPILOG_TIGHTNESS = """\
goals: a median error/bound of at least 0.01 (ordinary data) and 0.05 (exact regime) in every cell, and a planted
0.5% error flagged in at least 99% of well-conditioned cases (sum |terms| <= 10 |sum| at the largest element).

output: the tables on stdout (tightness per regime x quantity x dtype x decade: median, p99 and max of error/bound for
each bound; cost per decade; detection per quantity x dtype x decade), whether the goals hold, and any finding: a
ratio above 1 that no known deviation explains (beyond the deterministic bound: a false alarm or an MXNet bug; beyond
the probabilistic one only: an accuracy finding), with its case saved as JSON (bnprops repro CASE.json).
Progress lines go to stderr.

exit status: 0 no finding, 1 finding(s), 2 usage error."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _number(parse: Callable[[str], T], accept: Callable[[T], bool], what: str) -> Callable[[str], T]:
    """An argparse type: ``parse`` the text, and reject what ``accept`` refuses, saying what was expected."""

    def convert(text: str) -> T:
        try:
            value = parse(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not accept(value):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value

    return convert


_positive_int = _number(int, lambda v: v >= 1, "a positive integer")
_seconds = _number(float, lambda v: v > 0 and math.isfinite(v), "a positive number of seconds")
_seed = _number(int, lambda v: v >= 0, "a non-negative integer seed")


def _shard(text: str) -> tuple[int, int]:
    """'I/N' with 1 <= I <= N -> (I - 1, N)."""
    parts = text.split("/")
    try:
        index, count = (int(p) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected I/N (for example 2/4), got {text!r}") from None
    if not 1 <= index <= count:
        raise argparse.ArgumentTypeError(f"expected I/N with 1 <= I <= N, got {text!r}")
    return index - 1, count


def build_parser() -> argparse.ArgumentParser:
    from bnprops.commands.semantic_variants import MEMBERS
    from bnprops.mx.runners import BACKENDS, RUNNERS

    parser = _Parser(
        prog="bnprops",
        description="Check Apache MXNet's BatchNorm against a float64 oracle: fuzz campaigns, reproducers, reports.",
        epilog="Run 'bnprops COMMAND --help' for a command's options. The test suite itself runs under pytest.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    fuzz = sub.add_parser(
        "fuzz",
        help="run a campaign and write a report with a catalogue of distinct deviations",
        description="Run the property checks (same strategies, runners, oracle and comparator as "
        "'pytest -m property') on many cases, classify failures by signature, shrink one example per "
        "signature, and write a report.",
        epilog=_EPILOG_FUZZ % {"time": DEFAULT_TIME},
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    fuzz.add_argument("--max-examples", type=_positive_int, metavar="N", help="stop after N cases (all workers)")
    fuzz.add_argument("--time", type=_seconds, metavar="SECONDS", help="stop exploring after SECONDS")
    fuzz.add_argument("--seed", type=_seed, default=0, help="campaign seed (default 0); chunk seeds derive from it")
    fuzz.add_argument(
        "--shard",
        type=_shard,
        default=(0, 1),
        metavar="I/N",
        help="run shard I of N (1-based): N shards with one seed run disjoint chunks of one campaign (default 1/1)",
    )
    fuzz.add_argument("--workers", type=_positive_int, default=1, metavar="K", help="worker processes (default 1)")
    fuzz.add_argument("--out", type=Path, default=Path(DEFAULT_OUT), help=f"output folder (default {DEFAULT_OUT})")
    fuzz.add_argument(
        "--baseline",
        type=Path,
        default=None,
        metavar="PATH",
        help="a previous report (report.json or its folder) to say what changed against; default: the report "
        "this run replaces in --out",
    )
    fuzz.add_argument(
        "--entry",
        default="all",
        help=f"entry points, comma-separated, or 'all' (default): {', '.join(RUNNERS)}",
    )
    fuzz.add_argument(
        "--backend",
        default=None,
        help=f"backends, comma-separated, or 'all': {', '.join(BACKENDS)} (default: every backend that can run "
        "here; a named one that cannot is an error)",
    )
    fuzz.add_argument(
        "--dtype", default="all", help=f"dtypes, comma-separated, or 'all' (default): {', '.join(DTYPES)}"
    )
    fuzz.add_argument(
        "--chunk-size", type=_positive_int, default=None, metavar="N", help="cases per Hypothesis run (default 100)"
    )
    fuzz.add_argument(
        "--relations",
        type=_number(int, lambda v: v >= 0, "0 or a positive integer"),
        default=None,
        metavar="N",
        help="also run an exact relation (bnprops/judging/relations.py) on one example in N; 0: none (default 2)",
    )
    fuzz.add_argument(
        "--networks",
        type=_number(int, lambda v: v >= 0, "0 or a positive integer"),
        default=None,
        metavar="N",
        help="also build a producer chain (a network, BatchNorm last: bnprops/mx/producers.py) and judge BatchNorm "
        "in it "
        "on one example in N whose entry point a chain's API expresses (nd, gluon, gluon-hybrid, sym); 0: none "
        "(default 8)",
    )
    fuzz.add_argument(
        "--sequences",
        type=_number(int, lambda v: v >= 0, "0 or a positive integer"),
        default=None,
        metavar="N",
        help="also run a training sequence (steps, second backwards, grad_req and use_global_stats changes, updates, "
        "...: bnprops/search/sequences.py) on one BatchNorm of the example's entry point and backend, "
        "on one example in N, "
        "and check its state after every rule; 0: none (default 8)",
    )
    fuzz.add_argument(
        "--members",
        default="all",
        metavar="LIST",
        help="the BatchNorm family's member entries whose calls examples also run, comma-separated, 'all' "
        f"(default) or 'none': {', '.join(MEMBER_ENTRIES)} (each on the CPU kernels its KERNELS allow)",
    )
    fuzz.add_argument(
        "--member-every",
        type=_number(int, lambda v: v >= 0, "0 or a positive integer"),
        default=None,
        metavar="N",
        help="run the example's member call on one example in N; 0: none (default 8)",
    )
    fuzz.add_argument(
        "--lifecycle",
        type=_number(int, lambda v: v >= 0, "0 or a positive integer"),
        default=None,
        metavar="N",
        help="also run a life-cycle scenario (train/evaluate/train, export and import, float16 cast, symbolic shape "
        "and type inference: bnprops/mx/lifecycle_kernel.py) on one example in N, drawn only there; 0: none "
        "(default 16)",
    )
    fuzz.add_argument("--quiet", action="store_true", help="no progress display")
    fuzz.set_defaults(subparser=fuzz)

    repro = sub.add_parser(
        "repro",
        help="re-run one case (findings/ID.json or a case JSON) and explain the difference",
        description="Re-run one case through MXNet and the oracle and explain every difference. Exit status 1 "
        "while the finding's deviation persists (for a bare case: while it fails in a way no known deviation "
        "explains), 0 when it is gone, 2 for a usage error.",
    )
    repro.add_argument("file", type=Path, metavar="FILE.json", help="a findings/ID.json file or a bnprops case JSON")
    repro.add_argument("--entry", default=None, help="entry point (default: the finding's, else sym)")
    repro.add_argument("--backend", default=None, help="backend (default: the finding's, else onednn)")
    repro.set_defaults(subparser=repro)

    merge = sub.add_parser(
        "merge",
        help="combine the reports of several shards into one",
        description="Merge shard output folders: counts add up, catalogues merge by signature (the smallest "
        "example wins), plots are redrawn. Exit status 1 if the merged catalogue holds new deviations.",
    )
    merge.add_argument("inputs", type=Path, nargs="+", metavar="DIR", help="shard output folders (with report.json)")
    merge.add_argument("--out", type=Path, required=True, help="folder for the merged report")
    merge.add_argument(
        "--baseline",
        type=Path,
        default=None,
        metavar="PATH",
        help="a previous report (report.json or its folder) to say what changed against (default: --out's)",
    )
    merge.set_defaults(subparser=merge)

    versions = sub.add_parser(
        "versions",
        help="the deviation x release matrix: each MXNet release and build in its own environment, "
        "probed, tested and fuzzed",
        description="For each build (the mxnet CPU wheels 1.3.1-1.9.1, mxnet-mkl 1.3-1.6, mxnet-native 1.8), "
        "create (or reuse) an isolated environment under --cache, install it the way it installs on Python 3.11, "
        "and run there, from this source tree: the recorded deviations' reproducers, bnprops's own pytest suite "
        "(--suite) and a fuzz campaign of --time seconds with every family on (relations, networks, sequences, "
        "the BatchNorm family members the build has); write versions.md and versions.json (a matrix of "
        "deviation x build: present / absent / not applicable, the tests and the new findings per build) into "
        "--out. Exit status 1 if a build found a new deviation, failed a test or could not be run.",
    )
    versions.add_argument(
        "--release",
        action="append",
        metavar="V",
        help="a release or build to check (repeatable; 1.5 or 1.5.1 find 1.5.1.post0, mkl-1.5 or "
        "mxnet-mkl==1.5.1 the mxnet-mkl wheel, native-1.8 mxnet-native); default: every build",
    )
    versions.add_argument(
        "--suite",
        choices=("property", "all", "none"),
        default="property",
        help="bnprops's tests to run in each build: the properties (pytest -m property, default), all of them, or none",
    )
    versions.add_argument("--time", type=_seconds, default=90.0, help="fuzz seconds per release (default 90)")
    versions.add_argument(
        "--workers", type=_positive_int, default=1, help="fuzz worker and pytest-xdist processes (default 1)"
    )
    versions.add_argument("--seed", type=_seed, default=0, help="fuzz seed, the same for every release")
    versions.add_argument(
        "--cache", type=Path, default=None, help="folder of the environments (default ~/.cache/bnprops/releases)"
    )
    versions.add_argument("--out", type=Path, default=Path("versions-out"), help="output folder (default versions-out)")
    versions.set_defaults(subparser=versions)

    devs = sub.add_parser(
        "deviations",
        help="list the recorded deviations, or write the deviations page from their declarations",
        description="Every recorded deviation of MXNet's BatchNorm, from the registry (one module per deviation in "
        "bnprops.judging.deviations): one line each (id, kind, releases, summary), or with --markdown the page "
        "docs/deviations.md (a table, then each deviation's conditions, model, evidence and upstream links). The "
        "page is generated; after changing a declaration, regenerate it with  bnprops deviations --markdown --out "
        "docs/deviations.md  (a test fails while the committed page is stale).",
    )
    devs.add_argument("--markdown", action="store_true", help="print the page (markdown) instead of the list")
    devs.add_argument(
        "--out", type=Path, default=None, metavar="PATH", help="write the page to PATH (implies --markdown)"
    )
    devs.add_argument(
        "--check", type=Path, default=None, metavar="PATH", help="exit 1 if the page at PATH is not the rendering"
    )
    devs.set_defaults(subparser=devs)

    doctor = sub.add_parser(
        "doctor",
        help="which MXNet build runs here, and which entry points, backends, families and deviations apply",
        description="Prints the MXNet build bnprops is checking (version, distribution, oneDNN, CUDA/cuDNN, GPUs, "
        "engine), then each entry point, backend, check family and recorded deviation: runs/applies, or skipped "
        "with the reason. bnprops checks whatever mxnet is installed beside it.",
    )
    doctor.set_defaults(subparser=doctor)

    mods = sub.add_parser(
        "modules",
        help="print the package's module map, or write it into the architecture page",
        description="The package's layers, bottom up, and each module with the first sentence of its docstring, as "
        "the architecture page (docs/architecture.md) shows them between its module-map markers. The map is "
        "generated; after adding, moving or redescribing a module, rewrite it with  bnprops modules --write "
        "docs/architecture.md  (a test fails while the committed map is stale).",
    )
    mods.add_argument("--write", type=Path, default=None, metavar="PAGE", help="rewrite the map between PAGE's markers")
    mods.add_argument(
        "--check", type=Path, default=None, metavar="PAGE", help="exit 1 if PAGE's map is not the rendering"
    )
    mods.set_defaults(subparser=mods)

    fam = sub.add_parser(
        "family",
        help="print the BatchNorm family's registered members as a table, or write it into the family page",
        description="One row per member entry of the registry (bnprops.base.family): operator, kernels, judge, "
        "strategy and the deviations scoped to it, as the family page (docs/batchnorm-family.md) shows them between "
        "its markers. After registering a member, rewrite it with  bnprops family --write docs/batchnorm-family.md "
        "(a test fails while the committed table is stale).",
    )
    fam.add_argument(
        "--write", type=Path, default=None, metavar="PAGE", help="rewrite the table between PAGE's markers"
    )
    fam.add_argument(
        "--check", type=Path, default=None, metavar="PAGE", help="exit 1 if PAGE's table is not the rendering"
    )
    fam.set_defaults(subparser=fam)

    bench = sub.add_parser(
        "bench",
        help="measure throughput: the ceiling, Hypothesis's own cost, the property run and the fuzz job",
        description="Prints, from one run, cases/s for: the ceiling (pre-drawn cases through runner, oracle and "
        "comparator without Hypothesis), an empty-body Hypothesis loop, the property body, the stacked property "
        "(up to 16 same-signature cases per MXNet call) and a time-limited fuzz campaign; each also as a ratio "
        "to the ceiling. Then, per decade of M (elements per channel, 10^2 to 10^--top-decade; float32, sym entry "
        "point, executor bound once, fresh cases): MXNet's milliseconds per case and bnprops's judging milliseconds "
        "(check() minus the runner: oracle, bounds, comparison, known deviations) on the reference numpy path and "
        "the fused numba path (bnprops/judging/fused.py) side by side, and their ratios to MXNet's. Then, for "
        "stacked groups of small and mid-size cases (MXNet's results as they are, and one element off): judging "
        "milliseconds per case with each case judged alone, the group path before (the stacked verdict, then each "
        "case alone) and now (one evaluation of the group cut per case), on the reference and the default engine.",
    )
    bench.add_argument("--examples", type=_positive_int, default=1000, help="examples per stage (default 1000)")
    bench.add_argument(
        "--fuzz-seconds", type=float, default=20.0, help="length of the fuzz stage; 0 skips it (default 20)"
    )
    bench.add_argument("--workers", type=_positive_int, default=2, help="fuzz worker processes (default 2)")
    bench.add_argument(
        "--decades-only", action="store_true", help="print only the per-decade table (skip the throughput stages)"
    )
    bench.add_argument(
        "--top-decade",
        type=int,
        default=6,
        choices=range(1, 7),
        metavar="{1..6}",
        help="the per-decade table's largest decade of M, 10^2 to 10^6; 1 skips the table (default 6)",
    )
    bench.add_argument(
        "--groups-only", action="store_true", help="print only the stacked groups' table (skip the rest)"
    )
    bench.add_argument(
        "--reps", type=_positive_int, default=3, help="cases per decade, groups per row, each path (default 3)"
    )
    bench.set_defaults(subparser=bench)

    tight = sub.add_parser(
        "tightness",
        help="measure how sharp the error bounds are on MXNet, and how often they catch a planted 0.5%% error",
        description=_DESCRIPTION_TIGHTNESS,
        epilog=_EPILOG_TIGHTNESS,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    tight.add_argument(
        "--cases-per-cell",
        type=_positive_int,
        default=10,
        metavar="N",
        help="MXNet cases per regime x dtype x decade (default 10)",
    )
    tight.add_argument(
        "--decades",
        default="0-6",
        metavar="D-D",
        help="decades of M: a range, a list or both, e.g. 4-6 or 0,2,5 (default 0-6)",
    )
    tight.add_argument(
        "--backend",
        default=None,
        choices=BACKENDS,
        help="CPU kernel for float32: onednn (default where MXNet has it; float16 and float64 take the native kernel "
        "anyway) or native (a worker process with MXNET_MKLDNN_ENABLED=0; the default on a build without oneDNN)",
    )
    tight.add_argument(
        "--dtype", default="all", help=f"dtypes, comma-separated, or 'all' (default): {', '.join(DTYPES)}"
    )
    tight.add_argument("--regime", default="all", help="value regimes, comma-separated, or 'all': ordinary, exact")
    only = tight.add_mutually_exclusive_group()
    only.add_argument("--detection-only", action="store_true", help="skip MXNet: the detection table alone")
    only.add_argument("--measure-only", action="store_true", help="skip detection: the MXNet tables alone")
    tight.add_argument(
        "--detection-cases",
        type=_positive_int,
        default=200,
        metavar="N",
        help="well-conditioned cases per quantity x dtype x decade for detection (default 200)",
    )
    tight.add_argument(
        "--detection-cases-top",
        type=_positive_int,
        default=50,
        metavar="N",
        help="the same at decade 6, where a case takes about a second to judge (default 50)",
    )
    tight.add_argument("--seed", type=_seed, default=0, help="seed of every case drawn (default 0)")
    tight.add_argument("--json", type=Path, metavar="PATH", help="also write every table and per-case ratio as JSON")
    tight.add_argument(
        "--findings",
        type=Path,
        metavar="DIR",
        help="folder for the case JSON of every ratio above 1 on MXNet (default: PATH-findings/ next to --json)",
    )
    tight.set_defaults(subparser=tight)

    explain = sub.add_parser(
        "explain",
        help="say why your BatchNorm numbers differ from MXNet's: which semantics, known deviation, or a new one",
        description="Run the call as you made it through MXNet and the oracle, then search the semantics users mix "
        "up (fix_gamma's default, gamma as the forward wrote it, eps's defaults, biased variance, training vs "
        "inference statistics, momentum's convention, output_mean_var's third output, the loss head's scale), "
        "alone and in combinations of two and three, for the one that reproduces your numbers within the "
        "digits you gave. Prints, per quantity, whether it agrees and what explains a difference, with the fix.",
        epilog="example (the forum thread in ../shared/seed/):\n"
        "  bnprops explain --entry sym --x '[[0.18527887],[-1.23678724]]' --target '[[2.57767984],[-1.55019435]]' \\\n"
        "      --loss l2 --gamma-read-back --expect dbeta=-1.0274856 --expect dgamma=-2.127873\n\n"
        "parameters you leave out take MXNet's defaults for the entry point (operator: eps 1e-3, fix_gamma true; "
        "gluon: epsilon 1e-5, scale true); arrays you leave out are what simple_bind gives (sym: zeros) or gluon's "
        "initialisers (gamma 1, beta 0, moving_mean 0, moving_var 1).\n\n"
        "exit status: 0 every number agrees or is explained (semantics or a known deviation), 1 a number is "
        "unexplained (possibly a new MXNet deviation: a reproducer is written), 2 usage error.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    explain.add_argument("--case", type=Path, metavar="FILE.json", help="the call as a bnprops case JSON")
    for name, what in (
        ("x", "the data, a JSON literal such as '[[0.185],[-1.237]]'"),
        ("gamma", "gamma as initialised (a number or a JSON list)"),
        ("beta", "beta"),
        ("moving-mean", "the moving mean before the call"),
        ("moving-var", "the moving variance before the call"),
        ("dy", "the head gradient (or give --target)"),
        ("target", "the regression target the head gradient came from (with --loss)"),
    ):
        explain.add_argument(f"--{name}", metavar="JSON", help=what)
    explain.add_argument(
        "--loss",
        choices=("l2", "l1", "logistic"),
        default=None,
        help="the head on the target: l2 LinearRegressionOutput (default), l1 MAERegressionOutput, logistic "
        "LogisticRegressionOutput",
    )
    explain.add_argument("--entry", default="sym", choices=RUNNERS, help="how you called BatchNorm (default sym)")
    explain.add_argument(
        "--member",
        default="batchnorm",
        choices=MEMBERS,
        help="the BatchNorm family member you called: batchnorm (default), sync (SyncBatchNorm), relu "
        "(BatchNormWithReLU), folded (after optimize_for), onnx (the exported model)",
    )
    explain.add_argument(
        "--devices",
        type=_number(int, lambda v: v >= 1, "a whole number of at least 1"),
        default=1,
        help="data-parallel devices your batch was split over (equal slices along axis 0; default 1)",
    )
    explain.add_argument("--backend", default=None, choices=BACKENDS, help="CPU kernel (default: this process's)")
    explain.add_argument("--dtype", default="float32", choices=DTYPES, help="dtype of x (default float32)")
    truth = _number(_truth, lambda v: True, "true or false")
    explain.add_argument("--fix-gamma", type=truth, metavar="BOOL", help="fix_gamma as you passed it (operator)")
    explain.add_argument("--scale", type=truth, metavar="BOOL", help="gluon's scale (fix_gamma = not scale)")
    explain.add_argument("--center", type=truth, metavar="BOOL", help="gluon's center")
    explain.add_argument("--eps", type=_number(float, math.isfinite, "a number"), help="eps (epsilon) as you passed it")
    explain.add_argument("--momentum", type=_number(float, math.isfinite, "a number"), help="momentum as you passed it")
    explain.add_argument("--use-global-stats", type=truth, metavar="BOOL", help="use_global_stats as you passed it")
    explain.add_argument("--axis", type=int, default=None, help="the channel axis as you passed it (default 1)")
    explain.add_argument("--inference", action="store_true", help="the forward ran in inference mode (is_train=False)")
    explain.add_argument("--output-mean-var", action="store_true", help="you passed output_mean_var=True")
    explain.add_argument(
        "--gamma-read-back",
        action="store_true",
        help="your gamma is what you read from the executor after the forward (fix_gamma=True writes 1.0 there)",
    )
    explain.add_argument(
        "--expect",
        action="append",
        required=True,
        metavar="Q=VALUE",
        help=f"a number you expected, as you printed it (a value or a JSON list); repeat. Q is one of: "
        f"{', '.join(QUANTITIES)}",
    )
    explain.add_argument("--json", action="store_true", help="print the structured result as JSON")
    explain.add_argument(
        "--reproducer",
        type=Path,
        default=None,
        metavar="PATH",
        help="where an unexplained case's reproducer script goes (default ./bnprops-explain/explain-ID.py)",
    )
    explain.set_defaults(subparser=explain)
    return parser


class Progress:
    """Cases run, cases/s and failures so far, on stderr: one rewritten line on a TTY, plain lines otherwise."""

    def __init__(self, stream: IO[str], *, interval: float | None = None) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self.interval = interval if interval is not None else (0.2 if self.tty else 10.0)
        self.start = time.monotonic()
        self.last = -math.inf
        self.state = (0, 0, 0, 0)

    def __call__(self, cases: int, failed: int, known: int, signatures: int) -> None:
        self.state = (cases, failed, known, signatures)
        now = time.monotonic()
        if now - self.last >= self.interval:
            self.last = now
            self.show()

    def line(self) -> str:
        cases, failed, known, signatures = self.state
        elapsed = time.monotonic() - self.start
        rate = cases / elapsed if elapsed > 0 else 0.0
        return (
            f"[{elapsed:7.1f} s] {cases} cases, {rate:.1f} cases/s, failures so far: {failed} new, "
            f"{known} known ({signatures} signatures)"
        )

    def show(self) -> None:
        if self.tty:
            self.stream.write("\r\033[K" + self.line())
        else:
            self.stream.write(self.line() + "\n")
        self.stream.flush()

    def close(self) -> None:
        self.show()
        if self.tty:
            self.stream.write("\n")
        self.stream.flush()


def _usage(parser: argparse.ArgumentParser, message: str) -> NoReturn:
    parser.error(message)


def _fuzz(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from bnprops.fuzzing import campaign, plan
    from bnprops.mx.runners import BACKENDS, RUNNERS

    try:
        entries = parse_choices(args.entry, allowed=tuple(RUNNERS), what="entry point")
        backends = parse_choices(args.backend or "all", allowed=BACKENDS, what="backend")
        dtypes = parse_choices(args.dtype, allowed=DTYPES, what="dtype")
        members = () if args.members == "none" else parse_choices(args.members, allowed=MEMBER_ENTRIES, what="member")
    except ValueError as exc:
        _usage(parser, str(exc))
    if args.out.exists() and not args.out.is_dir():
        _usage(parser, f"--out {args.out} exists and is not a folder")
    time_limit = args.time if (args.time is not None or args.max_examples is not None) else DEFAULT_TIME
    try:
        config = plan.CampaignConfig(
            out=args.out,
            baseline=args.baseline,
            entries=entries,
            backends=backends,
            dtypes=dtypes,
            max_examples=args.max_examples,
            time_limit=time_limit,
            seed=args.seed,
            shard_index=args.shard[0],
            shard_count=args.shard[1],
            workers=args.workers,
            chunk_size=args.chunk_size or plan.DEFAULT_CHUNK_SIZE,
            backends_explicit=args.backend is not None,
            **({} if args.relations is None else {"relation_every": args.relations}),
            **({} if args.networks is None else {"network_every": args.networks}),
            **({} if args.sequences is None else {"sequence_every": args.sequences}),
            **({} if args.member_every is None else {"member_every": args.member_every}),
            **({} if args.lifecycle is None else {"lifecycle_every": args.lifecycle}),
            members=members,
        )
        result = campaign.run(config, progress=None if args.quiet else Progress(sys.stderr))
    except plan.UsageError as exc:
        _usage(parser, str(exc))
    print(result.summary())
    for note in result.notes:
        print(f"note: {note}", file=sys.stderr)
    print(f"report: {config.out / 'report.md'} (machine-readable: {config.out / 'report.json'})")
    return EXIT_FOUND if result.new or result.crashed else EXIT_OK


def _repro(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from bnprops.fuzzing.catalogue import classify, classify_error
    from bnprops.fuzzing.plan import kernel_of
    from bnprops.fuzzing.reproducer import load_finding
    from bnprops.judging.checks import check
    from bnprops.mx.backends import runner_for, same_kernel_backend
    from bnprops.mx.runners import BackendUnavailable

    try:
        case, sig, entry, backend = load_finding(args.file)
    except ValueError as exc:
        _usage(parser, str(exc))
    if sig is not None and sig.kind == "relation":  # catalogue.RELATION: its two calls again, no oracle
        return _repro_relation(args, parser, case, sig)
    if sig is not None and sig.regime == "in-network":  # network_findings.REGIME: the chain again
        return _repro_network(args, parser, sig)
    if sig is not None and sig.regime == "sequence":  # sequence_findings.REGIME: the rules again
        return _repro_sequence(args, parser, sig)
    if sig is not None and sig.regime == "life-cycle":  # lifecycle_findings.REGIME: the scenario again
        return _repro_lifecycle(args, parser, sig)
    entry = args.entry or entry or "sym"
    backend = args.backend or backend or "onednn"
    if entry in MEMBER_ENTRIES:  # a family member's call: its own runner and judge
        return _repro_member(parser, case, sig, entry, backend)
    try:
        # A finding from oneDNN's backend replays on a build without oneDNN where its kernel was the native one.
        run_on = same_kernel_backend(case, backend, entry=entry)
        runner = runner_for(entry, run_on)
    except (ValueError, NotImplementedError, BackendUnavailable) as exc:
        _usage(parser, str(exc))
    kernel = kernel_of(case, backend)
    print(f"case: {case.describe()}")
    print(f"run through entry point {entry!r} on backend {backend!r} (kernel {kernel})")
    if run_on != backend:
        print(f"this MXNet has no {backend} backend: ran on {run_on}, whose kernel for this case is the same")
    if sig is not None:
        print(f"finding: {sig.describe()}")
    try:
        outcome = check(case, runner=runner, entry=entry, kernel=kernel, quantities=QUANTITIES)
    except Exception as exc:
        print(f"MXNet raised {type(exc).__name__}: {exc}")
        error_sig = classify_error(case, exc, entry=entry, backend=backend)
        return EXIT_FOUND if sig is None or sig == error_sig else EXIT_OK
    print("\nerror/bound per quantity (above 1 fails):")
    for q in QUANTITIES:
        if q in outcome.verdict.ratios:
            failed = q in outcome.verdict.failed_quantities
            print(f"  {q:<12} {outcome.verdict.ratios[q]:>11.3g}  {'FAILS' if failed else 'ok'}")
    for kd, quantities in outcome.explained:
        print(f"\n{', '.join(sorted(quantities))} matches the recorded deviation {kd.id}: {kd.summary}")
        print(f"  conditions: {kd.conditions}\n  model: {kd.model}")
    for m in outcome.unexpected:
        if m.kind == "unrecorded":
            print(f"\n{m.quantity} deviates, but not as recorded by known deviation {m.deviation}")
    if not outcome.ok:
        print()
        print(outcome.message())
    sigs = classify(outcome, backend=backend)
    persists = (sig in sigs) if sig is not None else not outcome.ok
    if sig is not None:
        now_known = not persists and any(sig.quantity in quantities for _, quantities in outcome.explained)
        state = "persists" if persists else ("is now a known deviation" if now_known else "is gone")
        print(f"\nthe finding's deviation {state} ({sig.ident})")
    else:
        print(f"\n{'new deviation: not explained by a recorded deviation' if persists else 'no new deviation'}")
    return EXIT_FOUND if persists else EXIT_OK


def _repro_lifecycle(args: argparse.Namespace, parser: argparse.ArgumentParser, sig: Signature) -> int:
    """A life-cycle finding: run its scenario again, judge it, say whether the finding persists."""
    from bnprops.fuzzing import lifecycle_findings

    try:
        scenario = lifecycle_findings.load_scenario(args.file)
    except ValueError as exc:
        _usage(parser, str(exc))
    if scenario is None:
        _usage(parser, f"{args.file} keeps no life-cycle scenario")
    persists = lifecycle_findings.replay(scenario, sig)
    print(f"\nthe finding's deviation {'persists' if persists else 'is gone'} ({sig.ident})")
    return EXIT_FOUND if persists else EXIT_OK


def _repro_member(parser: argparse.ArgumentParser, case: Case, sig: Signature | None, entry: str, backend: str) -> int:
    """A family member's call: run it again, judge it with the member's judge, say whether the finding persists."""
    from bnprops.fuzzing.member_findings import check_member
    from bnprops.mx.backends import runner_for

    try:
        runner = runner_for(entry, backend)
    except (ValueError, NotImplementedError) as exc:
        _usage(parser, str(exc))
    print(f"case: {case.describe()}\nrun through member entry {entry!r} on backend {backend!r}")
    checked = check_member((entry, backend, case), runner=runner)
    print(checked.message or f"{entry}: matches the oracle")
    persists = sig in checked.signatures if sig is not None else checked.result in ("failed", "error")
    if sig is not None:
        print(f"\nthe finding's deviation {'persists' if persists else 'is gone'} ({sig.ident})")
    return EXIT_FOUND if persists else EXIT_OK


def _repro_relation(args: argparse.Namespace, parser: argparse.ArgumentParser, case: Case, sig: Signature) -> int:
    """A broken exact relation: run its two calls again and say whether the relation still breaks."""
    from bnprops.fuzzing.relation_findings import load_draw, replay
    from bnprops.mx.backends import runner_for

    entry, backend = args.entry or sig.entry, args.backend or sig.backend
    try:
        draw = load_draw(args.file)
        runner = runner_for(entry, backend)
    except (ValueError, NotImplementedError) as exc:
        _usage(parser, str(exc))
    print(f"case: {case.describe()}")
    print(f"run through entry point {entry!r} on backend {backend!r}: relation {draw.relation!r}, choice {draw.choice}")
    print(f"finding: {sig.describe()}\n")
    persists = replay(case, sig, draw, runner=runner, entry=entry, backend=backend)
    print(f"\nthe finding's relation {'still breaks' if persists else 'holds now'} ({sig.ident})")
    return EXIT_FOUND if persists else EXIT_OK


def _repro_network(args: argparse.Namespace, parser: argparse.ArgumentParser, sig: Signature) -> int:
    """BatchNorm inside a network: build the finding's chain again and say whether its finding still shows."""
    from bnprops.fuzzing import network_findings

    return _repro_example(args, parser, sig, network_findings, what="chain")


def _repro_sequence(args: argparse.Namespace, parser: argparse.ArgumentParser, sig: Signature) -> int:
    """A training sequence: run its rules again and say whether its finding still shows."""
    from bnprops.fuzzing import sequence_findings

    return _repro_example(args, parser, sig, sequence_findings, what="sequence")


def _repro_example(
    args: argparse.Namespace, parser: argparse.ArgumentParser, sig: Signature, findings: Any, *, what: str
) -> int:
    """Replay a finding whose example is a chain or a sequence (``findings``: its *_findings module)."""
    from bnprops.judging.in_network import close_workers

    entry, backend = args.entry or sig.entry, args.backend or sig.backend
    try:
        example = findings.load_chain(args.file) if what == "chain" else findings.load_sequence(args.file)
    except ValueError as exc:
        _usage(parser, str(exc))
    if example is None:
        _usage(parser, f"{args.file} is a {what} finding without its {what}")
    if not findings.applies(entry, backend):
        _usage(parser, f"a {what} cannot run through entry point {entry!r} on backend {backend!r}")
    print(f"run through entry point {entry!r} on backend {backend!r}")
    print(f"finding: {sig.describe()}\n")
    try:
        persists = findings.replay(example, sig, entry=entry, backend=backend)
    finally:
        close_workers()
    state = "persists" if persists else "is gone"
    if sig.deviation:
        state = "still matches the recorded deviation" if persists else "no longer shows the recorded deviation"
    print(f"\nthe finding {state} ({sig.ident})")
    return EXIT_FOUND if persists else EXIT_OK


def _merge(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from bnprops.fuzzing.report import folder, merge

    reports = []
    for path in args.inputs:
        try:
            reports.append(folder.load(path))
        except ValueError as exc:
            _usage(parser, str(exc))
    merged = merge.merge(reports, sources=[str(p) for p in args.inputs])
    try:
        folder.write(merged, args.out, baseline=args.baseline)
    except ValueError as exc:
        _usage(parser, str(exc))
    print(merged.summary())
    print(f"merged report: {args.out / 'report.md'} (machine-readable: {args.out / 'report.json'})")
    return EXIT_FOUND if merged.new else EXIT_OK


def _bench(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from bnprops.commands import bench

    if args.fuzz_seconds < 0:
        _usage(parser, "--fuzz-seconds must be 0 or more")
    if not args.decades_only and not args.groups_only:
        print(
            f"bnprops bench: {args.examples} examples per stage, fuzz {args.fuzz_seconds:g} s on {args.workers} workers"
        )
        stages = bench.run(examples=args.examples, fuzz_seconds=args.fuzz_seconds, workers=args.workers)
        print(bench.format_table(stages))
    if args.top_decade >= 2 and not args.groups_only:
        print(f"\njudging against MXNet per decade of M, 10^2 to 10^{args.top_decade}, {args.reps} cases each:")
        print(bench.format_decades(bench.decades(top=args.top_decade, reps=args.reps)))
    if not args.decades_only:
        print(f"\njudging stacked groups of {bench.GROUP_SIZE} cases, {args.reps} groups a row:")
        print(bench.format_groups(bench.groups(reps=args.reps)))
    return EXIT_OK


def _tightness(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from bnprops.commands import tightness

    try:
        decades = tightness.parse_decades(args.decades)
        dtypes = parse_choices(args.dtype, allowed=DTYPES, what="dtype")
        regimes = parse_choices(args.regime, allowed=tightness.REGIMES, what="regime")
    except ValueError as exc:
        _usage(parser, str(exc))
    detection_dtypes = tuple(d for d in dtypes if d in tightness.DETECTION_DTYPES)
    if args.detection_only and not detection_dtypes:
        _usage(parser, f"detection covers {' and '.join(tightness.DETECTION_DTYPES)}; --dtype {args.dtype} has neither")
    if args.json is not None and args.json.is_dir():
        _usage(parser, f"--json {args.json} is a folder; give a file name")
    if args.findings is not None and args.findings.exists() and not args.findings.is_dir():
        _usage(parser, f"--findings {args.findings} exists and is not a folder")
    findings_dir = args.findings
    if findings_dir is None and args.json is not None:
        findings_dir = args.json.with_name(args.json.stem + "-findings")
    start = time.monotonic()

    def progress(line: str) -> None:
        print(f"[{time.monotonic() - start:7.1f} s] {line}", file=sys.stderr, flush=True)

    from bnprops.mx.runners import IN_PROCESS_BACKEND, BackendUnavailable

    try:
        found = tightness.run(
            decades=decades,
            dtypes=dtypes,
            regimes=regimes,
            backend=args.backend or IN_PROCESS_BACKEND,
            cases_per_cell=args.cases_per_cell,
            detection_cases=args.detection_cases,
            detection_cases_top=args.detection_cases_top,
            seed=args.seed,
            on_mxnet=not args.detection_only,
            detect=not args.measure_only,
            json_path=args.json,
            findings_dir=findings_dir,
            progress=progress,
        )
    except BackendUnavailable as exc:
        _usage(parser, str(exc))
    print(f"\n{time.monotonic() - start:.1f} s in all")
    return EXIT_FOUND if found else EXIT_OK


def _truth(text: str) -> bool:
    """'true'/'false' (any case), also 1/0 and yes/no: how a flag was written in the user's call."""
    value = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}.get(text.strip().lower())
    if value is None:
        raise ValueError(text)
    return value


def _explain(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    import json

    from bnprops.commands.explanation import explain
    from bnprops.mx.runners import BackendUnavailable

    expected: dict[str, str] = {}
    for item in args.expect:
        quantity, sep, value = item.partition("=")
        if not sep or not value.strip():
            _usage(parser, f"--expect {item!r}: write QUANTITY=VALUE, e.g. dgamma=-2.127873")
        if quantity.strip() in expected:
            _usage(parser, f"--expect gives {quantity.strip()} twice")
        expected[quantity.strip()] = value.strip()
    case = None
    if args.case is not None:
        try:
            case = Case.from_json(args.case.read_text())
        except OSError as exc:
            _usage(parser, f"--case {args.case}: {exc.strerror or exc}")
        except (ValueError, KeyError, TypeError) as exc:
            _usage(parser, f"--case {args.case} is not a bnprops case: {exc}")
    try:
        result = explain(
            expected=expected,
            entry=args.entry,
            case=case,
            x=args.x,
            gamma=args.gamma,
            beta=args.beta,
            moving_mean=args.moving_mean,
            moving_var=args.moving_var,
            dy=args.dy,
            target=args.target,
            loss=args.loss,
            dtype=args.dtype,
            axis=args.axis,
            eps=args.eps,
            momentum=args.momentum,
            fix_gamma=args.fix_gamma,
            use_global_stats=args.use_global_stats,
            scale=args.scale,
            center=args.center,
            is_train=False if args.inference else None,
            output_mean_var=True if args.output_mean_var else None,
            gamma_read_back=args.gamma_read_back,
            backend=args.backend,
            reproducer=args.reproducer,
            member=args.member,
            devices=args.devices,
        )
    except (ValueError, BackendUnavailable) as exc:
        _usage(parser, str(exc))
    print(json.dumps(result.to_dict(), indent=1) if args.json else result.format())
    return EXIT_FOUND if result.unexplained else EXIT_OK


def _versions(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from bnprops.commands import versions
    from bnprops.mx import releases

    try:
        chosen = releases.requested(args.release)
    except ValueError as exc:
        _usage(parser, str(exc))
    if args.out.exists() and not args.out.is_dir():
        _usage(parser, f"--out {args.out} exists and is not a folder")
    cache = args.cache if args.cache is not None else releases.default_cache()
    print(
        f"bnprops versions: {', '.join(chosen)}; pytest: {args.suite}; {args.time:g} s of fuzzing each; "
        f"environments in {cache}"
    )
    results = versions.run(
        chosen,
        cache=cache,
        out=args.out,
        time_s=args.time,
        workers=args.workers,
        seed=args.seed,
        suite=args.suite,
        progress=lambda line: print(line, flush=True),
    )
    print(f"matrix: {args.out / 'versions.md'} and {args.out / 'versions.json'}")
    return versions.exit_status(results)


def _deviations(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from bnprops.base import atomic
    from bnprops.judging import deviation_table
    from bnprops.judging.deviations import ALL

    page = deviation_table.markdown()
    if args.check is not None:
        if args.check.is_file() and args.check.read_text() == page:
            print(f"{args.check} is up to date")
            return EXIT_OK
        print(f"{args.check} is stale: regenerate it with  {deviation_table.REGENERATE}", file=sys.stderr)
        return EXIT_FOUND
    if args.out is not None:
        atomic.write_text(args.out, page)
        print(f"wrote {args.out} ({len(ALL)} deviations)")
    elif args.markdown:
        sys.stdout.write(page)
    else:
        for d in ALL:
            print(f"{d.id:<56}{d.KIND:<13}{d.releases.describe():<18}{d.summary}")
    return EXIT_OK


def _doctor(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from bnprops.commands import doctor

    print("\n".join(doctor.report()))
    return EXIT_OK


def _family(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from bnprops.commands import family_table

    return _generated_section(args, parser, family_table, what="family table", page_is="the family page")


def _modules(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from bnprops.commands import module_map

    return _generated_section(args, parser, module_map, what="module map", page_is="the architecture page")


def _generated_section(
    args: argparse.Namespace, parser: argparse.ArgumentParser, renderer: Any, *, what: str, page_is: str
) -> int:
    """Print, --check or --write a docs page's section generated from the code (``renderer``: markdown(),
    rewritten(text), PAGE, REGENERATE)."""
    from bnprops.base import atomic

    page = args.write or args.check
    if page is None:
        sys.stdout.write(renderer.markdown() + "\n")
        return EXIT_OK
    if not page.is_file():
        parser.error(f"{page} does not exist: give {page_is} ({renderer.PAGE})")
    text = page.read_text()
    try:
        fresh = renderer.rewritten(text)
    except ValueError as exc:
        parser.error(f"{page}: {exc}")
    if args.check is not None:
        if fresh == text:
            print(f"{page}'s {what} is up to date")
            return EXIT_OK
        print(f"{page}'s {what} is stale: rewrite it with  {renderer.REGENERATE}", file=sys.stderr)
        return EXIT_FOUND
    atomic.write_text(page, fresh)
    print(f"wrote the {what} into {page}")
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return _main(argv)
    except ModuleNotFoundError as exc:
        if exc.name != "mxnet":
            raise
        from bnprops.commands.doctor import INSTALL_HINT

        print(f"bnprops: no MXNet here ({exc}).\n{INSTALL_HINT}", file=sys.stderr)
        return EXIT_USAGE


def _main(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    handlers = {
        "fuzz": _fuzz,
        "repro": _repro,
        "merge": _merge,
        "bench": _bench,
        "tightness": _tightness,
        "explain": _explain,
        "versions": _versions,
        "deviations": _deviations,
        "modules": _modules,
        "family": _family,
        "doctor": _doctor,
    }
    result: int = handlers[args.command](args, args.subparser)
    return result


if __name__ == "__main__":
    sys.exit(main())
