r"""Per-layer resolution: which scheme (if any) a module of a checkpoint was written with, and why.

The order follows vLLM's ``INCConfig.get_layer_config`` (the runtime whose behaviour users meet), with the GPTQ and
AWQ keys folded in:

1. ``modules_to_not_convert`` (AWQ, also written by auto-round): the layer is unquantized. Entries match whole dotted
   components (``visual`` matches ``model.visual.blocks.0.qkv``), not raw substrings as vLLM's AWQ does.
2. An exact ``extra_config`` key: its fields over the global defaults. This quantizes a layer even outside the block
   prefixes (as vLLM does: auto-round writes the expanded names of every layer it treated specially).
3. ``extra_config`` keys holding a regex character (``*+?^$()[]{}|\``), in the order written, matched with
   ``re.search``; the first match wins. Inside the quantized scope its missing fields come from the global defaults;
   outside the scope they come from "unquantized" (bits 16, group -1, sym), exactly as vLLM fills them, so a regex
   key quantizes an outside layer only if it names ``bits``. (auto-round's own reader fills from the globals
   everywhere; the two agree whenever the checkpoint also lists the expanded exact names, which auto-round writes.)
4. Out of scope: outside every ``block_name_to_quantize`` prefix, an ``lm_head`` (unless GPTQ's ``lm_head: true``),
   or, for GPTQ exports, a block member no ``modules_in_block_to_quantize`` entry matches: unquantized.
5. GPTQ ``dynamic``: rules in order, ``re.match``; the first match wins; ``-:regex`` means unquantized, ``+:regex``
   (or a bare regex) overrides fields.
6. The defaults.

compressed-tensors configs (``quant_method: compressed-tensors``) resolve by their own rules instead
(:func:`resolve_targets`): an ``ignore`` entry that matches leaves the layer unquantized; otherwise the config group
of the first matching target decides, in compressed-tensors' order (exact names, then ``re:`` regexes matched with
``re.match``, each sorted by the target string, then class names; ``Linear`` matches every linear layer); a layer no
target matches is unquantized. vLLM takes name matches in the order written instead; when the two orders pick
different schemes for a layer, the layer is refused (:class:`~wna16.errors.ConfigError` naming both targets) rather
than served the way only one of them would.

Every regex here comes from the checkpoint and is matched with a time limit
(:class:`~wna16.checkpoint.patterns.BoundedPattern`): a catastrophic pattern is a typed error naming its key.

A result with ``bits >= 16`` is unquantized. Prefixes match on dotted-name boundaries: ``model.layers.1`` covers
``model.layers.1.mlp.up_proj`` but not ``model.layers.10.mlp.up_proj``. vLLM uses a raw ``str.startswith`` and would
count the latter as inside the block; no auto-round checkpoint relies on that, and the boundary rule cannot silently
quantize a neighbouring block.

Fused modules (``qkv_proj`` from q/k/v, ``gate_up_proj`` from gate/up, diffusion ``to_qkv``) resolve each part and
:func:`fuse` them: parts that agree share one kernel call over their concatenation (along N); parts that disagree
(mixed bits, group sizes, a part left in 16 bits) give a :class:`FusedQuant`, served as runs of agreeing parts whose
outputs are concatenated in the fused order (:func:`part_runs` is the one rule for which parts share). MoE experts
written as per-expert linears (``experts.3.down_proj``) resolve like any layer; a fused-experts layout (one tensor for
all experts, ``experts.gate_up_proj``) is refused with :class:`~wna16.errors.MoELayoutError`. :func:`concat_out`
builds the fused weight from the parts' weights.

Names that match nothing: a ``block_name_to_quantize`` entry or an ``extra_config`` key naming no module of the
runtime model (a wrong remap, a renamed model class) would leave its layers silently unquantized, and loading would
fail later on a missing ``weight``. :func:`unmatched_names` / :func:`check_names` find them before any loading, with
the closest runtime names, for every runtime (vLLM-Omni, vLLM, ``patch_model``) that knows its module names. vLLM's
engine path compares the config as written with the checkpoint's own module names (:func:`tensor_modules` of its
safetensors headers) before it builds the model: both are in checkpoint name space, so no remap is involved.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

from wna16.checkpoint.patterns import BoundedPattern
from wna16.errors import ConfigError, FusedModuleError, MoELayoutError, SchemeError, UnmatchedNamesError
from wna16.formats import PackingFormat
from wna16.scheme import Scheme
from wna16.weight import QuantizedWeight

REGEX_CHARS = frozenset("*+?^$()[]{}|\\")
"""A key holding one of these is a regex (vLLM's rule; ``.`` alone does not make a regex)."""

PACKED_MODULES: Mapping[str, tuple[str, ...]] = {
    "qkv_proj": ("q_proj", "k_proj", "v_proj"),
    "gate_up_proj": ("gate_proj", "up_proj"),
    "to_qkv": ("to_q", "to_k", "to_v"),
    "add_kv_proj": ("add_q_proj", "add_k_proj", "add_v_proj"),
}
"""Runtime fused module -> the checkpoint modules concatenated along N into it (vLLM's ``packed_modules_mapping``)."""

UNQUANTIZED_BITS = 16
"""``bits`` at or above this leave a layer in its float dtype (auto-round writes ``{"bits": 16}`` for them)."""


def is_regex_key(key: str) -> bool:
    """Whether an ``extra_config`` key is a regex (matched with ``re.search``) rather than an exact module name."""
    return any(c in REGEX_CHARS for c in key)


def covers(prefix: str, name: str) -> bool:
    """``prefix`` covers ``name`` on a dotted boundary (``a.b`` covers ``a.b`` and ``a.b.c``, not ``a.bc``)."""
    prefix = prefix.rstrip(".")
    return name == prefix or name.startswith(prefix + ".")


def names_component_run(entry: str, name: str) -> bool:
    """``entry`` (dotted) appears in ``name`` as whole consecutive components (``visual`` in ``model.visual.x``)."""
    return f".{entry.strip('.')}." in f".{name}."


@dataclass(frozen=True)
class Override:
    """One ``extra_config`` entry or GPTQ ``dynamic`` rule: the fields it sets; ``None`` inherits."""

    bits: int | None = None
    group_size: int | None = None
    sym: bool | None = None
    act_order: bool | None = None


@dataclass(frozen=True)
class DynamicRule:
    """A GPTQ ``dynamic`` entry: ``-:regex`` (``skip``) or ``+:regex`` overriding fields, matched with ``re.match``."""

    key: str
    pattern: BoundedPattern
    skip: bool
    override: Override


@dataclass(frozen=True)
class LayerQuant:
    """How one linear layer is stored: its scheme, its packed layout (a :class:`wna16.formats.PackingFormat`; a name
    is accepted and converted), whether it uses act order (``desc_act``: a non-trivial ``g_idx``), and ``source``:
    which rule decided, for messages."""

    scheme: Scheme
    packed_format: PackingFormat
    act_order: bool
    source: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "packed_format", PackingFormat.of(self.packed_format))

    def __str__(self) -> str:
        order = " act-order" if self.act_order else ""
        return f"{self.scheme} {self.packed_format}{order} ({self.source})"


