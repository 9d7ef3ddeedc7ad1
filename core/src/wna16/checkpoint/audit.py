"""The coverage audit: before any module is built, check that the checkpoint's tensors and its quantization config
agree, and report **every** disagreement at once.

Why: the failure modes of checkpoint-driven loaders are silent or late. A layer whose name matches no quantized block
is left in 16 bits and then dies on a bare ``KeyError '...qweight'``; a quantized tensor that no module claims is never
registered and the model outputs garbage. The audit turns each into a :class:`Problem` naming the file, the tensor and
what was expected, and :class:`CheckpointAuditError` carries all of them, so one run shows everything to fix.

Problem kinds:

- ``unexpected-quantized``: quantized tensors (``qweight``/``qzeros``) whose module resolves to unquantized (a 16-bit
  layer that ships ``qweight``, or a quantized tensor outside every quantized block).
- ``no-runtime-module``: quantized tensors whose module the runtime does not have (only with ``expected_modules``).
- ``missing-quantized``: a module that resolves to quantized but has no quantized tensors (it ships a 16-bit
  ``weight``, or, with ``expected_modules``, nothing at all).
- ``missing-tensor``, ``unexpected-tensor``, ``shape``, ``dtype``, ``g_idx``, ``bias``: the tensors of a quantized
  module do not match its resolved scheme and packed layout.
- ``duplicate``: two checkpoint tensors remap to the same runtime name.
- ``experts``: per-expert linears (``<block>.experts.<e>.gate_proj/up_proj/down_proj``, as AutoRound writes them)
  with an expert or a projection missing (indices must run from 0 without gaps), shapes that differ between experts,
  or schemes that differ within a fused group (``gate_proj`` + ``up_proj`` of every expert; ``down_proj`` of every
  expert): one kernel call serves each group (vLLM's ``w13``/``w2``).
- ``zeros``: a symmetric layer whose stored zero points are not all the centre ``2**(bits-1)``.
- ``values``: non-finite (NaN or infinite) scales or bias.
- ``nothing-quantized``: the checkpoint holds no quantized tensor at all (a 16-bit model with a quantization config).

A zero-sized dimension (K or N of 0) is a ``shape`` problem. Besides headers, the audit reads ``g_idx``, ``qzeros``,
``scales`` and ``bias`` (a few percent of a layer), never ``qweight``.

Opt-outs are explicit arguments of :func:`audit_tensors`: ``ignore`` (tensor-name regexes dropped from the checkpoint
before the audit) and ``allow_unquantized`` (module-name regexes, or ``True``, accepted as 16-bit although the config
says quantized).
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch

from wna16.checkpoint.files import SafetensorsFolder, TensorInfo
from wna16.checkpoint.resolve import FusedQuant, LayerQuant, fused_parts
from wna16.errors import (
    CheckpointAuditError,
    CheckpointError,
    ConfigError,
    FormatError,
    PatternTimeoutError,
    Problem,
    SchemeError,
)
from wna16.formats import COMPRESSED_TENSORS, AWQFormat, CompressedTensorsFormat, PackingFormat
from wna16.groups import trivial_g_idx
from wna16.packing import run_length
from wna16.protocol import ACTIVATION_DTYPES
from wna16.scheme import Scheme
from wna16.weight import SCALE_DTYPES, zero_problem

QUANT_ROLES: tuple[str, ...] = ("qweight", "qzeros", "scales", "g_idx", *COMPRESSED_TENSORS.roles)
"""Tensor-name suffixes that belong to a packed quantized linear layer (GPTQ/AWQ, then compressed-tensors)."""

PACKED_ROLES = frozenset({"qweight", "qzeros", "weight_packed", "weight_zero_point"})
"""Roles only a quantized layer ships (``scales``/``weight_scale`` also belong to norms and fp8 layers)."""

EXPERT_LINEAR = re.compile(r"^(?P<block>.*\.experts)\.(?P<index>\d+)\.(?P<proj>gate_proj|up_proj|down_proj)$")
"""A per-expert linear's runtime name: the experts block, the expert index, the projection."""

