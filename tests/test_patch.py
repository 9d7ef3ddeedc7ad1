"""patch_model and the checkpoint writer on a plain torch model (no transformers): replacement, 16-bit tensors, tied
weights, a model built without weights, and every mismatch as one typed error that leaves the model untouched."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import wna16
from wna16 import ConfigError, FormatError, ModelMismatchError, UnsupportedError
from wna16.checkpoint.load import load_checkpoint
from wna16.checkpoint.remap import Remap
from wna16.checkpoint.write import quantization_config, write_checkpoint
from wna16.nn import QuantLinear
from wna16.patch import empty_weights, patch_model
from wna16.reference import dequantize

HIDDEN, INTER, VOCAB = 64, 96, 40


class Block(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.up = torch.nn.Linear(HIDDEN, INTER, bias=True)
        self.down = torch.nn.Linear(INTER, HIDDEN, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.down(torch.relu(self.up(x)))


class Tiny(torch.nn.Module):
    """An LM-shaped model: embedding, two blocks, a norm scale, a head tied to the embedding, a real buffer."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(VOCAB, HIDDEN)
        self.layers = torch.nn.ModuleList([Block(), Block()])
        self.norm = torch.nn.Parameter(torch.ones(HIDDEN))
        self.head = torch.nn.Linear(HIDDEN, VOCAB, bias=False)
        self.head.weight = self.embed.weight
        self.register_buffer("inv_scale", torch.full((HIDDEN,), 0.5), persistent=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.embed(ids)
        for layer in self.layers:
            x = layer(x)
        return self.head((x * self.norm * self.inv_scale).to(self.head.weight.dtype))


def _write(folder: Path, packing: str = "auto_round", sym: bool = False, bits: int = 4) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    model = Tiny()
    state = {k: v for k, v in model.state_dict().items() if k != "head.weight"}  # tied: stored once
    qc = quantization_config(
        bits=bits, group_size=32, sym=sym, packing_format=packing, block_name_to_quantize=["layers"]
    )
    expected = write_checkpoint(folder, state, qc, model_config={"architectures": ["Tiny"]})
    return {"expected": expected, "state": state}  # type: ignore[dict-item]


def _empty() -> Tiny:
    with empty_weights():
        return Tiny()


def test_writer_files_and_config(tmp_path: Path) -> None:
    _write(tmp_path, packing="auto_round:gptqmodel")
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["architectures"] == ["Tiny"]
    assert config["quantization_config"]["packing_format"] == "auto_round:gptqmodel"
    assert config["quantization_config"]["block_name_to_quantize"] == "layers"
    ckpt = wna16.load_checkpoint(tmp_path, Remap.IDENTITY)
    assert set(ckpt.layers) == {f"layers.{i}.{n}" for i in (0, 1) for n in ("up", "down")}
    assert ckpt.layers["layers.0.up"].has_bias and not ckpt.layers["layers.0.down"].has_bias
    assert set(ckpt.unquantized) == {"embed.weight", "norm"}, "biases of quantized layers belong to the layer"


@pytest.mark.parametrize(("packing", "sym"), [("auto_round", False), ("auto_round:auto_gptq", True)])
def test_writer_weights_are_what_the_reader_computes(tmp_path: Path, packing: str, sym: bool) -> None:
    made = _write(tmp_path, packing, sym)
    ckpt = wna16.load_checkpoint(tmp_path, Remap.IDENTITY)
    for name, weight in made["expected"].items():  # type: ignore[attr-defined]
        assert torch.equal(dequantize(ckpt.weight(name)), weight)


def test_writer_act_order_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(0)
    state = {k: v for k, v in Tiny().state_dict().items() if k != "head.weight"}
    g_idx = {"layers.0.up": (torch.randperm(HIDDEN) % 2).to(torch.int32)}
    qc = quantization_config(bits=4, group_size=32, sym=False, packing_format="auto_round:gptqmodel",
                             block_name_to_quantize=["layers"])  # fmt: skip
    expected = write_checkpoint(tmp_path, state, qc, g_idx=g_idx)
    ckpt = wna16.load_checkpoint(tmp_path, Remap.IDENTITY)
    assert ckpt.layers["layers.0.up"].act_order and not ckpt.layers["layers.1.up"].act_order
    assert torch.equal(dequantize(ckpt.weight("layers.0.up")), expected["layers.0.up"])


def test_writer_refuses_what_the_layout_cannot_store(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="packing_format"):
        quantization_config(bits=4, group_size=32, sym=True, packing_format="gguf", block_name_to_quantize=["x"])
    state = {"layers.0.up.weight": torch.rand(32, 64) + 0.1}  # all positive: asymmetric RTN zero 0
    qc = quantization_config(bits=4, group_size=32, sym=False, packing_format="auto_round:auto_gptq",
                             block_name_to_quantize=["layers"])  # fmt: skip
    with pytest.raises(FormatError, match="cannot be written as gptq"):
        write_checkpoint(tmp_path, state, qc)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_patch_model_serves_the_checkpoint(tmp_path: Path, dtype: torch.dtype) -> None:
    made = _write(tmp_path)
    model = _empty()
    report = patch_model(model, tmp_path, dtype=dtype, backend="reference")
    assert set(report.layers) == {f"layers.{i}.{n}" for i in (0, 1) for n in ("up", "down")}
    assert report.backends == {"reference": 4}
    assert set(report.tensors) == {"embed.weight", "norm"}
    assert report.unquantized_linears == ("head",)
    assert "4 linear layers quantized (reference: 4)" in str(report)
    assert isinstance(model.layers[0].up, QuantLinear) and model.layers[0].up.weight_format.name == "gptq_v2"
    assert model.head.weight is model.embed.weight, "the tied head follows the embedding"
    assert not any(t.is_meta for t in [*model.parameters(), *model.buffers()])
    up = model.layers[0].up
    assert up._weight is None, "the canonical weight is re-read from the checkpoint, not kept resident"
    on_disk = up.weight_format.pack(load_checkpoint(tmp_path).weight("layers.0.up"))
    assert on_disk and all(torch.equal(up.state_dict()[key], tensor) for key, tensor in on_disk.items())

    exact = Tiny()  # float model holding the dequantized weights
    exact.load_state_dict(made["state"], strict=False)  # type: ignore[arg-type]
    with torch.no_grad():
        for name, weight in made["expected"].items():  # type: ignore[attr-defined]
            exact.get_submodule(name).weight.copy_(weight)
        ids = torch.tensor([[1, 5, 9, 30, 2]])
        want = exact.to(torch.float64)(ids)
        got = model(ids)
    assert got.dtype == dtype
    rel = float((got.double() - want).abs().max() / want.abs().max())
    assert rel < (1e-5 if dtype == torch.float32 else 5e-2)


def test_patch_model_errors_name_the_layer(tmp_path: Path) -> None:
    _write(tmp_path)
    with pytest.raises(
        UnsupportedError, match=r"^layers\.0\.(up|down): backend 'cpu' \(explicit\) cannot serve \d+ -> \d+ w4"
    ):
        patch_model(_empty(), tmp_path, dtype=torch.float32, device="meta", backend="cpu")


def test_patch_model_mismatches_leave_the_model_untouched(tmp_path: Path) -> None:
    _write(tmp_path)
    model = _empty()
    model.layers[1].down = torch.nn.Linear(INTER, HIDDEN, bias=True, device="meta")  # checkpoint has no bias
    model.layers[0].up = torch.nn.Identity()  # type: ignore[assignment]
    del model.norm
    with pytest.raises(ModelMismatchError) as info:
        patch_model(model, wna16.load_checkpoint(tmp_path, Remap.IDENTITY))
    text = str(info.value)
    assert "layers.0.up: expected torch.nn.Linear, the model has Identity" in text
    assert "layers.1.down: model has 96 -> 64 with bias, checkpoint has 96 -> 64" in text
    assert "norm: the checkpoint has this 16-bit tensor but the model has no such parameter or buffer" in text
    assert isinstance(model.layers[1].up, torch.nn.Linear) and model.embed.weight.is_meta


def test_patch_model_names_tensors_left_on_meta(tmp_path: Path) -> None:
    _write(tmp_path)
    with torch.device("meta"):  # buffers on meta too: the non-persistent one cannot come from the checkpoint
        model = Tiny()
    with pytest.raises(ModelMismatchError, match="inv_scale: on meta and not in the checkpoint"):
        patch_model(model, wna16.load_checkpoint(tmp_path, Remap.IDENTITY))
    assert not isinstance(model.layers[0].up, QuantLinear)
