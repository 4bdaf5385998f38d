"""The BatchNorm family's members by name: the one place a member is registered (issue 23).

A member is an operator users reach batch normalisation through besides ``BatchNorm`` itself. Each
provides, by the family contract, a module in the mx layer (its runners, reasons and kernels), a judge
in the judging layer and a strategy in the search layer; here it is listed with where each layer finds
its piece, by name, so that every layer resolves only its own piece and no layer imports upward.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any


@dataclasses.dataclass(frozen=True)
class MemberSpec:
    """Where a member's pieces live: ``module:attribute`` names, resolved by the layer that owns each."""

    #: The member's name, as MXNet's documentation spells the operator.
    name: str
    #: The operator as a user calls it (each API, comma separated).
    operator: str
    #: Its entry names: unique to it, the member's dimension everywhere (deviation scopes, signatures, reports).
    entries: tuple[str, ...]
    #: The mx layer's module: RUNNERS, unexpressible_reason, unavailable_reason, KERNELS (and snippet, adapt).
    mx: str
    #: The judging layer's judge(case, outputs, *, entry, kernel, checked).
    judge: str
    #: The search layer's strategy of the cases the member can run (a function of keyword options).
    strategy: str
    #: Code a reproducer runs once ``expected`` and ``actual`` are defined, to bring MXNet's results into the
    #: form the judge judges (BatchNormWithReLU's y after the ReLU); empty for none.
    reproducer_view: str = ""
    #: Can its calls kill their process? The fuzz job then makes them in a helper process, where a crash is a
    #: finding ("crashed:SIGSEGV") and the worker goes on. None is known to: the int8 segfault seen in campaigns
    #: was the time-shares sampler's (the speed page says how it was found), and a helper call costs a pipe.
    isolated: bool = False


#: The registered members. Registering one is one entry here.
MEMBERS: tuple[MemberSpec, ...] = (
    MemberSpec(
        name="BatchNormWithReLU",
        operator="mx.nd.contrib.BatchNormWithReLU, mx.sym.contrib.BatchNormWithReLU, mx.gluon.nn.BatchNormReLU",
        entries=("nd-relu", "sym-relu", "gluon-relu"),
        mx="bnprops.mx.with_relu",
        judge="bnprops.judging.with_relu:judge_member",
        strategy="bnprops.search.with_relu:cases_for_with_relu",
        reproducer_view="bnprops.judging.with_relu:REPRODUCER_VIEW",
    ),
    MemberSpec(
        name="BatchNorm_v1",
        operator="mx.sym.BatchNorm_v1",
        entries=("sym-v1",),
        mx="bnprops.mx.v1",
        judge="bnprops.judging.v1:judge",
        strategy="bnprops.search.v1:cases_for_v1",
    ),
    MemberSpec(
        name="SyncBatchNorm",
        operator="mx.nd.contrib.SyncBatchNorm, mx.sym.contrib.SyncBatchNorm, mx.gluon.contrib.nn.SyncBatchNorm",
        entries=("sync-nd", "sync-sym", "sync-gluon"),
        mx="bnprops.mx.sync",
        judge="bnprops.judging.sync:judge",
        strategy="bnprops.search.sync:cases_for_sync",
    ),
    MemberSpec(
        name="oneDNN Convolution fold",
        operator="sym.optimize_for('MKLDNN'), HybridBlock.hybridize(backend='MKLDNN'), a bind without gradients",
        entries=("fold-sym", "fold-gluon", "fold-bind", "fold-relu-sym"),
        mx="bnprops.mx.folding",
        judge="bnprops.judging.folding:judge_entry",
        strategy="bnprops.search.rewrites:cases_for_folding",
    ),
    MemberSpec(
        name="int8 BatchNorm",
        operator="mx.contrib.quantization.quantize_net, quantize_model_mkldnn (quantized_batch_norm)",
        entries=("int8-gluon", "int8-sym"),
        mx="bnprops.mx.int8",
        judge="bnprops.judging.int8:judge_int8",
        strategy="bnprops.search.rewrites:cases_for_int8",
    ),
    MemberSpec(
        name="ONNX export",
        operator="mx.onnx.export_model, run by onnxruntime",
        entries=("onnx",),
        mx="bnprops.mx.onnx_export",
        judge="bnprops.judging.onnx_export:judge_onnx",
        strategy="bnprops.search.deployment:cases_for_onnx",
    ),
    MemberSpec(
        name="AMP bfloat16",
        operator="mx.contrib.amp.convert_symbol, convert_hybrid_block (target_dtype='bfloat16')",
        entries=("amp-sym", "amp-gluon"),
        mx="bnprops.mx.amp_bfloat16",
        judge="bnprops.judging.mixed_precision:judge_amp",
        strategy="bnprops.search.deployment:cases_for_amp_bfloat16",
    ),
    MemberSpec(
        name="AMP float16",
        operator="mx.contrib.amp.convert_symbol (target_dtype='float16')",
        entries=("amp-fp16-sym",),
        mx="bnprops.mx.amp_float16",
        judge="bnprops.judging.mixed_precision:judge_amp",
        strategy="bnprops.search.deployment:cases_for_amp_float16",
    ),
    MemberSpec(
        name="gluon options",
        operator="mx.gluon.nn.BatchNorm(center=, scale=, in_channels=0, *_initializer=) and cast",
        entries=("gluon-options", "gluon-options-hybrid"),
        mx="bnprops.mx.gluon_options",
        judge="bnprops.judging.gluon_options:judge_gluon_options",
        strategy="bnprops.search.gluon_options:cases_for_gluon_options",
    ),
)

#: Every member entry, in registry order.
MEMBER_ENTRIES: tuple[str, ...] = tuple(e for m in MEMBERS for e in m.entries)


def spec_of(entry: str) -> MemberSpec:
    """The member an entry name belongs to; a ValueError that lists them if none does."""
    for member in MEMBERS:
        if entry in member.entries:
            return member
    raise ValueError(f"{entry!r} is no member entry; choose from {', '.join(MEMBER_ENTRIES)}")


def resolve(name: str) -> Any:
    """The object a ``module:attribute`` name (or a bare module name) stands for, imported on first use."""
    module, _, attribute = name.partition(":")
    loaded = importlib.import_module(module)
    return getattr(loaded, attribute) if attribute else loaded
