"""Fused modules whose parts the checkpoint stores in different schemes (issue 28), on a plain torch model whose
attention fuses q/k/v into ``qkv_proj`` and whose MLP fuses gate/up into ``gate_up_proj``: patch_model serves each
run of agreeing parts with one layer and concatenates along N; the result is the exact dequantized model's, every
part's backend is reported, and a missing or mis-shaped part is a FusedModuleError naming the module and the parts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from wna16 import CheckpointAuditError, FusedModuleError, Scheme, quantize_rtn
from wna16.checkpoint.write import quantization_config, write_checkpoint
from wna16.cli import main
from wna16.nn import FusedLinear, QuantLinear
from wna16.patch import FusedPart, empty_weights, fused_linear, patch_model

HIDDEN, KV, INTER = 64, 32, 96
QKV = ("q_proj", "k_proj", "v_proj")


class Attention(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.qkv_proj = torch.nn.Linear(HIDDEN, HIDDEN + 2 * KV, bias=True)
        self.o_proj = torch.nn.Linear(HIDDEN, HIDDEN, bias=False)


class Mlp(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.gate_up_proj = torch.nn.Linear(HIDDEN, 2 * INTER, bias=False)
        self.down_proj = torch.nn.Linear(INTER, HIDDEN, bias=False)


class Layer(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.self_attn = Attention()
        self.mlp = Mlp()


class Fused(torch.nn.Module):
    """Two layers of fused projections; the forward chains every linear so that each part reaches the output."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = torch.nn.ModuleList([Layer(), Layer()])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            q, k, v = layer.self_attn.qkv_proj(x).split([HIDDEN, KV, KV], dim=-1)
            x = x + layer.self_attn.o_proj(q * torch.cat([k, v], dim=-1).tanh())
            gate, up = layer.mlp.gate_up_proj(x).chunk(2, dim=-1)
            x = x + layer.mlp.down_proj(torch.nn.functional.silu(gate) * up)
        return x


def split_state(model: Fused) -> dict[str, torch.Tensor]:
    """The model's tensors as a checkpoint stores them: q/k/v and gate/up as separate modules."""
    state: dict[str, torch.Tensor] = {}
    for name, tensor in model.state_dict().items():
        if ".qkv_proj." in name:
            for part, piece in zip(QKV, tensor.split([HIDDEN, KV, KV]), strict=True):
                state[name.replace("qkv_proj", part)] = piece.clone()
        elif ".gate_up_proj." in name:
            for part, piece in zip(("gate_proj", "up_proj"), tensor.chunk(2), strict=True):
                state[name.replace("gate_up_proj", part)] = piece.clone()
        else:
            state[name] = tensor
    return state


