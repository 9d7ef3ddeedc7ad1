"""Benchmark of the Triton backend (``rocm``, which serves NVIDIA GPUs through Triton) against cuBLAS bf16 and the
memory roofline, measured side by side in one run.

For M in {1, 16, 128} on K x N = 4096 x 4096 and 8192 x 28672, 4-bit group 128 symmetric, bf16 activations:

- ``triton``: the ``rocm`` backend's prepared layer, as the registry would serve it (its tuner times its candidate
  configurations on the first call of each shape; that happens in the warm-up, not in the timing).
- ``dense``: ``F.linear`` with the weight dequantized to bf16 once, before timing (cuBLAS on NVIDIA).
- ``roofline``: the bytes the quantized layer must move per call (packed codes, scales, activations, output) divided
  by the bandwidth of a device-to-device copy measured in the same run (a copy reads and writes: 2 x its size).
  ``roofline_fraction`` = roofline time / Triton time (1.0 = at the memory roofline).

Timing: CUDA events around a batch of calls, median of the batches. Each batch cycles through enough copies of the
weights (packed and dense) to exceed four times the L2 cache, so that no call finds its weight hot, as in a model
with many layers. Every Triton output is also compared with the dense result (max |diff| / max |dense|): a fast
wrong kernel is reported as a problem.

``--device cpu`` (with ``TRITON_INTERPRET=1`` set, tiny shapes) runs the same code with wall-clock timing: the
dry run of ``ci/device/gpu_check.sh``; its numbers mean nothing.

    python ci/bench/bench_triton.py [--device cuda:0] [--shapes 4096x4096,8192x28672] [--ms 1,16,128]
        [--rounds 20] [--json reports/bench-triton.json]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from wna16 import LayerSpec, Scheme, quantize_rtn
from wna16.reference import dequantize
from wna16_rocm import RocmBackend

GROUP = 128
MAX_REL_ERROR = 2e-2
"""Largest max|triton - dense| / max|dense| accepted in bf16 (both round to bf16 with fp32 accumulation)."""


class Timer:
    """Median milliseconds per call of a batch of calls: CUDA events on a GPU, the wall clock on a CPU."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def batch_ms(self, calls: list[Callable[[], object]]) -> float:
        """Milliseconds per call of one pass over ``calls``."""
        if self.device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for call in calls:
                call()
            end.record()
            end.synchronize()
            return float(start.elapsed_time(end)) / len(calls)
        t0 = time.perf_counter()
        for call in calls:
            call()
        return (time.perf_counter() - t0) * 1e3 / len(calls)

    def median_ms(self, calls: list[Callable[[], object]], rounds: int) -> float:
        """Median over ``rounds`` batches after one warm-up batch."""
        self.batch_ms(calls)
        self.sync()
        return statistics.median(self.batch_ms(calls) for _ in range(rounds))


def cache_bytes(device: torch.device) -> int:
    """L2 size of a GPU (the largest cache a weight could stay in between calls); 32 MiB elsewhere."""
    if device.type == "cuda":
        return int(getattr(torch.cuda.get_device_properties(device), "L2_cache_size", 64 << 20))
    return 32 << 20


MAX_COPIES = 64
"""At most this many copies of a weight per batch (tiny dry-run shapes would otherwise need thousands)."""


def copy_bandwidth(device: torch.device, timer: Timer, rounds: int, size: int) -> float:
    """Bytes per second of a device-to-device copy of ``size`` bytes (read + write counted)."""
    src = torch.empty(size, dtype=torch.uint8, device=device).fill_(1)
    dst = torch.empty_like(src)
    ms = timer.median_ms([lambda: dst.copy_(src)], rounds)
    return 2 * size / (ms * 1e-3)


