"""Tiny Omni thinkers through vLLM-Omni's stage pipeline on CPU. A script, because vLLM-Omni starts the stage's engine
core in a spawned process (the caller must be importable without side effects):

- ``python thinker_stage.py make OUT [MODEL]``: ``OUT/full`` (a random fp32 Omni model without audio output, a
  byte-level tokenizer with the model's special tokens, the processor config) and ``OUT/quantized`` (auto-round
  0.16.1 RTN on the same model: W4 g32 sym on ``thinker.model.layers``, one layer at 8 bits through
  ``extra_config``). MODEL is a key of :data:`THINKERS`: ``qwen2_5_omni`` (default; the thinker with a one-layer
  dense language model) or ``qwen3_omni_moe`` (a one-layer mixture-of-experts language model whose experts auto-round
  writes as per-expert linears); both with the smallest audio and vision towers, left in 16 bits.
- ``python thinker_stage.py serve FOLDER``: ``Omni(model=FOLDER, deploy_config=...)`` with the registered
  ``<model_type>_thinker_only`` pipeline (``qwen2_5_omni_thinker_only``, ``qwen3_omni_moe_thinker_only``),
  ``quantization: wna16``, fp32; prints one ``THINKER {json}`` line: engine start seconds, greedy tokens and their
  log-probabilities for :data:`PROMPT`, and which wna16 method and backend served each quantized module.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

PROMPT = [1, 2, 3, 4]
NEW_TOKENS = 4
SEED = 0
QWEN2_5_TOKENS = {
    "audio_token": ("<|AUDIO|>", "audio_token_index"), "image_token": ("<|IMAGE|>", "image_token_index"),
    "video_token": ("<|VIDEO|>", "video_token_index"), "audio_bos_token": ("<|audio_bos|>", "audio_start_token_id"),
    "audio_eos_token": ("<|audio_eos|>", "audio_end_token_id"),
    "vision_bos_token": ("<|vision_bos|>", "vision_start_token_id"),
    "vision_eos_token": ("<|vision_eos|>", "vision_end_token_id"),
}  # fmt: skip
"""Tokenizer attribute -> (token, the thinker config field holding its id): Qwen2.5-Omni's processor reads them."""
QWEN3_TOKENS = {
    "audio_token": ("<|audio_pad|>", "audio_token_id"), "image_token": ("<|image_pad|>", "image_token_id"),
    "video_token": ("<|video_pad|>", "video_token_id"), "audio_bos_token": ("<|audio_start|>", "audio_start_token_id"),
    "audio_eos_token": ("<|audio_end|>", None), "vision_bos_token": ("<|vision_start|>", None),
    "vision_eos_token": ("<|vision_end|>", None),
}  # fmt: skip
"""The same for Qwen3-Omni-MoE's processor; ``None``: the thinker config has no field for that id."""

DEPLOY = """\
pipeline: {pipeline}
async_chunk: false
dtype: float32
quantization: wna16
stages:
  - stage_id: 0
    max_num_seqs: 1
    max_model_len: 128
    max_num_batched_tokens: 128
    enforce_eager: true
    enable_prefix_caching: false
    mm_processor_cache_gb: 0
    skip_mm_profiling: true
"""
"""The deploy config: the registered thinker-only pipeline of the model (one AR stage), wna16 for every stage."""


@dataclass(frozen=True)
class Thinker:
    """One Omni model family of this script: its processor's special tokens, its processor class and tiny model
    (:func:`qwen2_5_omni`, :func:`qwen3_omni_moe`), and the layer auto-round writes at 8 bits (``extra_config``)."""

    tokens: dict[str, tuple[str, str | None]]
    processor: str
    model: Callable[[dict[str, int]], torch.nn.Module]
    eight_bit: str


