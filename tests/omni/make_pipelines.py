"""Tiny diffusers pipelines with AutoRound transformers, made offline (no hub), for the vLLM-Omni tests.

``python make_pipelines.py OUT NAME...`` writes, per pipeline NAME, ``OUT/NAME/full`` (the fp32 pipeline as diffusers
saves it) and ``OUT/NAME/quantized`` (the same pipeline with every transformer quantized by auto-round 0.16.1: RTN,
``iters=0``, W4 g32 sym, ``extra_config`` entries at 8 or 16 bits as each pipeline says), then ``OUT/NAME/done``.
Pipelines: FLUX.1 (``flux``), Qwen-Image (``qwen_image``), Wan2.2 T2V with two experts (``wan2_2_t2v``). Runs as a
script (auto-round may spawn processes). Tokenizers are made up (a word list, or bytes): the tests feed fixed prompts.
"""

from __future__ import annotations

import copy
import json
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

WORDS = ["a", "cat", "dog", "on", "the", "red", "blue", "mat", "sky", "photo", "of", "sun"]
HIDDEN = 32
SEED = 0


def clip_tokenizer(out: Path) -> None:
    """A CLIP BPE tokenizer whose vocabulary is the letters, the whole words and the special tokens."""
    from transformers import CLIPTokenizer

    out.mkdir(parents=True, exist_ok=True)
    letters = sorted({c for w in WORDS for c in w})
    vocab_list = ["<|startoftext|>", "<|endoftext|>", *letters, *(c + "</w>" for c in letters)]
    merges: list[str] = []
    for word in WORDS:  # merge each word left to right into one token "word</w>"
        pieces = [*word[:-1], word[-1] + "</w>"]
        while len(pieces) > 1:
            merged = pieces[0] + pieces[1]
            rule = f"{pieces[0]} {pieces[1]}"
            if rule not in merges:
                merges.append(rule)
            if merged not in vocab_list:
                vocab_list.append(merged)
            pieces = [merged, *pieces[2:]]
    (out / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab_list)}))
    (out / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    tok = CLIPTokenizer(str(out / "vocab.json"), str(out / "merges.txt"), model_max_length=77)
    tok.save_pretrained(str(out))


def unigram_tokenizer(out: Path, cls_name: str, max_length: int) -> None:
    """A Unigram tokenizer (``tokenizers``; the model T5 tokenizers load) over the word list, saved as ``cls_name``."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    pieces = ["<pad>", "</s>", "<unk>", *(f"\u2581{w}" for w in WORDS), "\u2581"]
    core = Tokenizer(models.Unigram([(p, -1.0) for p in pieces], unk_id=2))
    core.pre_tokenizer = pre_tokenizers.Metaspace()
    specials = {"pad_token": "<pad>", "eos_token": "</s>", "unk_token": "<unk>"}
    _save_tokenizer(core, out, cls_name, max_length, specials)


def byte_bpe_tokenizer(out: Path, cls_name: str, max_length: int) -> int:
    """A byte-level BPE tokenizer without merges (one token per byte: any text encodes) plus Qwen's chat tokens,
    saved as ``cls_name``; returns its vocabulary size."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False)
    vocab = {c: i for i, c in enumerate(sorted(byte_level.alphabet()))}
    core = Tokenizer(models.BPE(vocab, []))
    core.pre_tokenizer = byte_level
    core.decoder = decoders.ByteLevel()
    chat = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    specials = {"pad_token": chat[0], "eos_token": chat[2], "additional_special_tokens": chat[1:]}
    _save_tokenizer(core, out, cls_name, max_length, specials)
    return len(vocab) + len(chat)


def _save_tokenizer(core: Any, out: Path, cls_name: str, max_length: int, specials: dict[str, Any]) -> None:
    """Save a ``tokenizers`` tokenizer as transformers' ``cls_name`` (the class the pipeline loads)."""
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(tokenizer_object=core, model_max_length=max_length, **specials)
    tok.save_pretrained(str(out))
    config_path = out / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["tokenizer_class"] = cls_name
    config_path.write_text(json.dumps(config))


def quantize_transformer(
    transformer: torch.nn.Module,
    pipeline_cls: Any,
    scheduler: Any,
    out: Path,
    layer_config: dict[str, dict[str, int]] | None = None,
) -> Path:
    """auto-round RTN (W4 g32 sym) on the pipeline's transformer; ``layer_config`` sets other bit widths for named
    layers (``extra_config`` entries whose names the runtime must find); returns the saved transformer's folder."""
    from auto_round import AutoRound

    transformer = copy.deepcopy(transformer)  # auto-round replaces the layers of the model it is given
    work = out / "autoround"
    pipe = pipeline_cls(scheduler=scheduler, transformer=transformer, **{k: None for k in _others(pipeline_cls)})
    ar = AutoRound(
        pipe, tokenizer=None, bits=4, group_size=32, sym=True, iters=0, disable_opt_rtn=True, device_map="cpu",
        layer_config=layer_config,
    )  # fmt: skip
    ar.quantize_and_save(str(work), format="auto_round")
    found = [p.parent for p in work.rglob("config.json") if "quantization_config" in json.loads(p.read_text())]
    assert len(found) == 1, f"auto-round wrote {found}"
    return found[0]


def _others(pipeline_cls: Any) -> list[str]:
    import inspect

    params = inspect.signature(pipeline_cls.__init__).parameters
    return [p for p in params if p not in ("self", "scheduler", "transformer") and params[p].default is params[p].empty]


def flux(out: Path) -> None:
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    torch.manual_seed(SEED)
    vocab = 64
    text_encoder = CLIPTextModel(
        CLIPTextConfig(vocab_size=vocab, hidden_size=HIDDEN, intermediate_size=64, num_hidden_layers=1,
                       num_attention_heads=2, max_position_embeddings=77, projection_dim=HIDDEN,
                       bos_token_id=0, eos_token_id=1, pad_token_id=1)
    )  # fmt: skip
    text_encoder_2 = T5EncoderModel(
        T5Config(
            vocab_size=vocab, d_model=HIDDEN, d_kv=16, d_ff=64, num_layers=1, num_heads=2, decoder_start_token_id=0
        )
    )
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=16, block_out_channels=(16, 16, 16, 16), layers_per_block=1,
        norm_num_groups=8, down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        use_quant_conv=False, use_post_quant_conv=False, shift_factor=0.0609, scaling_factor=1.5035,
    )  # fmt: skip
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=64, num_layers=1, num_single_layers=1, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=HIDDEN, pooled_projection_dim=HIDDEN, guidance_embeds=False,
        axes_dims_rope=(4, 6, 6),
    )  # fmt: skip
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15)
    full = out / "full"
    pipe = FluxPipeline(scheduler=scheduler, text_encoder=text_encoder, tokenizer=None, text_encoder_2=text_encoder_2,
                        tokenizer_2=None, vae=vae, transformer=transformer)  # fmt: skip
    pipe.save_pretrained(str(full), safe_serialization=True)
    clip_tokenizer(full / "tokenizer")
    unigram_tokenizer(full / "tokenizer_2", "T5Tokenizer", 64)
    _set_index(
        full, {"tokenizer": ["transformers", "CLIPTokenizer"], "tokenizer_2": ["transformers", "T5TokenizerFast"]}
    )
    eight_bit = {"transformer_blocks.0.attn.to_out.0": {"bits": 8}}
    quantized_transformer = quantize_transformer(transformer, FluxPipeline, scheduler, out, eight_bit)
    _assemble(full, {"transformer": quantized_transformer}, out / "quantized")


