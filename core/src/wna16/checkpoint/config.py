"""``quantization_config`` of AutoRound, GPTQ and AWQ checkpoints, read into one :class:`QuantConfig`.

Where it is found (:func:`read_quant_config`): ``config.json`` (key ``quantization_config``), a diffusers component's
``config.json`` (``transformer/config.json``; a pipeline root with exactly one quantized component is accepted),
``quantization_config.json``, GPTQ's ``quantize_config.json`` or AutoAWQ's ``quant_config.json``.

Forms read (each key is validated; unknown metadata such as ``autoround_version``, ``iters`` or ``model_free`` is kept
in :attr:`QuantConfig.metadata` and ignored):

- auto-round: ``quant_method`` ``"auto-round"`` (legacy ``"intel/auto-round"``); ``bits``, ``group_size``, ``sym``,
  ``data_type``, ``act_bits``; ``packing_format`` (legacy key ``backend``, legacy values ``auto_round:gptq`` /
  ``auto_round:awq`` meaning ``auto_round:auto_gptq`` / ``auto_round:auto_awq``, a trailing kernel name such as
  ``:exllamav2`` ignored); ``block_name_to_quantize`` (comma string or list; also ``to_quant_block_names`` and
  ``quant_block_list``); ``extra_config``; ``modules_to_not_convert``.
- GPTQ: ``quant_method`` ``"gptq"`` (or absent in an AutoGPTQ ``quantize_config.json``); ``bits``, ``group_size``,
  ``sym``, ``desc_act``, ``checkpoint_format`` (``gptq`` = v1 zeros, ``gptq_v2``), ``dynamic``, ``lm_head``,
  ``modules_in_block_to_quantize``.
- AWQ: ``quant_method`` ``"awq"``; ``bits`` / AutoAWQ's ``w_bit``, ``group_size`` / ``q_group_size``, ``zero_point``
  (true = asymmetric), ``version`` ``"gemm"``, ``modules_to_not_convert``.

- compressed-tensors (llm-compressor, auto-round's ``llm_compressor`` export): ``quant_method``
  ``"compressed-tensors"``, ``format`` ``"pack-quantized"`` (or ``"mixed-precision"`` with every group
  ``pack-quantized``), ``config_groups`` (``targets``; ``weights``: ``num_bits``, ``type`` int, ``strategy``
  ``group``/``channel``, ``group_size``, ``symmetric``, ``actorder``), ``ignore``; parsed by
  :func:`parse_compressed_tensors`, resolved per layer by :func:`wna16.checkpoint.resolve.resolve_targets`.

Packed layouts (names in :data:`wna16.formats.FORMATS`): ``auto_round:auto_gptq``, ``auto_gptq`` and GPTQ
``checkpoint_format: gptq`` store zero - 1 (``"gptq"``); native ``auto_round``, ``auto_round:gptqmodel`` and
``gptq_v2`` store the zero as is (``"gptq_v2"``); ``auto_round:auto_awq``, ``auto_awq`` and AWQ gemm are ``"awq"``.

Anything outside WnA16 is a :class:`~wna16.errors.ConfigError` naming the key: a ``data_type`` other than int
(mx_fp, fp8, nv_fp, ...), ``act_bits`` below 16 (W4A8 is not weight-only), an unknown packing format, bits outside
{2, 3, 4, 8} (16 and above mean "unquantized"), a group size of 0 or below -1, an invalid regex key.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from wna16.checkpoint.files import read_json
from wna16.checkpoint.patterns import BoundedPattern
from wna16.checkpoint.resolve import (
    UNQUANTIZED_BITS,
    DynamicRule,
    FusedQuant,
    LayerQuant,
    Override,
    Target,
    TargetRule,
    is_regex_key,
    resolve_layer,
    resolve_module,
)
from wna16.errors import ConfigError
from wna16.formats import PackingFormat
from wna16.scheme import SUPPORTED_BITS, Scheme

if TYPE_CHECKING:
    from wna16.checkpoint.remap import Remap

METHODS: tuple[str, ...] = ("auto-round", "gptq", "awq", "compressed-tensors")

CONFIG_FILES: tuple[str, ...] = ("config.json", "quantization_config.json", "quantize_config.json", "quant_config.json")
"""Files :func:`read_quant_config` looks in, in order (the ones after ``config.json`` hold only the quantization
config: what vLLM's ``get_config_filenames`` lists)."""

AUTO_ROUND_METHODS = frozenset({"auto-round", "intel/auto-round", "auto_round"})
"""``quant_method`` spellings of auto-round checkpoints (lower case)."""

QUANT_METHODS = AUTO_ROUND_METHODS | {"gptq", "awq", "compressed-tensors"}
"""Every ``quant_method`` value (lower case) this module reads."""

PACKING_NAMES: Mapping[str, PackingFormat] = {
    "auto_round": PackingFormat.GPTQ_V2,
    "auto_round:gptqmodel": PackingFormat.GPTQ_V2,
    "auto_round:auto_gptq": PackingFormat.GPTQ,
    "auto_round:gptq": PackingFormat.GPTQ,
    "auto_gptq": PackingFormat.GPTQ,
    "auto": PackingFormat.GPTQ,
    "auto_round:auto_awq": PackingFormat.AWQ,
    "auto_round:awq": PackingFormat.AWQ,
    "auto_awq": PackingFormat.AWQ,
}
"""auto-round packing names (lower case) -> layout. ``auto`` is what auto-round's reader maps to auto_gptq."""

WRITTEN_PACKING_NAMES: tuple[str, ...] = (
    "auto_round",
    "auto_round:auto_gptq",
    "auto_round:gptqmodel",
    "auto_round:auto_awq",
)
"""The packing names :func:`wna16.checkpoint.write.quantization_config` writes (a subset of :data:`PACKING_NAMES`)."""

_KERNEL_SUFFIXES = frozenset(
    {"exllamav2", "exllamav1", "marlin", "triton", "tritonv2", "qbits", "ipex", "cuda", "torch"}
)
"""Kernel names legacy ``backend`` values append (``auto_round:gptq:exllamav2``); they do not change the layout."""

_GPTQ_FORMATS: Mapping[str, PackingFormat] = {f.value: f for f in (PackingFormat.GPTQ, PackingFormat.GPTQ_V2)}


@dataclass(frozen=True)
class QuantConfig:
    """A checkpoint's quantization config, validated and normalised; :meth:`resolve` answers per layer.

    ``bits``/``group_size``/``sym``/``act_order`` are the defaults. ``block_prefixes`` empty means "no block list:
    every linear layer but ``lm_head`` is in scope". ``extra_config`` keeps the written order (regex keys are tried
    in it). ``targets``/``ignore``: a compressed-tensors config's rules (its defaults are those of a ``Linear``
    target, or bits 16 when every quantized layer is named). ``source`` names the file (or ``<dict>``) for messages.
    """

    method: str
    packed_format: PackingFormat
    bits: int
    group_size: int
    sym: bool
    act_order: bool = False
    block_prefixes: tuple[str, ...] = ()
    extra_config: Mapping[str, Override] = field(default_factory=dict)
    modules_to_not_convert: tuple[str, ...] = ()
    dynamic: tuple[DynamicRule, ...] = ()
    modules_in_block: tuple[BoundedPattern, ...] = ()
    lm_head: bool = False
    targets: tuple[TargetRule, ...] = ()
    ignore: tuple[Target, ...] = ()
    source: str = "<dict>"
    metadata: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)
    regex_keys: tuple[tuple[str, BoundedPattern], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "packed_format", PackingFormat.of(self.packed_format))
        regex = [key for key in self.extra_config if is_regex_key(key)]
        compiled = tuple((key, _compile(key, f"{self.source}: extra_config key")) for key in regex)
        object.__setattr__(self, "regex_keys", compiled)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], source: str = "<dict>") -> QuantConfig:
        """Parse a ``quantization_config`` mapping (or a whole ``config.json`` holding one)."""
        return _parse(d, source)

    @property
    def defaults(self) -> Override:
        """The global scheme as an :class:`Override` with every field set."""
        return Override(self.bits, self.group_size, self.sym, self.act_order)

    @property
    def default_scheme(self) -> Scheme | None:
        """The global scheme, or None when the default is unquantized (bits >= 16)."""
        return None if self.bits >= UNQUANTIZED_BITS else Scheme(self.bits, self.group_size, self.sym)

    def resolve(self, module_name: str) -> LayerQuant | FusedQuant | None:
        """How the linear layer ``module_name`` is stored; ``None`` = unquantized. Fused runtime names
        (``qkv_proj``, ``gate_up_proj``, ``to_qkv``) resolve their parts: one :class:`LayerQuant` when they agree, a
        :class:`FusedQuant` (served part-run by part-run) when they do not (see :mod:`.resolve`).
        """
        return resolve_module(self, module_name)

    def explain(self, module_name: str) -> tuple[LayerQuant | None, str]:
        """:meth:`resolve` for one (unfused) layer, with the rule that decided, for audits and messages."""
        return resolve_layer(self, module_name)

    def remapped(self, remap: Remap) -> QuantConfig:
        """The config with checkpoint names translated to runtime names (see :class:`~wna16.checkpoint.remap.Remap`).

        Block prefixes, plain ``extra_config`` keys and ``modules_to_not_convert`` entries map like tensor names;
        regex keys and GPTQ ``dynamic`` patterns get the escaped replacement and no stage prefix.
        """
        extra: dict[str, Override] = {}
        origin: dict[str, str] = {}
        for key, value in self.extra_config.items():
            new = remap.regex_key(key) if is_regex_key(key) else remap.name(key)
            if new in extra and extra[new] != value:
                raise ConfigError(
                    f"{self.source}: extra_config keys {origin[new]!r} and {key!r} both map to {new!r} "
                    "with different settings"
                )
            extra[new], origin[new] = value, key
        dynamic = tuple(
            replace(r, pattern=_compile(remap.regex_key(r.pattern.pattern), f"{self.source}: dynamic key"))
            for r in self.dynamic
        )
        return replace(
            self,
            targets=tuple(replace(r, target=_remap_target(r.target, remap, self.source)) for r in self.targets),
            ignore=tuple(_remap_target(t, remap, self.source) for t in self.ignore),
            block_prefixes=tuple(dict.fromkeys(remap.name(p) for p in self.block_prefixes)),
            extra_config=extra,
            modules_to_not_convert=tuple(remap.name(m) for m in self.modules_to_not_convert),
            dynamic=dynamic,
            source=f"{self.source} (remapped)",
        )


