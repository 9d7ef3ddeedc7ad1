"""Benchmark of the IPEX backend against a dense bf16 matmul (and the reference backend), measured side by side.

K = N = 4096, 4-bit symmetric group 128, bf16 activations, M in {1, 16}, all threads:

- ``ipex``: this repository's ``ipex`` backend as a user gets it (``IpexBackend().prepare``; lowp mode BF16).
- ``ipex_module``: IPEX's ``IPEXWeightOnlyQuantizedLinear`` called directly on the same prepacked weight, to separate
  the wrapper's per-call cost (reshape, column slice) from IPEX's.
- ``dense``: ``F.linear`` with the weight dequantized to bf16 once, before timing.
- ``reference``: the reference backend (dequantize in float32 per call), the naive baseline (one call).

Expect IPEX to be *slower* than dense on CPUs without AVX512-FP16 (e.g. AMD Zen4): its CPU kernel then dequantizes
the whole weight on every call. The script records what it measures, with the CPU flags that decide it, and never
fails on a slow result. Needs the torch 2.8 + IPEX 2.8 environment (the `conformance-ipex` nox session builds one in
`.nox/_ipex`): ``.nox/_ipex/bin/python ci/bench/bench_ipex.py [--json reports/bench_ipex.json]``; about a minute.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from wna16 import LayerSpec, QuantizedWeight, Scheme, quantize_rtn
from wna16.reference import dequantize
from wna16_ipex import IpexBackend
from wna16_ipex.ipex import IpexLinear
from wna16_reference import ReferenceBackend

K = N = 4096
GROUP = 128
MS = (1, 16)
FLAGS = ("avx512f", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_tile")


def time_calls(fn: Callable[[], object], min_seconds: float, max_calls: int, warmup: int = 2) -> float:
    """Median seconds per call of ``fn()`` after ``warmup`` calls (at least 3 samples)."""
    for _ in range(warmup):
        fn()
    samples: list[float] = []
    start = time.perf_counter()
    while len(samples) < max_calls and (time.perf_counter() - start < min_seconds or len(samples) < 3):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples)


def cpu_info() -> dict[str, Any]:
    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return {"model": model, "flags": {f: f in flags for f in FLAGS}}


def make_weight() -> QuantizedWeight:
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(N, K, generator=gen) * 0.02
    return quantize_rtn(w, Scheme(4, GROUP, True), scale_dtype=torch.bfloat16)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", default="reports/bench_ipex.json", help="where to write the JSON report")
    args = parser.parse_args(argv)

    backend = IpexBackend()
    if not backend.available("cpu"):
        print(f"ipex backend unavailable: {backend.available('cpu').reason}", file=sys.stderr)
        return 2
    started, load_start = time.perf_counter(), os.getloadavg()[0]
    dtype = torch.bfloat16
    weight = make_weight()
    spec = LayerSpec.of(weight, dtype)
    t0 = time.perf_counter()
    layer = backend.prepare(weight, spec)
    prepare_s = time.perf_counter() - t0
    assert isinstance(layer, IpexLinear)
    dense_w = dequantize(weight).to(dtype)
    reference = ReferenceBackend().prepare(weight, spec)
    rows = []
    for m in MS:
        x = torch.randn(m, K).to(dtype)
        t_ipex = time_calls(lambda x=x: layer(x), 1.0, 50)
        t_module = time_calls(lambda x=x: layer.module(x), 1.0, 50)
        t_dense = time_calls(lambda x=x: F.linear(x, dense_w), 1.0, 200)
        row = {"m": m, "ipex_ms": t_ipex * 1e3, "ipex_module_ms": t_module * 1e3, "dense_bf16_ms": t_dense * 1e3}
        row["ipex_over_dense"] = t_ipex / t_dense
        if m == 1:
            row["reference_ms"] = time_calls(lambda x=x: reference(x), 0.0, 1, warmup=0) * 1e3
        rows.append(row)
    ipex = sys.modules["intel_extension_for_pytorch"]
    report = {
        "benchmark": "bench_ipex",
        "shape": {"k": K, "n": N, "group_size": GROUP, "bits": 4, "sym": True, "dtype": "bfloat16"},
        "torch": torch.__version__,
        "ipex": ipex.__version__,
        "cpu": cpu_info(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "threads": torch.get_num_threads(),
        "prepare_s": round(prepare_s, 3),
        "load_average_start": load_start,
        "load_average_end": os.getloadavg()[0],
        "rows": rows,
        "seconds": round(time.perf_counter() - started, 1),
    }
    flags = ", ".join(f"{k}={'yes' if v else 'no'}" for k, v in report["cpu"]["flags"].items())
    print(f"# IPEX {report['ipex']} (torch {report['torch']}) W4 g{GROUP} K=N={K} bf16 on {report['cpu']['model']}")
    print(f"# {report['threads']} threads, {flags}; load {load_start:.1f} -> {report['load_average_end']:.1f}")
    print("| M | ipex ms | ipex module ms | dense bf16 ms | ipex / dense | reference ms |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        ref = f"{r['reference_ms']:.1f}" if "reference_ms" in r else "-"
        print(
            f"| {r['m']} | {r['ipex_ms']:.2f} | {r['ipex_module_ms']:.2f} | {r['dense_bf16_ms']:.2f} | "
            f"{r['ipex_over_dense']:.1f}x | {ref} |"
        )
    path = Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"# prepare {prepare_s:.2f} s; wrote {path} in {report['seconds']} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
