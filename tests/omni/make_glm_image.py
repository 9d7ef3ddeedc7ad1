"""A tiny GLM-Image pipeline with an AutoRound DiT, made offline (no hub), for ``test_glm_image.py``.

``python make_glm_image.py OUT`` writes ``OUT/full`` (the fp32 pipeline as diffusers saves it), ``OUT/quantized``
(the same with its ``transformer`` quantized by auto-round 0.16.1: RTN, ``iters=0``, W4 g32 sym, one layer at 8 bits)
and ``OUT/done``. Its own script, next to ``make_pipelines.py`` (whose helpers it uses), so the other pipelines'
fixture does not build it.

The pipeline has no ``vision_language_encoder`` (the AR model) and no ``processor``: the test gives the DiT its prior
tokens directly, as both vLLM-Omni's diffusion stage (``extra_args["prior_token_ids"]``) and diffusers'
``GlmImagePipeline`` (``prior_token_ids=``) accept them, so the autoregressive stage is not run on either side.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import torch
from make_pipelines import HIDDEN, SEED, _assemble, quantize_transformer

CODEBOOK = 64
"""Prior VQ codebook size of the tiny DiT (the test draws its prior tokens below it)."""

EIGHT_BIT = "transformer_blocks.0.ff.net.2"
"""The one layer quantized at 8 bits (an ``extra_config`` entry the runtime must find by name)."""


def glm_image(out: Path) -> None:
    """GLM-Image's DiT stage: a one-block ``GlmImageTransformer2DModel`` (inner dim 64), a one-layer ByT5-shaped
    glyph encoder (T5 on ByT5's byte vocabulary), a small KL VAE with GLM-Image's ``latents_mean``/``latents_std``
    (vLLM-Omni's pipeline reads them to decode) and the flow-match scheduler GLM-Image ships (dynamic shifting)."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, GlmImagePipeline, GlmImageTransformer2DModel
    from transformers import ByT5Tokenizer, T5Config, T5EncoderModel

    torch.manual_seed(SEED)
    tokenizer = ByT5Tokenizer()
    text_encoder = T5EncoderModel(
        T5Config(vocab_size=len(tokenizer), d_model=HIDDEN, d_kv=16, d_ff=64, num_layers=1, num_heads=2,
                 feed_forward_proj="gated-gelu", decoder_start_token_id=0)
    )  # fmt: skip
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=16, block_out_channels=(16, 16, 16, 16), layers_per_block=1,
        norm_num_groups=8, down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        latents_mean=[0.0] * 16, latents_std=[1.0] * 16,
    )  # fmt: skip
    transformer = GlmImageTransformer2DModel(
        patch_size=2, in_channels=16, out_channels=16, num_layers=1, attention_head_dim=32, num_attention_heads=2,
        text_embed_dim=HIDDEN, time_embed_dim=32, condition_dim=16, prior_vq_quantizer_codebook_size=CODEBOOK,
    )  # fmt: skip
    scheduler = FlowMatchEulerDiscreteScheduler(
        shift=1.0, use_dynamic_shifting=True, base_shift=0.25, max_shift=0.75, base_image_seq_len=256,
        time_shift_type="linear",
    )  # fmt: skip
    full = out / "full"
    pipe = GlmImagePipeline(
        tokenizer=tokenizer, processor=None, text_encoder=text_encoder, vision_language_encoder=None, vae=vae,
        transformer=transformer, scheduler=scheduler,
    )  # fmt: skip
    pipe.save_pretrained(str(full), safe_serialization=True)
    quantized_transformer = quantize_transformer(
        transformer, GlmImagePipeline, scheduler, out, {EIGHT_BIT: {"bits": 8}}
    )
    _assemble(full, {"transformer": quantized_transformer}, out / "quantized")


def main(out: Path) -> None:
    if (out / "done").is_file():
        return
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    glm_image(out)
    (out / "done").write_text("ok\n")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
