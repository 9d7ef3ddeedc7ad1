"""Checkpoints: what a quantized checkpoint says about its layers, and how its names map to a runtime's modules.

API (stable; other modules of this package and later issues build on it)::

    from wna16.checkpoint.config import QuantConfig, read_quant_config
    read_quant_config(folder) -> QuantConfig        # config.json, component config.json, quantization_config.json,
                                                    # quantize_config.json, quant_config.json; ConfigError: file + key
    QuantConfig.from_dict(d, source="<dict>")        # the quantization_config mapping, or a whole config.json
    QuantConfig.method         -> "auto-round" | "gptq" | "awq" | "compressed-tensors"
    QuantConfig.packed_format  -> "gptq" (v1 zeros) | "gptq_v2" | "awq" | "compressed-tensors"  (wna16.formats.FORMATS)
    QuantConfig.targets, .ignore   # compressed-tensors config_groups targets (TargetRule) and ignore entries (Target)
    QuantConfig.block_prefixes -> tuple[str, ...]   # () = no block list (every linear but lm_head in scope)
    QuantConfig.default_scheme -> Scheme | None
    QuantConfig.resolve(name)  -> LayerQuant | None # None = unquantized; fused names (qkv_proj, gate_up_proj, to_qkv,
                                                    # add_kv_proj) resolve and fuse their parts
    QuantConfig.explain(name)  -> (LayerQuant | None, reason)    # one unfused layer, with the rule that decided
    QuantConfig.remapped(remap) -> QuantConfig      # checkpoint names -> runtime names
    read_model_config(folder)  -> dict              # config.json, for preset_for

    from wna16.checkpoint.resolve import LayerQuant, fuse, resolve_module, fused_parts, check_moe_name, PACKED_MODULES
    LayerQuant(scheme: Scheme, packed_format: str, act_order: bool, source: str)   # frozen
    fuse([(part_name, LayerQuant | None), ...]) -> LayerQuant | None   # ConfigError naming each part on mismatch
    concat_out([(part_name, QuantizedWeight), ...], name) -> QuantizedWeight  # fused weight, parts along N
    check_moe_name(name)       # MoELayoutError for fused-experts names (experts, experts.gate_up_proj)
    check_names(config, runtime_module_names)   # UnmatchedNamesError: config names matching no runtime module, with
                                                # the closest runtime names; unmatched_names(...) -> {name: closest}
    tensor_modules(tensor_names) -> set[str]   # a checkpoint's module names from its tensor names (headers only)

    from wna16.checkpoint.remap import Remap
    Remap(prefixes={}, substrings={}, stage_prefix="", label="custom"); Remap.from_mapper(prefixes, substrings)
    Remap.from_weights_mapper(vllm_weights_mapper)  # compare a preset with the runtime's own mapper (==)
    Remap.name(checkpoint_name) -> runtime name     # tensors, modules, block prefixes, plain extra_config keys
    Remap.regex_key(key) -> runtime regex           # regex extra_config keys: escaped replacement, no stage prefix
    Remap.IDENTITY
    preset_for(model_config, runtime="vllm-omni", stage=None) -> Remap   # from architectures / _class_name

    from wna16.checkpoint.presets import PRESETS, Preset, find_preset, preset_for

Loading (files.py, audit.py, load.py; also ``wna16.load_checkpoint``)::

    ckpt = wna16.load_checkpoint(path, remap=None, *, expected_modules=None, ignore=(), allow_unquantized=False)
    ckpt.layers: dict[str, CheckpointLayer]   # runtime name -> scheme, packed_format, in/out_features, act_order,
                                              # has_bias, source (checkpoint name), tensors (role -> TensorInfo)
    ckpt.weight(name) -> QuantizedWeight      # lazy, read from the shards; ckpt.bias(name) -> Tensor | None
    ckpt.unquantized: dict[str, TensorInfo]; ckpt.tensor(runtime_name) -> Tensor      # the 16-bit tensors
    ckpt.audit -> AuditReport; ckpt.config -> QuantConfig (remapped); ckpt.remap; ckpt.sizes -> Sizes
    open_checkpoint(...) -> (Checkpoint, AuditReport)   # same, without raising on audit problems (wna16 inspect)
    errors: CheckpointAuditError (.problems, every one), CorruptFileError, UnsafePathError, MissingShardError

Typical use: ``cfg = read_quant_config(path).remapped(preset_for(read_model_config(path)))`` then
``cfg.resolve(runtime_module_name)`` for each linear layer, and ``preset.name(tensor_name)`` for each tensor.
"""

from wna16.checkpoint.config import QuantConfig, read_model_config, read_quant_config
from wna16.checkpoint.presets import PRESETS, Preset, find_preset, preset_for
from wna16.checkpoint.remap import Remap
from wna16.checkpoint.resolve import (
    PACKED_MODULES,
    LayerQuant,
    check_moe_name,
    check_names,
    concat_out,
    fuse,
    fused_parts,
    resolve_module,
    tensor_modules,
    unmatched_names,
)

__all__ = [
    "PACKED_MODULES",
    "PRESETS",
    "LayerQuant",
    "Preset",
    "QuantConfig",
    "Remap",
    "check_moe_name",
    "check_names",
    "concat_out",
    "find_preset",
    "fuse",
    "fused_parts",
    "preset_for",
    "read_model_config",
    "read_quant_config",
    "resolve_module",
    "tensor_modules",
    "unmatched_names",
]