def tokenizer_and_processor(out: Path, thinker: Thinker) -> dict[str, int]:
    """Save a byte-level tokenizer with the model's special tokens and its Omni processor into ``out``; returns the
    thinker config fields of the special token ids and ``vocab_size``."""
    import transformers
    from make_pipelines import byte_bpe_tokenizer
    from transformers import AutoTokenizer, Qwen2VLImageProcessor, Qwen2VLVideoProcessor, WhisperFeatureExtractor

    byte_bpe_tokenizer(out / "byte_tokenizer", "Qwen2TokenizerFast", 128)
    extra = {attr: token for attr, (token, _) in thinker.tokens.items()}
    tok = AutoTokenizer.from_pretrained(out / "byte_tokenizer", extra_special_tokens=extra)
    processor = getattr(transformers, thinker.processor)(
        image_processor=Qwen2VLImageProcessor(), video_processor=Qwen2VLVideoProcessor(),
        feature_extractor=WhisperFeatureExtractor(feature_size=128), tokenizer=tok,
    )  # fmt: skip
    processor.save_pretrained(str(out))
    ids = {field: tok.convert_tokens_to_ids(token) for token, field in thinker.tokens.values() if field is not None}
    ids["vocab_size"] = len(tok)
    return ids


def _vocab(ids: dict[str, int]) -> int:
    """The model's vocabulary: the tokenizer's (popped from ``ids``), rounded up to 32 rows."""
    return (ids.pop("vocab_size") + 31) // 32 * 32


def qwen2_5_omni(ids: dict[str, int]) -> torch.nn.Module:
    """A seeded fp32 Qwen2.5-Omni (no audio output) whose thinker language model has one layer (hidden 64)."""
    from transformers import Qwen2_5OmniConfig, Qwen2_5OmniForConditionalGeneration

    torch.manual_seed(SEED)
    text = {"vocab_size": _vocab(ids), "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 1,
            "num_attention_heads": 2, "num_key_value_heads": 2, "max_position_embeddings": 256,
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [4, 6, 6]},
            "tie_word_embeddings": False}  # fmt: skip
    thinker = {"text_config": text, "tie_word_embeddings": False, **ids,
               "audio_config": {"encoder_layers": 1, "d_model": 32, "encoder_attention_heads": 2,
                                "encoder_ffn_dim": 32, "output_dim": 64, "num_mel_bins": 128},
               "vision_config": {"depth": 1, "hidden_size": 32, "intermediate_size": 32, "num_heads": 2,
                                 "out_hidden_size": 64, "fullatt_block_indexes": [0]}}  # fmt: skip
    config = Qwen2_5OmniConfig(thinker_config=thinker, enable_audio_output=False)
    return Qwen2_5OmniForConditionalGeneration(config).float().eval()


def qwen3_omni_moe(ids: dict[str, int]) -> torch.nn.Module:
    """A seeded fp32 Qwen3-Omni-MoE (no audio output: the thinker only) whose thinker language model has one sparse
    layer: top-2 of 4 experts (hidden 128, expert intermediate 64, head dim 32), renormalised routing weights. The
    configs carry what vLLM(-Omni) 0.30 read and transformers 5.14's config classes do not declare (the real model's
    config.json has them): the text config's ``tie_word_embeddings``, the vision config's ``image_size`` (an 8x8 grid
    of 16-pixel patches) and ``apply_vit_abs_pos_embed`` (the position embedding is an ``nn.Embedding``)."""
    from transformers import Qwen3OmniMoeConfig, Qwen3OmniMoeForConditionalGeneration

    torch.manual_seed(SEED)
    rope = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [4, 6, 6], "interleaved": True}
    text = {"vocab_size": _vocab(ids), "hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 1,
            "num_attention_heads": 4, "num_key_value_heads": 2, "moe_intermediate_size": 64, "num_experts": 4,
            "num_experts_per_tok": 2, "norm_topk_prob": True, "max_position_embeddings": 256,
            "rope_parameters": rope, "tie_word_embeddings": False}  # fmt: skip
    thinker = {"text_config": text, **ids,
               "audio_config": {"num_mel_bins": 128, "encoder_layers": 1, "encoder_attention_heads": 2,
                                "encoder_ffn_dim": 64, "d_model": 64, "output_dim": 128, "downsample_hidden_size": 32,
                                "max_source_positions": 64},
               "vision_config": {"depth": 1, "hidden_size": 64, "intermediate_size": 128, "num_heads": 2,
                                 "out_hidden_size": 128, "num_position_embeddings": 64, "image_size": 128,
                                 "apply_vit_abs_pos_embed": True, "deepstack_visual_indexes": [0]}}  # fmt: skip
    config = Qwen3OmniMoeConfig(thinker_config=thinker, enable_audio_output=False)
    return Qwen3OmniMoeForConditionalGeneration(config).float().eval()