EXPERT_GROUPS: dict[str, tuple[str, ...]] = {"gate_up": ("gate_proj", "up_proj"), "down": ("down_proj",)}
"""The fused groups of an experts block: projections one kernel call serves for every expert."""


class LayerQuantLike(Protocol):
    """What the audit needs from a resolved layer (``wna16.checkpoint.config.LayerQuant``)."""

    @property
    def scheme(self) -> Scheme: ...

    @property
    def packed_format(self) -> PackingFormat: ...


class Resolver(Protocol):
    """What the audit needs from a quantization config: per-module resolution on runtime names, and the block
    prefixes (empty: no block list, as in GPTQ/AWQ exports)."""

    @property
    def block_prefixes(self) -> tuple[str, ...]: ...

    def resolve(self, module_name: str) -> LayerQuantLike | FusedQuant | None: ...


@dataclass(frozen=True)
class CheckpointLayer:
    """A quantized linear layer of a checkpoint, under its runtime name.

    ``tensors`` maps each role (``qweight``, ``qzeros``, ``scales``, optional ``g_idx`` and ``bias``) to the
    checkpoint tensor name; ``act_order`` is true when the stored ``g_idx`` is not ``arange(K) // group_size``.
    """

    name: str
    source: str
    scheme: Scheme
    packed_format: PackingFormat
    in_features: int
    out_features: int
    act_order: bool
    tensors: Mapping[str, TensorInfo]

    @property
    def layer_quant(self) -> LayerQuant:
        """How the layer is stored, as resolution describes it (what decides which fused parts share a kernel)."""
        return LayerQuant(self.scheme, self.packed_format, self.act_order, self.source)

    @property
    def has_bias(self) -> bool:
        """Whether the layer ships a bias."""
        return "bias" in self.tensors

    @property
    def files(self) -> tuple[Path, ...]:
        """The shard files holding this layer's tensors."""
        return tuple(sorted({t.file for t in self.tensors.values()}))

    @property
    def disk_bytes(self) -> int:
        """Bytes of this layer's tensors on disk."""
        return sum(t.nbytes for t in self.tensors.values())

    @property
    def bf16_bytes(self) -> int:
        """Bytes of the same layer stored as a bf16 ``weight`` (and bias)."""
        return 2 * (self.in_features * self.out_features + (self.out_features if self.has_bias else 0))


@dataclass(frozen=True)
class AuditReport:
    """What the audit found: quantized layers, 16-bit tensors (runtime names), problems and what was opted out."""

    folder: Path
    layers: dict[str, CheckpointLayer]
    unquantized: dict[str, TensorInfo]
    problems: tuple[Problem, ...]
    ignored: tuple[str, ...] = ()
    allowed_unquantized: tuple[str, ...] = ()
    names: dict[str, str] = field(default_factory=dict)
    """Runtime tensor name -> checkpoint tensor name, for every tensor kept."""

    @property
    def ok(self) -> bool:
        """True when no problem was found."""
        return not self.problems

    def raise_for_problems(self) -> None:
        """Raise :class:`CheckpointAuditError` with every problem, if there are any."""
        if self.problems:
            raise CheckpointAuditError(self.folder, self.problems)


def _matches(patterns: Iterable[re.Pattern[str]], *names: str) -> bool:
    return any(p.search(n) for p in patterns for n in names)


def _compile(patterns: Iterable[str], what: str) -> list[re.Pattern[str]]:
    out = []
    for pattern in patterns:
        try:
            out.append(re.compile(pattern))
        except re.error as exc:
            raise CheckpointError(f"{what} pattern {pattern!r} is not a valid regex: {exc}") from exc
    return out


