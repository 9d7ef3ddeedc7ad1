"""Write small quantized checkpoints for the checkpoint tests: RTN-quantized layers, packed with wna16.formats, saved
with safetensors (single file or sharded with an index), plus a config.json holding an auto-round
quantization_config. Each layer's canonical weight is returned so tests can compare what the loader reads back."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import save_file

from wna16 import QuantizedWeight, Scheme, quantize_rtn
from wna16.formats import FORMATS

PACKING = {"gptq": "auto_round:auto_gptq", "gptq_v2": "auto_round", "awq": "auto_round:auto_awq"}


@dataclass(frozen=True)
class Layer:
    name: str
    in_features: int
    out_features: int
    scheme: Scheme = field(default_factory=lambda: Scheme(4, 32, True))
    bias: bool = False
    act_order: bool = False


def llama_layers(
    blocks: int = 2, hidden: int = 64, inter: int = 128, scheme: Scheme = Scheme(4, 32, True)
) -> list[Layer]:
    out = []
    for i in range(blocks):
        p = f"model.layers.{i}"
        out += [
            Layer(f"{p}.self_attn.{n}", hidden, hidden, scheme, bias=n != "o_proj")
            for n in ("q_proj", "k_proj", "v_proj", "o_proj")
        ]
        out += [Layer(f"{p}.mlp.{n}", hidden, inter, scheme) for n in ("gate_proj", "up_proj")]
        out.append(Layer(f"{p}.mlp.down_proj", inter, hidden, scheme))
    return out


def quantized(layer: Layer, seed: int) -> QuantizedWeight:
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(layer.out_features, layer.in_features, generator=gen)
    g_idx = None
    if layer.act_order:
        groups = layer.scheme.num_groups(layer.in_features)
        g_idx = (torch.randperm(layer.in_features, generator=gen) % groups).to(torch.int32)
    return quantize_rtn(w, layer.scheme, scale_dtype=torch.float16, g_idx=g_idx, name=layer.name)


def layer_tensors(
    layers: list[Layer], packed_format: str, seed: int = 0
) -> tuple[dict[str, torch.Tensor], dict[str, QuantizedWeight]]:
    """Packed tensors of every layer (named ``<layer>.<role>``) and the canonical weights they encode."""
    fmt = FORMATS[packed_format]
    tensors: dict[str, torch.Tensor] = {}
    weights: dict[str, QuantizedWeight] = {}
    for i, layer in enumerate(layers):
        weight = quantized(layer, seed + i)
        weights[layer.name] = weight
        for role, tensor in fmt.pack(weight).items():
            tensors[f"{layer.name}.{role}"] = tensor.contiguous()
        if layer.bias:
            tensors[f"{layer.name}.bias"] = torch.randn(
                layer.out_features, generator=torch.Generator().manual_seed(i)
            ).to(torch.float16)
    return tensors, weights


def plain_tensors(hidden: int = 64, vocab: int = 96, blocks: int = 2) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(7)
    out = {
        "model.embed_tokens.weight": torch.randn(vocab, hidden, generator=gen).to(torch.bfloat16),
        "model.norm.weight": torch.ones(hidden, dtype=torch.bfloat16),
        "lm_head.weight": torch.randn(vocab, hidden, generator=gen).to(torch.bfloat16),
    }
    for i in range(blocks):
        out[f"model.layers.{i}.input_layernorm.weight"] = torch.ones(hidden, dtype=torch.bfloat16)
    return out


def quant_config(
    scheme: Scheme = Scheme(4, 32, True),
    packed_format: str = "gptq",
    blocks: str | list[str] = "model.layers",
    **extra: object,
) -> dict[str, object]:
    config: dict[str, object] = {
        "autoround_version": "0.16.1",
        "quant_method": "auto-round",
        "bits": scheme.bits,
        "group_size": scheme.group_size,
        "sym": scheme.sym,
        "data_type": "int",
        "packing_format": PACKING[packed_format],
        "block_name_to_quantize": blocks,
    }
    config.update(extra)
    return config


def write_checkpoint(
    folder: Path,
    tensors: Mapping[str, torch.Tensor],
    quantization_config: Mapping[str, object] | None,
    *,
    shards: int = 1,
    stem: str = "model",
    config_extra: Mapping[str, object] | None = None,
) -> Path:
    """Write ``config.json`` and the tensors as ``<stem>.safetensors`` or ``shards`` files with an index."""
    folder.mkdir(parents=True, exist_ok=True)
    config: dict[str, object] = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", **(config_extra or {})}
    if quantization_config is not None:
        config["quantization_config"] = dict(quantization_config)
    (folder / "config.json").write_text(json.dumps(config, indent=1))
    names = list(tensors)
    if shards == 1:
        save_file({n: tensors[n] for n in names}, str(folder / f"{stem}.safetensors"))
        return folder
    weight_map = {}
    per = -(-len(names) // shards)
    for s in range(shards):
        part = names[s * per : (s + 1) * per]
        file = f"{stem}-{s + 1:05d}-of-{shards:05d}.safetensors"
        save_file({n: tensors[n] for n in part}, str(folder / file))
        weight_map.update(dict.fromkeys(part, file))
    index = {
        "metadata": {"total_size": sum(t.numel() * t.element_size() for t in tensors.values())},
        "weight_map": weight_map,
    }
    (folder / f"{stem}.safetensors.index.json").write_text(json.dumps(index, indent=1))
    return folder


def tiny_llama(
    folder: Path,
    *,
    packed_format: str = "gptq",
    scheme: Scheme = Scheme(4, 32, True),
    shards: int = 1,
    act_order: bool = False,
    blocks: int = 2,
) -> tuple[Path, dict[str, QuantizedWeight], dict[str, torch.Tensor]]:
    """A 2-block LLaMA-shaped checkpoint; returns (folder, canonical weights, every tensor written)."""
    layers = [
        Layer(lay.name, lay.in_features, lay.out_features, lay.scheme, lay.bias, act_order)
        for lay in llama_layers(blocks, scheme=scheme)
    ]
    tensors, weights = layer_tensors(layers, packed_format)
    tensors.update(plain_tensors(blocks=blocks))
    write_checkpoint(folder, tensors, quant_config(scheme, packed_format), shards=shards)
    return folder, weights, tensors
