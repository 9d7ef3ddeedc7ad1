"""Families (case 7): one tiny checkpoint per remap preset, loaded through the preset a vLLM-Omni runtime uses.

FLUX is written by auto-round itself; the other families by wna16's writer in their own checkpoint naming (see
``make_checkpoints.FAMILIES``). For each: the preset is chosen from the config, the audit is clean, every quantized
layer lands under the runtime name the preset gives, and its weight is the RTN of the float weight of the same
checkpoint name (within :data:`STEPS` steps; more means the remap fed a layer another layer's tensors). The Qwen2.5-Omni
thinker is then patched end to end into a module tree with vLLM-Omni's runtime names.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import MAKER
from safetensors import safe_open
from transformers import LlamaConfig, LlamaForCausalLM

import wna16
from wna16.checkpoint import find_preset, read_model_config
from wna16.patch import empty_weights, patch_model
from wna16.reference import dequantize

FAMILIES = sorted(MAKER.FAMILIES)
STEPS = 1.5
"""Largest |dequantized - float| in quantization steps: full-range RTN reaches one step (plus scale rounding; auto-round
rounds FLUX's scales through bf16, measured 1.02 steps); another layer's tensors reach several steps."""


def _components(root: Path) -> list[Path]:
    index = root / "model_index.json"
    if not index.is_file():
        return [root]
    return [root / c for c in sorted(json.loads(index.read_text())) if (root / c / "config.json").is_file()]


def _float_source(family: str, component: int) -> dict[str, torch.Tensor]:
    spec = MAKER.FAMILIES.get(family)
    if family == "flux":
        return dict(MAKER.tiny_flux_pipeline().transformer.state_dict())
    if spec.diffusers:
        return MAKER._diffusers_state(spec.diffusers, seed=component)[0]
    return MAKER._llama_state(spec.lm_prefix, seed=1)


def _quantized_sources(folder: Path) -> list[str]:
    names = []
    for file in sorted(folder.glob("*.safetensors")):
        with safe_open(str(file), "pt") as f:
            names += [k.removesuffix(".qweight") for k in f.keys() if k.endswith(".qweight")]  # noqa: SIM118
    return names


@pytest.mark.parametrize("family", [*FAMILIES, "flux"])
def test_preset_remap_loads_every_layer(checkpoints: Path, family: str) -> None:
    root = checkpoints / ("flux_w4g64_sym" if family == "flux" else family)
    renamed = 0
    for i, folder in enumerate(_components(root)):
        preset = find_preset(read_model_config(folder))
        assert preset is not None, f"{family}: no preset selected by {folder / 'config.json'}"
        ckpt = wna16.load_checkpoint(folder)
        assert ckpt.audit.ok, ckpt.audit.problems
        sources = _quantized_sources(folder)
        assert sources
        assert set(ckpt.layers) == {ckpt.remap.name(s) for s in sources}
        floats = _float_source(family, i)
        for source in sources:
            runtime = ckpt.remap.name(source)
            renamed += runtime != source
            weight = ckpt.weight(runtime)
            assert ckpt.layers[runtime].source == source
            step = (
                weight.scales.float()
                .abs()
                .repeat_interleave(32 if family != "flux" else 64, dim=0)[: weight.in_features]
            )
            error = (dequantize(weight) - floats[f"{source}.weight"].float()).abs()
            assert bool((error <= step.t() * STEPS).all()), f"{family}/{runtime}: {error.max()}"
        for name in ckpt.unquantized:
            assert ckpt.tensor(name).numel() > 0
    # Their vLLM-Omni models keep every name these checkpoints use: GLM-Image's and BAGEL's mappers, FLUX.1 (no mapper;
    # attn.to_out.0 is its quantization prefix) and Qwen-Image (strips only a leading 'transformer.', absent here).
    identity_presets = {"glm_image", "bagel", "flux", "qwen_image"}
    assert (renamed == 0) == (family in identity_presets), f"{family}: {renamed} names remapped"


def test_omni_thinker_patched_end_to_end(checkpoints: Path) -> None:
    """The thinker stage remap feeds a runtime tree named like vLLM-Omni's (``thinker.language_model.model...``)."""
    folder = checkpoints / "qwen2_5_omni"
    ckpt = wna16.load_checkpoint(folder)
    assert all(name.startswith("thinker.language_model.model.layers.") for name in ckpt.layers)
    config = LlamaConfig(
        **MAKER.LLAMA, num_key_value_heads=2, vocab_size=MAKER.VOCAB, max_position_embeddings=64,
        tie_word_embeddings=False,
    )  # fmt: skip
    runtime = torch.nn.Module()
    runtime.thinker = torch.nn.Module()
    with empty_weights():
        runtime.thinker.language_model = LlamaForCausalLM(config)
    report = patch_model(runtime, ckpt, dtype=torch.float32)
    assert set(report.layers) == set(ckpt.layers) and len(report.layers) == 14
    assert "thinker.language_model.lm_head.weight" in report.tensors

    reference = MAKER.tiny_llama(seed=1)
    with torch.no_grad():
        for name in ckpt.layers:
            module_name = name.removeprefix("thinker.language_model.")
            reference.get_submodule(module_name).weight.copy_(dequantize(ckpt.weight(name)))
        ids = torch.tensor([[1, 17, 42, 99, 5, 64, 3, 120]])
        ours = runtime.thinker.language_model(ids).logits
        exact = reference(ids).logits
    rel = float((ours - exact).abs().max() / exact.abs().max())
    assert rel <= 1e-4, f"thinker logits differ by {rel:.2e} of their range"
    print(f"\nQwen2.5-Omni thinker via stage remap: {report.backends}, logits rel diff {rel:.2e}")