class _Auditor:
    """Collects problems while classifying the tensors of one checkpoint."""

    def __init__(self, read: Callable[[str], torch.Tensor]) -> None:
        self.read = read
        self.problems: list[Problem] = []

    def add(self, kind: str, module: str, message: str, info: TensorInfo | None = None) -> None:
        self.problems.append(Problem(kind, module, message, info.name if info else None, info.file if info else None))

    def resolve(self, config: Resolver, module: str, info: TensorInfo | None) -> LayerQuantLike | ConfigError | None:
        """The config's resolution of ``module``; a config error (e.g. a fused-experts name) is recorded, and so is a
        module stored as one fused tensor set whose parts the config gives different schemes: one set of packed
        tensors holds one scheme, so no reader can serve it (a runtime fusing separately stored parts can)."""
        try:
            quant = config.resolve(module)
        except PatternTimeoutError:
            raise  # the config itself is unusable: one error naming the key, not one problem per module
        except ConfigError as exc:
            self.add("config", module, str(exc), info)
            return exc
        if isinstance(quant, FusedQuant):
            refused = ConfigError(f"stored fused, but its parts resolve to different schemes: {quant}")
            self.add("config", module, str(refused), info)
            return refused
        return quant

    def expect(self, module: str, info: TensorInfo, shape: tuple[int, ...], dtypes: tuple[torch.dtype, ...]) -> bool:
        ok = True
        if info.dtype not in dtypes:
            names = "/".join(str(d).removeprefix("torch.") for d in dtypes)
            self.add("dtype", module, f"dtype {info.describe()}, expected {names}", info)
            ok = False
        if info.shape != shape:
            self.add("shape", module, f"shape {info.describe()}, expected {list(shape)}", info)
            ok = False
        return ok

    def features(self, module: str, quant: LayerQuantLike, group: Mapping[str, TensorInfo]) -> tuple[int, int] | None:
        """(K, N) implied by the stored tensors, or None after recording why they cannot be inferred."""
        bits, layout = quant.scheme.bits, quant.packed_format
        qweight, scales = group.get("qweight"), group.get("scales")
        if qweight is None or len(qweight.shape) != 2:
            if qweight is not None:
                self.add("shape", module, f"shape {qweight.describe()}, expected a 2-D packed tensor", qweight)
            return None
        rows, cols = qweight.shape
        if layout is PackingFormat.AWQ:
            return rows, cols * 8
        codes, words = run_length(bits)
        if rows % words:
            self.add("shape", module, f"{rows} rows cannot hold {bits}-bit codes packed along K ({layout})", qweight)
            return None
        n = scales.shape[1] if scales is not None and len(scales.shape) == 2 else cols
        return rows // words * codes, n

    def quantized(
        self, module: str, source: str, quant: LayerQuantLike, group: Mapping[str, TensorInfo], bias: TensorInfo | None
    ) -> CheckpointLayer | None:
        """Check one quantized module's tensors against its scheme; the layer, or None when it has problems."""
        before = len(self.problems)
        scheme, layout = quant.scheme, quant.packed_format
        if layout is PackingFormat.COMPRESSED_TENSORS:
            return self.compressed_tensors(module, source, quant, group, bias)
        fmt = layout.layout
        required = ("qweight", "qzeros", "scales")
        anchor = next(iter(group.values()))
        for role in required:
            if role not in group:
                message = f"quantized as {scheme} ({layout}) but the tensor is missing (have {sorted(group)})"
                self.problems.append(Problem("missing-tensor", module, message, f"{source}.{role}", anchor.file))
        if isinstance(fmt, AWQFormat) and "g_idx" in group:
            self.add("unexpected-tensor", module, f"the {layout} layout has no g_idx", group["g_idx"])
        sizes = self.features(module, quant, group)
        if sizes is None or len(self.problems) > before:
            return None
        k, n = sizes
        if not k or not n:
            qweight = group["qweight"].describe()
            self.add(
                "shape", module, f"zero-sized layer: (in, out) = ({k}, {n}) from qweight {qweight}", group["qweight"]
            )
            return None
        try:
            shapes = fmt.expected_shapes(scheme, k, n)
        except FormatError as exc:
            self.add("shape", module, f"K={k}, N={n} do not fit {scheme} ({layout}): {exc}", group["qweight"])
            return None
        groups = shapes["scales"][0]  # wna16.groups.stored_groups, via the layout
        g_idx = group.get("g_idx")
        act_order = False
        if g_idx is not None and g_idx.shape != shapes["g_idx"]:
            qweight = group["qweight"].describe()
            self.add("shape", module, f"shape {g_idx.describe()}, expected [{k}] (K={k} from qweight {qweight})", g_idx)
        elif g_idx is not None and self.expect(module, g_idx, shapes["g_idx"], (torch.int32, torch.int64)):
            values = self.read(g_idx.name)
            stored = group["scales"].shape[0] if len(group["scales"].shape) == 2 else groups
            lo, hi = (int(values.min()), int(values.max())) if values.numel() else (0, 0)
            if lo < 0 or hi >= max(stored, 1):
                self.add(
                    "g_idx", module, f"values in [{lo}, {hi}], expected [0, {stored - 1}] ({stored} groups)", g_idx
                )
            else:
                trivial = trivial_g_idx(k, scheme).to(torch.int64)
                act_order = not torch.equal(values.to(torch.int64), trivial)
                groups = max(groups, hi + 1) if act_order else groups
        self.expect(module, group["qweight"], shapes["qweight"], (torch.int32,))
        self.expect(module, group["qzeros"], (groups, shapes["qzeros"][1]), (torch.int32,))
        self.expect(module, group["scales"], (groups, n), SCALE_DTYPES)
        return self.layer(module, source, quant, group, bias, (k, n, act_order), before)

    def values(
        self, module: str, quant: LayerQuantLike, group: Mapping[str, TensorInfo], bias: TensorInfo | None
    ) -> None:
        """Check what shapes cannot: symmetric zeros at the centre, finite scales and bias (tensors already checked
        for shape and dtype)."""
        scheme, fmt = quant.scheme, quant.packed_format.layout
        if isinstance(fmt, CompressedTensorsFormat):  # symmetric layers store no zero point in this layout
            scales = group["weight_scale"]
        else:
            scales, qzeros = group["scales"], group["qzeros"]
            zeros = fmt.unpack_zeros(self.read(qzeros.name), scheme, qzeros.name)
            problem = zero_problem(zeros, scheme)
            if problem is not None:
                self.add("zeros", module, f"{problem} ({quant.packed_format})", qzeros)
        for info in (scales, bias):
            if info is not None:
                bad = int((~torch.isfinite(self.read(info.name))).sum())
                if bad:
                    self.add(
                        "values", module, f"{bad} non-finite value(s) (NaN or infinite) in {info.describe()}", info
                    )

    def act_order(self, module: str, g_idx: TensorInfo, k: int, scheme: Scheme, stored: int) -> bool | None:
        """Whether a stored row-to-group map is non-trivial; None after recording out-of-range values."""
        values = self.read(g_idx.name)
        lo, hi = (int(values.min()), int(values.max())) if values.numel() else (0, 0)
        if lo < 0 or hi >= max(stored, 1):
            self.add("g_idx", module, f"values in [{lo}, {hi}], expected [0, {stored - 1}] ({stored} groups)", g_idx)
            return None
        return not torch.equal(values.to(torch.int64), trivial_g_idx(k, scheme).to(torch.int64))

    def compressed_tensors(
        self, module: str, source: str, quant: LayerQuantLike, group: Mapping[str, TensorInfo], bias: TensorInfo | None
    ) -> CheckpointLayer | None:
        """One compressed-tensors ``pack-quantized`` module: (N, K) from ``weight_shape``, then every tensor."""
        before = len(self.problems)
        scheme, layout = quant.scheme, quant.packed_format
        required = ["weight_packed", "weight_scale", "weight_shape"] + ([] if scheme.sym else ["weight_zero_point"])
        anchor = next(iter(group.values()))
        for role in required:
            if role not in group:
                message = f"quantized as {scheme} ({layout}) but the tensor is missing (have {sorted(group)})"
                self.problems.append(Problem("missing-tensor", module, message, f"{source}.{role}", anchor.file))
        for role in sorted(set(group) - set(COMPRESSED_TENSORS.roles)):
            self.add("unexpected-tensor", module, f"the {layout} layout has no {role}", group[role])
        if len(self.problems) > before:
            return None
        shape_info = group["weight_shape"]
        if not self.expect(module, shape_info, (2,), (torch.int64, torch.int32)):
            return None
        n, k = (int(v) for v in self.read(shape_info.name).tolist())
        try:
            shapes = COMPRESSED_TENSORS.expected_shapes(scheme, k, n)
        except (FormatError, SchemeError) as exc:
            self.add("shape", module, f"weight_shape (N, K) = ({n}, {k}) does not fit {scheme}: {exc}", shape_info)
            return None
        groups, act_order = shapes["weight_scale"][1], False  # wna16.groups.stored_groups, via the layout
        g_idx = group.get("weight_g_idx")
        scale = group["weight_scale"]
        if g_idx is not None and self.expect(module, g_idx, shapes["weight_g_idx"], (torch.int32, torch.int64)):
            stored = scale.shape[1] if len(scale.shape) == 2 else groups
            found = self.act_order(module, g_idx, k, scheme, stored)
            act_order = bool(found)
            groups = max(groups, stored) if act_order else groups
        self.expect(module, group["weight_packed"], shapes["weight_packed"], (torch.int32,))
        self.expect(module, scale, (n, groups), SCALE_DTYPES)
        if "weight_zero_point" in group:
            self.expect(module, group["weight_zero_point"], (shapes["weight_zero_point"][0], groups), (torch.int32,))
        return self.layer(module, source, quant, group, bias, (k, n, act_order), before)

    def layer(
        self,
        module: str,
        source: str,
        quant: LayerQuantLike,
        group: Mapping[str, TensorInfo],
        bias: TensorInfo | None,
        shape: tuple[int, int, bool],
        before: int,
    ) -> CheckpointLayer | None:
        """The last checks of a quantized module whose tensors have the layout's shapes (bias, then values); the
        layer, or None when any check since ``before`` problems found one. ``shape`` is (K, N, act order)."""
        k, n, act_order = shape
        if bias is not None:
            self.expect(module, bias, (n,), ACTIVATION_DTYPES)
        if len(self.problems) > before:
            return None
        self.values(module, quant, group, bias)
        if len(self.problems) > before:
            return None
        tensors = dict(group) if bias is None else {**group, "bias": bias}
        return CheckpointLayer(module, source, quant.scheme, quant.packed_format, k, n, act_order, tensors)


