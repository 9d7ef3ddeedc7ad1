"""compressed-tensors checkpoints (llm-compressor, auto-round's ``llm_compressor`` export): the config read by key,
per-layer resolution as compressed-tensors and vLLM do it, and the writer / loader / patch_model / inspect round trip.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

import wna16
from wna16 import ConfigError, Scheme
from wna16.checkpoint.config import QuantConfig, read_quant_config
from wna16.checkpoint.remap import Remap
from wna16.checkpoint.resolve import FusedQuant
from wna16.checkpoint.write import compressed_tensors_config, write_checkpoint
from wna16.formats import COMPRESSED_TENSORS
from wna16.nn import QuantLinear
from wna16.patch import empty_weights, patch_model
from wna16.reference import dequantize


def weights(bits: int = 4, group: int | None = 128, sym: bool = True, **more: Any) -> dict[str, Any]:
    return {
        "actorder": None, "block_structure": None, "dynamic": False, "group_size": group, "num_bits": bits,
        "observer": "minmax", "observer_kwargs": {}, "strategy": "group" if group else "channel", "symmetric": sym,
        "type": "int", **more,
    }  # fmt: skip


# The shape of what auto-round 0.16.1 (format="llm_compressor", W4A16) and llm-compressor write.
W4A16: dict[str, Any] = {
    "config_groups": {
        "group_0": {"input_activations": None, "output_activations": None, "targets": ["Linear"], "weights": weights()}
    },
    "format": "pack-quantized",
    "global_compression_ratio": None,
    "ignore": ["lm_head"],
    "kv_cache_scheme": None,
    "quant_method": "compressed-tensors",
    "quantization_status": "compressed",
    "sparsity_config": {},
    "transform_config": {},
    "version": "0.20.1",
}


def ct(**changes: Any) -> dict[str, Any]:
    out = copy.deepcopy(W4A16)
    out.update(changes)
    return out


def group(targets: list[str], **w: Any) -> dict[str, Any]:
    return {"input_activations": None, "output_activations": None, "targets": targets, "weights": weights(**w)}


def scheme_of(cfg: QuantConfig, name: str) -> Scheme | None:
    layer = cfg.resolve(name)
    return None if layer is None else layer.scheme


def test_w4a16_as_written() -> None:
    cfg = QuantConfig.from_dict({"quantization_config": W4A16}, source="config.json")
    assert (cfg.method, cfg.packed_format) == ("compressed-tensors", "compressed-tensors")
    assert cfg.default_scheme == Scheme(4, 128, True)
    assert cfg.metadata == {"global_compression_ratio": None, "version": "0.20.1"}
    layer = cfg.resolve("model.layers.0.mlp.down_proj")
    assert layer is not None and layer.packed_format == "compressed-tensors" and not layer.act_order
    assert "config_groups['group_0'] target 'Linear'" in layer.source
    assert cfg.resolve("lm_head") is None
    assert cfg.explain("lm_head") == (None, "ignore entry 'lm_head'")
    assert scheme_of(cfg, "model.layers.0.self_attn.qkv_proj") == Scheme(4, 128, True), "fused parts agree"


def test_channel_asymmetric_and_act_order() -> None:
    cfg = QuantConfig.from_dict(ct(config_groups={"g": group(["Linear"], bits=8, group=None, sym=False)}))
    assert scheme_of(cfg, "x.proj") == Scheme(8, -1, False)
    order = {"g": group(["Linear"], actorder="group")}
    layer = QuantConfig.from_dict(ct(config_groups=order)).resolve("x.proj")
    assert layer is not None and layer.act_order
    for value in ("weight", "static", None):
        layer = QuantConfig.from_dict(ct(config_groups={"g": group(["Linear"], actorder=value)})).resolve("x.proj")
        assert layer is not None and not layer.act_order, value


def test_mixed_groups_as_auto_round_rewrites_them() -> None:
    """auto-round 0.16.1 replaces the 'Linear' target of each group of a mixed model by the concrete names."""
    groups = {
        "group_0": group(["model.layers.0.mlp.down_proj", "model.layers.1.self_attn.q_proj"], bits=8, group=32),
        "group_1": group(["model.layers.0.mlp.up_proj", "model.layers.1.mlp.up_proj"]),
    }
    cfg = QuantConfig.from_dict(ct(config_groups=groups))
    assert cfg.default_scheme is None, "no class target: every quantized layer is named"
    assert scheme_of(cfg, "model.layers.0.mlp.down_proj") == Scheme(8, 32, True)
    assert scheme_of(cfg, "model.layers.1.mlp.up_proj") == Scheme(4, 128, True)
    assert scheme_of(cfg, "model.layers.1.mlp.down_proj") is None
    assert cfg.explain("model.layers.1.mlp.down_proj") == (None, "no config_groups target matches")


def test_precedence_exact_then_regex_then_class() -> None:
    groups = {  # written in the same order (vLLM takes name matches as written): both runtimes agree
        "c": group(["model.layers.1.mlp.down_proj"], bits=2, group=32),
        "b": group(["re:.*down_proj$"], bits=8, group=None),
        "a": group(["Linear"], bits=4),
    }
    cfg = QuantConfig.from_dict(ct(config_groups=groups, ignore=["lm_head", "re:.*gate$"]))
    assert scheme_of(cfg, "model.layers.1.mlp.down_proj") == Scheme(2, 32, True)
    assert scheme_of(cfg, "model.layers.0.mlp.down_proj") == Scheme(8, -1, True)
    assert scheme_of(cfg, "model.layers.0.mlp.up_proj") == Scheme(4, 128, True)
    assert scheme_of(cfg, "model.layers.0.mlp.gate") is None
    assert scheme_of(cfg, "model.layers.0.mlp.gate_proj") == Scheme(4, 128, True), "re.match anchors at the start"
    assert cfg.default_scheme == Scheme(4, 128, True)


def test_regex_matches_from_the_start_of_the_name() -> None:
    cfg = QuantConfig.from_dict(ct(config_groups={"g": group(["re:mlp"])}))
    assert scheme_of(cfg, "model.layers.0.mlp.up_proj") is None
    assert scheme_of(cfg, "mlp.up_proj") == Scheme(4, 128, True)


def test_orders_of_compressed_tensors_and_vllm_disagree_is_refused() -> None:
    """compressed-tensors sorts regexes by text, vLLM takes them as written: a layer both match differently is
    refused instead of being served the way only one runtime would."""
    groups = {"g8": group(["re:.*proj"], bits=8, group=None), "g4": group(["re:.*down_proj"])}
    cfg = QuantConfig.from_dict(ct(config_groups=groups))
    with pytest.raises(ConfigError, match=r"model.layers.0.mlp.down_proj: targets '.*' \(config_groups\['g4'\]\)"):
        cfg.resolve("model.layers.0.mlp.down_proj")
    assert scheme_of(cfg, "model.layers.0.mlp.up_proj") == Scheme(8, -1, True)


def test_fused_parts_that_disagree_resolve_to_runs() -> None:
    """Issue 28: a q_proj at 8 bits beside 4-bit k/v resolves to a FusedQuant (the vLLM integration refuses it for
    compressed-tensors layouts with an UnsupportedError; GPTQ and AWQ layouts are served part-run by part-run)."""
    groups = {"g8": group(["model.layers.0.self_attn.q_proj"], bits=8), "g4": group(["Linear"])}
    cfg = QuantConfig.from_dict(ct(config_groups=groups))
    fused = cfg.resolve("model.layers.0.self_attn.qkv_proj")
    assert isinstance(fused, FusedQuant) and fused.runs() == ((0,), (1, 2))


def test_remapped_targets_and_ignore() -> None:
    groups = {"a": group(["thinker.model.layers.0.mlp.up_proj"], bits=8), "b": group(["Linear"])}
    cfg = QuantConfig.from_dict(ct(config_groups=groups, ignore=["thinker.lm_head", r"re:thinker\.visual.*"]))
    remap = Remap(prefixes={"thinker.": "language_model."}, label="t")
    runtime = cfg.remapped(remap)
    assert scheme_of(runtime, "language_model.model.layers.0.mlp.up_proj") == Scheme(8, 128, True)
    assert scheme_of(runtime, "language_model.lm_head") is None
    assert scheme_of(runtime, "language_model.visual.blocks.0.qkv") is None
    assert scheme_of(runtime, "language_model.model.layers.0.mlp.down_proj") == Scheme(4, 128, True)


def test_mixed_precision_format_with_pack_quantized_groups() -> None:
    groups = {"g": {**group(["Linear"]), "format": "pack-quantized"}}
    assert scheme_of(QuantConfig.from_dict(ct(format="mixed-precision", config_groups=groups)), "a.b") is not None


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"format": "marlin-24"}, r"format='marlin-24': only 'pack-quantized'"),
        ({"format": "naive-quantized"}, r"format='naive-quantized'"),
        ({"format": "float-quantized"}, r"format='float-quantized'"),
        (
            {
                "format": "mixed-precision",
                "config_groups": {"g": {**group(["Linear"]), "format": "nvfp4-pack-quantized"}},
            },
            r"config_groups\['g'\]\.format='nvfp4-pack-quantized'",
        ),
        ({"quantization_status": "frozen"}, r"quantization_status='frozen'"),
        ({"kv_cache_scheme": {"num_bits": 8, "type": "float"}}, "kv_cache_scheme"),
        ({"sparsity_config": {"format": "sparse-24-bitmask"}}, "sparsity_config"),
        ({"transform_config": {"config_groups": {"u": {}}}}, "transform_config"),
        ({"config_groups": {}}, "config_groups"),
        ({"ignore": "lm_head"}, "ignore='lm_head'"),
        ({"ignore": ["re:(unclosed"]}, r"ignore\[0\] 're:\(unclosed'|ignore\[0\]"),
    ],
)
def test_config_refusals_name_the_key(changes: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        QuantConfig.from_dict(ct(**changes), source="config.json")


@pytest.mark.parametrize(
    ("group_changes", "match"),
    [
        ({"input_activations": {"num_bits": 8, "type": "int"}}, r"input_activations: quantized activations"),
        ({"targets": []}, r"targets=\[\]"),
        ({"targets": ["re:[bad"]}, r"targets\[0\]"),
        ({"weights": None}, r"weights=None"),
        ({"weights": weights(bits=5)}, r"weights\.num_bits=5"),
        ({"weights": weights(type="float")}, r"weights\.type='float'"),
        ({"weights": {**weights(), "strategy": "tensor"}}, r"weights\.strategy='tensor'"),
        ({"weights": {**weights(), "strategy": "block", "block_structure": [128, 128]}}, r"strategy='block'"),
        ({"weights": {**weights(), "group_size": None}}, r"weights\.group_size=None"),
        ({"weights": {**weights(group=None), "group_size": 64}}, r"strategy 'channel' has no group size"),
        ({"weights": weights(actorder="sometimes")}, r"weights\.actorder='sometimes'"),
        ({"weights": weights(dynamic=True)}, r"weights\.dynamic=True"),
        ({"weights": weights(symmetric="yes")}, r"weights\.symmetric='yes'"),
    ],
)
def test_group_refusals_name_the_key(group_changes: dict[str, Any], match: str) -> None:
    bad = {**group(["Linear"]), **group_changes}
    with pytest.raises(ConfigError, match=r"config_groups\['group_0'\]"):
        QuantConfig.from_dict(ct(config_groups={"group_0": bad}), source="config.json")
    with pytest.raises(ConfigError, match=match):
        QuantConfig.from_dict(ct(config_groups={"group_0": bad}), source="config.json")


def test_read_from_config_json(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["X"], "quantization_config": W4A16}))
    assert read_quant_config(tmp_path).method == "compressed-tensors"


# --- writer, loader, patch_model, inspect ------------------------------------------------------------------------

HIDDEN, INTER = 64, 96


class Block(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.up = torch.nn.Linear(HIDDEN, INTER, bias=True)
        self.down = torch.nn.Linear(INTER, HIDDEN, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.down(torch.relu(self.up(x)))


class Tiny(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layers = torch.nn.ModuleList([Block(), Block()])
        self.head = torch.nn.Linear(HIDDEN, 24, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return self.head(x)


LINEARS = [f"layers.{i}.{n}" for i in (0, 1) for n in ("up", "down")] + ["head"]

MIXED = [
    (Scheme(8, -1, False), ["layers.1.down"]),
    (Scheme(4, 32, False), ["re:layers\\.0\\..*"]),
    (Scheme(4, 32, True), ["Linear"]),
]


def _write(folder: Path, **options: Any) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    state = Tiny().state_dict()
    qc = compressed_tensors_config(MIXED, ignore=["head"])
    return state, write_checkpoint(folder, state, qc, model_config={"architectures": ["Tiny"]}, linears=LINEARS,
                                   **options)  # fmt: skip


def test_writer_files_config_and_round_trip(tmp_path: Path) -> None:
    _, expected = _write(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())["quantization_config"]
    assert config["quant_method"] == "compressed-tensors" and config["format"] == "pack-quantized"
    assert [g["targets"] for g in config["config_groups"].values()] == [t for _, t in MIXED]
    ckpt = wna16.load_checkpoint(
        tmp_path,
        Remap.IDENTITY,
        expected_modules=["layers.0.up", "layers.0.down", "layers.1.up", "layers.1.down", "head"],
    )
    assert ckpt.audit.ok, ckpt.audit.problems
    assert {n: str(layer.scheme) for n, layer in ckpt.layers.items()} == {
        "layers.0.up": "w4g32asym", "layers.0.down": "w4g32asym", "layers.1.up": "w4g32sym",
        "layers.1.down": "w8channelasym",
    }  # fmt: skip
    assert set(ckpt.layers["layers.1.up"].tensors) == {"weight_packed", "weight_scale", "weight_shape", "bias"}
    assert "head.weight" in ckpt.unquantized
    for name, weight in expected.items():
        assert torch.equal(dequantize(ckpt.weight(name)), weight), name
    assert ckpt.sizes.quantized_disk_bytes < ckpt.sizes.quantized_bf16_bytes / 2


def test_writer_act_order_writes_g_idx(tmp_path: Path) -> None:
    torch.manual_seed(0)
    state = Tiny().state_dict()
    qc = compressed_tensors_config([(Scheme(4, 32, True), ["Linear"])], ignore=["head"], act_order=True)
    g_idx = {"layers.0.up": (torch.randperm(HIDDEN) % 2).to(torch.int32)}
    with pytest.raises(ConfigError, match="pass linears="):
        write_checkpoint(tmp_path, state, qc, g_idx=g_idx)
    expected = write_checkpoint(tmp_path, state, qc, g_idx=g_idx, linears=LINEARS)
    ckpt = wna16.load_checkpoint(tmp_path, Remap.IDENTITY)
    assert ckpt.layers["layers.0.up"].act_order and not ckpt.layers["layers.1.up"].act_order
    assert "weight_g_idx" in ckpt.layers["layers.1.up"].tensors, "actorder group: every layer ships its map"
    for name, weight in expected.items():
        assert torch.equal(dequantize(ckpt.weight(name)), weight), name


def test_audit_names_what_is_wrong(tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    _write(tmp_path)
    tensors = load_file(tmp_path / "model.safetensors")
    del tensors["layers.0.up.weight_zero_point"]
    tensors["layers.1.up.weight_shape"] = torch.tensor([96, 32])
    tensors["layers.0.down.qzeros"] = torch.zeros(3, 8, dtype=torch.int32)
    save_file(tensors, tmp_path / "model.safetensors")
    report = wna16.checkpoint.load.open_checkpoint(tmp_path, Remap.IDENTITY)[1]
    found = {(p.kind, p.module) for p in report.problems}
    assert ("missing-tensor", "layers.0.up") in found
    assert ("shape", "layers.1.up") in found, report.problems
    assert ("unexpected-tensor", "layers.0.down") in found
    assert "layers.0.up.weight_zero_point" in str(next(p for p in report.problems if p.module == "layers.0.up"))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_patch_model_serves_it(tmp_path: Path, dtype: torch.dtype) -> None:
    state, expected = _write(tmp_path)
    with empty_weights():
        model = Tiny()
    report = patch_model(model, tmp_path, dtype=dtype)
    assert set(report.layers) == set(expected)
    assert report.unquantized_linears == ("head",)
    layer = model.layers[1].down
    assert isinstance(layer, QuantLinear) and layer.weight_format is COMPRESSED_TENSORS
    exact = Tiny()
    exact.load_state_dict(state)
    with torch.no_grad():
        for name, weight in expected.items():
            exact.get_submodule(name).weight.copy_(weight)
        x = torch.randn(3, HIDDEN, generator=torch.Generator().manual_seed(1))
        want = exact.double()(x.double())
        got = model(x.to(dtype))
    rel = float((got.double() - want).abs().max() / want.abs().max())
    assert rel < (1e-5 if dtype == torch.float32 else 5e-2), rel
    saved = layer.state_dict()
    assert set(saved) == {"weight_packed", "weight_scale", "weight_shape", "weight_zero_point"}


def test_inspect_shows_the_groups(tmp_path: Path) -> None:
    _write(tmp_path)
    result = subprocess.run(
        [sys.executable, "-m", "wna16.cli", "inspect", str(tmp_path)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "quant_method compressed-tensors, packing compressed-tensors" in result.stdout
    assert "config_groups ['group_0', 'group_1', 'group_2'], ignore ['head']" in result.stdout
    row = next(line.split() for line in result.stdout.splitlines() if line.startswith("layers.1.down "))
    assert row[:5] == ["layers.1.down", "8", "-1", "asym", "compressed-tensors"], row
    assert "audit       OK" in result.stdout
