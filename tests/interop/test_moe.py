"""Quantized mixture-of-experts checkpoints end to end: a tiny Qwen3-MoE quantized by auto-round 0.16.1 (which writes
the experts as per-expert linears ``mlp.experts.<e>.gate_proj/up_proj/down_proj``), audited and served by
``patch_model`` through transformers 5's fused experts module (``gate_up_proj`` [E, 2I, H]), replaced by one
:class:`wna16.nn.QuantExperts`. The output must equal the same model with the exact dequantized experts. The same for
the flagship's architecture, a tiny Qwen3-Omni-MoE thinker (its audio and vision towers left in 16 bits)."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import pytest
import torch
from make_checkpoints import (  # registered by conftest.py (tests/checkpoints/make_checkpoints.py)
    exact_state,
    tiny_qwen3_moe,
    tiny_qwen3_omni_thinker,
    tiny_tokenizer,
)
from transformers import AutoConfig, AutoModelForCausalLM

from wna16 import CheckpointAuditError, load_checkpoint
from wna16.checkpoint.files import SafetensorsFolder
from wna16.checkpoint.remap import Remap
from wna16.nn import QuantExperts
from wna16.patch import empty_weights, patch_model

EXPERTS, TOP_K = 4, 2
PREFIX = "model.layers.0.mlp.experts"


def autoround_w4g32(model: torch.nn.Module, out: Path) -> Path:
    """auto-round's W4 g32 sym export (``auto_round:auto_gptq``) of ``model`` into ``out``, pure RTN, offline."""
    from auto_round import AutoRound

    with tempfile.TemporaryDirectory() as tmp:
        rounder = AutoRound(
            model, tokenizer=tiny_tokenizer(), bits=4, group_size=32, sym=True, iters=0, disable_opt_rtn=True,
            device_map="cpu",
        )  # fmt: skip
        rounder.quantize_and_save(tmp, format="auto_round")
        src = next(p.parent for p in Path(tmp).rglob("config.json"))
        shutil.copytree(src, out, dirs_exist_ok=True)
    return out