LINEAR_CLASS_TARGETS = frozenset({"Linear", "LinearBase"})
"""compressed-tensors class-name targets that match a linear layer (torch's ``Linear``; vLLM's ``LinearBase``)."""


@dataclass(frozen=True)
class Target:
    """A compressed-tensors ``targets`` / ``ignore`` entry: ``re:<regex>`` (``re.match`` on the module name), or a
    module name (exact) that may also be a class name (``Linear`` matches every linear layer)."""

    text: str
    pattern: BoundedPattern | None = None

    @property
    def is_regex(self) -> bool:
        """Whether the entry is a ``re:`` regex."""
        return self.pattern is not None

    def matches_name(self, name: str) -> bool:
        """The entry matches ``name`` as a name (exact, or regex with ``re.match``)."""
        return self.pattern.match(name) is not None if self.pattern is not None else self.text == name

    def matches_class(self) -> bool:
        """The entry names a class every linear layer is an instance of."""
        return self.pattern is None and self.text in LINEAR_CLASS_TARGETS


@dataclass(frozen=True)
class TargetRule:
    """One target of a compressed-tensors config group and the group's weight scheme (every field set)."""

    target: Target
    group: str
    override: Override


class Rules(Protocol):
    """What resolution reads from a config (:class:`wna16.checkpoint.config.QuantConfig` provides it): the imports
    run config -> resolve only, so the resolution rules never depend on how a config file is parsed."""

    @property
    def source(self) -> str: ...
    @property
    def packed_format(self) -> PackingFormat: ...
    @property
    def defaults(self) -> Override: ...
    @property
    def block_prefixes(self) -> tuple[str, ...]: ...
    @property
    def extra_config(self) -> Mapping[str, Override]: ...
    @property
    def regex_keys(self) -> tuple[tuple[str, BoundedPattern], ...]: ...
    @property
    def modules_to_not_convert(self) -> tuple[str, ...]: ...
    @property
    def dynamic(self) -> tuple[DynamicRule, ...]: ...
    @property
    def modules_in_block(self) -> tuple[BoundedPattern, ...]: ...
    @property
    def lm_head(self) -> bool: ...
    @property
    def method(self) -> str: ...
    @property
    def targets(self) -> tuple[TargetRule, ...]: ...
    @property
    def ignore(self) -> tuple[Target, ...]: ...