def qwen_image(out: Path) -> None:
    """Qwen-Image: a one-block transformer, a one-layer Qwen2.5-VL text encoder (its vision tower, which vLLM-Omni
    drops, as small as it goes) and a small Qwen-Image VAE. ``img_mod.1`` stays 16-bit (``extra_config`` bits 16):
    vLLM-Omni builds it unquantized, as real W4A16 Qwen-Image checkpoints keep it; everything else is uniform W4 g32,
    so vLLM-Omni's own AutoRound method on CPU serves the same checkpoint."""
    from diffusers import (
        AutoencoderKLQwenImage,
        FlowMatchEulerDiscreteScheduler,
        QwenImagePipeline,
        QwenImageTransformer2DModel,
    )
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    torch.manual_seed(SEED)
    full = out / "full"
    vocab = byte_bpe_tokenizer(full / "tokenizer", "Qwen2Tokenizer", 1024)
    unused = [vocab, vocab + 1, vocab + 2, vocab + 3]  # image/video/vision-start/end ids no prompt can contain
    text_encoder = Qwen2_5_VLForConditionalGeneration(
        Qwen2_5_VLConfig(
            text_config={
                "vocab_size": vocab + len(unused), "hidden_size": HIDDEN, "intermediate_size": 64,
                "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 2,
                "max_position_embeddings": 1024, "bos_token_id": None, "eos_token_id": None, "pad_token_id": None,
                "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
            },
            vision_config={"depth": 1, "hidden_size": 32, "intermediate_size": 32, "num_heads": 2,
                           "out_hidden_size": HIDDEN, "fullatt_block_indexes": [0]},
            image_token_id=unused[0], video_token_id=unused[1], vision_start_token_id=unused[2],
            vision_end_token_id=unused[3],
        )
    )  # fmt: skip
    vae = AutoencoderKLQwenImage(base_dim=8, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1)
    transformer = QwenImageTransformer2DModel(
        patch_size=2, in_channels=64, out_channels=16, num_layers=1, attention_head_dim=32, num_attention_heads=2,
        joint_attention_dim=HIDDEN, axes_dims_rope=(8, 12, 12),
    )  # fmt: skip
    # Random init leaves the modulation (shift, scale, gate) near 0, where the blocks barely reach the residual
    # stream and the quantized model is hard to tell from the unquantized one; real models' gates are O(1).
    for block in transformer.transformer_blocks:
        for modulation in (block.img_mod[1], block.txt_mod[1]):
            torch.nn.init.ones_(modulation.bias)
    scheduler = FlowMatchEulerDiscreteScheduler(
        shift=1.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=0.9, base_image_seq_len=256,
        max_image_seq_len=8192, shift_terminal=0.02, time_shift_type="exponential",
    )  # fmt: skip
    pipe = QwenImagePipeline(scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=None,
                             transformer=transformer)  # fmt: skip
    pipe.save_pretrained(str(full), safe_serialization=True)
    _set_index(full, {"tokenizer": ["transformers", "Qwen2Tokenizer"]})
    sixteen_bit = {f"transformer_blocks.{i}.img_mod.1": {"bits": 16} for i in range(transformer.config.num_layers)}
    quantized_transformer = quantize_transformer(transformer, QwenImagePipeline, scheduler, out, sixteen_bit)
    _assemble(full, {"transformer": quantized_transformer}, out / "quantized")


