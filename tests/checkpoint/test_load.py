"""load_checkpoint: per-layer schemes, canonical weights equal to what was written, lazy reads, all-or-nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from ckpt_factory import Layer, layer_tensors, plain_tensors, quant_config, tiny_llama, write_checkpoint

import wna16
from wna16 import Scheme
from wna16.checkpoint.files import SafetensorsFolder
from wna16.checkpoint.remap import Remap
from wna16.errors import CheckpointAuditError, CheckpointError, ConfigError
from wna16.reference import dequantize

CASES = [
    ("gptq", Scheme(4, 32, True), False),
    ("gptq", Scheme(8, -1, True), False),
    ("gptq_v2", Scheme(3, 32, False), True),
    ("gptq_v2", Scheme(2, 64, False), False),
    ("awq", Scheme(4, 32, False), False),
]


@pytest.mark.parametrize(("packed_format", "scheme", "act_order"), CASES, ids=[f"{c[0]}-{c[1]}-{c[2]}" for c in CASES])
def test_weights_round_trip(tmp_path: Path, packed_format: str, scheme: Scheme, act_order: bool) -> None:
    folder, weights, tensors = tiny_llama(
        tmp_path, packed_format=packed_format, scheme=scheme, act_order=act_order, shards=3
    )
    ckpt = wna16.load_checkpoint(folder)
    assert set(ckpt.layers) == set(weights)
    for name, expected in weights.items():
        layer = ckpt.layers[name]
        assert (layer.scheme, layer.packed_format, layer.act_order) == (scheme, packed_format, act_order)
        assert (layer.in_features, layer.out_features) == (expected.in_features, expected.out_features)
        got = ckpt.weight(name)
        assert torch.equal(got.qweight, expected.qweight) and torch.equal(got.zeros, expected.zeros)
        assert torch.equal(got.scales, expected.scales)
        assert (got.g_idx is None) == (expected.g_idx is None)
        assert torch.equal(dequantize(got), dequantize(expected))
        bias = ckpt.bias(name)
        assert layer.has_bias == (bias is not None)
        if bias is not None:
            assert torch.equal(bias, tensors[f"{name}.bias"])
    for name, tensor in plain_tensors().items():
        assert torch.equal(ckpt.tensor(name), tensor)
    assert set(ckpt.unquantized) == set(plain_tensors())


def test_sizes(tmp_path: Path) -> None:
    folder, weights, tensors = tiny_llama(tmp_path)
    ckpt = wna16.load_checkpoint(folder)
    plain = plain_tensors()
    quantized_disk = sum(t.numel() * t.element_size() for n, t in tensors.items() if n not in plain)
    quantized_bf16 = sum(2 * w.in_features * w.out_features for w in weights.values())
    quantized_bf16 += sum(2 * t.numel() for n, t in tensors.items() if n.endswith(".bias"))
    sizes = ckpt.sizes
    assert sizes.disk_bytes == (folder / "model.safetensors").stat().st_size
    assert sizes.quantized_disk_bytes == quantized_disk
    assert sizes.quantized_bf16_bytes == quantized_bf16
    assert sizes.bf16_bytes == quantized_bf16 + sum(2 * t.numel() for t in plain.values())
    assert 0 < sizes.saved < 1


def test_qweight_is_never_read_before_a_weight_is_asked_for(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder, _, _ = tiny_llama(tmp_path)
    read: list[str] = []
    original = SafetensorsFolder.tensor

    def spy(self: SafetensorsFolder, name: str) -> torch.Tensor:
        read.append(name)
        return original(self, name)

    monkeypatch.setattr(SafetensorsFolder, "tensor", spy)
    ckpt = wna16.load_checkpoint(folder)
    # the audit reads the small tensors whose values it checks (zeros, finite scales and bias), never qweight
    assert read and all(name.rpartition(".")[2] in ("g_idx", "qzeros", "scales", "bias") for name in read)
    read.clear()
    ckpt.weight("model.layers.1.mlp.up_proj")
    # no act order here: the g_idx the audit checked is not read again
    assert sorted(read) == sorted(f"model.layers.1.mlp.up_proj.{r}" for r in ("qweight", "qzeros", "scales"))


def test_weights_own_their_memory(tmp_path: Path) -> None:
    folder, _, _ = tiny_llama(tmp_path)
    ckpt = wna16.load_checkpoint(folder)
    a = ckpt.weight("model.layers.0.mlp.up_proj").qweight
    b = ckpt.weight("model.layers.0.mlp.up_proj").qweight
    assert a.data_ptr() != b.data_ptr() and torch.equal(a, b)  # read copies: nothing depends on the file afterwards


def test_audit_failure_returns_nothing(tmp_path: Path) -> None:
    folder, _, tensors = tiny_llama(tmp_path)
    del tensors["model.layers.0.mlp.up_proj.scales"]
    write_checkpoint(folder, tensors, quant_config())
    with pytest.raises(CheckpointAuditError) as info:
        wna16.load_checkpoint(folder)
    assert isinstance(info.value, CheckpointError)
    assert "model.safetensors: model.layers.0.mlp.up_proj.scales: quantized as w4g32sym" in str(info.value)


def test_bad_values_found_by_the_audit_name_the_file(tmp_path: Path) -> None:
    # A symmetric scheme whose stored zeros are not the centre: the audit reads the zeros and says so before any weight.
    layer = Layer("model.layers.0.mlp.up_proj", 64, 128, Scheme(4, 32, False))
    tensors, _ = layer_tensors([layer], "gptq_v2")
    tensors.update(plain_tensors(blocks=1))
    write_checkpoint(tmp_path, tensors, quant_config(Scheme(4, 32, True), "gptq_v2"))
    with pytest.raises(
        CheckpointAuditError, match=r"\[zeros\] model\.safetensors: model\.layers\.0\.mlp\.up_proj\.qzeros"
    ):
        wna16.load_checkpoint(tmp_path)


def test_remap_and_diffusers_component(tmp_path: Path) -> None:
    root = tmp_path / "pipe"
    component = root / "transformer"
    layers = [Layer("transformer_blocks.0.attn.to_q", 64, 64), Layer("transformer_blocks.0.ff.net.2", 128, 64)]
    tensors, weights = layer_tensors(layers, "gptq")
    tensors["proj_out.weight"] = torch.zeros(16, 64, dtype=torch.bfloat16)
    extra = {"_class_name": "MyTransformer2DModel", "architectures": None}
    qc = quant_config(blocks="transformer_blocks")
    write_checkpoint(component, tensors, qc, stem="diffusion_pytorch_model", shards=2, config_extra=extra)
    (root / "model_index.json").write_text(json.dumps({"_class_name": "MyPipeline", "transformer": ["diffusers", "X"]}))
    ckpt = wna16.load_checkpoint(component)
    assert set(ckpt.layers) == set(weights)
    remap = Remap(prefixes={"transformer_blocks.": "blocks."}, substrings={".ff.net.2": ".ff.out"}, label="test")
    remapped = wna16.load_checkpoint(component, remap)
    assert set(remapped.layers) == {"blocks.0.attn.to_q", "blocks.0.ff.out"}
    assert remapped.layers["blocks.0.ff.out"].source == "transformer_blocks.0.ff.net.2"
    assert torch.equal(remapped.weight("blocks.0.ff.out").qweight, weights["transformer_blocks.0.ff.net.2"].qweight)


def test_unknown_names(tmp_path: Path) -> None:
    folder, _, _ = tiny_llama(tmp_path)
    ckpt = wna16.load_checkpoint(folder)
    with pytest.raises(CheckpointError, match="no quantized layer 'model.norm'"):
        ckpt.weight("model.norm")
    with pytest.raises(CheckpointError, match="no unquantized tensor 'model.layers.0.mlp.up_proj.qweight'"):
        ckpt.tensor("model.layers.0.mlp.up_proj.qweight")


def test_not_a_folder_and_no_config(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="not a checkpoint folder"):
        wna16.load_checkpoint(tmp_path / "missing")
    write_checkpoint(tmp_path, plain_tensors(), None)
    with pytest.raises(ConfigError, match="no quantization config"):
        wna16.load_checkpoint(tmp_path)