def _remap_target(target: Target, remap: Remap, source: str) -> Target:
    """A compressed-tensors target in runtime names: a regex as a regex key, a class name kept, a name mapped."""
    if target.pattern is not None:
        key = remap.regex_key(target.pattern.pattern)
        return Target(f"re:{key}", _compile(key, f"{source}: target"))
    if target.matches_class():
        return target
    return Target(remap.name(target.text))


def read_quant_config(folder: str | os.PathLike[str]) -> QuantConfig:
    """Find and parse the quantization config of a checkpoint folder (or of the JSON file given).

    A diffusers pipeline root (``model_index.json``) with exactly one quantized component reads that component;
    with several (Wan2.2's ``transformer`` and ``transformer_2``) the error names them: read each component folder.
    """
    path = Path(folder)
    if path.exists() and not path.is_dir():
        return _from_file(path, required=True)  # type: ignore[return-value]
    if not path.is_dir():
        raise ConfigError(f"{path}: no such checkpoint folder or config file")
    for name in CONFIG_FILES:
        found = _from_file(path / name, required=False)
        if found is not None:
            return found
    if (path / "model_index.json").is_file():
        components = sorted(p.parent for p in path.glob("*/config.json") if _from_file(p, required=False))
        if len(components) == 1:
            return _from_file(components[0] / "config.json", required=True)  # type: ignore[return-value]
        if components:
            names = ", ".join(p.name for p in components)
            raise ConfigError(f"{path}: several quantized components ({names}); read one component folder")
    raise ConfigError(f"{path}: no quantization config (looked for quantization_config in {', '.join(CONFIG_FILES)})")


