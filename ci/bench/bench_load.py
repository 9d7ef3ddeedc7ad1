"""Checkpoint loading vs reading the same files raw, side by side in one run: throughput and peak memory.

Writes a synthetic sharded checkpoint (>= 1 GB of packed weights by default: 4-bit GPTQ v1, group 128, K=N=4096 per
layer) into a temporary folder, then measures, each in a fresh child process so that peak RSS is per phase:

- ``raw``: read every shard file sequentially into one reusable buffer (the floor any loader pays);
- ``load``: ``wna16.load_checkpoint`` (headers, config, coverage audit, g_idx checks) and then, layer by layer,
  materialise the canonical weight and read every byte of it (copied into one reused buffer, as the raw phase reads
  into one), dropping each layer after; then every 16-bit tensor the same way.

Each runs twice: ``cold`` (the files evicted from the page cache with ``posix_fadvise(DONTNEED)`` after an fsync) and
``warm`` (just read). Throughput is checkpoint bytes / wall time. Peak memory is the child's VmHWM minus its RSS after
imports (the interpreter and torch), against the largest shard. CPU seconds (user + system of the child) are reported
next to wall time: on a shared machine they show the work done, independent of how long the process waited.
Goals: >= 1 GB/s and peak <= 1.5x the largest shard.
The temporary data is deleted at the end. Phases run with one torch thread by default: the work is memory-bound, the
raw phase is single-threaded too, and on a loaded 2-core machine OpenMP threads that wait on each other cost more
than they give.

    python ci/bench/bench_load.py [--gib 1.1] [--shards 4] [--format gptq] [--threads 1] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

from wna16 import Checkpoint, Scheme, load_checkpoint, quantize_rtn
from wna16.formats import FORMATS

BUFFER = 8 << 20


def _status(key: str) -> int:
    """A /proc/self/status field in bytes (VmRSS, VmHWM)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(key)


def write_checkpoint(folder: Path, gib: float, shards: int, packed_format: str, k: int, n: int) -> dict[str, object]:
    """Random packed layers (valid by construction) split evenly over ``shards`` files with an index."""
    scheme = Scheme(4, 128, packed_format != "awq")
    fmt = FORMATS[packed_format]
    # One real RTN-quantized layer gives valid zeros/scales; its packed tensors are reused with random qweight words.
    template = fmt.pack(quantize_rtn(torch.randn(n, k), scheme))
    layer_bytes = sum(t.numel() * t.element_size() for t in template.values())
    layers = max(shards, int(gib * (1 << 30) / layer_bytes + 0.999))
    per_shard = -(-layers // shards)
    gen = torch.Generator().manual_seed(0)
    weight_map: dict[str, str] = {}
    for s in range(shards):
        names = range(s * per_shard, min(layers, (s + 1) * per_shard))
        tensors: dict[str, torch.Tensor] = {}
        for i in names:
            prefix = f"model.layers.{i}.mlp.down_proj"
            for role, t in template.items():
                value = t
                if role == "qweight":
                    value = torch.randint(-(2**31), 2**31 - 1, t.shape, dtype=torch.int32, generator=gen)
                tensors[f"{prefix}.{role}"] = value.clone()
            tensors[f"model.layers.{i}.input_layernorm.weight"] = torch.ones(k, dtype=torch.bfloat16)
        file = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        save_file(tensors, str(folder / file))
        weight_map.update(dict.fromkeys(tensors, file))
        del tensors
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    packing = {"gptq": "auto_round:auto_gptq", "gptq_v2": "auto_round", "awq": "auto_round:auto_awq"}[packed_format]
    qc = {"quant_method": "auto-round", "bits": 4, "group_size": 128, "sym": scheme.sym, "data_type": "int",
          "packing_format": packing, "block_name_to_quantize": "model.layers"}  # fmt: skip
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "quantization_config": qc}
    (folder / "config.json").write_text(json.dumps(config))
    files = sorted(folder.glob("*.safetensors"))
    for path in files:
        with path.open("rb+") as handle:
            os.fsync(handle.fileno())
    return {"layers": layers, "layer_shape": [k, n], "packed_format": packed_format, "scheme": str(scheme)}


def evict(folder: Path) -> None:
    """Drop the checkpoint's pages from the page cache (clean pages; no root needed)."""
    for path in folder.iterdir():
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def phase_raw(folder: Path) -> int:
    buffer = bytearray(BUFFER)
    view = memoryview(buffer)
    total = 0
    for path in sorted(folder.glob("*.safetensors")):
        with path.open("rb", buffering=0) as handle:
            while read := handle.readinto(view):
                total += read
    return total


def phase_load(folder: Path) -> int:
    ckpt = load_checkpoint(folder)
    # Like the raw phase's reused buffer, one destination is reused: the copy reads every byte of each canonical
    # weight (as a backend repack does) without timing fresh allocations.
    sink = torch.empty(BUFFER, dtype=torch.uint8)
    total = 0
    for name in ckpt.layers:
        total += _drain_layer(ckpt, name, sink)
    for name in ckpt.unquantized:
        total += _drain(ckpt.tensor(name), sink)
    return total


def _drain_layer(ckpt: Checkpoint, name: str, sink: torch.Tensor) -> int:
    """Materialise one layer and read all of it; nothing of it outlives the call (its pages can be unmapped)."""
    weight = ckpt.weight(name)
    return sum(_drain(t, sink) for t in (weight.qweight, weight.zeros, weight.scales))