@pytest.fixture(scope="session")
def qwen3_moe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny Qwen3-MoE, one layer of top-2 of 4 experts, as auto-round exports it."""
    model = tiny_qwen3_moe(num_hidden_layers=1, num_experts=EXPERTS, num_experts_per_tok=TOP_K, norm_topk_prob=False)
    return autoround_w4g32(model, tmp_path_factory.mktemp("qwen3-moe"))


def build(path: Path) -> torch.nn.Module:
    config = AutoConfig.from_pretrained(path)
    del config.quantization_config
    with empty_weights():
        return AutoModelForCausalLM.from_config(config).eval()


def assert_same_logits(model: torch.nn.Module, dense: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """``model`` (patched) gives the logits of ``dense`` loaded with ``state`` (the exact dequantization), fp32."""
    missing, unexpected = dense.load_state_dict(state, strict=False, assign=True)
    assert not unexpected and not missing, (missing, unexpected)
    ids = torch.randint(0, 128, (2, 9), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        got, want = model(input_ids=ids).logits, dense(input_ids=ids).logits
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    assert (got - want).abs().max() < 1e-2 * want.abs().max()


def test_autoround_writes_per_expert_linears_and_the_audit_covers_them(qwen3_moe: Path) -> None:
    names = set(SafetensorsFolder(qwen3_moe).tensors)
    for e in range(EXPERTS):
        for proj in ("gate_proj", "up_proj", "down_proj"):
            assert f"{PREFIX}.{e}.{proj}.qweight" in names
    checkpoint = load_checkpoint(qwen3_moe)
    assert {n for n in checkpoint.layers if ".experts." in n} == {
        f"{PREFIX}.{e}.{p}" for e in range(EXPERTS) for p in ("gate_proj", "up_proj", "down_proj")
    }


def test_patch_model_serves_the_experts_and_equals_the_dequantized_model(qwen3_moe: Path) -> None:
    model = build(qwen3_moe)
    assert type(model.get_submodule(PREFIX)).__name__ == "Qwen3MoeExperts"
    report = patch_model(model, qwen3_moe, dtype=torch.float32, backend="reference")
    experts = model.get_submodule(PREFIX)
    assert isinstance(experts, QuantExperts) and experts.top_k == TOP_K and experts.num_experts == EXPERTS
    assert report.layers[f"{PREFIX}.3.down_proj"].backend == "reference"

    assert_same_logits(model, build(qwen3_moe), exact_state(qwen3_moe))


def test_patch_model_bf16_on_the_registry_choice(qwen3_moe: Path) -> None:
    model = build(qwen3_moe)
    patch_model(model, qwen3_moe, dtype=torch.bfloat16)
    experts = model.get_submodule(PREFIX)
    assert isinstance(experts, QuantExperts) and experts.backend_name == "cpu"
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([[1, 5, 7]])).logits
    assert logits.dtype == torch.bfloat16 and torch.isfinite(logits).all()


def test_a_missing_expert_is_named_by_the_audit(qwen3_moe: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    for f in qwen3_moe.iterdir():
        shutil.copy(f, tmp_path / f.name)
    shard = next(tmp_path.glob("*.safetensors"))
    tensors = {k: v for k, v in load_file(shard).items() if not k.startswith(f"{PREFIX}.2.up_proj.")}
    save_file(tensors, shard, metadata={"format": "pt"})
    index = tmp_path / "model.safetensors.index.json"
    if index.exists():
        data = json.loads(index.read_text())
        data["weight_map"] = {k: v for k, v in data["weight_map"].items() if k in tensors}
        index.write_text(json.dumps(data))
    with pytest.raises(CheckpointAuditError, match=rf"{PREFIX}\.2\.up_proj"):
        patch_model(build(tmp_path), tmp_path, dtype=torch.float32)


def test_patch_model_serves_the_qwen3_omni_thinker_like_its_dequantized_model(tmp_path: Path) -> None:
    """The flagship's architecture: a tiny Qwen3-Omni-MoE thinker (audio and vision towers left in 16 bits by
    auto-round, every text layer's experts quantized) through ``patch_model``, text-only forward equal to the same
    thinker holding the exactly dequantized weights."""
    from transformers.models.qwen3_omni_moe.modeling_qwen3_omni_moe import (
        Qwen3OmniMoeThinkerForConditionalGeneration as Thinker,
    )

    path = autoround_w4g32(tiny_qwen3_omni_thinker(), tmp_path / "thinker")

    def thinker() -> torch.nn.Module:
        config = AutoConfig.from_pretrained(path)
        del config.quantization_config
        with empty_weights():
            return Thinker._from_config(config).eval()

    # auto-round writes the thinker's original names (model.layers, audio_tower, visual); transformers 5.23 nests
    # them (model.language_model, model.audio_tower, model.visual) and renames on load with its own conversion
    # rules, which patch_model does not read: the remap says where each part of the checkpoint lives in this release.
    model = thinker()
    part = {kind: next(n for n, m in model.named_modules() if type(m).__name__.endswith(kind))
            for kind in ("ThinkerTextModel", "AudioEncoder", "VisionEncoder")}  # fmt: skip
    text = part["ThinkerTextModel"]
    remap = Remap({"model.": f"{text}.", f"{text}.": f"{text}.", "audio_tower.": f"{part['AudioEncoder']}.",
                   "visual.": f"{part['VisionEncoder']}."}, label="Qwen3-Omni thinker")  # fmt: skip
    # Under transformers 5.23 auto-round 0.16.1 writes the config in the nested runtime names
    # (``.*model\.language_model\.layers\.0\.mlp\.gate.*``: bits 16) beside tensors in the original ones, so the
    # audit reads the 16-bit router gates as missing their quantized tensors: they are accepted by name.
    gates = [r".*\.mlp\.gate"]
    report = patch_model(model, load_checkpoint(path, remap, allow_unquantized=gates), dtype=torch.float32,
                         backend="reference")  # fmt: skip
    blocks = [name for name, module in model.named_modules() if isinstance(module, QuantExperts)]
    assert blocks == [f"{text}.layers.{i}.mlp.experts" for i in range(2)], blocks
    assert sum(".experts." in n for n in report.layers) == 2 * 4 * 3
    assert all(n.startswith(f"{text}.layers.") for n in report.layers), sorted(report.layers)
    assert_same_logits(model, thinker(), exact_state(path, remap=remap, allow_unquantized=gates))  # runtime names
