"""The ``bnprops`` command line's grammar: every subcommand's arguments, their types and defaults, and --help's
texts; the commands themselves run in the cli module.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn, TypeVar

from bnprops.base.family import MEMBER_ENTRIES
from bnprops.model.case import DTYPES, QUANTITIES

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
#: "One example in N" (0: none).
_every = _number(int, lambda v: v >= 0, "0 or a positive integer")


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
        type=_every,
        default=None,
        metavar="N",
        help="also run an exact relation (bnprops/judging/relations.py) on one example in N; 0: none (default 2)",
    )
    fuzz.add_argument(
        "--networks",
        type=_every,
        default=None,
        metavar="N",
        help="also build a producer chain (a network, BatchNorm last: bnprops/mx/producers.py) and judge BatchNorm "
        "in it "
        "on one example in N whose entry point a chain's API expresses (nd, gluon, gluon-hybrid, sym); 0: none "
        "(default 8)",
    )
    fuzz.add_argument(
        "--sequences",
        type=_every,
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
        type=_every,
        default=None,
        metavar="N",
        help="run the example's member call on one example in N; 0: none (default 8)",
    )
    fuzz.add_argument(
        "--lifecycle",
        type=_every,
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


def _truth(text: str) -> bool:
    """'true'/'false' (any case), also 1/0 and yes/no: how a flag was written in the user's call."""
    value = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}.get(text.strip().lower())
    if value is None:
        raise ValueError(text)
    return value
