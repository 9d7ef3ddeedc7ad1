"""Per-layer resolution: vLLM's order, dotted-boundary prefixes, GPTQ dynamic, fused modules and MoE experts."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
import torch

from wna16 import CheckpointError, ConfigError, MoELayoutError, Scheme, quantize_rtn
from wna16.checkpoint.config import QuantConfig
from wna16.checkpoint.resolve import FusedQuant, LayerQuant, concat_out, fuse, fused_parts, part_runs
from wna16.reference import dequantize

BASE = {
    "quant_method": "auto-round",
    "bits": 4,
    "group_size": 128,
    "sym": True,
    "packing_format": "auto_round:auto_gptq",
    "block_name_to_quantize": "model.layers",
}


def config(**changes: Any) -> QuantConfig:
    return QuantConfig.from_dict({**BASE, **changes})


def scheme_of(cfg: QuantConfig, name: str) -> Scheme | None:
    layer = cfg.resolve(name)
    return None if layer is None else layer.scheme


def test_defaults_inside_blocks_and_nothing_outside() -> None:
    cfg = config()
    layer = cfg.resolve("model.layers.3.mlp.down_proj")
    assert layer == LayerQuant(Scheme(4, 128, True), "gptq", False, "default")
    assert cfg.resolve("lm_head") is None
    assert cfg.explain("model.embed_tokens")[1].startswith("outside every block_name_to_quantize prefix")


def test_prefixes_match_on_dotted_boundaries() -> None:
    # vLLM's raw startswith would count model.layers.10 inside "model.layers.1"; wna16 does not.
    cfg = config(block_name_to_quantize="model.layers.1")
    assert scheme_of(cfg, "model.layers.1.mlp.up_proj") == Scheme(4, 128, True)
    assert scheme_of(cfg, "model.layers.1") == Scheme(4, 128, True)
    assert cfg.resolve("model.layers.10.mlp.up_proj") is None
    assert cfg.resolve("model.layers.1x.mlp.up_proj") is None


def test_exact_key_beats_regex_and_quantizes_outside_the_blocks() -> None:
    extra = {
        ".*down_proj.*": {"bits": 2},
        "model.layers.0.mlp.down_proj": {"bits": 8},
        "lm_head": {"bits": 8, "group_size": 64},
    }
    cfg = config(extra_config=extra)
    assert cfg.explain("model.layers.0.mlp.down_proj")[1] == "extra_config exact key 'model.layers.0.mlp.down_proj'"
    assert scheme_of(cfg, "model.layers.0.mlp.down_proj") == Scheme(8, 128, True)
    assert scheme_of(cfg, "model.layers.1.mlp.down_proj") == Scheme(2, 128, True)
    assert scheme_of(cfg, "lm_head") == Scheme(8, 64, True)  # outside the blocks, but named exactly


def test_regex_keys_search_in_written_order_first_wins() -> None:
    extra = {"mlp": {"bits": 16}, r"layers\.[0-4]\..*proj": {"bits": 8}, ".*proj": {"bits": 2}}
    cfg = config(extra_config=extra)
    # "mlp" has no regex character: it is an exact key and matches no real layer
    assert scheme_of(cfg, "model.layers.3.mlp.up_proj") == Scheme(8, 128, True)
    assert cfg.explain("model.layers.3.mlp.up_proj")[1] == "regex key " + repr(r"layers\.[0-4]\..*proj")
    assert scheme_of(cfg, "model.layers.7.mlp.up_proj") == Scheme(2, 128, True)
    cfg = config(extra_config=dict(reversed(list(extra.items()))))
    assert scheme_of(cfg, "model.layers.3.mlp.up_proj") == Scheme(2, 128, True)


def test_regex_outside_the_blocks_fills_from_unquantized_as_vllm() -> None:
    cfg = config(extra_config={".*visual.*qkv": {"group_size": 32}, ".*merger.*": {"bits": 8}})
    assert cfg.resolve("visual.blocks.0.attn.qkv") is None  # no bits named: stays 16-bit
    assert cfg.resolve("visual.merger.mlp.0") == LayerQuant(
        Scheme(8, -1, True), "gptq", False, "regex key '.*merger.*'"
    )


def test_bits_16_is_unquantized() -> None:
    cfg = config(extra_config={"model.layers.1.mlp.up_proj": {"bits": 16}, ".*gate.*": {"bits": 32}})
    assert cfg.resolve("model.layers.1.mlp.up_proj") is None
    assert cfg.explain("model.layers.1.mlp.up_proj")[1].endswith("(bits >= 16)")
    assert cfg.resolve("model.layers.1.mlp.gate_proj") is None
    assert config(bits=16, data_type="float").resolve("model.layers.0.mlp.up_proj") is None


def test_modules_to_not_convert_wins_and_matches_whole_components() -> None:
    cfg = config(
        block_name_to_quantize=None,
        modules_to_not_convert=["visual", "mlp.gate"],
        extra_config={"model.visual.proj": {"bits": 8}},
    )
    assert cfg.resolve("model.visual.proj") is None
    assert cfg.explain("model.visual.proj")[1] == "modules_to_not_convert entry 'visual'"
    assert cfg.resolve("model.layers.0.mlp.gate") is None
    assert scheme_of(cfg, "model.layers.0.mlp.gate_proj") == Scheme(4, 128, True)  # not a substring match
    assert scheme_of(cfg, "model.visualizer.proj") == Scheme(4, 128, True)


def test_no_block_list_quantizes_everything_but_lm_head() -> None:
    cfg = config(block_name_to_quantize=None)
    assert scheme_of(cfg, "model.embed_proj") == Scheme(4, 128, True)
    assert cfg.resolve("lm_head") is None and cfg.resolve("language_model.lm_head") is None


def test_gptq_dynamic_rematch_first_wins_and_desc_act() -> None:
    gptq = {
        "quant_method": "gptq",
        "bits": 4,
        "group_size": 128,
        "desc_act": True,
        "dynamic": {
            r"-:model\.layers\.0\..*": {},
            r"+:model\.layers\.[01]\.mlp\..*": {"bits": 8, "group_size": 32, "desc_act": False},
            r"model\.layers\.1\..*": {"bits": 2},
            r"layers\.2\..*": {"bits": 8},  # re.match anchors at the start: never matches model.layers.2
        },
    }
    cfg = QuantConfig.from_dict(gptq)
    assert cfg.resolve("model.layers.0.mlp.up_proj") is None  # "-:" listed first
    assert cfg.explain("model.layers.0.mlp.up_proj")[1] == "dynamic rule " + repr(r"-:model\.layers\.0\..*")
    assert cfg.resolve("model.layers.1.mlp.up_proj") == LayerQuant(
        Scheme(8, 32, True), "gptq", False, "dynamic rule " + repr(r"+:model\.layers\.[01]\.mlp\..*")
    )
    assert cfg.resolve("model.layers.1.self_attn.o_proj") == LayerQuant(
        Scheme(2, 128, True), "gptq", True, "dynamic rule " + repr(r"model\.layers\.1\..*")
    )
    assert cfg.resolve("model.layers.2.mlp.up_proj") == LayerQuant(Scheme(4, 128, True), "gptq", True, "default")
    assert cfg.resolve("lm_head") is None
    assert scheme_of(QuantConfig.from_dict({**gptq, "lm_head": True}), "lm_head") == Scheme(4, 128, True)


def test_gptq_modules_in_block_to_quantize() -> None:
    gptq = {
        "quant_method": "gptq",
        "bits": 4,
        "group_size": 128,
        "modules_in_block_to_quantize": [["self_attn.q_proj", "self_attn.k_proj"], ["mlp.down_proj"]],
    }
    cfg = QuantConfig.from_dict(gptq)
    assert scheme_of(cfg, "model.layers.0.self_attn.k_proj") == Scheme(4, 128, True)
    assert cfg.resolve("model.layers.0.mlp.up_proj") is None


@pytest.mark.parametrize(
    ("packing", "sym", "layout"),
    [("auto_round", False, "gptq_v2"), ("auto_round:auto_awq", False, "awq"), ("auto_gptq", True, "gptq")],
)
def test_layout_is_carried_per_layer(packing: str, sym: bool, layout: str) -> None:
    layer = config(packing_format=packing, sym=sym).resolve("model.layers.0.mlp.up_proj")
    assert layer is not None and layer.packed_format == layout and layer.scheme.sym is sym


# --- fused modules ------------------------------------------------------------------------------------------------


def test_fused_parts_names() -> None:
    assert fused_parts("model.layers.0.self_attn.qkv_proj") == (
        "model.layers.0.self_attn.q_proj",
        "model.layers.0.self_attn.k_proj",
        "model.layers.0.self_attn.v_proj",
    )
    assert fused_parts("blocks.0.attn1.to_qkv") == ("blocks.0.attn1.to_q", "blocks.0.attn1.to_k", "blocks.0.attn1.to_v")
    assert fused_parts("model.layers.0.mlp.gate_up_proj") == (
        "model.layers.0.mlp.gate_proj",
        "model.layers.0.mlp.up_proj",
    )
    assert fused_parts("model.layers.0.mlp.down_proj") is None


def test_consistent_parts_fuse() -> None:
    cfg = config(extra_config={".*mlp.*": {"bits": 8}})
    qkv = cfg.resolve("model.layers.0.self_attn.qkv_proj")
    assert qkv is not None and qkv.scheme == Scheme(4, 128, True) and qkv.source.startswith("fused from")
    gate_up = cfg.resolve("model.layers.0.mlp.gate_up_proj")
    assert gate_up is not None and gate_up.scheme == Scheme(8, 128, True)
    assert cfg.resolve("lm_head.qkv_proj") is None  # all parts unquantized


def test_mixed_parts_resolve_to_runs_of_agreeing_parts() -> None:
    """A regex key raising k_proj to 8 bits: q, k, v become three runs (k splits q from v, and only consecutive
    parts share a layer); the message-side description names each part and scheme."""
    cfg = config(extra_config={".*k_proj": {"bits": 8}})
    qkv = cfg.resolve("model.layers.0.self_attn.qkv_proj")
    assert isinstance(qkv, FusedQuant) and qkv.name == "model.layers.0.self_attn.qkv_proj"
    assert qkv.runs() == ((0,), (1,), (2,))
    for part, scheme in (("q_proj", "w4g128sym"), ("k_proj", "w8g128sym"), ("v_proj", "w4g128sym")):
        assert f"model.layers.0.self_attn.{part}: {scheme}" in str(qkv)
    cfg = config(extra_config={"model.layers.0.self_attn.v_proj": {"bits": 16}})
    qkv = cfg.resolve("model.layers.0.self_attn.qkv_proj")
    assert isinstance(qkv, FusedQuant) and qkv.runs() == ((0, 1), (2,))  # q and k still share one kernel call
    assert qkv.parts[2][1] is None and "v_proj: unquantized" in str(qkv)
    cfg = config(extra_config={"model.layers.0.mlp.up_proj": {"group_size": 32}})
    gate_up = cfg.resolve("model.layers.0.mlp.gate_up_proj")
    assert isinstance(gate_up, FusedQuant) and [q.scheme.group_size for _, q in gate_up.parts if q] == [128, 32]


def test_part_runs_group_only_consecutive_agreeing_parts() -> None:
    a = LayerQuant(Scheme(4, 128, True), "gptq", False, "x")
    b = LayerQuant(Scheme(8, 128, True), "gptq", False, "y")
    assert part_runs([a, a, a]) == ((0, 1, 2),)
    assert part_runs([a, b, a]) == ((0,), (1,), (2,))
    assert part_runs([None, None, a]) == ((0, 1), (2,))
    assert part_runs([a, dataclasses.replace(a, source="other rule")]) == ((0, 1),)  # the source does not matter


def test_fuse_splits_different_act_order_or_layout() -> None:
    a = LayerQuant(Scheme(4, 128, True), "gptq", True, "x")
    b = LayerQuant(Scheme(4, 128, True), "gptq", False, "y")
    c = LayerQuant(Scheme(4, 128, True), "gptq_v2", True, "z")
    assert isinstance(fuse([("a", a), ("b", b)]), FusedQuant)
    mixed = fuse([("a", a), ("c", c)], "m")
    assert isinstance(mixed, FusedQuant) and "gptq_v2" in str(mixed) and mixed.runs() == ((0,), (1,))
    with pytest.raises(ConfigError, match="no parts"):
        fuse([])
    assert fuse([("a", a), ("a2", a)]) == LayerQuant(a.scheme, "gptq", True, "fused from a, a2: x")
    assert fuse([("a", None), ("b", None)]) is None


def test_a_fused_name_written_in_the_config_resolves_directly() -> None:
    cfg = config(extra_config={"model.layers.0.self_attn.qkv_proj": {"bits": 8}})
    assert scheme_of(cfg, "model.layers.0.self_attn.qkv_proj") == Scheme(8, 128, True)


# --- MoE ----------------------------------------------------------------------------------------------------------


def test_per_expert_linears_resolve_like_any_layer() -> None:
    cfg = config(extra_config={"model.layers.0.mlp.experts.3.down_proj": {"bits": 8}, ".*shared_expert.*": {"bits": 8}})
    assert scheme_of(cfg, "model.layers.0.mlp.experts.3.down_proj") == Scheme(8, 128, True)
    assert scheme_of(cfg, "model.layers.0.mlp.experts.2.down_proj") == Scheme(4, 128, True)
    assert scheme_of(cfg, "model.layers.0.mlp.shared_expert.up_proj") == Scheme(8, 128, True)
    assert scheme_of(cfg, "model.layers.0.mlp.experts.1.gate_up_proj") == Scheme(4, 128, True)


@pytest.mark.parametrize(
    "name",
    ["model.layers.0.mlp.experts", "model.layers.0.mlp.experts.gate_up_proj", "model.layers.0.mlp.experts.down_proj"],
)
def test_fused_experts_layout_is_refused(name: str) -> None:
    with pytest.raises(MoELayoutError, match="MoE layout not supported") as info:
        config().resolve(name)
    assert name in str(info.value) and isinstance(info.value, ConfigError)


# --- fused weights ------------------------------------------------------------------------------------------------


def test_concat_out_equals_the_parts_stacked_along_n() -> None:
    torch.manual_seed(0)
    scheme = Scheme(4, 32, False)
    parts = [(f"p.{i}", quantize_rtn(torch.randn(n, 96), scheme)) for i, n in enumerate((64, 32, 32))]
    fused = concat_out(parts, name="qkv_proj")
    assert (fused.in_features, fused.out_features, fused.name) == (96, 128, "qkv_proj")
    expected = torch.cat([dequantize(w) for _, w in parts], dim=0)
    assert torch.equal(dequantize(fused), expected)


def test_concat_out_keeps_a_shared_act_order_and_refuses_mismatches() -> None:
    torch.manual_seed(1)
    scheme = Scheme(4, 32, True)
    g_idx = torch.randperm(64, dtype=torch.int32) % 2
    a = quantize_rtn(torch.randn(32, 64), scheme, g_idx=g_idx)
    b = quantize_rtn(torch.randn(32, 64), scheme, g_idx=g_idx)
    fused = concat_out([("a", a), ("b", b)])
    assert fused.act_order and torch.equal(dequantize(fused), torch.cat([dequantize(a), dequantize(b)]))
    other_order = quantize_rtn(torch.randn(32, 64), scheme, g_idx=g_idx.flip(0))
    with pytest.raises(CheckpointError, match=r"a: w4g32sym K=64 scales float16 act-order; c: w4g32sym"):
        concat_out([("a", a), ("c", other_order)])
    with pytest.raises(CheckpointError, match="w8g32sym"):
        concat_out([("a", a), ("d", quantize_rtn(torch.randn(32, 64), Scheme(8, 32, True)))])
    with pytest.raises(CheckpointError, match="scales bfloat16"):
        concat_out(
            [("a", a), ("e", quantize_rtn(torch.randn(32, 64), scheme, scale_dtype=torch.bfloat16, g_idx=g_idx))]
        )
    with pytest.raises(CheckpointError, match="no parts"):
        concat_out([])
