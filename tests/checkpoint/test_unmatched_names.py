"""Config names that match no runtime module are refused, with the closest runtime names (vLLM-Omni issue 4663)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from wna16.checkpoint import QuantConfig, check_names, read_quant_config, tensor_modules, unmatched_names
from wna16.checkpoint.files import SafetensorsFolder
from wna16.checkpoint.presets import WAN2_2
from wna16.errors import ConfigError, UnmatchedNamesError

FLUX_RUNTIME = [
    "transformer_blocks.0.attn.to_qkv",
    "transformer_blocks.0.attn.add_kv_proj",
    "transformer_blocks.0.attn.to_out.0",
    "transformer_blocks.0.ff.net.0.proj",
    "transformer_blocks.0.norm1.linear",
    "single_transformer_blocks.0.proj_mlp",
    "single_transformer_blocks.0.attn.to_qkv",
    "norm_out.linear",
]


def config(blocks: str, extra: dict[str, dict[str, int]] | None = None) -> QuantConfig:
    return QuantConfig.from_dict(
        {"quant_method": "auto-round", "bits": 4, "group_size": 32, "sym": True,
         "packing_format": "auto_round:auto_gptq", "block_name_to_quantize": blocks, "extra_config": extra or {}}
    )  # fmt: skip


def test_names_that_match_pass() -> None:
    cfg = config(
        "transformer_blocks,single_transformer_blocks.0",
        {"transformer_blocks.0.attn.to_q": {"bits": 8}, r".*proj_mlp": {"bits": 8}, "norm_out.linear": {"bits": 16}},
    )
    assert unmatched_names(cfg, FLUX_RUNTIME) == {}
    check_names(cfg, FLUX_RUNTIME)  # parts of a fused module (to_q of to_qkv) count


def test_unmatched_block_key_and_regex_are_named_with_closest_runtime_names() -> None:
    cfg = config(
        "transformer_blocks,single_blocks",
        {"transformer_blocks.0.attn.to_out": {"bits": 8}, r".*\.ffn\.net\.0\..*": {"bits": 8}},
    )
    with pytest.raises(UnmatchedNamesError) as raised:
        check_names(cfg, FLUX_RUNTIME, where="flux/transformer/config.json")
    error = raised.value
    assert isinstance(error, ConfigError)
    assert set(error.unmatched) == {"single_blocks", "transformer_blocks.0.attn.to_out", r".*\.ffn\.net\.0\..*"}
    assert "single_transformer_blocks" in error.unmatched["single_blocks"]
    # a layer key must name a layer: the prefix of one (to_out of to_out.0) is not enough
    assert error.unmatched["transformer_blocks.0.attn.to_out"][0] == "transformer_blocks.0.attn.to_out.0"
    message = str(error)
    assert message.startswith("flux/transformer/config.json: ") and "'single_blocks'" in message


def test_the_preset_remap_makes_checkpoint_names_match_runtime_names() -> None:
    """auto-round writes Wan2.2's ``ffn.net.0.proj``; vLLM-Omni builds ``ffn.net_0.proj``: raw names fail, remapped
    names pass."""
    runtime = ["blocks.0.ffn.net_0.proj", "blocks.0.ffn.net_2", "blocks.0.attn1.to_qkv", "blocks.0.attn1.to_out"]
    cfg = config("blocks", {"blocks.0.ffn.net.0.proj": {"bits": 8}, "blocks.0.attn1.to_out.0": {"bits": 8}})
    assert set(unmatched_names(cfg, runtime)) == {"blocks.0.ffn.net.0.proj", "blocks.0.attn1.to_out.0"}
    assert unmatched_names(cfg.remapped(WAN2_2.stage()), runtime) == {}


def test_a_prefix_matches_on_dotted_boundaries_only() -> None:
    cfg = config("transformer_block")
    unmatched = unmatched_names(cfg, FLUX_RUNTIME)
    assert list(unmatched) == ["transformer_block"]
    assert unmatched["transformer_block"][0] == "transformer_blocks"


EMBEDDED = Path(__file__).parent.parent / "checkpoints" / "embedded" / "tiny-llama-w4g128-auto_round"


def test_a_checkpoint_config_is_checked_against_the_checkpoints_own_module_names() -> None:
    """vLLM's engine path (``Wna16Config.maybe_update_config``) compares the config as written with the modules that
    hold the checkpoint's tensors (:func:`tensor_modules` of the safetensors headers): one name space, no remap. The
    auto-round checkpoint's own config passes; a misspelt ``extra_config`` key or block is named with the closest
    checkpoint names."""
    modules = tensor_modules(SafetensorsFolder(EMBEDDED))
    assert "model.layers.0.mlp.down_proj" in modules and "model.embed_tokens" in modules
    assert not any(m.endswith((".qweight", ".weight")) for m in modules)
    written = read_quant_config(EMBEDDED)
    check_names(written, modules, space="checkpoint")
    raw = json.loads((EMBEDDED / "quantization_config.json").read_text())
    misnamed = QuantConfig.from_dict(
        {**raw, "block_name_to_quantize": "model.layer", "extra_config": {"model.layers.0.mlp.down_projj": {"bits": 8}}}
    )
    with pytest.raises(UnmatchedNamesError) as raised:
        check_names(misnamed, modules, where="ckpt/config.json: quantization_config", space="checkpoint")
    error = raised.value
    assert error.space == "checkpoint" and set(error.unmatched) == {"model.layer", "model.layers.0.mlp.down_projj"}
    assert error.unmatched["model.layer"][0] == "model.layers"
    assert error.unmatched["model.layers.0.mlp.down_projj"][0] == "model.layers.0.mlp.down_proj"
    assert str(error).startswith("ckpt/config.json: quantization_config: names that match no checkpoint module: ")
    assert "'model.layer' (closest checkpoint names: 'model.layers'" in str(error)
