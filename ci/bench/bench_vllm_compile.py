"""Decode speed of a wna16 checkpoint on vLLM-CPU, compiled (vLLM's default) against ``enforce_eager``.

Each mode runs in its own process (one engine per process, as vLLM is used): start the engine, one warm-up
generation, then ``--rounds`` rounds of two generations from the same token-ID prompts, ``max_tokens=1`` (prefill)
and ``max_tokens=T`` (prefill + T - 1 decode steps, ``ignore_eos``); decode tokens/s of a round =
``batch * (T - 1) / (time_T - time_1)``. The report gives the best and the median round, the engine start time, the
ISA torch dispatches with and the load average before and after (a shared machine measures its load as much as the
code: compare modes measured in the same run).

    python ci/bench/bench_vllm_compile.py CHECKPOINT [--dtype bfloat16] [--batch 1] [--tokens 64] [--rounds 5]

Run it with the vLLM environment's python (``nox -s vllm`` builds ``.nox/_vllm-cpu``); the checkpoints of
tests/vllm are in pytest's cache (``.pytest_cache/d/wna16-vllm-*``) after one run of that session.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any


def measure(args: argparse.Namespace, eager: bool) -> dict[str, Any]:
    """One engine in this process: start time and per-round decode tokens/s."""
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    os.environ.setdefault("VLLM_PLUGINS", "wna16")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    llm = LLM(
        model=args.checkpoint, quantization="wna16", dtype=args.dtype, enforce_eager=eager, skip_tokenizer_init=True,
        max_model_len=args.tokens + 16, max_num_seqs=max(args.batch, 1), seed=0,
    )  # fmt: skip
    start_s = time.perf_counter() - start
    mode = llm.llm_engine.vllm_config.compilation_config.mode
    prompts = [TokensPrompt(prompt_token_ids=[(7 * i + j) % 100 + 1 for j in range(8)]) for i in range(args.batch)]

    def timed(tokens: int) -> float:
        params = SamplingParams(max_tokens=tokens, temperature=0.0, ignore_eos=True, detokenize=False)
        t0 = time.perf_counter()
        outs = llm.generate(prompts, params, use_tqdm=False)
        elapsed = time.perf_counter() - t0
        assert all(len(o.outputs[0].token_ids) == tokens for o in outs)
        return elapsed

    timed(args.tokens)  # warm-up: compiles the remaining shapes, fills caches
    rates = []
    for _ in range(args.rounds):
        prefill, full = timed(1), timed(args.tokens)
        rates.append(args.batch * (args.tokens - 1) / max(full - prefill, 1e-9))
    return {
        "mode": str(getattr(mode, "name", mode)),
        "engine_start_s": round(start_s, 1),
        "decode_tokens_per_s_best": round(max(rates), 1),
        "decode_tokens_per_s_median": round(statistics.median(rates), 1),
        "isa": torch.backends.cpu.get_cpu_capability(),
        "threads": torch.get_num_threads(),
        "load_before": load_before,
        "load_after": os.getloadavg()[0],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--mode", choices=("both", "eager", "compiled"), default="both")
    args = parser.parse_args()
    if args.mode != "both":
        print(json.dumps(measure(args, args.mode == "eager")))
        return
    results = []
    for mode in ("eager", "compiled"):  # a fresh process per engine
        cmd = [sys.executable, __file__, *sys.argv[1:], "--mode", mode]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        results.append(json.loads(out.strip().splitlines()[-1]))
    eager, compiled = results
    ratio = compiled["decode_tokens_per_s_best"] / eager["decode_tokens_per_s_best"]
    print(json.dumps({"checkpoint": args.checkpoint, "dtype": args.dtype, "batch": args.batch, "tokens": args.tokens,
                      "rounds": args.rounds, "results": results, "compiled_over_eager_best": round(ratio, 2)},
                     indent=1))  # fmt: skip


if __name__ == "__main__":
    main()
