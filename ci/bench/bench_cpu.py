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
- ``autoround_lib``: the ``autoround-lib`` backend (auto-round-lib's CPU kernel behind wna16) when it is available,
  otherwise the report says why. Its kernel partitions work for OpenMP's initial thread count and the backend gives
  every call that many threads, so one-thread cells measure it only when the process starts with
  ``OMP_NUM_THREADS=1`` (else the column is left out and the report says so).

On a shared machine wall time measures the load as much as the code: for one thread the report uses *thread CPU
time* (``time.thread_time``: time actually on a core), for all threads the wall time, both the median over rounds,
and records the load average at start and end. Ratios are per round, then the median.

    OMP_NUM_THREADS=1 python ci/bench/bench_cpu.py [--full | --quick] [--json reports/bench_cpu.json]

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
from wna16_autoround_lib import AutoRoundLibBackend
from wna16_autoround_lib.backend import THREADS as AUTOROUND_THREADS
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


def auto_round_lib(threads: int) -> str | None:
    """Why the ``autoround-lib`` column is left out at ``threads`` threads, or None when it is measured."""
    available = AutoRoundLibBackend().available("cpu")
    if not available:
        return available.reason
    if AUTOROUND_THREADS.pool > threads:
        return f"its kernel runs {AUTOROUND_THREADS.pool} threads here: start with OMP_NUM_THREADS={threads}"
    return None


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
    peer = None if auto_round_lib(threads) else AutoRoundLibBackend().prepare(weight, spec)
    peers = [] if peer is None else copies(peer, max(1, math.ceil(4 * cache / resident_bytes(peer))))
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
        if peers:
            methods["autoround_lib"] = lambda i, x=x: peers[i % len(peers)](x)
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
        if peers:
            arl = samples["autoround_lib"]
            row["autoround_lib_ms"] = statistics.median(arl) * 1e3
            row["autoround_lib_x_dense"] = statistics.median(d / a for d, a in zip(dense_s, arl, strict=True))
            row["cpu_x_autoround_lib"] = statistics.median(a / c for a, c in zip(arl, cpu, strict=True))
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
    lines = [
        "| threads | K x N | scheme | dtype | M | path | cpu ms | dense ms | autoround-lib ms | x dense | "
        "x autoround-lib | roofline ms | % roofline |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        arl = f"{r['autoround_lib_ms']:.2f}" if "autoround_lib_ms" in r else "-"
        vs = f"{r['cpu_x_autoround_lib']:.2f}" if "cpu_x_autoround_lib" in r else "-"
        lines.append(
            f"| {r['threads']} | {r['k']}x{r['n']} | {r['scheme']} | {r['dtype']} | {r['m']} | {r['path']} | "
            f"{r['cpu_ms']:.2f} | {r['dense_ms']:.2f} | {arl} | {r['x_dense']:.2f} | {vs} | {r['roofline_ms']:.2f} | "
            f"{100 * r['roofline_fraction']:.0f}% |"
        )
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
        "peers": {"autoround_lib": {t: auto_round_lib(t) or "measured" for t in sorted({1, all_threads})}},
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
            f"M={r['m']} x{r['x_dense']:.2f} ({r['path']}) arl x{r.get('autoround_lib_x_dense', float('nan')):.2f}"
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