def wan2_2_t2v(out: Path) -> None:
    """Wan2.2 T2V (A14B's layout): two one-block experts, ``transformer`` (high noise) and ``transformer_2`` (low
    noise, after ``boundary_ratio``), a one-layer UMT5 encoder and a small Wan VAE. Each expert has its own 8-bit
    layer (its own ``extra_config``), one under a name vLLM-Omni renames (``ffn.net.0.proj`` -> ``ffn.net_0.proj``,
    ``attn1.to_out.0`` -> ``attn1.to_out``)."""
    from diffusers import AutoencoderKLWan

    vae = AutoencoderKLWan(base_dim=8, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1)
    experts = {"transformer": "blocks.0.ffn.net.0.proj", "transformer_2": "blocks.0.attn1.to_out.0"}
    _wan(out, vae, experts, boundary_ratio=0.875, expand_timesteps=False)


def wan2_2_ti2v(out: Path) -> None:
    """Wan2.2 TI2V (5B's layout): one transformer on 48 latent channels with per-token timesteps
    (``expand_timesteps``), Wan2.2's residual VAE (z 48, patch 2, 16x spatial); run text-only."""
    from diffusers import AutoencoderKLWan

    vae = AutoencoderKLWan(
        base_dim=8, z_dim=48, dim_mult=[1, 1, 1, 1], num_res_blocks=1, is_residual=True, in_channels=12,
        out_channels=12, patch_size=2, scale_factor_spatial=16, latents_mean=[0.0] * 48, latents_std=[1.0] * 48,
    )  # fmt: skip
    _wan(out, vae, {"transformer": "blocks.0.ffn.net.2"}, boundary_ratio=None, expand_timesteps=True)