def _audit_experts(
    auditor: _Auditor,
    groups: Mapping[str, Mapping[str, TensorInfo]],
    layers: Mapping[str, CheckpointLayer],
    expected_modules: Mapping[str, tuple[int, int]] | Collection[str] | None,
) -> None:
    """The ``experts`` problems (see the module docstring) of every experts block among the quantized modules."""
    blocks: dict[str, dict[str, set[int]]] = defaultdict(lambda: defaultdict(set))
    for module in groups:
        if m := EXPERT_LINEAR.match(module):
            blocks[m["block"]][m["proj"]].add(int(m["index"]))
    for block, present in sorted(blocks.items()):
        count = 1 + max(i for indices in present.values() for i in indices)
        for proj in ("gate_proj", "up_proj", "down_proj"):
            missing = [
                f"{block}.{i}.{proj}"
                for i in range(count)
                if i not in present[proj]
                and (expected_modules is None or f"{block}.{i}.{proj}" not in expected_modules)
            ]
            if missing:
                auditor.add("experts", block, f"{count} experts but no quantized {', '.join(missing)}")
        for group, projs in EXPERT_GROUPS.items():
            served = [layers[n] for i in range(count) for p in projs if (n := f"{block}.{i}.{p}") in layers]
            odd = [x for x in served if _expert_kind(x) != _expert_kind(served[0])]
            if odd:
                shown = "; ".join(
                    f"{x.name}: {x.scheme} {x.packed_format} act_order={x.act_order} [{x.in_features} -> "
                    f"{x.out_features}]"
                    for x in (served[0], odd[0])
                )
                auditor.add(
                    "experts", block,
                    f"the {group} projections of its experts differ (scheme, layout, act order or shape), so one "
                    f"fused kernel call cannot serve them: {shown}",
                    odd[0].tensors["qweight"],
                )  # fmt: skip