def exact(model: Fused, state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> Fused:
    """The oracle: the float model with every quantized part replaced by its exact dequantization (fp32)."""
    weights = {**{k.removesuffix(".weight"): v for k, v in state.items() if k.endswith(".weight")}, **expected}
    oracle = Fused()
    oracle.load_state_dict(model.state_dict())
    with torch.no_grad():
        for i, layer in enumerate(oracle.layers):
            p = f"layers.{i}."
            qkv = [weights[f"{p}self_attn.{part}"] for part in QKV]
            layer.self_attn.qkv_proj.weight.copy_(torch.cat(qkv))
            layer.self_attn.o_proj.weight.copy_(weights[f"{p}self_attn.o_proj"])
            gate_up = [weights[f"{p}mlp.{part}"] for part in ("gate_proj", "up_proj")]
            layer.mlp.gate_up_proj.weight.copy_(torch.cat(gate_up))
            layer.mlp.down_proj.weight.copy_(weights[f"{p}mlp.down_proj"])
    return oracle


RECIPES: dict[str, dict[str, Any]] = {
    "k_proj_8bit_regex": {".*k_proj": {"bits": 8}},
    "v_proj_16bit": {"layers.0.self_attn.v_proj": {"bits": 16}, "layers.1.self_attn.v_proj": {"bits": 16}},
    "up_proj_group_16": {"layers.0.mlp.up_proj": {"group_size": 16}, "layers.1.mlp.up_proj": {"group_size": 16}},
}


def make(
    folder: Path, extra: dict[str, Any], sym: bool = True
) -> tuple[Fused, dict[str, torch.Tensor], dict[str, Any]]:
    torch.manual_seed(0)
    model = Fused()
    state = split_state(model)
    qc = quantization_config(
        bits=4, group_size=32, sym=sym, packing_format="auto_round", block_name_to_quantize=["layers"],
        extra_config=extra,
    )  # fmt: skip
    expected = write_checkpoint(folder, state, qc, model_config={"architectures": ["Fused"]})
    return model, state, expected


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_mixed_fused_module_equals_the_exact_dequantization(recipe: str, tmp_path: Path) -> None:
    model, state, expected = make(tmp_path, RECIPES[recipe])
    oracle = exact(model, state, expected)
    with empty_weights():
        served = Fused()
    report = patch_model(served, tmp_path, dtype=torch.float32)
    x = torch.randn(3, HIDDEN)
    torch.testing.assert_close(served(x), oracle(x), rtol=1e-5, atol=1e-5)
    qkv = served.layers[0].self_attn.qkv_proj
    gate_up = served.layers[0].mlp.gate_up_proj
    assert isinstance(qkv, FusedLinear) and isinstance(gate_up, FusedLinear)
    want_runs = {
        "k_proj_8bit_regex": ([["q_proj"], ["k_proj"], ["v_proj"]], [["gate_proj", "up_proj"]]),
        "v_proj_16bit": ([["q_proj", "k_proj"], ["v_proj"]], [["gate_proj", "up_proj"]]),
        "up_proj_group_16": ([["q_proj", "k_proj", "v_proj"]], [["gate_proj"], ["up_proj"]]),
    }[recipe]
    for module, want in zip((qkv, gate_up), want_runs, strict=True):
        assert [[p.rsplit(".", 1)[-1] for p in run] for run in module.parts] == want
    if recipe == "v_proj_16bit":
        assert isinstance(qkv.runs[1], torch.nn.Linear) and qkv.backend_names[1] == "torch"
        assert "layers.0.self_attn.v_proj" not in report.layers  # a 16-bit part is no quantized layer
    else:
        assert all(isinstance(r, QuantLinear) for r in qkv.runs)
    # Every quantized part is reported with the backend of its run; the fused module with its runs.
    assert report.layers["layers.0.self_attn.k_proj"].backend == qkv.backend_names[1 if "k_proj_8" in recipe else 0]
    assert report.fused["layers.1.self_attn.qkv_proj"] == tuple(
        tuple(r) for r in served.layers[1].self_attn.qkv_proj.parts
    )
    assert "layers.0.self_attn.qkv_proj: fused from runs" in str(report)


def test_agreeing_parts_share_one_layer(tmp_path: Path) -> None:
    """No mixed recipe: each fused module is one QuantLinear over its concatenated parts (one kernel call)."""
    model, state, expected = make(tmp_path, {})
    with empty_weights():
        served = Fused()
    patch_model(served, tmp_path, dtype=torch.float32)
    for layer in served.layers:
        for module in (layer.self_attn.qkv_proj, layer.mlp.gate_up_proj):
            assert isinstance(module, FusedLinear) and len(module.runs) == 1
            assert isinstance(module.runs[0], QuantLinear)
    x = torch.randn(2, HIDDEN)
    torch.testing.assert_close(served(x), exact(model, state, expected)(x), rtol=1e-5, atol=1e-5)


def test_a_missing_part_names_the_module_and_the_parts(tmp_path: Path) -> None:
    """A quantized part without tensors fails the coverage audit, naming the fused module and its parts; a part the
    config leaves in 16 bits without a weight is a FusedModuleError. Either way the model is left untouched."""
    torch.manual_seed(0)
    model = Fused()
    dropped = ("layers.1.self_attn.k_proj.", "layers.0.self_attn.v_proj.")
    state = {k: v for k, v in split_state(model).items() if not k.startswith(dropped)}
    qc = quantization_config(
        bits=4, group_size=32, sym=True, packing_format="auto_round", block_name_to_quantize=["layers"],
        extra_config={".*v_proj": {"bits": 16}},
    )  # fmt: skip
    write_checkpoint(tmp_path, state, qc)
    with empty_weights():
        served = Fused()
    missing = (
        r"layers\.1\.self_attn\.k_proj: .* has no tensors in the checkpoint "
        r"\(a part of the runtime's fused layers\.1\.self_attn\.qkv_proj: \['layers\.1\.self_attn\.q_proj'"
    )
    with pytest.raises(CheckpointAuditError, match=missing):
        patch_model(served, tmp_path, dtype=torch.float32)
    state.update({k: v for k, v in split_state(model).items() if k.startswith("layers.1.self_attn.k_proj.")})
    write_checkpoint(tmp_path, state, qc)
    with pytest.raises(FusedModuleError, match=r"fused module layers\.0\.self_attn\.qkv_proj needs parts \["
                       r"'layers\.0\.self_attn\.q_proj', .*lacks \['layers\.0\.self_attn\.v_proj'\]"):  # fmt: skip
        patch_model(served, tmp_path, dtype=torch.float32)
    assert isinstance(served.layers[0].self_attn.qkv_proj, torch.nn.Linear)  # nothing half-patched


def test_parts_that_cannot_be_concatenated_name_the_module_and_the_parts(tmp_path: Path) -> None:
    """A k_proj stored with another in_features than q/v (a broken export) cannot join the fused module."""
    torch.manual_seed(0)
    model = Fused()
    state = split_state(model)
    state["layers.0.self_attn.k_proj.weight"] = torch.randn(KV, 2 * HIDDEN)
    qc = quantization_config(
        bits=4, group_size=32, sym=True, packing_format="auto_round", block_name_to_quantize=["layers"],
        extra_config={".*k_proj": {"bits": 8}},
    )  # fmt: skip
    write_checkpoint(tmp_path, state, qc)
    with empty_weights():
        served = Fused()
    shape = (
        r"\[shape\] layers\.0\.self_attn\.qkv_proj: fused from "
        r"layers\.0\.self_attn\.q_proj \(64, 64\), layers\.0\.self_attn\.k_proj \(128, 32\)"
    )
    with pytest.raises(CheckpointAuditError, match=shape):
        patch_model(served, tmp_path, dtype=torch.float32)
    # The builder itself (a checkpoint opened without the audit) refuses with the module and every part named.
    parts: list[FusedPart] = [
        ("a.q_proj", quantize_rtn(torch.randn(64, 64), Scheme(4, 32, True)), None, "auto_round"),
        ("a.k_proj", torch.randn(32, 128), None, "auto_round"),
    ]
    with pytest.raises(FusedModuleError, match=r"a\.qkv_proj: .*a\.q_proj: in_features 64; a\.k_proj: in_features 128"):
        fused_linear("a.qkv_proj", parts, ((0,), (1,)))
    with pytest.raises(FusedModuleError, match=r"a\.qkv_proj: .*mixes quantized and 16-bit parts"):
        fused_linear("a.qkv_proj", [parts[0], ("a.v_proj", torch.randn(32, 64), None, "auto_round")], ((0, 1),))


def test_inspect_shows_a_mixed_fused_module_with_its_parts_schemes_and_backends(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    make(tmp_path, {**RECIPES["v_proj_16bit"], **RECIPES["up_proj_group_16"]})
    assert main(["inspect", str(tmp_path), "--dtype", "float32"]) == 0
    out = capsys.readouterr().out
    assert "mixed fused modules" in out
    line = next(x for x in out.splitlines() if x.strip().startswith("layers.0.self_attn.qkv_proj:"))
    assert "q_proj w4g32sym -> " in line and "k_proj w4g32sym -> " in line and "v_proj 16-bit -> 16-bit matmul" in line
    line = next(x for x in out.splitlines() if x.strip().startswith("layers.1.mlp.gate_up_proj:"))
    assert "gate_proj w4g32sym" in line and "up_proj w4g16sym" in line
    assert main(["inspect", str(tmp_path), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    rows = {row["name"]: row for row in data["mixed_fused"]}
    assert rows["layers.0.self_attn.qkv_proj"]["runs"] == [
        ["layers.0.self_attn.q_proj", "layers.0.self_attn.k_proj"],
        ["layers.0.self_attn.v_proj"],
    ]
    assert all(p["backend"] for p in rows["layers.0.mlp.gate_up_proj"]["parts"])
