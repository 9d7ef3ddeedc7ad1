r"""GLM-Image's diffusion (DiT) stage through vLLM-Omni's ``Omni(...)`` with wna16 serving its AutoRound
transformer, judged by diffusers' ``GlmImagePipeline`` with the oracle's dequantized weights (the tiny pipeline of
``make_glm_image.py``; fp32, 2 steps, fixed seed).

What vLLM-Omni 0.30 makes of a GLM-Image folder, and how the test meets it:

- The folder resolves to the registered two-stage pipeline (``model_executor/models/glm_image/pipeline.py``,
  ``GLM_IMAGE_PIPELINE``: AR stage ``GlmImageForConditionalGeneration`` from ``vision_language_encoder`` + DiT stage),
  found through ``model_index.json``'s ``_class_name`` (``config/config_factory.py``, ``_try_infer_model_type``).
  The AR stage is an LLM stage (prior tokens by sampling), not under test here: the test starts the DiT stage alone,
  the way vLLM-Omni starts any diffusers pipeline without a registered topology (``config/resolver.py``,
  ``resolve_omni_config``: ``create_from_model`` gives ``None`` -> ``create_typed_default_diffusion``), and hands it
  fixed prior tokens through ``extra_args["prior_token_ids"]``, the direct-API input of
  ``diffusion/models/glm_image/pipeline_glm_image.py`` (``GlmImagePipeline.forward``). diffusers' pipeline takes the
  same tokens as ``prior_token_ids=``.
- ``GlmImagePipeline.forward`` ignores ``output_type``: it always casts the latents to the VAE's dtype and decodes.
  The latents are read where the denoising loop returns them (``GlmImagePipeline.diffuse``), which the test wraps
  without changing.
- Its glyph encoder (T5) is loaded in bf16 whatever ``dtype`` says (``GlmImagePipeline.__init__``,
  ``torch_dtype=torch.bfloat16``), its output cast to the DiT's dtype. The oracle computes the glyph embeddings the
  same way (a bf16 copy of the same encoder): the encoder is not under test (with an fp32 copy the latents differ
  by 2.3e-4 instead of 2.4e-7).
- Its glyph ids are padded differently from diffusers' (see :data:`PROMPT`); the prompt is chosen where they agree.
- It conditions the DiT on the unshifted timesteps while stepping with the shifted sigmas (``retrieve_timesteps``
  restores the timesteps ``FlowMatchEulerDiscreteScheduler.set_timesteps`` overwrites); diffusers 0.40's own
  ``GlmImagePipeline`` keeps the overwritten (shifted) ones. The oracle restores them too (:func:`unshifted_timesteps`):
  the scheduler is not under test (without it the latents differ by 3.6e-2).

The bound is ``test_diffusion.py``'s: ``steps * layers * K_max * u * max|latents|``; the unquantized model must
differ by more than 10x that bound.
"""

from __future__ import annotations

import copy
import gc
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
import torch
from conftest import HERE, SEED, STEPS, OmniRun, _methods
from make_glm_image import CODEBOOK
from oracle import load_dequantized
from test_diffusion import judge

from wna16.integrations.vllm_omni import Wna16AutoRoundConfig, quantization_config

PROMPT = 'a photo of a cat on the mat, a sign that says "int4"'
"""A prompt with quoted text, so the glyph encoder encodes more than its empty default. Its length is even (4 bytes,
5 token ids with ByT5's end token): vLLM-Omni pads a glyph text's ids to even length (``_get_glyph_embeds``:
``(len(ids) + 1) % 2`` pad tokens, pipeline_glm_image.py line 401), diffusers 0.40 pads by the number of glyph
texts (``(len(input_ids) + 1) % 2``, line 515), so the two agree only when one text has an odd number of ids.
With "wna16" (6 ids) vLLM-Omni feeds 7 glyph tokens and diffusers 6, and the unquantized latents differ by 1.5e-2."""
SIZE = (64, 64)  # latents 16 x 8 x 8; 4 x 4 = 16 DiT tokens (patch 2) and as many prior tokens
GUIDANCE = 1.0  # no CFG on either side (vLLM-Omni's default is 1.5: given explicitly)


@pytest.fixture(scope="session")
def glm_pipeline(tmp_path_factory: pytest.TempPathFactory) -> Path:
    configured = os.environ.get("WNA16_OMNI_PIPELINES")
    root = Path(configured) / "glm_image" if configured else tmp_path_factory.mktemp("glm-image")
    subprocess.run([sys.executable, str(HERE / "make_glm_image.py"), str(root)], check=True)
    return root


