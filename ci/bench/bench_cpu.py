"""Benchmark of the CPU backend (torch's int4 kernel) against the reference backend, a dense bf16 matmul and the
memory roofline, measured side by side in one run.

For M in {1, 16, 128}, K = N = 4096, 4-bit group 128, bf16 activations, at 1 thread and at all threads:

- ``cpu``: this repository's CPU backend (``aten._weight_int4pack_mm_for_cpu``).
- ``reference``: the reference backend (dequantize a chunk in float32, then matmul): the naive baseline.
- ``dense``: ``F.linear`` with the weight dequantized to bf16 once, before timing.
- ``roofline``: bytes of packed weight + scales/zeros the int4 kernel must read per call, divided by the bandwidth of
  a read-only stream over a buffer larger than the last-level cache, measured in the same run at the same thread
  count (a float32 ``amax``; it runs in turns with the kernels, see :func:`interleaved`). The goal's fraction is
  best against best (fastest kernel call / fastest stream pass: both least disturbed by other processes); the
  median of per-round ratios is reported next to it as ``paired``.

Weights are not left hot in the cache between calls: each timed method cycles through enough copies of its weight
(the packed tensors are cloned, not repacked) to exceed four times the last-level cache, as a model with many layers
would. A small fp16 section (all threads, 4-bit g128 and 8-bit per channel) measures the layers (scalar kernel up to
``SCALAR_MAX_M`` rows, dequantize-then-matmul above) against the reference: the numbers behind the fp16/fp32
priority.

Run: ``python ci/bench/bench_cpu.py [--json reports/bench_cpu.json]``: under a minute on 2 idle cores, about 3
minutes on 2 cores shared with a load average of 15. Timings on a shared machine are only as good as its load: the
report records the load average at start and end.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
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
from wna16_cpu import CpuBackend
from wna16_cpu.int4 import Int4Linear
from wna16_cpu.int8 import Int8Linear
from wna16_reference import ReferenceBackend

K = N = 4096
GROUP = 128
MS = (1, 16, 128)
SCALAR_MS = (1, 8, 16, 128)
SCALAR_ROUNDS = 2
ROUNDS = 15
ROUND_SECONDS = 0.02
GOALS = {"vs_dense": 3.0, "vs_reference": 50.0, "roofline_fraction": 0.6}


def last_level_cache_bytes() -> int:
    for index in sorted(Path("/sys/devices/system/cpu/cpu0/cache").glob("index*"), reverse=True):
        try:
            text = (index / "size").read_text().strip()
        except OSError:
            continue
        units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
        return int(text[:-1]) * units[text[-1]] if text[-1] in units else int(text)
    return 64 << 20


def time_once(fn: Callable[[], object], warmup: int = 0) -> float:
    """Seconds of one call of ``fn`` after ``warmup`` calls (for the slow baselines)."""
    for _ in range(warmup):
        fn()
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def interleaved(fns: dict[str, Callable[[int], object]], rounds: int, round_seconds: float) -> dict[str, list[float]]:
    """Seconds per call of each ``fns[name](i)``, one sample per round, the methods taking turns within each round.

    Taking turns makes the ratios robust to load that changes during the run (other processes on a shared
    machine): every round compares the methods under the same conditions, and the medians of per-round ratios are
    reported. Each method runs enough calls per round to fill about ``round_seconds``.
    """
    batch = {}
    for name, fn in fns.items():
        fn(0)  # warm-up: first-touch of buffers, thread pool start
        t0 = time.perf_counter()
        fn(1)
        batch[name] = max(1, round(round_seconds / max(time.perf_counter() - t0, 1e-6)))
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for r in range(rounds):
        for name, fn in fns.items():
            n = batch[name]
            t0 = time.perf_counter()
            for i in range(n):
                fn(r * n + i)
            samples[name].append((time.perf_counter() - t0) / n)
    return samples


def stream_read(buffer: torch.Tensor) -> None:
    """One read-only pass over ``buffer``: a float32 ``amax`` (one compare per element, no write but the result)."""
    torch.amax(buffer)


def int4_copies(layer: Int4Linear, count: int) -> list[Int4Linear]:
    """``count`` layers sharing nothing but the layout: clones of the packed codes and of ``sz``."""
    out = [layer]
    for _ in range(count - 1):
        twin = copy.copy(layer)
        twin.packed, twin.sz = layer.packed.clone(), layer.sz.clone()
        out.append(twin)
    return out


def raw_kernel(layer: Int4Linear | Int8Linear, x: torch.Tensor) -> torch.Tensor:
    """The bare aten call the backend makes, to separate the wrapper's per-call cost from the kernel's."""
    if isinstance(layer, Int8Linear):
        return torch.ops.aten._weight_int8pack_mm(x, layer.qweight, layer.scales)
    return torch.ops.aten._weight_int4pack_mm_for_cpu(x, layer.packed, layer.layout.block_rows, layer.sz)


def copies_needed(bytes_per_copy: int, cache: int) -> int:
    return max(1, math.ceil(4 * cache / bytes_per_copy))


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def make_weight() -> QuantizedWeight:
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(N, K, generator=gen) * 0.02
    return quantize_rtn(w, Scheme(4, GROUP, True), scale_dtype=torch.bfloat16)


def bench_threads(threads: int, weight: QuantizedWeight, cache: int, stream: torch.Tensor) -> dict[str, Any]:
    torch.set_num_threads(threads)
    dtype = torch.bfloat16
    spec = LayerSpec.of(weight, dtype)
    cpu_layer = CpuBackend().prepare(weight, spec)
    assert isinstance(cpu_layer, Int4Linear)
    kernel_bytes = cpu_layer.packed.numel() * cpu_layer.packed.element_size() + cpu_layer.sz.numel() * 2
    cpu_layers = int4_copies(cpu_layer, copies_needed(kernel_bytes, cache))
    dense_w = dequantize(weight).to(dtype)
    dense_ws = [dense_w] + [dense_w.clone() for _ in range(copies_needed(dense_w.numel() * 2, cache) - 1)]
    ref_layer = ReferenceBackend().prepare(weight, spec)

    stream_bytes = stream.numel() * stream.element_size()
    rows = []
    for m in MS:
        x = torch.randn(m, K).to(dtype)
        samples = interleaved(
            {
                "cpu": lambda i, x=x: cpu_layers[i % len(cpu_layers)](x),
                "kernel": lambda i, x=x: raw_kernel(cpu_layers[i % len(cpu_layers)], x),
                "dense": lambda i, x=x: F.linear(x, dense_ws[i % len(dense_ws)]),
                "stream": lambda i: stream_read(stream),
            },
            ROUNDS,
            ROUND_SECONDS,
        )
        t_ref = time_once(lambda x=x: ref_layer(x))
        cpu, dense, stream_s = samples["cpu"], samples["dense"], samples["stream"]
        roofline = [kernel_bytes * t / stream_bytes for t in stream_s]  # seconds the weight read takes at that rate
        rows.append(
            {
                "m": m,
                "cpu_ms": statistics.median(cpu) * 1e3,
                "kernel_only_ms": statistics.median(samples["kernel"]) * 1e3,
                "dense_bf16_ms": statistics.median(dense) * 1e3,
                "reference_ms": t_ref * 1e3,
                "roofline_ms": statistics.median(roofline) * 1e3,
                "stream_bandwidth_gbs": stream_bytes / statistics.median(stream_s) / 1e9,
                "speedup_vs_dense": statistics.median(d / c for d, c in zip(dense, cpu, strict=True)),
                "speedup_vs_reference": t_ref / statistics.median(cpu),
                "roofline_fraction_paired": statistics.median(r / c for r, c in zip(roofline, cpu, strict=True)),
                "roofline_fraction": min(roofline) / min(cpu),
                "cpu_best_ms": min(cpu) * 1e3,
                "stream_best_gbs": stream_bytes / min(stream_s) / 1e9,
                "cpu_bandwidth_gbs": kernel_bytes / statistics.median(cpu) / 1e9,
                "rounds": len(cpu),
            }
        )
    return {
        "threads": threads,
        "stream_buffer_mib": stream_bytes >> 20,
        "kernel_bytes_per_call": kernel_bytes,
        "cpu_weight_copies": len(cpu_layers),
        "dense_weight_copies": len(dense_ws),
        "rows": rows,
    }


def bench_scalar(weight: QuantizedWeight, threads: int) -> list[dict[str, Any]]:
    """fp16 (torch has no vectorised int4/int8 kernel for it) against the reference, taking turns for a few rounds
    per M: the numbers behind the fp16/fp32 priority and each layer's ``SCALAR_MAX_M``. Also times the layer's two
    fp16 paths (the scalar kernel, dequantize-then-matmul) apart."""
    torch.set_num_threads(threads)
    spec = LayerSpec.of(weight, torch.float16)
    layer, ref_layer = CpuBackend().prepare(weight, spec), ReferenceBackend().prepare(weight, spec)
    assert isinstance(layer, Int4Linear | Int8Linear)
    out = []
    for m in SCALAR_MS:
        x = torch.randn(m, K).to(torch.float16)
        fns: dict[str, Callable[[int], object]] = {
            "cpu": lambda i, x=x: layer(x),
            "reference": lambda i, x=x: ref_layer(x),
            "dequantize_path": lambda i, x=x: layer.dequantized_matmul(layer_input(layer, x)),
        }
        if m <= 16:
            fns["scalar_kernel"] = lambda i, x=x: raw_kernel(layer, x)
        samples = interleaved(fns, SCALAR_ROUNDS, 0.0)
        row: dict[str, Any] = {"bits": weight.scheme.bits, "m": m, "dtype": "float16"}
        row.update({f"{name}_ms": statistics.median(v) * 1e3 for name, v in samples.items()})
        row["speedup_vs_reference"] = statistics.median(
            r / c for r, c in zip(samples["reference"], samples["cpu"], strict=True)
        )
        out.append(row)
    return out


def layer_input(layer: Int4Linear | Int8Linear, x: torch.Tensor) -> torch.Tensor:
    return layer.layout.scatter(x) if isinstance(layer, Int4Linear) else x


def print_report(report: dict[str, Any]) -> None:
    print(f"# CPU int4 benchmark: K=N={K}, group {GROUP}, bf16, torch {report['torch']}, {report['cpu']}")
    load = f"{report['load_average_start']:.1f} -> {report['load_average_end']:.1f}"
    print(f"# weights cycled to exceed 4x the {report['llc_mib']} MiB LLC; load {load} on {report['all_threads']} CPUs")
    head = "| threads | M | cpu ms | kernel ms | dense ms | ref ms | roof ms | x dense | x ref | % roof | paired |"
    print(head)
    print("|---" * (head.count("|") - 1) + "|")
    for run in report["runs"]:
        for r in run["rows"]:
            print(
                f"| {run['threads']} | {r['m']} | {r['cpu_ms']:.3f} | {r['kernel_only_ms']:.3f} | "
                f"{r['dense_bf16_ms']:.3f} | "
                f"{r['reference_ms']:.1f} | {r['roofline_ms']:.3f} | {r['speedup_vs_dense']:.2f} | "
                f"{r['speedup_vs_reference']:.0f} | {100 * r['roofline_fraction']:.0f}% | "
                f"{100 * r['roofline_fraction_paired']:.0f}% |"
            )
        rates = ", ".join(f"{r['stream_bandwidth_gbs']:.1f}" for r in run["rows"])
        print(
            f"#  {run['threads']} thread(s): stream over {run['stream_buffer_mib']} MiB {rates} GB/s (per M), "
            f"{run['kernel_bytes_per_call'] / 2**20:.2f} MiB of packed weight + scales read per call"
        )
    for r in report["scalar_fp16"]:
        paths = ", ".join(f"{k[:-3]} {v:.1f}" for k, v in r.items() if k.endswith("_ms") and k not in ("cpu_ms",))
        print(f"# w{r['bits']} fp16, {report['all_threads']} threads, M={r['m']}: cpu {r['cpu_ms']:.1f} ms "
              f"(x{r['speedup_vs_reference']:.1f} vs reference; {paths} ms)")  # fmt: skip
    for threads, goals in report["goals_m1"].items():
        print(f"# goals at M=1, {threads} thread(s): {goals}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", default="reports/bench_cpu.json", help="where to write the JSON report")
    parser.add_argument("--no-scalar", action="store_true", help="skip the fp16 section")
    args = parser.parse_args(argv)

    started, load_start = time.perf_counter(), os.getloadavg()[0]
    all_threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    cache = last_level_cache_bytes()
    weight = make_weight()
    stream = torch.ones(max(8 * cache, 256 << 20) // 4, dtype=torch.float32)
    thread_counts = sorted({1, all_threads})
    runs = [bench_threads(t, weight, cache, stream) for t in thread_counts]
    del stream
    scalar = []
    if not args.no_scalar:
        w8 = quantize_rtn(dequantize(weight), Scheme(8, -1, True), scale_dtype=torch.bfloat16)
        scalar = bench_scalar(weight, all_threads) + bench_scalar(w8, all_threads)
    goals = {}
    for run in runs:
        m1 = run["rows"][0]
        goals[str(run["threads"])] = {
            "vs_dense": {"goal": GOALS["vs_dense"], "got": round(m1["speedup_vs_dense"], 2)},
            "vs_reference": {"goal": GOALS["vs_reference"], "got": round(m1["speedup_vs_reference"], 1)},
            "roofline_fraction": {"goal": GOALS["roofline_fraction"], "got": round(m1["roofline_fraction"], 3)},
        }
        for g in goals[str(run["threads"])].values():
            g["met"] = g["got"] >= g["goal"]
    report = {
        "benchmark": "bench_cpu",
        "shape": {"k": K, "n": N, "group_size": GROUP, "bits": 4, "sym": True, "dtype": "bfloat16"},
        "torch": torch.__version__,
        "cpu": cpu_model(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "all_threads": all_threads,
        "llc_mib": cache >> 20,
        "load_average_start": load_start,
        "load_average_end": os.getloadavg()[0],
        "runs": runs,
        "scalar_fp16": scalar,
        "goals_m1": goals,
    }
    report["seconds"] = round(time.perf_counter() - started, 1)
    print_report(report)
    path = Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"# wrote {path} in {report['seconds']} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
