"""Remap semantics (vLLM-Omni's OmniINCConfig.apply_vllm_mapper) on the issue's examples and on every preset."""

from __future__ import annotations

from typing import Any

import pytest

from wna16 import ConfigError, Scheme
from wna16.checkpoint.config import QuantConfig
from wna16.checkpoint.presets import PRESETS, find_preset, preset_for
from wna16.checkpoint.remap import Remap

THINKER = Remap.from_mapper(
    {"thinker.lm_head.": "language_model.lm_head.", "thinker.model.": "language_model.model.", "thinker.": ""}
)
TALKER = Remap.from_mapper({"talker.model.": "language_model.model.", "talker.": ""})
WAN = Remap(substrings={".ffn.net.0.": ".ffn.net_0.", ".ffn.net.2": ".ffn.net_2", ".to_out.0": ".to_out"})


def auto_round(**changes: Any) -> QuantConfig:
    base = {"quant_method": "auto-round", "bits": 4, "group_size": 128, "sym": True, "packing_format": "auto_round"}
    return QuantConfig.from_dict({**base, **changes})


# --- the examples -----------------------------------------------------------------------------------------


def test_stage_prefix_is_derived_like_vllm_omni() -> None:
    assert THINKER.stage_prefix == "thinker." and TALKER.stage_prefix == "talker."
    assert Remap.from_mapper({"model.": "a.", "lm_head.": "b."}).stage_prefix == ""
    assert Remap.from_mapper({"thinker.model.": "x.", "thinker.mlp.": "y."}).stage_prefix == "thinker."
    assert Remap.from_mapper({}).stage_prefix == ""


def test_thinker_and_talker_block_names() -> None:
    assert THINKER.name("thinker.model.layers") == "thinker.language_model.model.layers"
    assert THINKER.name("thinker.lm_head.weight") == "thinker.language_model.lm_head.weight"
    assert THINKER.name("thinker.visual.blocks.0.attn.qkv") == "thinker.visual.blocks.0.attn.qkv"
    assert TALKER.name("talker.model.layers") == "talker.language_model.model.layers"
    assert THINKER.name("talker.model.layers") == "talker.model.layers"  # no rule matches: untouched, no stage


def test_regex_keys_get_the_escaped_prefix_and_no_stage() -> None:
    key = r".*thinker\.model\.layers\.0\.mlp\.gate.*"
    assert THINKER.regex_key(key) == r".*language_model\.model\.layers\.0\.mlp\.gate.*"
    assert THINKER.regex_key(r".*thinker\.lm_head\..*") == r".*language_model\.lm_head\..*"  # longest escaped prefix
    assert THINKER.regex_key(r".*thinker\.lm_head") == r".*lm_head"  # as vLLM-Omni: only "thinker\." is in the key
    assert THINKER.regex_key(".*mlp.*") == ".*mlp.*"


def test_wan_substring_rules() -> None:
    assert WAN.name("blocks.0.ffn.net.0.proj") == "blocks.0.ffn.net_0.proj"
    assert WAN.name("blocks.0.ffn.net.2") == "blocks.0.ffn.net_2"
    assert WAN.name("blocks.0.ffn.net.2.qweight") == "blocks.0.ffn.net_2.qweight"
    assert WAN.name("blocks.0.attn1.to_out.0") == "blocks.0.attn1.to_out"
    assert WAN.name("blocks.0.attn1.to_out.0.scales") == "blocks.0.attn1.to_out.scales"
    assert WAN.name("blocks.0.attn1.to_q") == "blocks.0.attn1.to_q"
    assert WAN.regex_key(r".*\.ffn\.net\.0\..*") == r".*\.ffn\.net_0\..*"


def test_longest_prefix_wins_whatever_the_order() -> None:
    short_first = Remap({"a.": "x.", "a.b.": "y."})
    long_first = Remap({"a.b.": "y.", "a.": "x."})
    for remap in (short_first, long_first):
        assert remap.name("a.b.c") == "y.c" and remap.name("a.c") == "x.c" and remap.name("b.a.c") == "b.a.c"


def test_a_prefix_rule_maps_the_bare_name_and_a_closing_dot_rule_maps_a_name_end() -> None:
    assert THINKER.name("thinker.lm_head") == "thinker.language_model.lm_head"
    assert Remap(substrings={".to_out.0.": ".to_out."}).name("t.attn.to_out.0") == "t.attn.to_out"
    assert Remap({"transformer.": ""}).name("transformer") == "transformer"  # never maps a name to nothing