def prior_tokens(size: tuple[int, int]) -> torch.Tensor:
    """Fixed prior tokens [1, (H/16)*(W/16)] (VAE 8x, patch 2): what the AR stage would hand the DiT."""
    height, width = size
    generator = torch.Generator("cpu").manual_seed(SEED)
    return torch.randint(0, CODEBOOK, (1, (height // 16) * (width // 16)), generator=generator)


@contextmanager
def dit_stage_alone() -> Iterator[list[torch.Tensor]]:
    """While active, ``Omni(...)`` on a GLM-Image folder starts its DiT stage alone (no registered topology), and
    the yielded list receives the latents each denoising loop returns."""
    from vllm_omni.config.config_factory import StageConfigFactory
    from vllm_omni.diffusion.models.glm_image.pipeline_glm_image import GlmImagePipeline

    latents: list[torch.Tensor] = []
    diffuse = GlmImagePipeline.diffuse

    def recording(self: Any, *args: Any, **kwargs: Any) -> torch.Tensor:
        out: torch.Tensor = diffuse(self, *args, **kwargs)
        latents.append(out.float().clone())
        return out

    with (
        mock.patch.object(StageConfigFactory, "create_from_model", return_value=None),
        mock.patch.object(GlmImagePipeline, "diffuse", recording),
    ):
        yield latents


def run_dit_stage(path: Path, config: Any, prior: torch.Tensor) -> OmniRun:
    """``Omni(model=path, quantization_config=config)`` in fp32 on the DiT stage alone: the latents of one request
    with ``prior`` as its prior tokens, the engine's start time and the methods of its linear layers."""
    from vllm_omni import Omni
    from vllm_omni.inputs.data import OmniDiffusionSamplingParams

    with dit_stage_alone() as latents:
        start = time.perf_counter()
        omni = Omni(model=str(path), quantization_config=config, dtype="float32", enforce_eager=True)
        start_s = time.perf_counter() - start
        try:
            methods = _methods()
            height, width = SIZE
            params = OmniDiffusionSamplingParams(
                num_inference_steps=STEPS, seed=SEED, height=height, width=width, guidance_scale=GUIDANCE,
                extra_args={"prior_token_ids": prior.tolist()},
            )  # fmt: skip
            before = len(latents)
            omni.generate(PROMPT, params)
            seen = len(latents) - before
            assert seen == 1, f"expected one denoising loop for the request, saw {seen}"
        finally:
            omni.close()
            del omni
            gc.collect()  # its layers must not be counted by the next engine's _methods()
    return OmniRun(latents[-1], start_s, methods)


def unshifted_timesteps(scheduler: Any) -> None:
    """Make ``scheduler`` keep the timesteps it is given with sigmas, as vLLM-Omni's GLM-Image pipeline does after
    ``set_timesteps`` (diffusers 0.40 replaces them with the shifted sigmas x 1000)."""
    set_timesteps = scheduler.set_timesteps

    def keeping(*args: Any, timesteps: list[float] | None = None, **kwargs: Any) -> None:
        set_timesteps(*args, timesteps=timesteps, **kwargs)
        if timesteps is not None and kwargs.get("sigmas") is not None:
            scheduler.timesteps = torch.as_tensor(timesteps, dtype=torch.float32, device=scheduler.timesteps.device)

    scheduler.set_timesteps = keeping


def diffusers_latents(full: Path, quantized: Path | None, prior: torch.Tensor) -> torch.Tensor:
    """Latents of diffusers' ``GlmImagePipeline`` from ``full`` (its DiT carrying the oracle's weights of
    ``quantized`` when given), with vLLM-Omni's glyph encoder dtype and timestep schedule (see the module doc)."""
    from diffusers import GlmImagePipeline

    # no AR model: the prior tokens are given (diffusers only needs it, and its processor, to make them)
    pipe = GlmImagePipeline.from_pretrained(str(full), torch_dtype=torch.float32, vision_language_encoder=None,
                                            processor=None)  # fmt: skip
    if quantized is not None:
        assert load_dequantized(pipe.transformer, quantized / "transformer") > 0
    unshifted_timesteps(pipe.scheduler)
    encoder = pipe.text_encoder
    pipe.text_encoder = copy.deepcopy(encoder).to(torch.bfloat16)
    embeds, _ = pipe.encode_prompt(PROMPT, do_classifier_free_guidance=False, device=torch.device("cpu"),
                                   dtype=torch.float32)  # fmt: skip
    pipe.text_encoder = encoder
    height, width = SIZE
    generator = torch.Generator("cpu").manual_seed(SEED)
    out = pipe(prompt_embeds=embeds, prior_token_ids=prior, height=height, width=width, num_inference_steps=STEPS,
               guidance_scale=GUIDANCE, generator=generator, output_type="latent")  # fmt: skip
    return torch.as_tensor(out.images).float()


def test_dit_latents_equal_diffusers_with_the_oracle_weights(glm_pipeline: Path) -> None:
    quantized, full = glm_pipeline / "quantized", glm_pipeline / "full"
    config = quantization_config(quantized)
    assert isinstance(config, Wna16AutoRoundConfig), config
    prior = prior_tokens(SIZE)

    run = run_dit_stage(quantized, config, prior)
    oracle = diffusers_latents(full, quantized, prior)
    unquantized = diffusers_latents(full, None, prior)
    assert run.latents.shape == oracle.shape, (run.latents.shape, oracle.shape)

    judge("glm_image (DiT stage)", run, quantized, ("transformer",), oracle, unquantized)