THINKERS = {
    "qwen2_5_omni": Thinker(QWEN2_5_TOKENS, "Qwen2_5OmniProcessor", qwen2_5_omni,
                            "thinker.model.layers.0.mlp.down_proj"),
    "qwen3_omni_moe": Thinker(QWEN3_TOKENS, "Qwen3OmniMoeProcessor", qwen3_omni_moe,
                              "thinker.model.layers.0.self_attn.o_proj"),
}  # fmt: skip
"""The models this script makes, by ``model_type``. Qwen3-Omni's 8-bit layer is not an expert: wna16's audit refuses
experts of one block in different schemes (one experts call serves them)."""


def make(out: Path, model: str = "qwen2_5_omni") -> None:
    """``out/full`` and ``out/quantized`` (see the module docstring)."""
    import shutil

    from auto_round import AutoRound

    thinker = THINKERS[model]
    full = out / "full"
    ids = tokenizer_and_processor(full, thinker)
    module = thinker.model(ids)
    module.save_pretrained(str(full))
    work = out / "autoround"
    ar = AutoRound(
        module, tokenizer=None, bits=4, group_size=32, sym=True, iters=0, disable_opt_rtn=True, device_map="cpu",
        to_quant_block_names="thinker.model.layers", layer_config={thinker.eight_bit: {"bits": 8}},
    )  # fmt: skip
    ar.quantize_and_save(str(work), format="auto_round")
    (found,) = [p.parent for p in work.rglob("config.json") if "quantization_config" in json.loads(p.read_text())]
    shutil.copytree(found, out / "quantized")
    for name in ("tokenizer.json", "tokenizer_config.json", "processor_config.json"):
        shutil.copy(full / name, out / "quantized" / name)


def serve(folder: Path) -> None:
    """Start the model's thinker-only stage through ``Omni(...)``, generate greedily, print the ``THINKER`` line."""
    from vllm import SamplingParams
    from vllm_omni import Omni

    model_type = json.loads((folder / "config.json").read_text())["model_type"]
    deploy = folder.parent / "deploy.yaml"
    deploy.write_text(DEPLOY.format(pipeline=f"{model_type}_thinker_only"))
    start = time.perf_counter()
    omni = Omni(model=str(folder), deploy_config=str(deploy))
    start_s = time.perf_counter() - start
    try:
        params = SamplingParams(max_tokens=NEW_TOKENS, temperature=0.0, logprobs=0, detokenize=False)
        (output,) = omni.generate([{"prompt_token_ids": PROMPT}], [params])
        completion = output.outputs[0]
        logprobs = [step[token].logprob for step, token in zip(completion.logprobs, completion.token_ids, strict=True)]
        result = {"start_s": start_s, "tokens": list(completion.token_ids), "logprobs": logprobs}
        print("THINKER " + json.dumps(result), flush=True)
    finally:
        omni.close()


if __name__ == "__main__":
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    sys.path.insert(0, str(Path(__file__).parent))
    command, folder, *model = sys.argv[1:]
    {"make": make, "serve": serve}[command](Path(folder), *model)