def test_identity_and_validation() -> None:
    assert (
        Remap.IDENTITY.is_identity and Remap.IDENTITY.name("a.b") == "a.b" and Remap.IDENTITY.regex_key("a.*") == "a.*"
    )
    with pytest.raises(ConfigError, match="stage_prefix='thinker'"):
        Remap(stage_prefix="thinker")
    with pytest.raises(ConfigError, match="prefix rule '' -> 'x'"):
        Remap({"": "x"})
    with pytest.raises(ConfigError, match="substring rule 'a' -> None"):
        Remap(substrings={"a": None})  # type: ignore[dict-item]


# --- remapping a config -------------------------------------------------------------------------------------------


def test_config_remap_applies_to_blocks_plain_and_regex_keys() -> None:
    cfg = auto_round(
        block_name_to_quantize="thinker.model.layers",
        extra_config={
            "thinker.model.layers.0.mlp.down_proj": {"bits": 8},
            r".*thinker\.model\.layers\.1\.mlp\.gate.*": {"bits": 2},
            "thinker.lm_head": {"bits": 8},
        },
        modules_to_not_convert=["thinker.visual"],
    ).remapped(THINKER)
    assert cfg.block_prefixes == ("thinker.language_model.model.layers",)
    assert list(cfg.extra_config) == [
        "thinker.language_model.model.layers.0.mlp.down_proj",
        r".*language_model\.model\.layers\.1\.mlp\.gate.*",
        "thinker.language_model.lm_head",
    ]
    assert cfg.modules_to_not_convert == ("thinker.visual",)
    resolved = {
        name: (None if (q := cfg.resolve(name)) is None else q.scheme)
        for name in (
            "thinker.language_model.model.layers.0.mlp.down_proj",
            "thinker.language_model.model.layers.1.mlp.gate_proj",
            "thinker.language_model.model.layers.1.mlp.up_proj",
            "thinker.language_model.lm_head",
            "thinker.visual.blocks.0.attn.qkv",
        )
    }
    assert resolved == {
        "thinker.language_model.model.layers.0.mlp.down_proj": Scheme(8, 128, True),
        "thinker.language_model.model.layers.1.mlp.gate_proj": Scheme(2, 128, True),
        "thinker.language_model.model.layers.1.mlp.up_proj": Scheme(4, 128, True),
        "thinker.language_model.lm_head": Scheme(8, 128, True),
        "thinker.visual.blocks.0.attn.qkv": None,
    }


def test_without_the_remap_runtime_names_would_silently_stay_unquantized() -> None:
    # The bug class the remap exists for: the raw config matches no runtime name.
    cfg = auto_round(block_name_to_quantize="thinker.model.layers")
    assert cfg.resolve("thinker.language_model.model.layers.0.mlp.up_proj") is None
    assert cfg.remapped(THINKER).resolve("thinker.language_model.model.layers.0.mlp.up_proj") is not None


def test_gptq_dynamic_patterns_are_remapped() -> None:
    gptq = {"quant_method": "gptq", "bits": 4, "group_size": 128, "dynamic": {r"-:thinker\.model\.layers\.0\..*": {}}}
    cfg = QuantConfig.from_dict(gptq).remapped(THINKER)
    assert cfg.dynamic[0].pattern.pattern == r"language_model\.model\.layers\.0\..*"
    assert cfg.resolve("language_model.model.layers.0.mlp.up_proj") is None


def test_colliding_keys_with_different_settings_are_refused() -> None:
    cfg = auto_round(extra_config={"thinker.model.x": {"bits": 8}, "thinker.language_model.model.x": {"bits": 2}})
    with pytest.raises(ConfigError, match="both map to 'thinker.language_model.model.x'"):
        cfg.remapped(THINKER)
    same = auto_round(extra_config={"thinker.model.x": {"bits": 8}, "thinker.language_model.model.x": {"bits": 8}})
    assert list(same.remapped(THINKER).extra_config) == ["thinker.language_model.model.x"]


# --- presets ------------------------------------------------------------------------------------------------------