def read_model_config(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``config.json`` of a checkpoint (or component) folder, for :func:`~wna16.checkpoint.presets.preset_for`."""
    return _load_json(Path(folder) / "config.json")


def _load_json(path: Path) -> dict[str, Any]:
    data = read_json(path, ConfigError)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def _from_file(path: Path, required: bool) -> QuantConfig | None:
    if not path.exists():  # a FIFO or device is not skipped: reading it says what it is
        return None
    data = _load_json(path)
    if path.name == "config.json" and "quantization_config" not in data:
        if required:
            raise ConfigError(f"{path}: no 'quantization_config' key")
        return None
    return _parse(data, str(path), default_method=None if path.name == "config.json" else _guess_method(data))


def _guess_method(d: Mapping[str, Any]) -> str | None:
    """GPTQ's quantize_config.json and AutoAWQ's quant_config.json may omit ``quant_method``."""
    if "w_bit" in d or "zero_point" in d:
        return "awq"
    if "desc_act" in d or "checkpoint_format" in d:
        return "gptq"
    return None


# ---------------------------------------------------------------------------------------------------------------
# Parsing. Every helper takes the source and the key path so that a message names exactly what to fix.


def _parse(d: Mapping[str, Any], source: str, default_method: str | None = None) -> QuantConfig:
    if not isinstance(d, Mapping):
        raise ConfigError(f"{source}: expected a mapping, got {type(d).__name__}")
    inner = d.get("quantization_config")
    if inner is not None:
        if not isinstance(inner, Mapping):
            raise ConfigError(f"{source}: quantization_config: expected an object, got {type(inner).__name__}")
        d, source = inner, f"{source}: quantization_config"
    raw_method = d.get("quant_method", default_method)
    if raw_method is None:
        raw_method = _guess_method(d)
    if not isinstance(raw_method, str):
        raise ConfigError(f"{source}: quant_method={raw_method!r}: expected one of {list(METHODS)}")
    method = raw_method.strip().lower()
    if method in AUTO_ROUND_METHODS:
        return _parse_auto_round(d, source)
    if method == "gptq":
        return _parse_gptq(d, source)
    if method == "awq":
        return _parse_awq(d, source)
    if method == "compressed-tensors":
        return parse_compressed_tensors(d, source)
    raise ConfigError(f"{source}: quant_method={raw_method!r}: not a WnA16 method; expected one of {list(METHODS)}")


def _bits(value: Any, where: str) -> int:
    if (
        isinstance(value, bool)
        or not isinstance(value, int)
        or (value not in SUPPORTED_BITS and value < UNQUANTIZED_BITS)
    ):
        raise ConfigError(f"{where}={value!r}: expected one of {list(SUPPORTED_BITS)} (or >= 16: unquantized)")
    return value


def _group(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or (value != -1 and not 0 < value < 1 << 31):
        raise ConfigError(f"{where}={value!r}: expected -1 (one group over K) or a positive integer below 2**31")
    return value


def _bool(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{where}={value!r}: expected true or false")
    return value


def _names(value: Any, where: str) -> tuple[str, ...]:
    """A comma string or a (possibly nested) list of strings, stripped, empties dropped."""
    if value is None:
        return ()
    if isinstance(value, str):
        items: list[Any] = value.split(",")
    elif isinstance(value, list | tuple):
        items = []
        for v in value:
            items.extend(v if isinstance(v, list | tuple) else [v])
    else:
        raise ConfigError(f"{where}={value!r}: expected a comma-separated string or a list of names")
    if not all(isinstance(v, str) for v in items):
        raise ConfigError(f"{where}={value!r}: expected names (strings)")
    return tuple(dict.fromkeys(s.strip() for s in items if s.strip()))


def _compile(key: str, where: str) -> BoundedPattern:
    """A checkpoint's regex, matched with a time limit (see :mod:`wna16.checkpoint.patterns`)."""
    return BoundedPattern(key, where)


def _check_activations(d: Mapping[str, Any], where: str) -> None:
    act_bits = d.get("act_bits")
    if act_bits is None:
        return
    if isinstance(act_bits, bool) or not isinstance(act_bits, int):
        raise ConfigError(f"{where}act_bits={act_bits!r}: expected an integer")
    if act_bits < UNQUANTIZED_BITS:
        raise ConfigError(f"{where}act_bits={act_bits}: quantized activations are not WnA16 (expected act_bits >= 16)")


def _check_data_type(d: Mapping[str, Any], bits: int, where: str) -> None:
    data_type = d.get("data_type", "int")
    if bits < UNQUANTIZED_BITS and data_type != "int":
        raise ConfigError(f"{where}data_type={data_type!r}: only integer weights are WnA16 (expected 'int')")


def _override(value: Any, key: str, defaults: Override, source: str, section: str) -> Override:
    where = f"{source}: {section}[{key!r}]."
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where[:-1]}={value!r}: expected an object of settings")
    bits = _bits(value["bits"], f"{where}bits") if "bits" in value else None
    group = _group(value["group_size"], f"{where}group_size") if "group_size" in value else None
    sym = _bool(value["sym"], f"{where}sym") if "sym" in value else None
    act_order = _bool(value["desc_act"], f"{where}desc_act") if "desc_act" in value else None
    _check_activations(value, where)
    _check_data_type(value, bits if bits is not None else defaults.bits or UNQUANTIZED_BITS, where)
    return Override(bits, group, sym, act_order)


