"""Every quantization_config form wna16 reads, hand-written, and every out-of-scope form it refuses by key."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from wna16 import ConfigError, Scheme
from wna16.checkpoint.config import QuantConfig, read_model_config, read_quant_config

# As auto-round 0.16.1 writes it (FACTS.md).
AUTO_ROUND = {
    "autoround_version": "0.16.1",
    "bits": 4,
    "block_name_to_quantize": "model.layers",
    "data_type": "int",
    "enable_quanted_input": False,
    "group_size": 128,
    "packing_format": "auto_round:auto_gptq",
    "quant_method": "auto-round",
    "sym": True,
}


def with_(base: dict[str, Any], **changes: Any) -> dict[str, Any]:
    out = dict(base)
    for key, value in changes.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = value
    return out


def write(path: Path, data: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data) if not isinstance(data, str) else data)
    return path


# --- auto-round ---------------------------------------------------------------------------------------------------


def test_auto_round_as_written_by_0_16_1() -> None:
    cfg = QuantConfig.from_dict(AUTO_ROUND, source="config.json")
    assert (cfg.method, cfg.packed_format) == ("auto-round", "gptq")
    assert (cfg.bits, cfg.group_size, cfg.sym, cfg.act_order) == (4, 128, True, False)
    assert cfg.default_scheme == Scheme(4, 128, True)
    assert cfg.block_prefixes == ("model.layers",)
    assert cfg.extra_config == {}
    # unknown metadata is kept and ignored
    assert cfg.metadata == {"autoround_version": "0.16.1", "enable_quanted_input": False}


def test_whole_config_json_is_accepted() -> None:
    cfg = QuantConfig.from_dict({"architectures": ["LlamaForCausalLM"], "quantization_config": AUTO_ROUND}, "c.json")
    assert cfg.bits == 4 and cfg.source == "c.json: quantization_config"


@pytest.mark.parametrize(
    ("packing", "layout"),
    [
        ("auto_round", "gptq_v2"),
        ("auto_round:gptqmodel", "gptq_v2"),
        ("auto_round:auto_gptq", "gptq"),
        ("auto_gptq", "gptq"),
        ("auto_round:gptq", "gptq"),  # legacy spelling of auto_gptq
        ("auto_round:auto_awq", "awq"),
        ("auto_awq", "awq"),
        ("auto_round:awq", "awq"),  # legacy spelling of auto_awq
        ("AUTO_ROUND:AUTO_GPTQ", "gptq"),
        ("auto_round:auto_gptq:marlin", "gptq"),  # a kernel suffix does not change the layout
    ],
)
def test_packing_formats(packing: str, layout: str) -> None:
    cfg = QuantConfig.from_dict(with_(AUTO_ROUND, packing_format=packing, sym=layout != "awq"))
    assert cfg.packed_format == layout


def test_legacy_intel_auto_round_with_backend_key() -> None:
    legacy = {
        "quant_method": "intel/auto-round",
        "backend": "auto_round:gptq:exllamav2",
        "bits": 4,
        "group_size": 128,
        "sym": True,
        "to_quant_block_names": ["model.layers"],
    }
    cfg = QuantConfig.from_dict(legacy)
    assert (cfg.method, cfg.packed_format, cfg.block_prefixes) == ("auto-round", "gptq", ("model.layers",))
    cfg = QuantConfig.from_dict(with_(legacy, backend="auto_round:awq", sym=False))
    assert cfg.packed_format == "awq" and cfg.sym is False


@pytest.mark.parametrize(
    ("blocks", "expected"),
    [
        ("transformer_blocks,single_transformer_blocks", ("transformer_blocks", "single_transformer_blocks")),
        ("transformer_blocks.0, single_transformer_blocks", ("transformer_blocks.0", "single_transformer_blocks")),
        (["model.layers", "model.vision.blocks"], ("model.layers", "model.vision.blocks")),
        ([["model.layers.0", "model.layers.1"]], ("model.layers.0", "model.layers.1")),
        ("model.layers.", ("model.layers",)),  # a trailing dot is the same prefix
        ("a,,a, ", ("a",)),
    ],
)
def test_block_names(blocks: Any, expected: tuple[str, ...]) -> None:
    assert QuantConfig.from_dict(with_(AUTO_ROUND, block_name_to_quantize=blocks)).block_prefixes == expected


def test_to_quant_block_names_and_quant_block_list() -> None:
    cfg = QuantConfig.from_dict(with_(AUTO_ROUND, block_name_to_quantize=None, to_quant_block_names="model.layers"))
    assert cfg.block_prefixes == ("model.layers",)
    nested = [["model.layers.0", "model.layers.1"], ["visual.blocks.0", "visual.blocks.1"]]
    cfg = QuantConfig.from_dict(with_(AUTO_ROUND, block_name_to_quantize=None, quant_block_list=nested))
    assert cfg.block_prefixes == ("model.layers", "visual.blocks")  # common prefix of each block list
    assert QuantConfig.from_dict(with_(AUTO_ROUND, block_name_to_quantize=None)).block_prefixes == ()


def test_mixed_extra_config_and_modules_to_not_convert() -> None:
    extra = {
        "model.layers.0.mlp.down_proj": {"bits": 8},
        "model.layers.1.mlp.up_proj": {"bits": 16, "data_type": "float"},
        "model.layers.1.self_attn.q_proj": {"bits": 8, "group_size": 32},
        ".*k_proj.*": {"bits": 8, "sym": False},
    }
    cfg = QuantConfig.from_dict(with_(AUTO_ROUND, extra_config=extra, modules_to_not_convert=["lm_head", "visual"]))
    assert list(cfg.extra_config) == list(extra)  # written order kept: regex keys are tried in it
    assert cfg.extra_config["model.layers.1.self_attn.q_proj"].group_size == 32
    assert [k for k, _ in cfg.regex_keys] == [".*k_proj.*"]
    assert cfg.modules_to_not_convert == ("lm_head", "visual")


# --- GPTQ and AWQ -------------------------------------------------------------------------------------------------


def test_gptq_export() -> None:
    gptq = {
        "quant_method": "gptq",
        "bits": 4,
        "group_size": 128,
        "sym": True,
        "desc_act": True,
        "checkpoint_format": "gptq",
        "dynamic": {"-:model.layers.0.mlp.*": {}, "+:model.layers.1.*": {"bits": 8, "desc_act": False}},
        "lm_head": False,
        "true_sequential": True,
    }
    cfg = QuantConfig.from_dict(gptq)
    assert (cfg.method, cfg.packed_format, cfg.act_order) == ("gptq", "gptq", True)
    assert [(r.key, r.skip) for r in cfg.dynamic] == [("-:model.layers.0.mlp.*", True), ("+:model.layers.1.*", False)]
    assert cfg.dynamic[1].override.bits == 8 and cfg.dynamic[1].pattern.pattern == "model.layers.1.*"
    assert cfg.metadata == {"true_sequential": True}
    assert QuantConfig.from_dict(with_(gptq, checkpoint_format="gptq_v2")).packed_format == "gptq_v2"
    assert QuantConfig.from_dict(with_(gptq, checkpoint_format=None, format="gptq_v2")).packed_format == "gptq_v2"


def test_awq_autoawq_and_transformers_keys() -> None:
    autoawq = {"w_bit": 4, "q_group_size": 128, "zero_point": True, "version": "GEMM"}
    cfg = QuantConfig.from_dict(with_(autoawq, quant_method="awq"))
    assert (cfg.method, cfg.packed_format, cfg.default_scheme) == ("awq", "awq", Scheme(4, 128, False))
    hf = {"quant_method": "awq", "bits": 4, "group_size": 64, "zero_point": False, "modules_to_not_convert": ["gate"]}
    cfg = QuantConfig.from_dict(hf)
    assert cfg.default_scheme == Scheme(4, 64, True) and cfg.modules_to_not_convert == ("gate",)


# As auto-round 0.16.1 exports them with format="auto_gptq" / "auto_awq" (seen on this machine).
GPTQ_EXPORT = {
    "autoround_version": "0.16.1",
    "bits": 4,
    "damp_percent": 0.01,
    "data_type": "int",
    "desc_act": False,
    "enable_quanted_input": False,
    "group_size": 128,
    "lm_head": False,
    "provider": "auto-round",
    "quant_method": "gptq",
    "sym": True,
    "true_sequential": False,
}
AWQ_EXPORT = {
    "autoround_version": "0.16.1",
    "bits": 4,
    "data_type": "int",
    "enable_quanted_input": False,
    "group_size": 64,
    "modules_to_not_convert": ["lm_head"],
    "provider": "auto-round",
    "quant_method": "awq",
    "sym": False,
    "to_quant_block_names": "model.layers",
    "version": "gemm",
    "zero_point": True,
}


def test_auto_round_gptq_and_awq_exports() -> None:
    gptq = QuantConfig.from_dict(GPTQ_EXPORT)
    assert (gptq.method, gptq.packed_format, gptq.default_scheme) == ("gptq", "gptq", Scheme(4, 128, True))
    assert gptq.block_prefixes == () and gptq.metadata["provider"] == "auto-round"
    awq = QuantConfig.from_dict(AWQ_EXPORT)
    assert (awq.method, awq.packed_format, awq.default_scheme) == ("awq", "awq", Scheme(4, 64, False))
    assert awq.block_prefixes == ("model.layers",) and awq.modules_to_not_convert == ("lm_head",)
    assert awq.resolve("model.layers.0.mlp.up_proj") is not None and awq.resolve("lm_head") is None
    with pytest.raises(ConfigError, match="sym=True contradicts zero_point=True"):
        QuantConfig.from_dict(with_(AWQ_EXPORT, sym=True))


# --- files --------------------------------------------------------------------------------------------------------


def test_read_config_json(tmp_path: Path) -> None:
    write(tmp_path / "config.json", {"architectures": ["LlamaForCausalLM"], "quantization_config": AUTO_ROUND})
    cfg = read_quant_config(tmp_path)
    assert cfg.bits == 4 and str(tmp_path / "config.json") in cfg.source
    assert read_quant_config(tmp_path / "config.json") == cfg
    assert read_model_config(tmp_path)["architectures"] == ["LlamaForCausalLM"]


def test_read_gptq_quantize_config_without_quant_method(tmp_path: Path) -> None:
    write(tmp_path / "config.json", {"architectures": ["LlamaForCausalLM"]})  # no quantization_config in it
    write(tmp_path / "quantize_config.json", {"bits": 3, "group_size": 64, "desc_act": False, "sym": False})
    cfg = read_quant_config(tmp_path)
    assert (cfg.method, cfg.default_scheme) == ("gptq", Scheme(3, 64, False))


def test_read_quantization_config_json_and_autoawq_quant_config(tmp_path: Path) -> None:
    write(tmp_path / "a" / "quantization_config.json", AUTO_ROUND)
    assert read_quant_config(tmp_path / "a").method == "auto-round"
    write(tmp_path / "b" / "quant_config.json", {"w_bit": 4, "q_group_size": 128, "zero_point": True})
    assert read_quant_config(tmp_path / "b").method == "awq"


def test_read_diffusers_component(tmp_path: Path) -> None:
    flux = with_(AUTO_ROUND, block_name_to_quantize="transformer_blocks,single_transformer_blocks")
    write(tmp_path / "model_index.json", {"_class_name": "FluxPipeline"})
    write(
        tmp_path / "transformer" / "config.json", {"_class_name": "FluxTransformer2DModel", "quantization_config": flux}
    )
    write(tmp_path / "vae" / "config.json", {"_class_name": "AutoencoderKL"})
    from_root = read_quant_config(tmp_path)  # the one quantized component
    assert from_root.block_prefixes == ("transformer_blocks", "single_transformer_blocks")
    assert "transformer/config.json" in from_root.source.replace("\\", "/")
    assert read_quant_config(tmp_path / "transformer") == from_root


def test_two_quantized_components_must_be_read_one_by_one(tmp_path: Path) -> None:
    write(tmp_path / "model_index.json", {"_class_name": "WanPipeline"})
    for component in ("transformer", "transformer_2"):
        write(
            tmp_path / component / "config.json",
            {"_class_name": "WanTransformer3DModel", "quantization_config": AUTO_ROUND},
        )
    with pytest.raises(ConfigError, match=r"transformer, transformer_2"):
        read_quant_config(tmp_path)
    assert read_quant_config(tmp_path / "transformer_2").bits == 4


@pytest.mark.parametrize(
    ("files", "match"),
    [
        ({}, r"no quantization config"),
        ({"config.json": "{not json"}, r"config\.json: not valid JSON"),
        ({"config.json": "[1, 2]"}, r"config\.json: expected a JSON object"),
        ({"config.json": {"quantization_config": [1]}}, r"quantization_config: expected an object"),
        ({"quantize_config.json": {"group_size": 128}}, r"quantize_config\.json: quant_method=None"),
    ],
)
def test_read_errors_name_the_file(tmp_path: Path, files: dict[str, Any], match: str) -> None:
    for name, data in files.items():
        write(tmp_path / name, data)
    with pytest.raises(ConfigError, match=match):
        read_quant_config(tmp_path)


def test_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such checkpoint folder"):
        read_quant_config(tmp_path / "nope")
    with pytest.raises(ConfigError, match="no 'quantization_config' key"):
        read_quant_config(write(tmp_path / "config.json", {"architectures": []}))


# --- out of scope: a typed error naming the key -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "key"),
    [
        ({"data_type": "mx_fp"}, "data_type='mx_fp'"),
        ({"data_type": "fp8"}, "data_type='fp8'"),
        ({"data_type": "nv_fp"}, "data_type='nv_fp'"),
        ({"act_bits": 8}, "act_bits=8"),
        ({"act_bits": "8"}, "act_bits='8'"),
        ({"packing_format": "auto_round:llm_compressor"}, "packing_format='auto_round:llm_compressor'"),
        ({"packing_format": "gguf:q4_k_m"}, "packing_format='gguf:q4_k_m'"),
        ({"packing_format": 4}, "packing_format=4"),
        ({"bits": 5}, "bits=5"),
        ({"bits": 1}, "bits=1"),
        ({"bits": 0}, "bits=0"),
        ({"bits": True}, "bits=True"),
        ({"bits": "4"}, "bits='4'"),
        ({"bits": 4.0}, "bits=4.0"),
        ({"group_size": 0}, "group_size=0"),
        ({"group_size": -2}, "group_size=-2"),
        ({"sym": "true"}, "sym='true'"),
        ({"quant_method": "fp8"}, "quant_method='fp8'"),
        ({"quant_method": None}, "quant_method=None"),
        ({"block_name_to_quantize": 3}, "block_name_to_quantize=3"),
        ({"block_name_to_quantize": ["a", 3]}, "block_name_to_quantize="),
        ({"extra_config": {"a.b": {"bits": 5}}}, "extra_config['a.b'].bits=5"),
        ({"extra_config": {"a.b": {"bits": 4, "data_type": "mx_fp"}}}, "extra_config['a.b'].data_type='mx_fp'"),
        ({"extra_config": {"a.b": {"act_bits": 8}}}, "extra_config['a.b'].act_bits=8"),
        ({"extra_config": {"a.b": {"group_size": 0}}}, "extra_config['a.b'].group_size=0"),
        ({"extra_config": {"a.b": 8}}, "extra_config['a.b']=8"),
        ({"extra_config": {"(unclosed": {"bits": 8}}}, "extra_config key '(unclosed': invalid regular expression"),
        ({"extra_config": [1]}, "extra_config: expected an object"),
        ({"modules_to_not_convert": {"a": 1}}, "modules_to_not_convert="),
    ],
)
def test_auto_round_refusals_name_the_key(changes: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        QuantConfig.from_dict(with_(AUTO_ROUND, **changes), source="ckpt/config.json")
    assert key in str(info.value) and str(info.value).startswith("ckpt/config.json")


def test_unquantized_float_entries_are_not_refused() -> None:
    # auto-round writes {"bits": 16, "data_type": "float"} for layers it leaves alone; bits 16 default is allowed.
    extra = {"lm_head": {"bits": 16, "data_type": "float"}}
    assert QuantConfig.from_dict(with_(AUTO_ROUND, extra_config=extra)).extra_config["lm_head"].bits == 16
    cfg = QuantConfig.from_dict(with_(AUTO_ROUND, bits=16, data_type="float", act_bits=16))
    assert cfg.default_scheme is None


@pytest.mark.parametrize(
    ("config", "key"),
    [
        ({"quant_method": "gptq", "bits": 4, "checkpoint_format": "marlin"}, "checkpoint_format='marlin'"),
        ({"quant_method": "gptq", "bits": 4, "desc_act": 1}, "desc_act=1"),
        ({"quant_method": "gptq", "bits": 4, "dynamic": {"+:(x": {"bits": 8}}}, "dynamic key '(x'"),
        ({"quant_method": "gptq", "bits": 4, "dynamic": {"+:x": {"bits": 7}}}, "dynamic['+:x'].bits=7"),
        ({"quant_method": "gptq", "bits": 4, "dynamic": []}, "dynamic: expected an object"),
        ({"quant_method": "gptq", "bits": 4, "lm_head": "yes"}, "lm_head='yes'"),
        ({"quant_method": "awq", "w_bit": 8, "q_group_size": 128}, "bits=8: the AWQ layout is 4-bit only"),
        ({"quant_method": "awq", "bits": 4, "version": "gemv"}, "version='gemv'"),
        ({"quant_method": "awq", "bits": 4, "zero_point": "no"}, "zero_point='no'"),
        (
            {
                "quant_method": "auto-round",
                "bits": 4,
                "packing_format": "auto_round:auto_awq",
                "sym": False,
                "extra_config": {"x": {"bits": 8}},
            },
            "extra_config['x'].bits=8: the AWQ layout is 4-bit only",
        ),
    ],
)
def test_gptq_and_awq_refusals_name_the_key(config: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        QuantConfig.from_dict(config)
    assert key in str(info.value)
