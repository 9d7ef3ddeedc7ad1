"""What the interop tests share: loading a checkpoint with auto-round's own inference modules, reading the weight
such a module computes, building the same model patched by wna16, and capturing per-layer inputs.

Imported by the tests of this folder only; it imports auto-round, transformers and diffusers unconditionally so that
a run without them fails at collection instead of skipping.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import auto_round  # noqa: F401  (required: the judge)
import auto_round_kernel  # noqa: F401  (required: auto-round-lib's CPU kernels load the asymmetric formats)
import torch
from diffusers import FluxTransformer2DModel
from transformers import AutoConfig, AutoModelForCausalLM, AutoRoundConfig

from wna16.checkpoint.load import Checkpoint
from wna16.patch import PatchReport, empty_weights, patch_model

AUTO_ROUND_BACKENDS = ("auto", "torch")
"""auto-round's CPU inference backends: ``auto`` picks auto-round-lib's kernels, ``torch`` its pure-torch modules."""


def model_folder(path: Path) -> Path:
    """The folder holding the quantized model's config.json (a pipeline's ``transformer/``)."""
    return path / "transformer" if (path / "model_index.json").is_file() else path


def is_flux(path: Path) -> bool:
    return (path / "model_index.json").is_file()


def load_autoround(path: Path, backend: str, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """The checkpoint loaded the way auto-round documents it, with its own inference modules."""
    if is_flux(path):
        model = FluxTransformer2DModel.from_pretrained(model_folder(path), torch_dtype=dtype)
        if backend != "auto":
            raise ValueError(f"{path}: diffusers loads auto-round checkpoints with the auto backend only")
    else:
        model = AutoModelForCausalLM.from_pretrained(
            path, quantization_config=AutoRoundConfig(backend=backend), dtype=dtype, device_map="cpu"
        )
    return model.eval()


def autoround_weight(module: torch.nn.Module, in_features: int) -> torch.Tensor:
    """float32 [N, K]: the weight an auto-round module computes, read by feeding it the identity (minus its bias)."""
    with torch.no_grad():
        eye = torch.eye(in_features, dtype=torch.float32)
        y = module(eye) - module(torch.zeros(1, in_features, dtype=torch.float32))
    return y.t().contiguous()


def build_patched(
    path: Path, checkpoint: Checkpoint | None, dtype: torch.dtype, backend: str | None
) -> tuple[torch.nn.Module, PatchReport | None]:
    """The same architecture built without weights and served by wna16 from the checkpoint (left empty without)."""
    folder = model_folder(path)
    config_dict = json.loads((folder / "config.json").read_text())
    if is_flux(path):
        config_dict.pop("quantization_config", None)
        with empty_weights():
            model = FluxTransformer2DModel.from_config(config_dict)
    else:
        config = AutoConfig.from_pretrained(folder)
        del config.quantization_config
        with empty_weights():
            model = AutoModelForCausalLM.from_config(config)
    report = None if checkpoint is None else patch_model(model, checkpoint, dtype=dtype, backend=backend)
    return model.eval(), report


def flux_inputs(config: dict[str, Any], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Inputs of a tiny FLUX transformer forward: a 4x4 latent and 8 text tokens."""
    gen = torch.Generator().manual_seed(1)
    img, txt = 16, 8
    return {
        "hidden_states": torch.randn(1, img, config["in_channels"], generator=gen).to(dtype),
        "encoder_hidden_states": torch.randn(1, txt, config["joint_attention_dim"], generator=gen).to(dtype),
        "pooled_projections": torch.randn(1, config["pooled_projection_dim"], generator=gen).to(dtype),
        "timestep": torch.tensor([0.5], dtype=dtype),
        "img_ids": torch.stack(torch.meshgrid(torch.zeros(1), torch.arange(4.0), torch.arange(4.0), indexing="ij"), -1)
        .reshape(img, 3)
        .to(dtype),
        "txt_ids": torch.zeros(txt, 3, dtype=dtype),
    }


def model_inputs(path: Path, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Deterministic inputs for the whole model (token ids for an LM, latents and text states for FLUX)."""
    if is_flux(path):
        return flux_inputs(json.loads((model_folder(path) / "config.json").read_text()), dtype)
    return {"input_ids": torch.tensor([[1, 17, 42, 99, 5, 64, 3, 120, 77, 8, 31, 2]])}


def final_output(model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        out = model(**inputs)
    return (out.logits if hasattr(out, "logits") else out.sample).float()


def cast_inputs(inputs: dict[str, torch.Tensor], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    return {k: v.to(dtype) if v.dtype.is_floating_point else v for k, v in inputs.items()}


@contextmanager
def capture(model: torch.nn.Module, names: list[str]) -> Iterator[dict[str, list[torch.Tensor]]]:
    """Record the input of each named module on every call while the context is open."""
    seen: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    handles = []
    for name in names:

        def hook(_: torch.nn.Module, args: tuple[Any, ...], name: str = name) -> None:
            seen[name].append(args[0].detach().clone())

        handles.append(model.get_submodule(name).register_forward_pre_hook(hook))
    try:
        yield seen
    finally:
        for handle in handles:
            handle.remove()