def _extra_config(d: Mapping[str, Any], defaults: Override, source: str) -> dict[str, Override]:
    raw = d.get("extra_config")
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{source}: extra_config: expected an object keyed by module name or regex")
    extra: dict[str, Override] = {}
    for key, value in raw.items():
        if not isinstance(key, str) or not key:
            raise ConfigError(f"{source}: extra_config key {key!r}: expected a non-empty module name or regex")
        extra[key] = _override(value, key, defaults, source, "extra_config")
    return extra


def _common(d: Mapping[str, Any], source: str, bits_key: str, group_key: str) -> tuple[int, int]:
    bits = _bits(d.get(bits_key, 4), f"{source}: {bits_key}")
    group = _group(d.get(group_key, 128), f"{source}: {group_key}")
    _check_activations(d, f"{source}: ")
    _check_data_type(d, bits, f"{source}: ")
    return bits, group


def _metadata(d: Mapping[str, Any], known: set[str]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if k not in known}


def _packing(d: Mapping[str, Any], source: str) -> PackingFormat:
    key = "packing_format" if d.get("packing_format") is not None else "backend"
    value = d.get(key, "auto_round:auto_gptq")
    if not isinstance(value, str):
        raise ConfigError(f"{source}: {key}={value!r}: expected a packing format name")
    name = value.strip().lower()
    head, _, last = name.rpartition(":")
    if head and last in _KERNEL_SUFFIXES:
        name = head
    layout = PACKING_NAMES.get(name)
    if layout is None:
        raise ConfigError(f"{source}: {key}={value!r}: unknown packing format; expected one of {sorted(PACKING_NAMES)}")
    return layout


