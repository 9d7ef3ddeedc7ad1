"""Config names that match no runtime module are refused, with the closest runtime names (vLLM-Omni issue 4663)."""

from __future__ import annotations

import pytest

from wna16.checkpoint import QuantConfig, check_names, unmatched_names
from wna16.checkpoint.presets import FLUX
from wna16.errors import ConfigError, UnmatchedNamesError

FLUX_RUNTIME = [
    "transformer_blocks.0.attn.to_qkv",
    "transformer_blocks.0.attn.add_kv_proj",
    "transformer_blocks.0.attn.to_out",
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
        {"transformer_blocks.0.attn.to_out.0": {"bits": 8}, r".*\.ffn\.net\.0\..*": {"bits": 8}},
    )
    with pytest.raises(UnmatchedNamesError) as raised:
        check_names(cfg, FLUX_RUNTIME, where="flux/transformer/config.json")
    error = raised.value
    assert isinstance(error, ConfigError)
    assert set(error.unmatched) == {"single_blocks", "transformer_blocks.0.attn.to_out.0", r".*\.ffn\.net\.0\..*"}
    assert "single_transformer_blocks" in error.unmatched["single_blocks"]
    assert error.unmatched["transformer_blocks.0.attn.to_out.0"][0] == "transformer_blocks.0.attn.to_out"
    message = str(error)
    assert message.startswith("flux/transformer/config.json: ") and "'single_blocks'" in message


def test_the_preset_remap_makes_checkpoint_names_match_runtime_names() -> None:
    """auto-round writes ``attn.to_out.0``; vLLM-Omni's FLUX builds ``attn.to_out``: raw names fail, remapped pass."""
    cfg = config("transformer_blocks", {"transformer_blocks.0.attn.to_out.0": {"bits": 8}})
    assert list(unmatched_names(cfg, FLUX_RUNTIME)) == ["transformer_blocks.0.attn.to_out.0"]
    assert unmatched_names(cfg.remapped(FLUX.stage()), FLUX_RUNTIME) == {}


def test_a_prefix_matches_on_dotted_boundaries_only() -> None:
    cfg = config("transformer_block")
    unmatched = unmatched_names(cfg, FLUX_RUNTIME)
    assert list(unmatched) == ["transformer_block"]
    assert unmatched["transformer_block"][0] == "transformer_blocks"
