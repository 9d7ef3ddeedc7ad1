"""The judge of the diffusion tests: diffusers' own pipeline, fp32, on the full (unquantized) pipeline folder, either
as saved or with every quantized layer of the checkpoint replaced by wna16's oracle dequantization
(:func:`wna16.reference.dequantize`, exact) and every other tensor of the quantized checkpoint loaded as written.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from diffusers import DiffusionPipeline

import wna16
from wna16.checkpoint.remap import Remap
from wna16.reference import dequantize

EXPERT_LINEAR = re.compile(r"(?P<block>.+\.experts)\.(?P<expert>\d+)\.(?P<proj>gate_proj|up_proj|down_proj)")
"""One expert's linear as auto-round writes experts (``...mlp.experts.<e>.gate_proj``)."""


def load_dequantized(module: torch.nn.Module, folder: Path) -> int:
    """Put the checkpoint in ``folder`` (the module's own names) into ``module``: dequantized weights for quantized
    layers, the 16-bit tensors as written; returns the number of quantized layers. A per-expert linear the module
    keeps fused (transformers 5's experts: ``gate_up_proj`` [E, 2I, H], gate rows first, and ``down_proj`` [E, H, I])
    goes into its expert's rows of the fused parameter."""
    ckpt = wna16.load_checkpoint(folder, remap=Remap.IDENTITY)
    modules = dict(module.named_modules())
    params = dict(module.named_parameters())
    for name in ckpt.layers:
        weight = dequantize(ckpt.weight(name)).float()
        expert = EXPERT_LINEAR.fullmatch(name)
        if name not in modules and expert is not None:
            _put_expert(modules[expert["block"]], int(expert["expert"]), expert["proj"], weight, name)
            continue
        linear = modules[name]
        assert isinstance(linear, torch.nn.Linear), (name, type(linear))
        assert weight.shape == linear.weight.shape, (name, weight.shape, linear.weight.shape)
        linear.weight.data.copy_(weight)
        bias = ckpt.bias(name)
        if bias is not None:
            linear.bias.data.copy_(bias.float())
    for name in ckpt.unquantized:
        params[name].data.copy_(ckpt.tensor(name).float())
    return len(ckpt.layers)


def _put_expert(block: torch.nn.Module, expert: int, proj: str, weight: torch.Tensor, name: str) -> None:
    """Write one expert's dequantized ``proj`` weight [N, K] into the fused experts ``block``."""
    if proj == "down_proj":
        target = block.down_proj.data[expert]
    else:
        rows = block.gate_up_proj.shape[1] // 2
        target = block.gate_up_proj.data[expert].narrow(0, 0 if proj == "gate_proj" else rows, rows)
    assert weight.shape == target.shape, (name, weight.shape, target.shape)
    target.copy_(weight)


def diffusers_latents(
    full: Path,
    quantized: Path | None,
    components: tuple[str, ...],
    size: tuple[int, int],
    prompt: str,
    steps: int,
    seed: int,
    prepare: Callable[[Any], None] | None = None,
    **call: Any,
) -> torch.Tensor:
    """Latents of diffusers' pipeline from ``full``; with ``quantized``, its ``components`` (``transformer``,
    ``transformer_2``) carry the quantized checkpoint's oracle weights; ``prepare`` adjusts the loaded pipeline
    (e.g. :func:`wan_unipc_scheduler`)."""
    pipe = DiffusionPipeline.from_pretrained(str(full), torch_dtype=torch.float32)
    if prepare is not None:
        prepare(pipe)
    if quantized is not None:
        for component in components:
            assert load_dequantized(getattr(pipe, component), quantized / component) > 0, component
    height, width = size
    generator = torch.Generator("cpu").manual_seed(seed)
    out = pipe(prompt, num_inference_steps=steps, height=height, width=width, generator=generator,
               output_type="latent", **call)  # fmt: skip
    latents = out.images if hasattr(out, "images") else out.frames
    return torch.as_tensor(latents).float()


def wan_unipc_scheduler(flow_shift: float) -> Callable[[Any], None]:
    """Give diffusers' Wan pipeline the scheduler vLLM-Omni's Wan2.2 pipeline samples with: its own
    ``FlowUniPCMultistepScheduler`` (built by its ``build_wan_scheduler``), the flow shift applied at
    ``set_timesteps`` as vLLM-Omni calls it (diffusers' pipeline calls it without ``shift``). The scheduler is not
    under test; the transformers and their weights are."""
    from vllm_omni.diffusion.models.wan2_2.pipeline_wan2_2 import build_wan_scheduler

    def prepare(pipe: Any) -> None:
        scheduler = build_wan_scheduler("unipc", flow_shift)
        scheduler.set_timesteps = functools.partial(scheduler.set_timesteps, shift=flow_shift)
        pipe.scheduler = scheduler

    return prepare
