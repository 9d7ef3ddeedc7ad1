"""How wna16 meets vLLM-Omni 0.30's quantization plumbing, checked against vLLM-Omni's own functions (no engine):

- Wan2.2's ``resolve_wan_transformer_quant_config`` / ``resolve_quant_config_from_disk``: each expert
  (``transformer``, ``transformer_2``) gets its own wna16 config, and the method check holds because the method is
  the checkpoint's (AutoRound, vLLM-Omni's ``inc``); a config of another method is refused by that check.
- ``safe_quant_config`` (FLUX's transformer blocks and norm layers, Qwen-Image's modulation) passes wna16's config and
  still stops any non-INC method; ``OmniINCConfig.maybe_upgrade`` (LLM stages) leaves both wna16 configs alone.
- checkpoints wna16 does not claim get vLLM-Omni's own method; names matching no module are refused before any
  engine work, naming the closest runtime names.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from vllm_omni.diffusion.models.wan2_2.pipeline_wan2_2 import resolve_wan_transformer_quant_config
from vllm_omni.quantization.component_config import ComponentQuantizationConfig, safe_quant_config
from vllm_omni.quantization.inc_config import OmniINCConfig

from wna16.checkpoint.write import quantization_config as auto_round_config
from wna16.checkpoint.write import write_checkpoint
from wna16.errors import UnmatchedNamesError
from wna16.integrations.vllm import Wna16Config
from wna16.integrations.vllm_omni import Wna16AutoRoundConfig, component_config, quantization_config

WAN_LAYERS = {
    "blocks.0.attn1.to_q": (32, 32), "blocks.0.attn1.to_k": (32, 32), "blocks.0.attn1.to_v": (32, 32),
    "blocks.0.attn1.to_out.0": (32, 32), "blocks.0.ffn.net.0.proj": (64, 32), "blocks.0.ffn.net.2": (32, 64),
}  # fmt: skip


def state_dict(layers: dict[str, tuple[int, int]], seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    tensors = {f"{name}.weight": torch.randn(shape, generator=g) for name, shape in layers.items()}
    tensors["norm_out.weight"] = torch.ones(32)
    return tensors


def wan_pipeline(root: Path, extra: dict[str, dict[str, dict[str, Any]]]) -> Path:
    """A Wan2.2-shaped pipeline folder whose two experts have their own ``extra_config``."""
    root.mkdir(parents=True)
    index = {"_class_name": "WanPipeline", "transformer": ["diffusers", "WanTransformer3DModel"],
             "transformer_2": ["diffusers", "WanTransformer3DModel"], "boundary_ratio": 0.875}  # fmt: skip
    (root / "model_index.json").write_text(json.dumps(index))
    for seed, component in enumerate(("transformer", "transformer_2")):
        config = auto_round_config(bits=4, group_size=32, sym=True, packing_format="auto_round:auto_gptq",
                                   block_name_to_quantize=["blocks"], extra_config=extra[component])  # fmt: skip
        write_checkpoint(root / component, state_dict(WAN_LAYERS, seed), config,
                         model_config={"_class_name": "WanTransformer3DModel"})  # fmt: skip
    return root


def test_wan_experts_each_get_their_own_wna16_config_through_vllm_omnis_check(tmp_path: Path) -> None:
    root = wan_pipeline(tmp_path / "wan", {
        "transformer": {"blocks.0.ffn.net.0.proj": {"bits": 8}},
        "transformer_2": {"blocks.0.attn1.to_out.0": {"bits": 8}},
    })  # fmt: skip
    config = quantization_config(root)
    assert isinstance(config, ComponentQuantizationConfig)
    for component, eight_bit in (
        ("transformer", "blocks.0.ffn.net_0.proj"),
        ("transformer_2", "blocks.0.attn1.to_out"),
    ):
        disk = json.loads((root / component / "config.json").read_text())
        resolved = resolve_wan_transformer_quant_config(disk, config, component)
        assert isinstance(resolved, Wna16AutoRoundConfig), (component, resolved)
        assert resolved is config.component_configs[component]
        # the expert's own extra_config, translated to vLLM-Omni's Wan names (net.0 -> net_0, to_out.0 -> to_out)
        assert resolved.wna16.resolve(eight_bit).scheme.bits == 8  # type: ignore[union-attr]
        assert resolved.wna16.resolve("blocks.0.attn1.to_qkv").scheme.bits == 4  # type: ignore[union-attr]
        # the check is live: another method's config meeting this checkpoint is refused by vLLM-Omni
        other = Wna16Config.from_config(disk["quantization_config"])
        with pytest.raises(ValueError, match="declares quant_method='auto-round'"):
            resolve_wan_transformer_quant_config(disk, other, component)


def test_the_gate_and_the_llm_stage_upgrade(tmp_path: Path) -> None:
    root = wan_pipeline(tmp_path / "wan", {"transformer": {}, "transformer_2": {}})
    ours = component_config(root / "transformer")
    assert isinstance(ours, Wna16AutoRoundConfig) and ours.get_name() == "inc"
    assert safe_quant_config(ours) is ours  # FLUX's blocks and norm layers receive it
    plain = Wna16Config.from_config(json.loads((root / "transformer" / "config.json").read_text()))
    assert safe_quant_config(plain) is None  # the gate still stops any method that is not INC / AutoRound
    assert OmniINCConfig.maybe_upgrade(ours) is ours  # an LLM stage keeps wna16's layers
    assert OmniINCConfig.maybe_upgrade(plain) is plain  # quantization="wna16" in a stage: vLLM's Wna16Config


def test_checkpoints_wna16_does_not_claim_get_vllm_omnis_own_method(tmp_path: Path) -> None:
    folder = tmp_path / "mxfp8"
    folder.mkdir()
    disk = {"quant_method": "auto-round", "bits": 8, "group_size": 32, "data_type": "mx_fp", "sym": True,
            "packing_format": "auto_round:llm_compressor"}  # fmt: skip
    (folder / "config.json").write_text(json.dumps({"quantization_config": disk}))
    method = component_config(folder)
    assert type(method) is OmniINCConfig and method.data_type == "mx_fp"
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "config.json").write_text(json.dumps({"_class_name": "WanTransformer3DModel"}))
    assert component_config(plain) is None


def test_names_matching_no_module_are_refused_before_the_engine(tmp_path: Path) -> None:
    """vLLM-Omni issue 4663's class: a block list or extra_config naming nothing leaves layers unquantized, then
    loading dies on a KeyError. Refused here, by quantization_config(path), before Omni(...) is built."""
    layers = {"transformer_blocks.0.attn.to_q": (32, 32), "single_transformer_blocks.0.proj_mlp": (64, 32)}
    folder = tmp_path / "flux" / "transformer"
    config = auto_round_config(bits=4, group_size=32, sym=True, packing_format="auto_round:auto_gptq",
                               block_name_to_quantize=["transformer_blocks"],
                               extra_config={"single_transformer_blocks.0.proj_mlp": {"bits": 8}})  # fmt: skip
    write_checkpoint(folder, state_dict(layers), config, model_config={"_class_name": "FluxTransformer2DModel"})
    data = json.loads((folder / "config.json").read_text())
    data["quantization_config"]["block_name_to_quantize"] = "transformer_blocks,single_blocks"
    data["quantization_config"]["extra_config"] = {"single_transformer_blocks.0.proj_mlpp": {"bits": 8}}
    (folder / "config.json").write_text(json.dumps(data))
    with pytest.raises(UnmatchedNamesError) as raised:
        component_config(folder)
    unmatched = raised.value.unmatched
    assert set(unmatched) == {"single_blocks", "single_transformer_blocks.0.proj_mlpp"}
    assert unmatched["single_blocks"][0] == "single_transformer_blocks"
    assert unmatched["single_transformer_blocks.0.proj_mlpp"][0] == "single_transformer_blocks.0.proj_mlp"
    assert "config.json" in str(raised.value) and "single_transformer_blocks" in str(raised.value)