def _layer(config: Rules, fields: Override, base: Override, source: str) -> LayerQuant | None:
    bits = fields.bits if fields.bits is not None else base.bits
    assert bits is not None, "base overrides always carry bits"
    if bits >= UNQUANTIZED_BITS:
        return None
    group = fields.group_size if fields.group_size is not None else base.group_size
    sym = fields.sym if fields.sym is not None else base.sym
    act_order = fields.act_order if fields.act_order is not None else base.act_order
    try:
        scheme = Scheme(bits, -1 if group is None else group, True if sym is None else sym)
    except SchemeError as exc:
        raise ConfigError(f"{config.source}: {source}: {exc}") from None
    return LayerQuant(scheme, config.packed_format, bool(act_order), source)


def check_moe_name(name: str) -> None:
    """Refuse a fused-experts module or tensor name (``experts``, ``experts.gate_up_proj``) with MoELayoutError.

    Per-expert linears (``experts.<index>.<proj>``) pass: each is an ordinary linear layer.
    """
    parts = name.split(".")
    for i, part in enumerate(parts):
        if part != "experts":
            continue
        following = parts[i + 1] if i + 1 < len(parts) else None
        if following is None or not following.isdigit():
            raise MoELayoutError(
                f"MoE layout not supported: {name!r} is a fused-experts module or tensor (all experts in one); "
                "wna16 serves experts written as per-expert linears 'experts.<index>.<proj>'"
            )


def resolve_layer(config: Rules, name: str) -> tuple[LayerQuant | None, str]:
    """The stored scheme of the linear layer ``name`` (runtime name after any remap) and the rule that decided."""
    check_moe_name(name)
    if config.method == "compressed-tensors":
        return resolve_targets(config, name)
    for entry in config.modules_to_not_convert:
        if names_component_run(entry, name):
            return None, f"modules_to_not_convert entry {entry!r}"
    exact = config.extra_config.get(name)
    if exact is not None and not is_regex_key(name):
        return _explained(config, exact, config.defaults, f"extra_config exact key {name!r}")
    scope = _out_of_scope(config, name)
    base = config.defaults if scope is None else Override(UNQUANTIZED_BITS, -1, True, False)
    for key, pattern in config.regex_keys:
        if pattern.search(name) is not None:
            return _explained(config, config.extra_config[key], base, f"regex key {key!r}")
    if scope is not None:
        return None, scope
    for rule in config.dynamic:
        if rule.pattern.match(name) is not None:
            if rule.skip:
                return None, f"dynamic rule {rule.key!r}"
            return _explained(config, rule.override, config.defaults, f"dynamic rule {rule.key!r}")
    return _explained(config, config.defaults, config.defaults, "default")


