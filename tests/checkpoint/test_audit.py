"""The coverage audit: every disagreement between tensors and config, reported at once, each naming file and tensor."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from ckpt_factory import Layer, layer_tensors, llama_layers, plain_tensors, quant_config, write_checkpoint

from wna16 import Scheme
from wna16.checkpoint.audit import AuditReport, Problem, audit_tensors
from wna16.checkpoint.config import read_quant_config
from wna16.checkpoint.files import SafetensorsFolder
from wna16.checkpoint.load import load_checkpoint
from wna16.checkpoint.remap import Remap
from wna16.errors import CheckpointAuditError

Tensors = dict[str, torch.Tensor]
UP = "model.layers.0.mlp.up_proj"


def _tensors(packed_format: str = "gptq", scheme: Scheme = Scheme(4, 32, True), act_order: bool = False) -> Tensors:
    layers = [
        Layer(x.name, x.in_features, x.out_features, x.scheme, x.bias, act_order) for x in llama_layers(scheme=scheme)
    ]
    tensors, _ = layer_tensors(layers, packed_format)
    tensors.update(plain_tensors())
    return tensors


def _audit(
    folder: Path,
    tensors: Tensors,
    qc: dict[str, object] | None = None,
    *,
    shards: int = 1,
    remap: Remap = Remap.IDENTITY,
    **options: object,
) -> AuditReport:
    write_checkpoint(folder, tensors, qc or quant_config(), shards=shards)
    config = read_quant_config(folder).remapped(remap)
    return audit_tensors(SafetensorsFolder(folder), config, remap.name, **options)  # type: ignore[arg-type]


def _only(report: AuditReport, kind: str) -> Problem:
    assert [p.kind for p in report.problems] == [kind], report.problems
    return report.problems[0]


def test_clean_checkpoint(tmp_path: Path) -> None:
    report = _audit(tmp_path, _tensors())
    assert report.ok and report.problems == ()
    assert len(report.layers) == 14
    assert sorted(report.unquantized) == sorted(plain_tensors())
    q = report.layers["model.layers.0.self_attn.q_proj"]
    assert (q.in_features, q.out_features, q.scheme, q.packed_format, q.act_order, q.has_bias) == (
        64, 64, Scheme(4, 32, True), "gptq", False, True,
    )  # fmt: skip
    assert report.layers[UP].tensors.keys() == {"qweight", "qzeros", "scales", "g_idx"}
    report.raise_for_problems()


def test_act_order_is_read_from_g_idx(tmp_path: Path) -> None:
    report = _audit(
        tmp_path,
        _tensors("gptq_v2", Scheme(3, 32, False), act_order=True),
        quant_config(Scheme(3, 32, False), "gptq_v2"),
    )
    assert report.ok, report.problems
    assert all(layer.act_order for layer in report.layers.values())


def _set(name: str, value: Callable[[torch.Tensor], torch.Tensor | None]) -> Callable[[Tensors], None]:
    def mutate(tensors: Tensors) -> None:
        new = value(tensors[name])
        if new is None:
            del tensors[name]
        else:
            tensors[name] = new

    return mutate


def _g_idx_out_of_range(g: torch.Tensor) -> torch.Tensor:
    g = g.clone()
    g[3] = 7
    return g


CORRUPTIONS: list[tuple[str, Callable[[Tensors], None], str, str, str]] = [
    (
        "wrong dtype",
        _set(f"{UP}.qweight", lambda t: t.to(torch.float32)),
        "dtype",
        f"{UP}.qweight",
        r"dtype float32\[8, 128\], expected int32",
    ),
    (
        "float scales as int",
        _set(f"{UP}.scales", lambda t: t.to(torch.int32)),
        "dtype",
        f"{UP}.scales",
        "expected float16/bfloat16/float32",
    ),
    (
        "missing scales",
        _set(f"{UP}.scales", lambda t: None),
        "missing-tensor",
        UP,
        r"quantized as w4g32sym \(gptq\) but the tensor is missing \(have \['g_idx', 'qweight', 'qzeros'\]\)",
    ),
    (
        "qweight wrong shape",
        _set(f"{UP}.qweight", lambda t: t[:, :-1].contiguous()),
        "shape",
        f"{UP}.qweight",
        r"shape int32\[8, 127\], expected \[8, 128\]",
    ),
    (
        "qzeros wrong shape",
        _set(f"{UP}.qzeros", lambda t: t[:1].contiguous()),
        "shape",
        f"{UP}.qzeros",
        r"expected \[2, 16\]",
    ),
    (
        "g_idx out of range",
        _set(f"{UP}.g_idx", _g_idx_out_of_range),
        "g_idx",
        f"{UP}.g_idx",
        r"values in \[0, 7\], expected \[0, 1\] \(2 groups\)",
    ),
    (
        "g_idx wrong length",
        _set(f"{UP}.g_idx", lambda t: t[:-1].contiguous()),
        "shape",
        f"{UP}.g_idx",
        r"expected \[64\]",
    ),
    (
        "bias wrong length",
        _set("model.layers.0.self_attn.q_proj.bias", lambda t: t[:-2].contiguous()),
        "shape",
        "model.layers.0.self_attn.q_proj.bias",
        r"expected \[64\]",
    ),
    (
        "qweight rows disagree with g_idx",
        _set(f"{UP}.qweight", lambda t: t[:7].contiguous()),
        "shape",
        f"{UP}.g_idx",
        r"shape int32\[64\], expected \[56\] \(K=56 from qweight int32\[7, 128\]\)",
    ),
]


@pytest.mark.parametrize(("what", "mutate", "kind", "tensor", "message"), CORRUPTIONS, ids=[c[0] for c in CORRUPTIONS])
def test_corrupt_layer_names_file_and_tensor(
    tmp_path: Path, what: str, mutate: Callable[[Tensors], None], kind: str, tensor: str, message: str
) -> None:
    tensors = _tensors()
    mutate(tensors)
    report = _audit(tmp_path, tensors)
    problem = report.problems[0]
    assert problem.kind == kind, report.problems
    assert problem.module == UP or problem.module.endswith("q_proj")
    assert tensor in str(problem) and "model.safetensors" in str(problem)
    assert re.search(message, problem.message), problem.message
    assert problem.module not in report.layers
    with pytest.raises(CheckpointAuditError) as info:
        load_checkpoint(tmp_path, Remap.IDENTITY)
    assert tensor in str(info.value) and "model.safetensors" in str(info.value)


def test_quantized_tensor_outside_every_quantized_block(tmp_path: Path) -> None:
    tensors = _tensors()
    lm_head, _ = layer_tensors([Layer("lm_head", 64, 96)], "gptq")
    del tensors["lm_head.weight"]
    tensors.update(lm_head)
    report = _audit(tmp_path, tensors, shards=3)
    problem = _only(report, "unexpected-quantized")
    assert problem.tensor == "lm_head.qweight"
    assert problem.file is not None and problem.file.name.startswith("model-0000")
    assert problem.file == SafetensorsFolder(tmp_path).info("lm_head.qweight").file
    assert "outside every quantized block" in problem.message
    # the explicit opt-out drops the tensors
    ignored = _audit(tmp_path / "ignored", tensors, ignore=[r"^lm_head\."])
    assert ignored.ok and set(ignored.ignored) == set(lm_head)


def test_16_bit_layer_shipping_qweight(tmp_path: Path) -> None:
    report = _audit(tmp_path, _tensors(), quant_config(extra_config={UP: {"bits": 16}}))
    problem = _only(report, "unexpected-quantized")
    assert problem.module == UP and problem.tensor == f"{UP}.qweight"


def test_module_that_should_be_quantized_ships_16_bit(tmp_path: Path) -> None:
    tensors = _tensors()
    for role in ("qweight", "qzeros", "scales", "g_idx"):
        del tensors[f"{UP}.{role}"]
    tensors[f"{UP}.weight"] = torch.zeros(128, 64, dtype=torch.bfloat16)
    problem = _only(_audit(tmp_path, tensors), "missing-quantized")
    assert problem.tensor == f"{UP}.weight" and "w4g32sym (gptq)" in problem.message
    for allow in (True, [r"mlp\.up_proj$"]):
        report = _audit(tmp_path / str(allow is True), tensors, allow_unquantized=allow)
        assert report.ok and report.allowed_unquantized == (UP,)
        assert f"{UP}.weight" in report.unquantized


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    tensors = _tensors()
    del tensors[f"{UP}.scales"]
    tensors["model.layers.1.mlp.down_proj.qweight"] = tensors["model.layers.1.mlp.down_proj.qweight"].to(torch.float16)
    g = tensors["model.layers.1.self_attn.k_proj.g_idx"].clone()
    g[0] = -1
    tensors["model.layers.1.self_attn.k_proj.g_idx"] = g
    lm_head, _ = layer_tensors([Layer("lm_head", 64, 96)], "gptq")
    tensors.update(lm_head)
    del tensors["lm_head.weight"]
    write_checkpoint(tmp_path, tensors, quant_config(), shards=2)
    with pytest.raises(CheckpointAuditError) as info:
        load_checkpoint(tmp_path, Remap.IDENTITY)
    kinds = sorted(p.kind for p in info.value.problems)
    assert kinds == ["dtype", "g_idx", "missing-tensor", "unexpected-quantized"]
    assert "4 problem(s)" in str(info.value)


def test_expected_modules(tmp_path: Path) -> None:
    tensors = _tensors()
    modules = {layer.name: (layer.in_features, layer.out_features) for layer in llama_layers()}
    assert _audit(tmp_path, tensors, expected_modules=modules).ok
    runtime = dict(modules)
    del runtime[UP]
    runtime["model.layers.1.mlp.extra_proj"] = (64, 64)
    runtime["model.layers.0.mlp.down_proj"] = (128, 32)
    report = _audit(tmp_path / "x", tensors, expected_modules=runtime)
    by_kind = {p.kind: p for p in report.problems}
    assert sorted(by_kind) == ["missing-quantized", "no-runtime-module", "shape"]
    assert by_kind["no-runtime-module"].module == UP
    assert by_kind["missing-quantized"].module == "model.layers.1.mlp.extra_proj"
    assert "has no tensors" in by_kind["missing-quantized"].message
    assert "runtime expects (128, 32)" in by_kind["shape"].message


def test_remap_applies_to_tensors_and_config(tmp_path: Path) -> None:
    remap = Remap(prefixes={"model.": "language_model.model."}, label="test")
    report = _audit(tmp_path, _tensors(), remap=remap)
    assert report.ok, report.problems
    assert "language_model.model.layers.0.mlp.up_proj" in report.layers
    assert report.layers["language_model.model.layers.0.mlp.up_proj"].source == UP
    assert report.names["language_model.model.norm.weight"] == "model.norm.weight"


def test_duplicate_runtime_names(tmp_path: Path) -> None:
    tensors = _tensors()
    tensors["other.norm.weight"] = torch.ones(64, dtype=torch.bfloat16)
    remap = Remap(prefixes={"other.": "model."}, label="clash")
    problem = _only(_audit(tmp_path, tensors, remap=remap), "duplicate")
    assert "model.norm.weight" in problem.message and "other.norm.weight" in problem.message


def test_awq_layout(tmp_path: Path) -> None:
    scheme = Scheme(4, 32, False)
    tensors = _tensors("awq", scheme)
    assert _audit(tmp_path, tensors, quant_config(scheme, "awq")).ok
    tensors[f"{UP}.g_idx"] = torch.zeros(64, dtype=torch.int32)
    problem = _only(_audit(tmp_path / "g", tensors, quant_config(scheme, "awq")), "unexpected-tensor")
    assert problem.tensor == f"{UP}.g_idx"


def test_fused_experts_is_a_problem_not_a_crash(tmp_path: Path) -> None:
    tensors = _tensors()
    fused, _ = layer_tensors([Layer("model.layers.1.mlp.experts.gate_up_proj", 64, 128)], "gptq")
    tensors.update(fused)
    problem = _only(_audit(tmp_path, tensors), "config")
    assert "MoE layout not supported" in problem.message


def test_norm_scales_are_not_a_packed_layer(tmp_path: Path) -> None:
    tensors = _tensors()
    tensors["lm_head_norm.scales"] = torch.ones(64)
    report = _audit(tmp_path, tensors)
    assert report.ok and "lm_head_norm.scales" in report.unquantized


def test_3_bit_rows_that_do_not_fill_whole_words(tmp_path: Path) -> None:
    scheme = Scheme(3, 32, True)
    tensors = _tensors("gptq", scheme)
    tensors[f"{UP}.qweight"] = tensors[f"{UP}.qweight"][:5].contiguous()
    problem = _only(_audit(tmp_path, tensors, quant_config(scheme)), "shape")
    assert problem.tensor == f"{UP}.qweight" and "5 rows cannot hold 3-bit codes" in problem.message


def test_expected_fused_runtime_modules(tmp_path: Path) -> None:
    # A vLLM-style runtime builds qkv_proj and gate_up_proj; the checkpoint's parts serve them.
    tensors = _tensors()
    runtime: dict[str, tuple[int, int]] = {}
    for i in range(2):
        p = f"model.layers.{i}"
        runtime |= {f"{p}.self_attn.qkv_proj": (64, 192), f"{p}.self_attn.o_proj": (64, 64)}
        runtime |= {f"{p}.mlp.gate_up_proj": (64, 256), f"{p}.mlp.down_proj": (128, 64)}
    report = _audit(tmp_path, tensors, expected_modules=runtime)
    assert report.ok, report.problems
    assert "model.layers.0.self_attn.k_proj" in report.layers
    runtime["model.layers.1.mlp.gate_up_proj"] = (64, 200)
    del tensors["model.layers.0.self_attn.v_proj.qweight"]
    for role in ("qzeros", "scales", "g_idx", "bias"):
        del tensors[f"model.layers.0.self_attn.v_proj.{role}"]
    report = _audit(tmp_path / "bad", tensors, expected_modules=runtime)
    by_module = {p.module: p for p in report.problems}
    assert sorted(by_module) == ["model.layers.0.self_attn.v_proj", "model.layers.1.mlp.gate_up_proj"]
    assert by_module["model.layers.0.self_attn.v_proj"].kind == "missing-quantized"
    assert "runtime expects (in, out) = (64, 200)" in by_module["model.layers.1.mlp.gate_up_proj"].message


def test_blockless_gptq_export_flags_only_linears_beside_quantized_ones(tmp_path: Path) -> None:
    # A GPTQ export has no block list: embeddings and norms ship plain 2-D weights and are not forgotten linears.
    gptq = {"quant_method": "gptq", "bits": 4, "group_size": 32, "sym": True, "desc_act": False}
    assert _audit(tmp_path / "clean", _tensors(), gptq).ok
    tensors = _tensors()
    for role in ("qweight", "qzeros", "scales", "g_idx"):
        del tensors[f"{UP}.{role}"]
    tensors[f"{UP}.weight"] = torch.zeros(128, 64, dtype=torch.bfloat16)  # beside a quantized gate/down_proj
    problem = _only(_audit(tmp_path / "missing", tensors, gptq), "missing-quantized")
    assert problem.module == UP
