"""``write_checkpoint``: a quantized checkpoint in auto-round's layout (or compressed-tensors') from a float state dict,
through wna16's own RTN.

auto-round makes real checkpoints offline only for the model classes it can load and trace (LLaMA-like LMs, FLUX); the
other families vLLM-Omni serves (Wan2.2, Qwen-Image, the Omni thinkers, ...) and act-order checkpoints need a writer
that produces the same files: ``config.json`` with auto-round's ``quantization_config`` (``quant_method``
"auto-round", ``packing_format``, ``block_name_to_quantize``, ``extra_config``) and one ``model.safetensors`` with
``<module>.qweight/qzeros/scales[/g_idx][/bias]`` per quantized linear and every other tensor as stored.

With a compressed-tensors config (:func:`compressed_tensors_config`) the same function writes llm-compressor's
``pack-quantized`` layout: ``<module>.weight_packed/weight_scale/weight_shape[/weight_zero_point][/weight_g_idx]``.

Which linears are quantized, and how, is decided by wna16's own reader (:meth:`QuantConfig.resolve`) on the config
written, so the files always say what the reader will resolve. A true zero that the chosen packing cannot store
(0 in the v1 ``auto_round:auto_gptq`` layout) is a :class:`~wna16.errors.FormatError`, not a silently clamped zero as
auto-round's own exporter writes it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from wna16.checkpoint.config import WRITTEN_PACKING_NAMES, QuantConfig
from wna16.checkpoint.resolve import FusedQuant
from wna16.errors import ConfigError
from wna16.formats import PackingFormat
from wna16.groups import trivial_g_idx
from wna16.quantize import quantize_rtn
from wna16.reference import dequantize
from wna16.scheme import Scheme


def quantization_config(
    *,
    bits: int,
    group_size: int,
    sym: bool,
    packing_format: str,
    block_name_to_quantize: Sequence[str],
    extra_config: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """The ``quantization_config`` mapping auto-round 0.16 writes (same keys; ``provider`` says who wrote it)."""
    if packing_format not in WRITTEN_PACKING_NAMES:
        raise ConfigError(f"packing_format={packing_format!r}: expected one of {WRITTEN_PACKING_NAMES}")
    config: dict[str, Any] = {
        "bits": bits,
        "block_name_to_quantize": ",".join(block_name_to_quantize),
        "data_type": "int",
        "group_size": group_size,
        "packing_format": packing_format,
        "provider": "wna16",
        "quant_method": "auto-round",
        "sym": sym,
    }
    if extra_config:
        config["extra_config"] = {k: dict(v) for k, v in extra_config.items()}
    return config


def compressed_tensors_config(
    groups: Sequence[tuple[Scheme, Sequence[str]]], *, ignore: Sequence[str] = ("lm_head",), act_order: bool = False
) -> dict[str, Any]:
    """A compressed-tensors ``quantization_config`` (``pack-quantized``) with one config group per ``(scheme,
    targets)`` in order (targets: module names, ``re:`` regexes, or ``"Linear"``), the keys llm-compressor writes.
    ``act_order`` marks every group ``actorder: group`` (a ``weight_g_idx`` per layer)."""
    config_groups = {}
    for i, (scheme, targets) in enumerate(groups):
        weights: dict[str, Any] = {
            "actorder": "group" if act_order else None,
            "block_structure": None,
            "dynamic": False,
            "group_size": None if scheme.group_size == -1 else scheme.group_size,
            "num_bits": scheme.bits,
            "observer": "minmax",
            "observer_kwargs": {},
            "strategy": "channel" if scheme.group_size == -1 else "group",
            "symmetric": scheme.sym,
            "type": "int",
        }
        config_groups[f"group_{i}"] = {
            "format": "pack-quantized",
            "input_activations": None,
            "output_activations": None,
            "targets": list(targets),
            "weights": weights,
        }
    return {
        "config_groups": config_groups,
        "format": "pack-quantized",
        "global_compression_ratio": None,
        "ignore": list(ignore),
        "kv_cache_scheme": None,
        "provider": "wna16",
        "quant_method": "compressed-tensors",
        "quantization_status": "compressed",
    }


def write_checkpoint(
    folder: str | os.PathLike[str],
    state_dict: Mapping[str, torch.Tensor],
    quant_config: Mapping[str, Any],
    *,
    model_config: Mapping[str, Any] | None = None,
    g_idx: Mapping[str, torch.Tensor] | None = None,
    scale_dtype: torch.dtype = torch.float16,
    linears: Collection[str] | None = None,
) -> dict[str, torch.Tensor]:
    """Write ``folder/config.json`` (``model_config`` + ``quant_config``) and ``folder/model.safetensors``.

    Every 2-D floating ``<module>.weight`` whose module the config quantizes is RTN-quantized
    (:func:`wna16.quantize_rtn`, scales in ``scale_dtype``) and packed in the config's layout; ``g_idx`` maps module
    names to an act-order row-to-group map. ``linears``, the model's linear modules, limits quantization to them; a
    compressed-tensors class target (``Linear``) requires it, since a state dict cannot tell an embedding from a
    linear layer. Returns the dequantized float32 weight of each quantized module, the exact weights a correct reader
    must compute.
    """
    out = Path(folder)
    config = QuantConfig.from_dict(dict(quant_config), source=str(out / "config.json"))
    if linears is None and any(rule.target.matches_class() for rule in config.targets):
        raise ConfigError(
            f"{out}: a compressed-tensors class target ('Linear') matches modules by type: pass linears= (the "
            "model's linear module names) so that embeddings and norms are not quantized"
        )
    layout = config.packed_format.layout
    tensors: dict[str, torch.Tensor] = {}
    expected: dict[str, torch.Tensor] = {}
    for name, tensor in state_dict.items():
        module, _, role = name.rpartition(".")
        is_linear = role == "weight" and tensor.dim() == 2 and (linears is None or module in linears)
        quant = config.resolve(module) if is_linear else None
        if isinstance(quant, FusedQuant):
            raise ConfigError(f"{module}: one fused weight cannot be written in several schemes: {quant}")
        if quant is None or not tensor.dtype.is_floating_point:
            tensors[name] = tensor.detach().contiguous()
            continue
        order = None if g_idx is None else g_idx.get(module)
        weight = quantize_rtn(tensor, quant.scheme, scale_dtype=scale_dtype, g_idx=order, name=module)
        packed_tensors = layout.pack(weight)
        if (
            config.packed_format is PackingFormat.COMPRESSED_TENSORS and quant.act_order and weight.g_idx is None
        ):  # the reader expects one
            packed_tensors["weight_g_idx"] = trivial_g_idx(weight.in_features, weight.scheme)
        for key, packed in packed_tensors.items():
            tensors[f"{module}.{key}"] = packed.contiguous()
        expected[module] = dequantize(weight)
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    document = {**(model_config or {}), "quantization_config": dict(quant_config)}
    (out / "config.json").write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")
    return expected
