"""A tiny Qwen2.5-Omni thinker through vLLM-Omni's stage pipeline on CPU. A script, because vLLM-Omni starts the
stage's engine core in a spawned process (the caller must be importable without side effects):

- ``python thinker_stage.py make OUT``: ``OUT/full`` (a random fp32 ``Qwen2_5OmniForConditionalGeneration`` without
  audio output: the thinker with a one-layer language model and the smallest audio and vision towers, a byte-level
  tokenizer with the Omni special tokens, the processor config) and ``OUT/quantized`` (auto-round 0.16.1 RTN on the
  same model: W4 g32 sym on ``thinker.model.layers``, ``down_proj`` at 8 bits through ``extra_config``).
- ``python thinker_stage.py serve FOLDER``: ``Omni(model=FOLDER, deploy_config=...)`` with the registered
  ``qwen2_5_omni_thinker_only`` pipeline, ``quantization: wna16``, fp32; prints one ``THINKER {json}`` line: engine
  start seconds, greedy tokens and their log-probabilities for :data:`PROMPT`.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import torch

PROMPT = [1, 2, 3, 4]
NEW_TOKENS = 4
SEED = 0
EIGHT_BIT = "thinker.model.layers.0.mlp.down_proj"
OMNI_TOKENS = {
    "audio_token": ("<|AUDIO|>", "audio_token_index"), "image_token": ("<|IMAGE|>", "image_token_index"),
    "video_token": ("<|VIDEO|>", "video_token_index"), "audio_bos_token": ("<|audio_bos|>", "audio_start_token_id"),
    "audio_eos_token": ("<|audio_eos|>", "audio_end_token_id"),
    "vision_bos_token": ("<|vision_bos|>", "vision_start_token_id"),
    "vision_eos_token": ("<|vision_eos|>", "vision_end_token_id"),
}  # fmt: skip
"""Tokenizer attribute -> (token, the thinker config field holding its id): Qwen2.5-Omni's processor reads them."""

DEPLOY = """\
pipeline: qwen2_5_omni_thinker_only
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
"""The deploy config: the registered thinker-only pipeline (one AR stage), wna16 chosen for every stage."""


def tokenizer_and_processor(out: Path) -> dict[str, int]:
    """Save a byte-level tokenizer with Qwen2.5-Omni's special tokens and the Omni processor into ``out``; returns
    the thinker config fields of the special token ids."""
    from make_pipelines import byte_bpe_tokenizer
    from transformers import (
        AutoTokenizer,
        Qwen2_5OmniProcessor,
        Qwen2VLImageProcessor,
        Qwen2VLVideoProcessor,
        WhisperFeatureExtractor,
    )

    byte_bpe_tokenizer(out / "byte_tokenizer", "Qwen2TokenizerFast", 128)
    extra = {attr: token for attr, (token, _) in OMNI_TOKENS.items()}
    tok = AutoTokenizer.from_pretrained(out / "byte_tokenizer", extra_special_tokens=extra)
    processor = Qwen2_5OmniProcessor(
        image_processor=Qwen2VLImageProcessor(), video_processor=Qwen2VLVideoProcessor(),
        feature_extractor=WhisperFeatureExtractor(feature_size=128), tokenizer=tok,
    )  # fmt: skip
    processor.save_pretrained(str(out))
    ids = {field: tok.convert_tokens_to_ids(token) for token, field in OMNI_TOKENS.values()}
    ids["vocab_size"] = len(tok)
    return ids


def tiny_thinker(ids: dict[str, int]) -> torch.nn.Module:
    """A seeded fp32 Qwen2.5-Omni (no audio output) whose thinker language model has one layer (hidden 64)."""
    from transformers import Qwen2_5OmniConfig, Qwen2_5OmniForConditionalGeneration

    torch.manual_seed(SEED)
    vocab = (ids.pop("vocab_size") + 31) // 32 * 32
    text = {"vocab_size": vocab, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 1,
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


def make(out: Path) -> None:
    """``out/full`` and ``out/quantized`` (see the module docstring)."""
    import shutil

    from auto_round import AutoRound

    full = out / "full"
    ids = tokenizer_and_processor(full)
    model = tiny_thinker(ids)
    model.save_pretrained(str(full))
    work = out / "autoround"
    ar = AutoRound(
        model, tokenizer=None, bits=4, group_size=32, sym=True, iters=0, disable_opt_rtn=True, device_map="cpu",
        to_quant_block_names="thinker.model.layers", layer_config={EIGHT_BIT: {"bits": 8}},
    )  # fmt: skip
    ar.quantize_and_save(str(work), format="auto_round")
    (found,) = [p.parent for p in work.rglob("config.json") if "quantization_config" in json.loads(p.read_text())]
    shutil.copytree(found, out / "quantized")
    for name in ("tokenizer.json", "tokenizer_config.json", "processor_config.json"):
        shutil.copy(full / name, out / "quantized" / name)


def serve(folder: Path) -> None:
    """Start the thinker stage through ``Omni(...)``, generate greedily, print the ``THINKER`` line."""
    from vllm import SamplingParams
    from vllm_omni import Omni

    deploy = folder.parent / "deploy.yaml"
    deploy.write_text(DEPLOY)
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
    {"make": make, "serve": serve}[sys.argv[1]](Path(sys.argv[2]))