def resolve_targets(config: Rules, name: str) -> tuple[LayerQuant | None, str]:
    """A compressed-tensors layer: ``ignore``, then the first matching target (see the module docstring)."""
    for entry in config.ignore:
        if entry.matches_name(name) or entry.matches_class():
            return None, f"ignore entry {entry.text!r}"
    rules = {rule.target.text: rule for rule in config.targets}  # a target repeated in a later group: that group
    ordered = sorted(rules.values(), key=lambda r: (r.target.is_regex, r.target.text))
    ours = next((r for r in ordered if r.target.matches_name(name)), None) or next(
        (r for r in ordered if r.target.matches_class()), None
    )
    if ours is None:
        return None, "no config_groups target matches"
    vllm = next((r for r in rules.values() if r.target.matches_name(name)), None) or ours
    if vllm.override != ours.override:
        raise ConfigError(
            f"{config.source}: {name}: targets {ours.target.text!r} (config_groups[{ours.group!r}]) and "
            f"{vllm.target.text!r} (config_groups[{vllm.group!r}]) both match with different schemes; "
            "compressed-tensors picks the first, vLLM the second: make the targets unambiguous"
        )
    return _explained(
        config, ours.override, ours.override, f"config_groups[{ours.group!r}] target {ours.target.text!r}"
    )


def _explained(config: Rules, fields: Override, base: Override, source: str) -> tuple[LayerQuant | None, str]:
    layer = _layer(config, fields, base, source)
    return layer, source if layer is not None else f"{source} (bits >= {UNQUANTIZED_BITS})"


def _out_of_scope(config: Rules, name: str) -> str | None:
    """Why ``name`` lies outside the quantized part of the model, or None if it is inside."""
    if config.block_prefixes and not any(covers(p, name) for p in config.block_prefixes):
        return f"outside every block_name_to_quantize prefix {list(config.block_prefixes)}"
    if name.rsplit(".", 1)[-1] == "lm_head" and not config.lm_head and not config.block_prefixes:
        return "lm_head (not quantized unless the config says so)"
    if config.modules_in_block and not any(p.search(name) for p in config.modules_in_block):
        return "no modules_in_block_to_quantize entry matches"
    return None


@dataclass(frozen=True)
class FusedQuant:
    """A fused module whose parts were written with different schemes (AutoRound's mixed-precision recipes: ``k_proj``
    at 8 bits, ``v_proj`` left in 16 bits, ``up_proj`` at another group size). It is served as :meth:`runs`: each run
    of consecutive agreeing parts is one layer (one kernel call for a quantized run, one dense matmul for a 16-bit
    one), and the runs' outputs are concatenated along N in the fused order. ``parts``: (name, resolution) in order.
    """

    name: str
    parts: tuple[tuple[str, LayerQuant | None], ...]

    def runs(self) -> tuple[tuple[int, ...], ...]:
        """Indices of the parts grouped into runs of consecutive parts that share one layer (see :func:`part_runs`)."""
        return part_runs([layer for _, layer in self.parts])

    def __str__(self) -> str:
        described = "; ".join(f"{n}: {'unquantized' if q is None else q}" for n, q in self.parts)
        return f"mixed fused {self.name} ({len(self.runs())} runs): {described}"