def _check_awq_bits(bits: int, extra: Mapping[str, Override], source: str) -> None:
    """The AWQ gemm layout packs eight 4-bit codes per word; no other width exists in it."""
    if bits < UNQUANTIZED_BITS and bits != 4:
        raise ConfigError(f"{source}: bits={bits}: the AWQ layout is 4-bit only")
    for key, o in extra.items():
        if o.bits is not None and o.bits < UNQUANTIZED_BITS and o.bits != 4:
            raise ConfigError(f"{source}: extra_config[{key!r}].bits={o.bits}: the AWQ layout is 4-bit only")


def _block_prefixes(d: Mapping[str, Any], source: str) -> tuple[str, ...]:
    for key in ("block_name_to_quantize", "to_quant_block_names"):
        if d.get(key) is not None:
            return tuple(p.rstrip(".") for p in _names(d[key], f"{source}: {key}") if p.rstrip("."))
    blocks = d.get("quant_block_list")
    if blocks is None:
        return ()
    if not isinstance(blocks, list | tuple):
        raise ConfigError(f"{source}: quant_block_list={blocks!r}: expected a list")
    prefixes: list[str] = []
    for i, group in enumerate(blocks):
        names = _names(group, f"{source}: quant_block_list[{i}]")
        if isinstance(group, list | tuple) and names:
            names = (os.path.commonprefix(list(names)).rstrip("."),)  # noqa: RUF071 (character-wise, as auto-round)
        prefixes.extend(n for n in names if n)
    return tuple(dict.fromkeys(prefixes))


