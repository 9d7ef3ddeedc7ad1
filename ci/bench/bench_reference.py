"""Reference backend vs a dense F.linear with a pre-dequantized weight, side by side in one run.

M=1, K=N=4096, group 128, bf16 by default. The reference backend is the clarity-first fallback; this prints how far
it is from a dense matmul so that the number is known, not so that it is optimised (the CPU backend is the fast path).

    python ci/bench/bench_reference.py [--m 1] [--k 4096] [--n 4096] [--group 128] [--json reports/bench-reference.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from wna16 import LayerSpec, Scheme, quantize_rtn
from wna16.reference import dequantize
from wna16_reference import ReferenceBackend


def timeit(fn: Callable[[], object], repeat: int) -> float:
    """Median seconds of `repeat` calls after two warm-ups."""
    fn(), fn()
    samples = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--m", type=int, default=1)
    p.add_argument("--k", type=int, default=4096)
    p.add_argument("--n", type=int, default=4096)
    p.add_argument("--group", type=int, default=128)
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--repeat", type=int, default=10)
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    dtype = getattr(torch, args.dtype)

    weight = quantize_rtn(torch.randn(args.n, args.k) * 0.02, Scheme(4, args.group, True))
    spec = LayerSpec.of(weight, dtype)
    layer = ReferenceBackend().prepare(weight, spec)
    dense = dequantize(weight).to(dtype)
    x = torch.randn(args.m, args.k).to(dtype)

    t_ref = timeit(lambda: layer(x), args.repeat)
    t_dense = timeit(lambda: F.linear(x, dense), args.repeat)
    result = {
        "shape": {"m": args.m, "k": args.k, "n": args.n, "group": args.group, "dtype": args.dtype},
        "threads": torch.get_num_threads(),
        "reference_ms": t_ref * 1e3,
        "dense_ms": t_dense * 1e3,
        "ratio_reference_over_dense": t_ref / t_dense,
    }
    print(f"M={args.m} K={args.k} N={args.n} g{args.group} {args.dtype}, {torch.get_num_threads()} threads")
    print(f"  reference backend   {t_ref * 1e3:9.2f} ms")
    print(f"  dense F.linear      {t_dense * 1e3:9.2f} ms")
    print(f"  ratio               {t_ref / t_dense:9.1f}x slower than dense")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