def _same(a: LayerQuant | None, b: LayerQuant | None) -> bool:
    """Whether two parts can share one layer: both unquantized, or same scheme, layout and act order."""
    if a is None or b is None:
        return a is None and b is None
    return (a.scheme, a.packed_format, a.act_order) == (b.scheme, b.packed_format, b.act_order)


def part_runs(layers: Sequence[LayerQuant | None]) -> tuple[tuple[int, ...], ...]:
    """Group part indices into maximal runs of consecutive parts that agree (:func:`_same`). Only consecutive parts
    share a layer, so the runs' outputs concatenate along N in the fused order with no reordering."""
    runs: list[list[int]] = []
    for i, layer in enumerate(layers):
        if runs and _same(layers[runs[-1][-1]], layer):
            runs[-1].append(i)
        else:
            runs.append([i])
    return tuple(tuple(r) for r in runs)


def fuse(parts: Sequence[tuple[str, LayerQuant | None]], name: str = "fused module") -> LayerQuant | FusedQuant | None:
    """One resolution for the fused module ``name`` from its parts (name, resolution).

    Parts that agree on scheme, layout and act order give one :class:`LayerQuant` (one kernel serves their
    concatenation along N: the common case, unchanged); all unquantized gives ``None``; parts that disagree give a
    :class:`FusedQuant`, served part-run by part-run.
    """
    if not parts:
        raise ConfigError(f"{name}: no parts given")
    layers = [layer for _, layer in parts]
    first = layers[0]
    if len(part_runs(layers)) > 1:
        return FusedQuant(name, tuple(parts))
    if first is None:
        return None
    names = ", ".join(n for n, _ in parts)
    return LayerQuant(first.scheme, first.packed_format, first.act_order, f"fused from {names}: {first.source}")


def concat_out(parts: Sequence[tuple[str, QuantizedWeight]], name: str = "fused") -> QuantizedWeight:
    """The weight of a fused module: its parts' weights concatenated along N (``out_features``), in part order.

    The parts must share scheme, in_features, scale dtype and group map (``g_idx``): one kernel call with one
    activation serves them all. A mismatch names every part (:class:`~wna16.errors.FusedModuleError`).
    """
    if not parts:
        raise FusedModuleError(f"{name}: no parts to concatenate")
    first = parts[0][1]

    def key(w: QuantizedWeight) -> tuple[object, ...]:
        return (w.scheme, w.in_features, w.scales.dtype, w.num_groups)

    g_first = first.group_index()
    if any(key(w) != key(first) or not torch.equal(w.group_index(), g_first) for _, w in parts):
        described = "; ".join(
            f"{n}: {w.scheme} K={w.in_features} scales {str(w.scales.dtype).removeprefix('torch.')}"
            f"{' act-order' if w.act_order else ''}"
            for n, w in parts
        )
        raise FusedModuleError(f"{name}: parts cannot be concatenated along N (they must match): {described}")
    return QuantizedWeight(
        scheme=first.scheme,
        in_features=first.in_features,
        out_features=sum(w.out_features for _, w in parts),
        qweight=torch.cat([w.qweight for _, w in parts], dim=1),
        zeros=torch.cat([w.zeros for _, w in parts], dim=1),
        scales=torch.cat([w.scales for _, w in parts], dim=1),
        g_idx=first.g_idx,
        name=name,
    )


def fused_parts(name: str, packed_modules: Mapping[str, Sequence[str]] = PACKED_MODULES) -> tuple[str, ...] | None:
    """The checkpoint module names a runtime fused module ``name`` concatenates, or None if it is not fused."""
    head, _, last = name.rpartition(".")
    parts = packed_modules.get(last)
    if parts is None:
        return None
    return tuple(f"{head}.{p}" if head else p for p in parts)