_AUTO_ROUND_KEYS = {
    "quant_method",
    "bits",
    "group_size",
    "sym",
    "data_type",
    "act_bits",
    "packing_format",
    "backend",
    "block_name_to_quantize",
    "to_quant_block_names",
    "quant_block_list",
    "extra_config",
    "modules_to_not_convert",
}


def _parse_auto_round(d: Mapping[str, Any], source: str) -> QuantConfig:
    bits, group = _common(d, source, "bits", "group_size")
    sym = _bool(d.get("sym", True), f"{source}: sym")
    packed = _packing(d, source)
    defaults = Override(bits, group, sym, False)
    extra = _extra_config(d, defaults, source)
    if packed is PackingFormat.AWQ:
        _check_awq_bits(bits, extra, source)
    return QuantConfig(
        method="auto-round",
        packed_format=packed,
        bits=bits,
        group_size=group,
        sym=sym,
        block_prefixes=_block_prefixes(d, source),
        extra_config=extra,
        modules_to_not_convert=_names(d.get("modules_to_not_convert"), f"{source}: modules_to_not_convert"),
        source=source,
        metadata=_metadata(d, _AUTO_ROUND_KEYS),
    )


def _dynamic(d: Mapping[str, Any], defaults: Override, source: str) -> tuple[DynamicRule, ...]:
    raw = d.get("dynamic")
    if raw is None:
        return ()
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{source}: dynamic: expected an object of '+:regex' / '-:regex' keys")
    rules = []
    for key, value in raw.items():
        if not isinstance(key, str):
            raise ConfigError(f"{source}: dynamic key {key!r}: expected a string")
        skip = key.startswith("-:")
        pattern = key[2:] if skip or key.startswith("+:") else key
        override = Override() if skip else _override(value, key, defaults, source, "dynamic")
        rules.append(DynamicRule(key, _compile(pattern, f"{source}: dynamic key"), skip, override))
    return tuple(rules)


_GPTQ_KEYS = {
    "quant_method",
    "bits",
    "group_size",
    "sym",
    "desc_act",
    "checkpoint_format",
    "format",
    "dynamic",
    "lm_head",
    "modules_in_block_to_quantize",
    "block_name_to_quantize",
    "extra_config",
    "modules_to_not_convert",
    "data_type",
    "act_bits",
}


def _parse_gptq(d: Mapping[str, Any], source: str) -> QuantConfig:
    bits, group = _common(d, source, "bits", "group_size")
    sym = _bool(d.get("sym", True), f"{source}: sym")
    act_order = _bool(d.get("desc_act", False), f"{source}: desc_act")
    key = "checkpoint_format" if "checkpoint_format" in d else "format"
    fmt = d.get(key, "gptq")
    if not isinstance(fmt, str) or fmt.lower() not in _GPTQ_FORMATS:
        raise ConfigError(f"{source}: {key}={fmt!r}: expected one of {sorted(_GPTQ_FORMATS)}")
    defaults = Override(bits, group, sym, act_order)
    in_block = _names(d.get("modules_in_block_to_quantize"), f"{source}: modules_in_block_to_quantize")
    return QuantConfig(
        method="gptq",
        packed_format=_GPTQ_FORMATS[fmt.lower()],
        bits=bits,
        group_size=group,
        sym=sym,
        act_order=act_order,
        block_prefixes=_block_prefixes(d, source),
        extra_config=_extra_config(d, defaults, source),
        modules_to_not_convert=_names(d.get("modules_to_not_convert"), f"{source}: modules_to_not_convert"),
        dynamic=_dynamic(d, defaults, source),
        modules_in_block=tuple(_compile(n, f"{source}: modules_in_block_to_quantize entry") for n in in_block),
        lm_head=_bool(d.get("lm_head", False), f"{source}: lm_head"),
        source=source,
        metadata=_metadata(d, _GPTQ_KEYS),
    )


_AWQ_KEYS = {"quant_method", "bits", "w_bit", "group_size", "q_group_size", "zero_point", "version", "sym"}
_AWQ_KEYS |= {"modules_to_not_convert", "data_type", "act_bits", "to_quant_block_names", "block_name_to_quantize"}