def _drain(tensor: torch.Tensor, sink: torch.Tensor) -> int:
    flat = tensor.reshape(-1).view(torch.uint8)
    for start in range(0, flat.numel(), sink.numel()):
        chunk = flat[start : start + sink.numel()]
        sink[: chunk.numel()].copy_(chunk)
    return int(flat.numel())


def child(phase: str, folder: Path, threads: int) -> None:
    """Run one phase in this (fresh) process and print its figures as JSON."""
    torch.set_num_threads(threads)
    baseline = _status("VmRSS")
    start, cpu = time.perf_counter(), time.process_time()
    touched = phase_raw(folder) if phase == "raw" else phase_load(folder)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu
    peak = _status("VmHWM")
    print(json.dumps({"seconds": seconds, "cpu_seconds": cpu_seconds, "touched": touched, "baseline_rss": baseline,
                      "peak_rss": peak}))  # fmt: skip


def run_phase(phase: str, folder: Path, cold: bool, threads: int) -> dict[str, float]:
    if cold:
        evict(folder)
    command = [sys.executable, __file__, "--child", phase, str(folder), "--threads", str(threads)]
    out = subprocess.run(command, check=True, capture_output=True, text=True)
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def main() -> None:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--gib", type=float, default=1.1, help="packed weight GiB to write (default 1.1)")
    p.add_argument("--shards", type=int, default=4)
    p.add_argument("--format", choices=sorted(FORMATS), default="gptq")
    p.add_argument("--k", type=int, default=4096)
    p.add_argument("--n", type=int, default=4096)
    p.add_argument("--repeat", type=int, default=2, help="runs of each warm phase (best is kept)")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads in the phases (default 1)")
    p.add_argument("--tmp", type=Path, default=None, help="where to write the temporary checkpoint")
    p.add_argument("--json", type=Path)
    p.add_argument("--child", nargs=2, metavar=("PHASE", "FOLDER"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(args.child[0], Path(args.child[1]), args.threads)
        return

    folder = Path(tempfile.mkdtemp(prefix="wna16-bench-load-", dir=args.tmp))
    try:
        t0 = time.perf_counter()
        setup = write_checkpoint(folder, args.gib, args.shards, args.format, args.k, args.n)
        files = sorted(folder.glob("*.safetensors"))
        disk = sum(f.stat().st_size for f in files)
        largest = max(f.stat().st_size for f in files)
        print(f"wrote {len(files)} shards, {disk / 1e9:.2f} GB ({setup['layers']} layers {args.k}x{args.n} "
              f"{setup['scheme']} {args.format}) in {time.perf_counter() - t0:.1f} s; largest shard "
              f"{largest / 1e6:.0f} MB")  # fmt: skip
        results: dict[str, dict[str, float]] = {}
        for cache in ("cold", "warm"):
            for phase in ("raw", "load"):
                runs = [
                    run_phase(phase, folder, cache == "cold", args.threads)
                    for _ in range(1 if cache == "cold" else args.repeat)
                ]
                best = min(runs, key=lambda r: r["seconds"])
                best["gb_per_s"] = disk / best["seconds"] / 1e9
                best["gb_per_cpu_s"] = disk / best["cpu_seconds"] / 1e9
                best["peak_over_baseline"] = best["peak_rss"] - best["baseline_rss"]
                best["peak_vs_largest_shard"] = best["peak_over_baseline"] / largest
                results[f"{phase}_{cache}"] = best
        print(f"load average {' '.join(f'{x:.1f}' for x in os.getloadavg())} on {os.cpu_count()} cpus, "
              f"{args.threads} torch thread(s)")  # fmt: skip
        print(f"\n{'phase':<12} {'wall s':>8} {'GB/s':>7} {'CPU s':>8} {'GB/CPU-s':>9} {'peak RSS over baseline':>24} "
              f"{'x largest shard':>16}")  # fmt: skip
        for key, r in results.items():
            print(f"{key:<12} {r['seconds']:>8.3f} {r['gb_per_s']:>7.2f} {r['cpu_seconds']:>8.3f} "
                  f"{r['gb_per_cpu_s']:>9.2f} {r['peak_over_baseline'] / 1e6:>21.0f} MB "
                  f"{r['peak_vs_largest_shard']:>16.2f}")  # fmt: skip
        ratios = {c: results[f"load_{c}"]["seconds"] / results[f"raw_{c}"]["seconds"] for c in ("cold", "warm")}
        print(f"\nload / raw time: cold {ratios['cold']:.2f}x, warm {ratios['warm']:.2f}x")
        worst = min(results["load_cold"]["gb_per_s"], results["load_warm"]["gb_per_s"])
        peak = max(results["load_cold"]["peak_vs_largest_shard"], results["load_warm"]["peak_vs_largest_shard"])
        goals = {"throughput_ge_1_gb_s": worst >= 1.0, "peak_le_1_5x_largest_shard": peak <= 1.5}
        print(f"goals: >= 1 GB/s: {'met' if goals['throughput_ge_1_gb_s'] else 'NOT met'} ({worst:.2f} GB/s worst); "
              f"peak <= 1.5x largest shard: {'met' if goals['peak_le_1_5x_largest_shard'] else 'NOT met'} "
              f"({peak:.2f}x worst)")  # fmt: skip
        report = {
            "setup": {**setup, "shards": len(files), "disk_bytes": disk, "largest_shard_bytes": largest,
                      "threads": args.threads, "cpus": os.cpu_count(),
                      "load_average": os.getloadavg()},
            "results": results, "load_over_raw": ratios, "goals": goals,
        }  # fmt: skip
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(report, indent=2))
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