def bench_shape(
    k: int, n: int, ms: list[int], device: torch.device, timer: Timer, rounds: int, bandwidth: float, cache: int
) -> tuple[list[dict[str, Any]], list[str]]:
    """Rows of one weight shape (one per M) and the problems found (wrong results)."""
    generator = torch.Generator(device).manual_seed(0)
    # Quantized on the device: the 8192 x 28672 weight has 235 M elements, slow to round on a CPU.
    weight = quantize_rtn(torch.randn(n, k, device=device, generator=generator) * 0.02, Scheme(4, GROUP, True))
    spec = LayerSpec.of(weight, torch.bfloat16, device=str(device))
    backend = RocmBackend()
    prepared = backend.prepare(weight, spec)
    dense = dequantize(weight).to(device=device, dtype=torch.bfloat16)
    packed_bytes = weight.qweight.numel() * 4 + weight.scales.numel() * weight.scales.element_size()
    copies = min(MAX_COPIES, max(1, math.ceil(4 * cache / packed_bytes)))
    dense_copies = min(MAX_COPIES, max(1, math.ceil(4 * cache / (dense.numel() * 2))))
    layers = [prepared] + [backend.prepare(weight, spec) for _ in range(copies - 1)]
    denses = [dense] + [dense.clone() for _ in range(dense_copies - 1)]
    rows, problems = [], []
    for m in ms:
        x = (torch.randn(m, k, device=device, generator=generator) * 0.5).to(torch.bfloat16)
        timer.sync()
        t0 = time.perf_counter()
        y_triton = prepared(x)  # first call: the tuner compiles and times its candidates here
        timer.sync()
        first_call_s = time.perf_counter() - t0
        y_dense = F.linear(x, dense)
        scale = float(y_dense.float().abs().max()) or 1.0
        rel_error = float((y_triton.float() - y_dense.float()).abs().max()) / scale
        if not rel_error <= MAX_REL_ERROR:
            problems.append(f"M={m} K={k} N={n}: triton differs from dense by {rel_error:.3g} (> {MAX_REL_ERROR})")
        t_triton = timer.median_ms([lambda layer=layer, x=x: layer(x) for layer in layers], rounds)
        t_dense = timer.median_ms([lambda w=w, x=x: F.linear(x, w) for w in denses], rounds)
        moved = packed_bytes + x.numel() * 2 + m * n * 2
        roofline = moved / bandwidth * 1e3
        rows.append({
            "m": m, "k": k, "n": n, "group": GROUP, "bits": 4, "dtype": "bfloat16",
            "triton_ms": round(t_triton, 5), "dense_ms": round(t_dense, 5),
            "triton_over_dense": round(t_triton / t_dense, 4), "roofline_ms": round(roofline, 5),
            "roofline_fraction": round(roofline / t_triton, 4), "bytes_moved": moved, "max_rel_error": rel_error,
            "weight_copies": copies, "dense_copies": dense_copies, "first_call_s": round(first_call_s, 2),
        })  # fmt: skip
        print(
            f"M={m:<4} K={k:<5} N={n:<6} triton {t_triton:9.4f} ms  dense bf16 {t_dense:9.4f} ms  "
            f"ratio {t_triton / t_dense:6.2f}  roofline {roofline:9.4f} ms ({roofline / t_triton:5.2f})  "
            f"err {rel_error:.2e}",
            flush=True,
        )
    return rows, problems


def write(path: Path | None, result: dict[str, Any]) -> None:
    """Write the JSON result (replacing the file in one rename, so that a reader never sees half of it)."""
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps(result, indent=1) + "\n")
    partial.replace(path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda:0")
    p.add_argument("--shapes", default="4096x4096,8192x28672", help="KxN,... (K = in_features, N = out_features)")
    p.add_argument("--ms", default="1,16,128")
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--copy-mib", type=int, default=1024, help="size of the device copy measuring the bandwidth")
    p.add_argument("--cache-mib", type=float, help="cache the weights must not stay in (default: the GPU's L2)")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", 0)
    availability = RocmBackend().available(device)
    if not availability:
        print(f"bench_triton: the rocm backend is unavailable on {device}: {availability.reason}")
        return 1
    timer = Timer(device)
    cache = int(args.cache_mib * 2**20) if args.cache_mib is not None else cache_bytes(device)
    bandwidth = copy_bandwidth(device, timer, args.rounds, args.copy_mib << 20)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu (Triton interpreter)"
    print(f"{name}: device-to-device copy {bandwidth / 1e9:.1f} GB/s (read + write)", flush=True)
    ms = [int(v) for v in args.ms.split(",")]
    import triton

    rows: list[dict[str, Any]] = []
    problems: list[str] = []
    result = {
        "benchmark": "bench_triton",
        "device": {"type": device.type, "name": name},
        "torch": torch.__version__,
        "triton": triton.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "copy_bandwidth_gbs": round(bandwidth / 1e9, 2),
        "rounds": args.rounds,
        "cache_bytes": cache,
        "rows": rows,
        "problems": problems,
        "complete": False,
    }
    for shape in args.shapes.split(","):
        k, n = (int(v) for v in shape.lower().split("x"))
        shape_rows, shape_problems = bench_shape(k, n, ms, device, timer, args.rounds, bandwidth, cache)
        rows += shape_rows
        problems += shape_problems
        write(args.json, result)  # after each shape: a run cut short by its time limit keeps what it measured
    result["complete"] = True
    write(args.json, result)
    for problem in problems:
        print(f"PROBLEM: {problem}")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