def _expert_kind(layer: CheckpointLayer) -> tuple[str, str, bool, int, int]:
    """What must agree between the experts of one fused group."""
    return str(layer.scheme), layer.packed_format.value, layer.act_order, layer.in_features, layer.out_features


def audit_tensors(
    files: SafetensorsFolder,
    config: Resolver,
    rename: Callable[[str], str],
    *,
    expected_modules: Mapping[str, tuple[int, int]] | Collection[str] | None = None,
    ignore: Iterable[str] = (),
    allow_unquantized: bool | Iterable[str] = False,
) -> AuditReport:
    """Classify every tensor of ``files`` and check it against ``config`` (resolving runtime names).

    ``rename`` maps a checkpoint tensor name to its runtime name (the remap). ``expected_modules``, when given, is the
    runtime's linear modules (names, or names -> ``(in_features, out_features)``): quantized tensors of other modules
    and quantized-resolving modules without tensors are then reported, and shapes checked against it. ``ignore`` and
    ``allow_unquantized`` are the opt-outs described in the module docstring. Reads ``g_idx``, ``qzeros``, ``scales``
    and ``bias`` data, never ``qweight``.
    """
    ignore_re = _compile(ignore, "ignore")
    allow_all = allow_unquantized is True
    allow_re = [] if isinstance(allow_unquantized, bool) else _compile(allow_unquantized, "allow_unquantized")
    auditor = _Auditor(files.tensor)
    names: dict[str, str] = {}
    ignored: list[str] = []
    groups: dict[str, dict[str, TensorInfo]] = {}
    sources: dict[str, str] = {}
    plain: dict[str, TensorInfo] = {}
    for name, info in files.tensors.items():
        runtime = rename(name)
        if _matches(ignore_re, name, runtime):
            ignored.append(name)
            continue
        if runtime in names:
            auditor.add("duplicate", runtime, f"both {names[runtime]!r} and {name!r} map to runtime name", info)
            continue
        names[runtime] = name
        module, _, role = runtime.rpartition(".")
        if role in QUANT_ROLES and module:
            groups.setdefault(module, {})[role] = info
            sources[module] = name.rpartition(".")[0]
        else:
            plain[runtime] = info

    # A runtime with fused modules (qkv_proj, gate_up_proj, to_qkv) is served by the checkpoint's parts.
    fused: dict[str, tuple[str, ...]] = {}
    for runtime_module in expected_modules or ():
        parts = fused_parts(runtime_module)
        if parts is not None and runtime_module not in groups:
            fused[runtime_module] = parts
    part_of = {part: parent for parent, parts in fused.items() for part in parts}
    layers: dict[str, CheckpointLayer] = {}
    for module, group in sorted(groups.items()):
        first = group.get("qweight") or next(iter(group.values()))
        quant = auditor.resolve(config, module, first)
        if isinstance(quant, ConfigError):
            continue
        if not PACKED_ROLES.intersection(group) and quant is None:
            plain.update({f"{module}.{role}": info for role, info in group.items()})  # e.g. a norm's "scales"
            continue
        stored = ", ".join(sorted(group))
        if quant is None:
            auditor.add(
                "unexpected-quantized", module,
                f"ships quantized tensors ({stored}) but the config resolves the module to unquantized "
                "(outside every quantized block, in modules_to_not_convert, or 16 bits)",
                first,
            )  # fmt: skip
            continue
        if expected_modules is not None and module not in expected_modules and module not in part_of:
            auditor.add(
                "no-runtime-module",
                module,
                f"ships quantized tensors ({stored}) but the runtime has no such module",
                first,
            )
            continue
        weight = plain.pop(f"{module}.weight", None)
        if weight is not None:
            auditor.add("unexpected-tensor", module, "ships a 16-bit weight next to its quantized tensors", weight)
        layer = auditor.quantized(module, sources[module], quant, group, plain.pop(f"{module}.bias", None))
        if layer is None:
            continue
        if isinstance(expected_modules, Mapping) and module in expected_modules:
            want = tuple(expected_modules[module])
            if want != (layer.in_features, layer.out_features):
                auditor.add(
                    "shape", module,
                    f"(in, out) = {(layer.in_features, layer.out_features)} in the checkpoint, runtime expects {want}",
                    group["qweight"],
                )  # fmt: skip
                continue
        layers[module] = layer

    _audit_experts(auditor, groups, layers, expected_modules)
    allowed: list[str] = []
    candidates: dict[str, TensorInfo | None] = {
        n.removesuffix(".weight"): i for n, i in plain.items() if n.endswith(".weight") and len(i.shape) == 2
    }
    if isinstance(expected_modules, Mapping):
        for parent, parts in fused.items():
            got = [layers[p] for p in parts if p in layers]
            sizes = ({g.in_features for g in got}, sum(g.out_features for g in got))
            want = tuple(expected_modules[parent])
            if len(got) == len(parts) and sizes != ({want[0]}, want[1]):
                shapes = ", ".join(f"{g.name} {(g.in_features, g.out_features)}" for g in got)
                auditor.add("shape", parent, f"fused from {shapes}; runtime expects (in, out) = {want}")
    if expected_modules is not None:
        wanted = [p for m in expected_modules for p in fused.get(m, (m,))]
        candidates = {m: candidates.get(m) for m in wanted if m not in layers and m not in groups}
    elif not config.block_prefixes:
        # No block list (GPTQ/AWQ exports quantize "the linear layers") and no model to say which 2-D weights are
        # linears: an embedding or a norm cannot be told from a forgotten linear. Flag only a 16-bit weight whose
        # parent module also holds quantized layers (``mlp.down_proj`` beside a quantized ``mlp.up_proj``).
        parents = {layer.rpartition(".")[0] for layer in layers}
        candidates = {m: i for m, i in candidates.items() if m.rpartition(".")[0] in parents}
    for module, weight16 in sorted(candidates.items()):
        quant = auditor.resolve(config, module, weight16)
        if quant is None or isinstance(quant, ConfigError):
            continue
        if allow_all or _matches(allow_re, module):
            allowed.append(module)
            continue
        what = (
            f"ships a 16-bit weight {weight16.describe()}"
            if weight16 is not None
            else "has no tensors in the checkpoint"
        )
        if module in part_of:
            what += f" (a part of the runtime's fused {part_of[module]}: {list(fused[part_of[module]])})"
        auditor.add(
            "missing-quantized", module,
            f"the config resolves it to {quant.scheme} ({quant.packed_format}) but it {what}; a loader would fail on "
            "its missing qweight (opt out with allow_unquantized)",
            weight16,
        )  # fmt: skip
    if not any(PACKED_ROLES & group.keys() for group in groups.values()):
        auditor.add(
            "nothing-quantized", str(files.folder),
            f"no quantized tensors (qweight/qzeros) among {len(files.tensors)} tensor(s): the files are not the "
            "quantized checkpoint the config describes",
        )  # fmt: skip
    return AuditReport(
        files.folder, layers, plain, tuple(auditor.problems), tuple(ignored), tuple(allowed),
        {r: names[r] for r in names if r in plain or r.rpartition(".")[0] in layers},
    )  # fmt: skip
