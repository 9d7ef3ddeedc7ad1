"""Tiny diffusers pipelines with AutoRound transformers, made offline (no hub), for the vLLM-Omni tests.

``python make_pipelines.py OUT NAME...`` writes, per pipeline NAME, ``OUT/NAME/full`` (the fp32 pipeline as diffusers
saves it) and ``OUT/NAME/quantized`` (the same pipeline with every transformer quantized by auto-round 0.16.1: RTN,
``iters=0``, W4 g32 sym, one ``extra_config`` layer at 8 bits), then ``OUT/NAME/done``. Runs as a script (auto-round
may spawn processes). Tokenizers are built from a made-up word list: the tests feed fixed prompts.
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
    from transformers import PreTrainedTokenizerFast

    pieces = ["<pad>", "</s>", "<unk>", *(f"\u2581{w}" for w in WORDS), "\u2581"]
    core = Tokenizer(models.Unigram([(p, -1.0) for p in pieces], unk_id=2))
    core.pre_tokenizer = pre_tokenizers.Metaspace()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token="<pad>", eos_token="</s>", unk_token="<unk>", model_max_length=max_length
    )
    tok.save_pretrained(str(out))
    config_path = out / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["tokenizer_class"] = cls_name
    config_path.write_text(json.dumps(config))


def quantize_transformer(
    transformer: torch.nn.Module, pipeline_cls: Any, scheduler: Any, out: Path, eight_bit: str | None
) -> Path:
    """auto-round RTN on the pipeline's transformer, layer ``eight_bit`` at 8 bits (an ``extra_config`` entry whose
    name the runtime must find); returns the folder of the saved quantized transformer."""
    from auto_round import AutoRound

    transformer = copy.deepcopy(transformer)  # auto-round replaces the layers of the model it is given
    work = out / "autoround"
    pipe = pipeline_cls(scheduler=scheduler, transformer=transformer, **{k: None for k in _others(pipeline_cls)})
    layer_config = {eight_bit: {"bits": 8}} if eight_bit else None
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
    quantized_transformer = quantize_transformer(
        transformer, FluxPipeline, scheduler, out, "transformer_blocks.0.attn.to_out.0"
    )
    _assemble(full, {"transformer": quantized_transformer}, out / "quantized")
    # Uniform W4 g32 sym: what vLLM-Omni's own AutoRound method (INC) serves on CPU (it refuses 8-bit layers there).
    uniform = quantize_transformer(transformer, FluxPipeline, scheduler, out / "w4", None)
    _assemble(full, {"transformer": uniform}, out / "quantized_w4")


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


PIPELINES: dict[str, Callable[[Path], None]] = {"flux": flux}


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