def _parse_awq(d: Mapping[str, Any], source: str) -> QuantConfig:
    bits_key = "bits" if "bits" in d else "w_bit"
    group_key = "group_size" if "group_size" in d else "q_group_size"
    bits, group = _common(d, source, bits_key, group_key)
    version = d.get("version", "gemm")
    if not isinstance(version, str) or version.lower() != "gemm":
        raise ConfigError(f"{source}: version={version!r}: only the AWQ 'gemm' layout is supported")
    zero_point = _bool(d.get("zero_point", True), f"{source}: zero_point")
    if "sym" in d and _bool(d["sym"], f"{source}: sym") == zero_point:
        raise ConfigError(
            f"{source}: sym={d['sym']} contradicts zero_point={zero_point} (a zero point means asymmetric)"
        )
    _check_awq_bits(bits, {}, source)
    return QuantConfig(
        method="awq",
        packed_format=PackingFormat.AWQ,
        bits=bits,
        group_size=group,
        sym=not zero_point,
        block_prefixes=_block_prefixes(d, source),  # auto-round's AWQ export writes to_quant_block_names
        modules_to_not_convert=_names(d.get("modules_to_not_convert"), f"{source}: modules_to_not_convert"),
        source=source,
        metadata=_metadata(d, _AWQ_KEYS),
    )


# ---------------------------------------------------------------------------------------------------------------
# compressed-tensors (llm-compressor's format). Only what WnA16 means is accepted: integer weights packed as
# pack-quantized, per group or per channel, activations and KV cache left in float, no sparsity, no transforms.

CT_FORMAT = "pack-quantized"
CT_FORMATS_ACCEPTED = (CT_FORMAT, "mixed-precision")
"""Global ``format`` values read; ``mixed-precision`` requires every config group to say ``pack-quantized``."""

_CT_ACT_ORDER: Mapping[Any, bool] = {
    None: False, False: False, "weight": False, "static": False, "group": True, "dynamic": True, True: True,
}  # fmt: skip
"""``actorder`` -> whether ``weight_g_idx`` is stored. ``weight``/``static`` reorder only during quantization (the
groups stay contiguous on disk); ``group`` (alias ``dynamic``, ``true`` in older configs) stores the row-to-group
map (compressed-tensors 0.20 no longer writes it; vLLM still reads it)."""

_CT_KEYS = {
    "quant_method", "format", "config_groups", "ignore", "quantization_status", "kv_cache_scheme",
    "sparsity_config", "transform_config",
}  # fmt: skip


def _ct_weights(raw: Any, where: str) -> Override:
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where}={raw!r}: expected an object of weight quantization arguments")
    kind = raw.get("type", "int")
    if kind != "int":
        raise ConfigError(f"{where}.type={kind!r}: only integer weights are WnA16 (expected 'int')")
    bits = raw.get("num_bits")
    if isinstance(bits, bool) or not isinstance(bits, int) or bits not in SUPPORTED_BITS:
        raise ConfigError(f"{where}.num_bits={bits!r}: expected one of {list(SUPPORTED_BITS)}")
    strategy, group = raw.get("strategy"), raw.get("group_size")
    if strategy == "group" or (strategy is None and group is not None):
        group = _group(group, f"{where}.group_size")
        if group == -1:
            raise ConfigError(f"{where}.group_size=-1: strategy 'group' needs a positive group size")
    elif strategy == "channel":
        if group not in (None, -1):
            raise ConfigError(f"{where}.group_size={group!r}: strategy 'channel' has no group size (expected null)")
        group = -1
    else:
        raise ConfigError(f"{where}.strategy={strategy!r}: expected 'group' or 'channel' (the WnA16 strategies)")
    sym = _bool(raw.get("symmetric", True), f"{where}.symmetric")
    order = raw.get("actorder")
    if not isinstance(order, bool | str | None) or order not in _CT_ACT_ORDER:
        raise ConfigError(f"{where}.actorder={order!r}: expected one of null, 'group', 'dynamic', 'weight', 'static'")
    for key in ("dynamic", "block_structure"):
        if raw.get(key) not in (None, False):
            raise ConfigError(f"{where}.{key}={raw[key]!r}: not a static weight-only scheme (expected null/false)")
    return Override(bits, group, sym, _CT_ACT_ORDER[order])