# (model config, stage, checkpoint name -> runtime name)
PRESET_CASES: list[tuple[dict[str, Any], str | None, dict[str, str]]] = [
    (
        {"architectures": ["Qwen2_5OmniModel"]},
        None,
        {
            "thinker.model.layers.0.self_attn.q_proj": "thinker.language_model.model.layers.0.self_attn.q_proj",
            "thinker.lm_head": "thinker.language_model.lm_head",
            "thinker.audio_tower.layers.0.fc1": "thinker.audio_tower.layers.0.fc1",
            "thinker.visual.blocks.0.attn.qkv": "thinker.visual.blocks.0.attn.qkv",
            "talker.model.layers.0.mlp.up_proj": "talker.model.layers.0.mlp.up_proj",
        },
    ),
    (
        {"architectures": ["Qwen2_5OmniForConditionalGeneration"]},
        "talker",
        {
            "talker.model.layers": "talker.language_model.model.layers",
            "talker.codec_head": "talker.language_model.lm_head",
            "talker.thinker_to_talker_proj": "talker.thinker_to_talker_proj",
        },
    ),
    (
        {"architectures": ["Qwen3OmniMoeForConditionalGeneration"]},
        None,
        {
            "thinker.model.layers.0.mlp.experts.7.down_proj": (
                "thinker.language_model.model.layers.0.mlp.experts.7.down_proj"
            ),
            "thinker.lm_head": "thinker.language_model.lm_head",
        },
    ),
    (
        {"architectures": ["Qwen3OmniMoeForConditionalGeneration"]},
        "talker",
        {
            "talker.model.layers": "talker.language_model.model.layers",
            "talker.codec_head": "talker.codec_head",
            "talker.code_predictor.model.layers.0": "talker.code_predictor.model.layers.0",
        },
    ),
    (
        {"architectures": ["Qwen3TTSForConditionalGeneration"]},
        None,
        {
            "talker.model.layers.3.mlp.up_proj": "model.layers.3.mlp.up_proj",
            "talker.codec_head": "lm_head",
            "talker.text_projection.linear_fc1": "text_projection.linear_fc1",
            "talker.code_predictor.model.layers.0": "code_predictor.model.layers.0",
            "speaker_encoder.fc": "speaker_encoder.fc",
        },
    ),
    (
        {"architectures": ["GlmImageForConditionalGeneration"]},
        None,
        {"model.language_model.layers.0.mlp.down_proj": "model.language_model.layers.0.mlp.down_proj"},
    ),
    (
        {"architectures": ["BagelForConditionalGeneration"]},
        None,
        {"language_model.model.layers.0.mlp.up_proj": "language_model.model.layers.0.mlp.up_proj"},
    ),
    (
        {"_class_name": "FluxTransformer2DModel"},
        None,
        {
            # vLLM-Omni 0.30 quantizes FLUX's attn.to_out.0 under that name (tests/omni proves it end to end)
            "transformer_blocks.0.attn.to_out.0": "transformer_blocks.0.attn.to_out.0",
            "transformer_blocks.0.attn.to_q": "transformer_blocks.0.attn.to_q",
            "single_transformer_blocks.0.proj_out": "single_transformer_blocks.0.proj_out",
        },
    ),
    (
        {"_class_name": "QwenImagePipeline"},
        None,
        {
            # Qwen-Image's to_out is built with the quantization prefix attn.to_out.0
            "transformer_blocks.0.attn.to_out.0.qweight": "transformer_blocks.0.attn.to_out.0.qweight",
            "transformer.transformer_blocks.1.img_mlp.net.2": "transformer_blocks.1.img_mlp.net.2",
        },
    ),
    (
        {"_class_name": "WanTransformer3DModel"},
        None,
        {
            "blocks.0.ffn.net.0.proj": "blocks.0.ffn.net_0.proj",
            "blocks.0.ffn.net.2": "blocks.0.ffn.net_2",
            "blocks.0.attn2.to_out.0": "blocks.0.attn2.to_out",
        },
    ),
    ({"_class_name": "WanImageToVideoPipeline"}, None, {"blocks.1.ffn.net.2.qzeros": "blocks.1.ffn.net_2.qzeros"}),
]


@pytest.mark.parametrize(("model_config", "stage", "names"), PRESET_CASES)
def test_preset_names(model_config: dict[str, Any], stage: str | None, names: dict[str, str]) -> None:
    remap = preset_for(model_config, stage=stage)
    assert {name: remap.name(name) for name in names} == names


def test_every_preset_is_reachable_and_documents_its_source() -> None:
    for preset in PRESETS:
        for name in preset.names:
            assert find_preset({"architectures": [name]}) is preset
            assert find_preset({"_class_name": name}) is preset
        assert "vllm_omni/" in preset.mirrors and preset.default_stage in preset.stages
        assert preset_for({"architectures": [preset.names[0]]}) == preset.stages[preset.default_stage]


def test_identity_for_other_runtimes_and_unknown_models() -> None:
    omni = {"architectures": ["Qwen2_5OmniModel"]}
    assert preset_for(omni, runtime="transformers") is Remap.IDENTITY
    assert preset_for({"_class_name": "FluxPipeline"}, runtime="diffusers") is Remap.IDENTITY
    assert preset_for({"architectures": ["LlamaForCausalLM"]}) is Remap.IDENTITY
    assert preset_for({}) is Remap.IDENTITY
    with pytest.raises(ConfigError, match="runtime='sglang'"):
        preset_for(omni, runtime="sglang")
    with pytest.raises(ConfigError, match="no stage 'code2wav'"):
        preset_for(omni, stage="code2wav")


