"""The judge of the diffusion tests: diffusers' own pipeline, fp32, on the full (unquantized) pipeline folder, either
as saved or with every quantized layer of the checkpoint replaced by wna16's oracle dequantization
(:func:`wna16.reference.dequantize`, exact) and every other tensor of the quantized checkpoint loaded as written.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from diffusers import DiffusionPipeline

import wna16
from wna16.checkpoint.remap import Remap
from wna16.reference import dequantize


def load_dequantized(module: torch.nn.Module, folder: Path) -> int:
    """Put the checkpoint in ``folder`` (diffusers names) into ``module``: dequantized weights for quantized layers,
    the 16-bit tensors as written; returns the number of quantized layers."""
    ckpt = wna16.load_checkpoint(folder, remap=Remap.IDENTITY)
    modules = dict(module.named_modules())
    params = dict(module.named_parameters())
    for name in ckpt.layers:
        linear = modules[name]
        assert isinstance(linear, torch.nn.Linear), (name, type(linear))
        weight = dequantize(ckpt.weight(name))
        assert weight.shape == linear.weight.shape, (name, weight.shape, linear.weight.shape)
        linear.weight.data.copy_(weight.float())
        bias = ckpt.bias(name)
        if bias is not None:
            linear.bias.data.copy_(bias.float())
    for name in ckpt.unquantized:
        params[name].data.copy_(ckpt.tensor(name).float())
    return len(ckpt.layers)


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