def _wan(out: Path, vae: Any, experts: dict[str, str], boundary_ratio: float | None, expand_timesteps: bool) -> None:
    """A Wan2.2 pipeline with a one-layer UMT5 encoder and one-block experts (``experts``: component -> its 8-bit
    layer) on ``vae``'s latent channels."""
    from diffusers import UniPCMultistepScheduler, WanPipeline, WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    torch.manual_seed(SEED)
    text_encoder = UMT5EncoderModel(
        UMT5Config(
            vocab_size=64, d_model=HIDDEN, d_kv=16, d_ff=64, num_layers=1, num_heads=2, relative_attention_num_buckets=8
        )
    )
    channels = vae.config.z_dim
    shape = {"patch_size": (1, 2, 2), "num_attention_heads": 2, "attention_head_dim": 32, "text_dim": HIDDEN,
             "freq_dim": 32, "ffn_dim": 64, "num_layers": 1, "rope_max_seq_len": 64}  # fmt: skip
    models = {name: WanTransformer3DModel(in_channels=channels, out_channels=channels, **shape) for name in experts}
    # diffusers' own Wan scheduler, saved for diffusers; vLLM-Omni builds its FlowUniPCMultistepScheduler instead
    # (the oracle runs diffusers' pipeline with that scheduler: see oracle.wan_unipc_scheduler).
    scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=5.0)
    full = out / "full"
    pipe = WanPipeline(tokenizer=None, text_encoder=text_encoder, vae=vae, scheduler=scheduler,
                       boundary_ratio=boundary_ratio, expand_timesteps=expand_timesteps, **models)  # fmt: skip
    pipe.save_pretrained(str(full), safe_serialization=True)
    unigram_tokenizer(full / "tokenizer", "T5Tokenizer", 512)
    _set_index(full, {"tokenizer": ["transformers", "T5TokenizerFast"]})
    quantized: dict[str, Path] = {}
    for name, eight_bit in experts.items():
        # each expert is quantized as the one transformer of a pipeline (auto-round saves it as `transformer`)
        layer_config = {eight_bit: {"bits": 8}}
        quantized[name] = quantize_transformer(models[name], WanPipeline, scheduler, out / name, layer_config)
    _assemble(full, quantized, out / "quantized")


def _set_index(folder: Path, entries: dict[str, list[str]]) -> None:
    index_path = folder / "model_index.json"
    index = json.loads(index_path.read_text())
    index.update(entries)
    index_path.write_text(json.dumps(index, indent=1))


def _assemble(full: Path, quantized: dict[str, Path], out: Path) -> None:
    """``out``: the full pipeline with each named component replaced by its quantized folder."""
    shutil.copytree(full, out)
    for name, folder in quantized.items():
        shutil.rmtree(out / name)
        shutil.copytree(folder, out / name)


PIPELINES: dict[str, Callable[[Path], None]] = {
    "flux": flux,
    "qwen_image": qwen_image,
    "wan2_2_t2v": wan2_2_t2v,
    "wan2_2_ti2v": wan2_2_ti2v,
}


def main(root: Path, names: list[str]) -> None:
    for name in names:
        out = root / name
        if (out / "done").is_file():
            continue
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        PIPELINES[name](out)
        (out / "done").write_text("ok\n")


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2:])