def test_qwen_omni_thinker_quantized_talker_vision_audio_16_bit() -> None:
    raw = auto_round(
        block_name_to_quantize="thinker.model.layers",
        extra_config={"thinker.model.layers.0.mlp.experts.1.down_proj": {"bits": 8}},
    )
    for arch in ("Qwen2_5OmniModel", "Qwen3OmniMoeForConditionalGeneration"):
        remap = preset_for({"architectures": [arch]})
        cfg = raw.remapped(remap)
        thinker_layer = remap.name("thinker.model.layers.5.self_attn.qkv_proj")
        assert cfg.resolve(thinker_layer) is not None
        expert = cfg.resolve(remap.name("thinker.model.layers.0.mlp.experts.1.down_proj"))
        assert expert is not None and expert.scheme.bits == 8
        for name in (
            "talker.model.layers.0.mlp.up_proj",
            "thinker.visual.blocks.0.attn.qkv",
            "thinker.audio_tower.layers.0.self_attn.q_proj",
            "thinker.lm_head",
        ):
            assert cfg.resolve(remap.name(name)) is None, name


def bits_of(cfg: QuantConfig, name: str) -> int | None:
    layer = cfg.resolve(name)
    return None if layer is None else layer.scheme.bits


@pytest.mark.parametrize("component", ["transformer", "transformer_2"])
def test_wan_components_end_to_end(component: str) -> None:
    # A14B's two experts are two components with the same class and names: one preset serves both.
    model_config = {"_class_name": "WanTransformer3DModel", "_name_or_path": component}
    cfg = auto_round(
        block_name_to_quantize="blocks",
        extra_config={"blocks.0.ffn.net.0.proj": {"bits": 8}, "blocks.0.attn1.to_out.0": {"bits": 8}},
    ).remapped(preset_for(model_config))
    assert bits_of(cfg, "blocks.0.ffn.net_0.proj") == 8
    assert bits_of(cfg, "blocks.0.attn1.to_out") == 8
    assert bits_of(cfg, "blocks.0.attn1.to_qkv") == 4  # self-attention q/k/v are fused in the runtime
    assert bits_of(cfg, "blocks.0.attn2.to_k") == 4  # cross-attention ones are not
    assert bits_of(cfg, "blocks.1.ffn.net_2") == 4
    assert bits_of(cfg, "proj_out") is None


def test_flux_end_to_end_with_fused_attention() -> None:
    cfg = auto_round(block_name_to_quantize="transformer_blocks.0,single_transformer_blocks").remapped(
        preset_for({"_class_name": "FluxPipeline"})
    )
    assert bits_of(cfg, "transformer_blocks.0.attn.to_qkv") == 4
    assert bits_of(cfg, "transformer_blocks.0.attn.add_kv_proj") == 4
    assert bits_of(cfg, "transformer_blocks.0.attn.to_out.0") == 4
    assert bits_of(cfg, "transformer_blocks.1.attn.to_qkv") is None
    assert bits_of(cfg, "transformer_blocks.10.attn.to_qkv") is None
    assert bits_of(cfg, "single_transformer_blocks.7.proj_mlp") == 4
    assert bits_of(cfg, "x_embedder") is None


class FakeWeightsMapper:
    """The attributes of vLLM's WeightsMapper that a remap reads."""

    def __init__(self, **rules: dict[str, str | None]) -> None:
        for kind in ("orig_to_new_prefix", "orig_to_new_substr", "orig_to_new_regex", "orig_to_new_suffix"):
            setattr(self, kind, rules.get(kind, {}))


def test_from_weights_mapper_equals_the_preset() -> None:
    thinker = FakeWeightsMapper(
        orig_to_new_prefix={
            "thinker.lm_head.": "language_model.lm_head.",
            "thinker.model.": "language_model.model.",
            "thinker.": "",
        }
    )
    assert Remap.from_weights_mapper(thinker) == preset_for({"architectures": ["Qwen2_5OmniModel"]})
    assert Remap.from_weights_mapper(FakeWeightsMapper(orig_to_new_prefix={"talker.": None})).prefixes == {
        "talker.": ""
    }
    wan = FakeWeightsMapper(
        orig_to_new_substr={".ffn.net.0.": ".ffn.net_0.", ".ffn.net.2": ".ffn.net_2", ".to_out.0": ".to_out"}
    )
    assert Remap.from_weights_mapper(wan) == preset_for({"_class_name": "WanPipeline"})
    assert Remap.from_weights_mapper(wan) != preset_for({"_class_name": "FluxPipeline"})
    with pytest.raises(ConfigError, match="orig_to_new_regex"):
        Remap.from_weights_mapper(FakeWeightsMapper(orig_to_new_regex={"x": "y"}))
