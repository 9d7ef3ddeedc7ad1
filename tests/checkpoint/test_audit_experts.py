"""The audit of per-expert linears (``experts.<e>.gate_proj/up_proj/down_proj``, as AutoRound writes them): every
expert present, one scheme and shape within each fused group; the fused-experts layout refused naming the tensor."""

from __future__ import annotations

from pathlib import Path

import pytest
from ckpt_factory import Layer, layer_tensors, plain_tensors, quant_config, write_checkpoint

from wna16 import Scheme
from wna16.checkpoint.audit import AuditReport, audit_tensors
from wna16.checkpoint.config import read_quant_config
from wna16.checkpoint.files import SafetensorsFolder
from wna16.checkpoint.load import load_checkpoint
from wna16.checkpoint.remap import Remap
from wna16.errors import CheckpointAuditError

BLOCK = "model.layers.0.mlp.experts"
H, INTER, E = 64, 32, 4


def expert_layers(scheme: Scheme = Scheme(4, 32, True), odd: dict[str, Layer] | None = None) -> list[Layer]:
    shapes = {"gate_proj": (H, INTER), "up_proj": (H, INTER), "down_proj": (INTER, H)}
    layers = [Layer(f"{BLOCK}.{e}.{p}", *shapes[p], scheme) for e in range(E) for p in shapes]
    return [(odd or {}).get(x.name, x) for x in layers]


def audit(folder: Path, layers: list[Layer], drop: str = "", config: dict[str, object] | None = None) -> AuditReport:
    tensors, _ = layer_tensors(layers, "gptq")
    tensors = {k: v for k, v in tensors.items() if not (drop and k.startswith(drop + "."))}
    tensors.update(plain_tensors())
    write_checkpoint(folder, tensors, config or quant_config())
    return audit_tensors(SafetensorsFolder(folder), read_quant_config(folder), Remap.IDENTITY.name)


def test_complete_experts_pass(tmp_path: Path) -> None:
    report = audit(tmp_path, expert_layers())
    assert report.ok, report.problems
    assert len([n for n in report.layers if ".experts." in n]) == 3 * E


@pytest.mark.parametrize("drop", [f"{BLOCK}.1.up_proj", f"{BLOCK}.2.down_proj"])
def test_a_missing_expert_projection_is_named(tmp_path: Path, drop: str) -> None:
    report = audit(tmp_path, expert_layers(), drop=drop)
    problems = [p for p in report.problems if p.kind == "experts"]
    assert len(problems) == 1 and drop in problems[0].message and problems[0].module == BLOCK
    with pytest.raises(CheckpointAuditError, match=drop.replace(".", r"\.")):
        load_checkpoint(tmp_path)


def test_a_different_scheme_within_a_fused_group_is_a_problem(tmp_path: Path) -> None:
    name = f"{BLOCK}.2.up_proj"
    config = quant_config(extra_config={name: {"bits": 8}})
    report = audit(tmp_path, expert_layers(odd={name: Layer(name, H, INTER, Scheme(8, 32, True))}), config=config)
    problems = [p for p in report.problems if p.kind == "experts"]
    assert len(problems) == 1 and "gate_up" in problems[0].message and name in problems[0].message
    assert problems[0].tensor == f"{name}.qweight"


def test_down_may_differ_from_gate_up_when_every_expert_agrees(tmp_path: Path) -> None:
    downs = {f"{BLOCK}.{e}.down_proj": Layer(f"{BLOCK}.{e}.down_proj", INTER, H, Scheme(8, 32, True)) for e in range(E)}
    config = quant_config(extra_config={n: {"bits": 8} for n in downs})
    assert audit(tmp_path, expert_layers(odd=downs), config=config).ok


def test_fused_experts_tensor_is_refused_naming_it(tmp_path: Path) -> None:
    fused, _ = layer_tensors([Layer("model.layers.0.mlp.experts.gate_up_proj", H, 2 * INTER)], "gptq")
    fused.update(plain_tensors())
    write_checkpoint(tmp_path, fused, quant_config())
    with pytest.raises(CheckpointAuditError, match=r"MoE layout not supported.*experts\.gate_up_proj") as info:
        load_checkpoint(tmp_path)
    assert any(p.tensor == "model.layers.0.mlp.experts.gate_up_proj.qweight" for p in info.value.problems)