def _ct_target(text: Any, where: str) -> Target:
    if not isinstance(text, str) or not text:
        raise ConfigError(f"{where}={text!r}: expected a module name, a class name or 're:<regex>'")
    if text.startswith("re:"):
        return Target(text, _compile(text[3:], where))
    return Target(text)


def _ct_group(name: str, group: Any, fmt: str, source: str) -> list[TargetRule]:
    where = f"{source}: config_groups[{name!r}]"
    if not isinstance(group, Mapping):
        raise ConfigError(f"{where}: expected an object with targets and weights")
    group_format = group.get("format") or fmt
    if group_format != CT_FORMAT:
        raise ConfigError(f"{where}.format={group_format!r}: only {CT_FORMAT!r} is read (integer weights packed in "
                          "int32); other compressed-tensors formats are not WnA16 layouts")  # fmt: skip
    for key in ("input_activations", "output_activations"):
        if group.get(key) is not None:
            raise ConfigError(f"{where}.{key}: quantized activations are not WnA16 (expected null)")
    targets = group.get("targets")
    if not isinstance(targets, list | tuple) or not targets:
        raise ConfigError(f"{where}.targets={targets!r}: expected a non-empty list")
    override = _ct_weights(group.get("weights"), f"{where}.weights")
    return [TargetRule(_ct_target(t, f"{where}.targets[{i}]"), name, override) for i, t in enumerate(targets)]


def parse_compressed_tensors(d: Mapping[str, Any], source: str) -> QuantConfig:
    """A compressed-tensors ``quantization_config`` (``pack-quantized`` integer weights only)."""
    fmt = d.get("format", CT_FORMAT)
    if fmt not in CT_FORMATS_ACCEPTED:
        raise ConfigError(f"{source}: format={fmt!r}: only {CT_FORMAT!r} (or 'mixed-precision' of pack-quantized "
                          "groups) is read; other compressed-tensors formats are not WnA16 layouts")  # fmt: skip
    status = d.get("quantization_status", "compressed")
    if status != "compressed":
        raise ConfigError(f"{source}: quantization_status={status!r}: expected 'compressed' (packed weights)")
    if d.get("kv_cache_scheme") is not None:
        raise ConfigError(f"{source}: kv_cache_scheme: a quantized KV cache is not WnA16 (expected null)")
    sparsity = d.get("sparsity_config") or {}
    if not isinstance(sparsity, Mapping) or sparsity.get("format", "dense") != "dense":
        raise ConfigError(f"{source}: sparsity_config={sparsity!r}: sparse weights are not read (expected dense)")
    if d.get("transform_config"):
        raise ConfigError(f"{source}: transform_config: transformed (rotated) weights are not read")
    groups = d.get("config_groups")
    if not isinstance(groups, Mapping) or not groups:
        raise ConfigError(f"{source}: config_groups={groups!r}: expected a non-empty object of groups")
    rules = [rule for name, group in groups.items() for rule in _ct_group(str(name), group, fmt, source)]
    raw_ignore = d.get("ignore") or []
    if not isinstance(raw_ignore, list | tuple):
        raise ConfigError(f"{source}: ignore={raw_ignore!r}: expected a list of names, class names or 're:' regexes")
    ignore = tuple(_ct_target(t, f"{source}: ignore[{i}]") for i, t in enumerate(raw_ignore))
    default = next((r.override for r in reversed(rules) if r.target.matches_class()), None)
    bits, group, sym = (
        (UNQUANTIZED_BITS, -1, True) if default is None else (default.bits, default.group_size, default.sym)
    )
    return QuantConfig(
        method="compressed-tensors",
        packed_format=PackingFormat.COMPRESSED_TENSORS,
        bits=bits or UNQUANTIZED_BITS,
        group_size=-1 if group is None else group,
        sym=True if sym is None else sym,
        act_order=bool(default is not None and default.act_order),
        targets=tuple(rules),
        ignore=ignore,
        source=source,
        metadata=_metadata(d, _CT_KEYS),
    )
