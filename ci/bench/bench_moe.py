"""Benchmark of a quantized experts block on the CPU backend against the same block dense in bf16, side by side in
one run: decode (M = 1..8 tokens), each token routed to top-k of E experts.

- ``wna16``: :class:`wna16.nn.QuantExperts` served by the ``cpu`` backend (torch's int4 kernel per expert, through the
  generic per-expert path: tokens grouped by expert, only the chosen experts' packed weights are read).
- ``dense``: the same routing, the same grouping, ``F.linear`` on bf16 weights dequantized once before timing (what
  transformers' experts loop computes for an unquantized model).

Both read only the chosen experts; the quantized block reads ~3.6x fewer bytes per expert (4-bit + fp16 scales and
zeros per group of 128 vs bf16). Goals (issue 20): >= 2x the dense block at M = 1, never slower at M = 8. Each
timing is the best of ``ROUNDS`` rounds (least disturbed by other processes); the routing is fixed per M and shared.

Run: ``python ci/bench/bench_moe.py [--experts 32 --hidden 2048 --inter 768 --top-k 8] [--json out.json]``. The
defaults are Qwen3-30B-A3B's expert shapes (E = 128 there) with fewer experts, to fit a shared machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from wna16 import Registry, Scheme, quantize_rtn
from wna16.experts import ExpertsSpec, ExpertWeights, Routing
from wna16.nn import QuantExperts
from wna16.reference import dequantize
from wna16_cpu import CpuBackend

ROUNDS = 7
GOALS = {"m1_vs_dense": 2.0, "m8_vs_dense": 1.0}


def dense_block(
    weights: list[tuple[torch.Tensor, ...]], spec: ExpertsSpec
) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
    """The experts block on bf16 weights, grouped by expert like the generic path."""

    def call(x: torch.Tensor, ids: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        routing = Routing.of(ids, w, x.shape[0], spec)
        out = torch.zeros(x.shape[0], x.shape[1], dtype=torch.float32)
        for e in routing.active:
            rows = routing.tokens[routing.starts[e] : routing.starts[e + 1]]
            rw = routing.weights[routing.starts[e] : routing.starts[e + 1], None].to(x.dtype)
            g, u, d = weights[e]
            xe = x[rows]
            out.index_add_(0, rows, (F.linear(F.silu(F.linear(xe, g)) * F.linear(xe, u), d) * rw).float())
        return out.to(x.dtype)

    return call


def best(fn: Callable[[], object], rounds: int = ROUNDS) -> float:
    fn()
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experts", type=int, default=32)
    parser.add_argument("--hidden", type=int, default=2048)
    parser.add_argument("--inter", type=int, default=768)
    parser.add_argument("--top-k", type=int, default=8)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    e_count, h, inter, k = args.experts, args.hidden, args.inter, args.top_k
    torch.manual_seed(0)
    scheme = Scheme(4, 128, True)
    q: list[list[object]] = [[], [], []]
    for _ in range(e_count):
        for p, (n, kk) in enumerate(((inter, h), (inter, h), (h, inter))):
            q[p].append(quantize_rtn(torch.randn(n, kk) / kk**0.5, scheme))
    experts = ExpertWeights(*(tuple(ws) for ws in q))  # type: ignore[arg-type]
    registry = Registry(discover=False)
    registry.register(CpuBackend())
    block = QuantExperts(experts, k, dtype=torch.bfloat16, registry=registry)
    dense_w = [tuple(dequantize(w).to(torch.bfloat16) for w in experts.expert(e)) for e in range(e_count)]
    dense = dense_block(dense_w, block.spec(block.device, block.dtype))
    results = []
    for m in range(1, 9):
        gen = torch.Generator().manual_seed(m)
        x = torch.randn(m, h, generator=gen).to(torch.bfloat16)
        ids = torch.stack([torch.randperm(e_count, generator=gen)[:k] for _ in range(m)])
        w = torch.softmax(torch.randn(m, k, generator=gen), -1).to(torch.bfloat16)
        with torch.no_grad():
            t_q = best(lambda: block(x, ids, w))  # noqa: B023
            t_d = best(lambda: dense(x, ids, w))  # noqa: B023
        active = len(set(ids.flatten().tolist()))
        results.append({"M": m, "active_experts": active, "wna16_ms": t_q * 1e3, "dense_ms": t_d * 1e3,
                        "speedup": t_d / t_q})  # fmt: skip
        print(f"M={m} active={active:3d}  wna16 {t_q * 1e3:8.3f} ms  dense bf16 {t_d * 1e3:8.3f} ms  x{t_d / t_q:.2f}")
    isa = torch.backends.cpu.get_cpu_capability()
    goals = {"m1_vs_dense": results[0]["speedup"], "m8_vs_dense": results[-1]["speedup"]}
    met = {g: goals[g] >= GOALS[g] for g in GOALS}
    print(f"ISA {isa}, {platform.processor() or platform.machine()}, threads {torch.get_num_threads()}, "
          f"load {os.getloadavg()[0]:.1f}; E={e_count} top-{k} H={h} I={inter} w4g128 bf16")  # fmt: skip
    print("goals:", {g: f"{goals[g]:.2f} (goal {GOALS[g]}) {'met' if met[g] else 'NOT met'}" for g in GOALS})
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        report = {"isa": isa, "threads": torch.get_num_threads(), "load": os.getloadavg(), "results": results,
                  "goals": goals, "met": met, "shape": {"E": e_count, "top_k": k, "H": h, "I": inter}}  # fmt: skip
        args.json.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