def fused_groups(
    names: Sequence[str], packed_modules: Mapping[str, Sequence[str]] = PACKED_MODULES
) -> dict[str, tuple[str, ...]]:
    """The fused runtime modules a runtime builds from modules ``names`` (each fused module whose parts all appear
    among them) -> its parts in fused order: what vLLM will fuse when it serves these layers."""
    present = set(names)
    found: dict[str, tuple[str, ...]] = {}
    for name in names:
        head, _, last = name.rpartition(".")
        for fused, parts in packed_modules.items():
            if last in parts:
                module = f"{head}.{fused}" if head else fused
                full = fused_parts(module, packed_modules)
                if full is not None and all(p in present for p in full):
                    found[module] = full
    return dict(sorted(found.items()))


def resolve_module(
    config: Rules, name: str, packed_modules: Mapping[str, Sequence[str]] = PACKED_MODULES
) -> LayerQuant | FusedQuant | None:
    """Resolve a runtime module that may be fused (``...qkv_proj``): its parts are resolved and :func:`fuse`-d (a
    :class:`FusedQuant` when they disagree).

    A fused name that the config itself lists (some checkpoints are written fused) resolves directly.
    """
    check_moe_name(name)
    parts = fused_parts(name, packed_modules)
    if parts is None or name in config.extra_config:
        return resolve_layer(config, name)[0]
    return fuse([(part, resolve_layer(config, part)[0]) for part in parts], name)


CLOSEST = 3
"""How many close runtime names an unmatched config name is shown with."""


def _close(name: str, candidates: Iterable[str]) -> tuple[str, ...]:
    return tuple(difflib.get_close_matches(name, sorted(set(candidates)), n=CLOSEST, cutoff=0.5))


def unmatched_names(
    config: Rules, module_names: Iterable[str], packed_modules: Mapping[str, Sequence[str]] = PACKED_MODULES
) -> dict[str, tuple[str, ...]]:
    """The config's block prefixes and ``extra_config`` keys (runtime names, after any remap) that match no module of
    ``module_names``, each with its closest runtime names (:mod:`difflib`); empty when every name matches.

    A block prefix matches when it is a module's name or a dotted prefix of one; a plain ``extra_config`` key (a layer
    name) when it is a module's name; a regex key when it ``re.search``-es a module's name. A fused runtime module
    (``qkv_proj``) also counts under its parts' names (``q_proj``), as the config names parts.
    """
    names: set[str] = set()
    for module in module_names:
        names.add(module)
        names.update(fused_parts(module, packed_modules) or ())
    scopes = {name.rsplit(".", depth)[0] for name in names for depth in range(name.count(".") + 1)}
    unmatched: dict[str, tuple[str, ...]] = {}
    for prefix in config.block_prefixes:
        if prefix.rstrip(".") not in scopes:
            unmatched[prefix] = _close(prefix, scopes)
    patterns = dict(config.regex_keys)
    for key in config.extra_config:
        pattern = patterns.get(key)
        if pattern is not None:
            if not any(pattern.search(name) for name in names):
                unmatched[key] = _close(key, names)
        elif key not in names:
            unmatched[key] = _close(key, names)
    return unmatched


def check_names(
    config: Rules,
    module_names: Iterable[str],
    packed_modules: Mapping[str, Sequence[str]] = PACKED_MODULES,
    where: str | None = None,
    space: str = "runtime",
) -> None:
    """Raise :class:`~wna16.errors.UnmatchedNamesError` naming every config name that matches no module of
    ``module_names`` (see :func:`unmatched_names`), before any weight is loaded. ``space`` names the kind of module
    names compared (``runtime``, or ``checkpoint`` for :func:`tensor_modules` of the checkpoint's tensors)."""
    unmatched = unmatched_names(config, module_names, packed_modules)
    if unmatched:
        raise UnmatchedNamesError(where or config.source, unmatched, space)


def tensor_modules(tensor_names: Iterable[str]) -> set[str]:
    """The modules holding the tensors ``tensor_names`` (``model.layers.0.mlp.down_proj`` for its ``.qweight``):
    the module names of a checkpoint, read from its safetensors headers alone."""
    return {name.rsplit(".", 1)[0] for name in tensor_names if "." in name}
