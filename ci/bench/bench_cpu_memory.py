"""Memory of ``patch_model`` on the CPU backend: resident and peak bytes against the checkpoint's size.

Writes a LLaMA-shaped checkpoint of about 340M parameters (hidden 1024, intermediate 2816, 24 layers, vocabulary
32000, head tied to the embedding; every projection 4-bit symmetric, group 128, ``auto_round:auto_gptq`` layout;
embedding and norms in bf16; random codes and scales: memory does not depend on the values) into a temporary folder,
then in a fresh child process builds the model under :func:`wna16.empty_weights` (nothing materialised), records its
RSS, resets the peak (``/proc/self/clear_refs``), runs ``wna16.patch_model(..., dtype=bfloat16, backend=...)`` and
reports the RSS after (steady state, after one forward) and the peak (``VmHWM``), both minus the RSS before, against
the checkpoint's bytes on disk. It also checks that ``state_dict`` still returns the checkpoint's tensors.

Goals (issue 21): resident <= 1.2x and peak <= 1.5x the checkpoint. Linux only (reads /proc).

    python ci/bench/bench_cpu_memory.py [--backend cpu] [--layers 24] [--json reports/bench_cpu_memory.json]
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

HIDDEN, INTERMEDIATE, VOCAB, GROUP = 1024, 2816, 32000, 128
PROJECTIONS = {
    "self_attn.q_proj": (HIDDEN, HIDDEN),
    "self_attn.k_proj": (HIDDEN, HIDDEN),
    "self_attn.v_proj": (HIDDEN, HIDDEN),
    "self_attn.o_proj": (HIDDEN, HIDDEN),
    "mlp.gate_proj": (HIDDEN, INTERMEDIATE),
    "mlp.up_proj": (HIDDEN, INTERMEDIATE),
    "mlp.down_proj": (INTERMEDIATE, HIDDEN),
}
GOALS = {"resident_ratio": 1.2, "peak_ratio": 1.5}


class Block(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.self_attn = torch.nn.Module()
        self.mlp = torch.nn.Module()
        for name, (k, n) in PROJECTIONS.items():
            parent, child = name.split(".")
            setattr(getattr(self, parent), child, torch.nn.Linear(k, n, bias=False))
        self.input_layernorm = torch.nn.Parameter(torch.ones(HIDDEN))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.self_attn
        h = x * self.input_layernorm
        x = x + a.o_proj(a.q_proj(h) + a.k_proj(h) + a.v_proj(h))
        m = self.mlp
        return x + m.down_proj(torch.nn.functional.silu(m.gate_proj(x)) * m.up_proj(x))


class Llama(torch.nn.Module):
    def __init__(self, layers: int) -> None:
        super().__init__()
        self.model = torch.nn.Module()
        self.model.embed_tokens = torch.nn.Embedding(VOCAB, HIDDEN)
        self.model.layers = torch.nn.ModuleList([Block() for _ in range(layers)])
        self.model.norm = torch.nn.Parameter(torch.ones(HIDDEN))
        self.lm_head = torch.nn.Linear(HIDDEN, VOCAB, bias=False)
        self.lm_head.weight = self.model.embed_tokens.weight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.model.embed_tokens(ids)
        for block in self.model.layers:
            x = block(x)
        return self.lm_head(x * self.model.norm)


def write(folder: Path, layers: int) -> int:
    """The checkpoint's files; returns the bytes of its safetensors file."""
    from wna16.checkpoint.write import quantization_config

    gen = torch.Generator().manual_seed(0)
    tensors: dict[str, torch.Tensor] = {
        "model.embed_tokens.weight": (torch.randn(VOCAB, HIDDEN, generator=gen) * 0.02).bfloat16(),
        "model.norm": torch.ones(HIDDEN, dtype=torch.bfloat16),
    }
    for i in range(layers):
        tensors[f"model.layers.{i}.input_layernorm"] = torch.ones(HIDDEN, dtype=torch.bfloat16)
        for name, (k, n) in PROJECTIONS.items():
            prefix = f"model.layers.{i}.{name}"
            groups = k // GROUP
            tensors[prefix + ".qweight"] = torch.randint(-(2**31), 2**31 - 1, (k // 8, n), dtype=torch.int32)
            tensors[prefix + ".qzeros"] = torch.full((groups, n // 8), 0x77777777, dtype=torch.int32)  # v1 zero 8
            tensors[prefix + ".scales"] = (torch.rand(groups, n, generator=gen) * 1e-3 + 1e-4).half()
    save_file(tensors, str(folder / "model.safetensors"))
    qc = quantization_config(
        bits=4,
        group_size=GROUP,
        sym=True,
        packing_format="auto_round:auto_gptq",
        block_name_to_quantize=["model.layers"],
    )
    (folder / "config.json").write_text(json.dumps({"architectures": ["Llama"], "quantization_config": qc}))
    return (folder / "model.safetensors").stat().st_size


def _status(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(key)


def child(folder: Path, layers: int, backend: str, threads: int) -> None:
    import wna16

    torch.set_num_threads(threads)
    with wna16.empty_weights():
        model = Llama(layers)
    before = _status("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    t0 = time.perf_counter()
    report = wna16.patch_model(model, folder, dtype=torch.bfloat16, backend=backend)
    seconds = time.perf_counter() - t0
    with torch.no_grad():
        model(torch.tensor([[1, 2, 3, 4]]))
    after, peak = _status("VmRSS"), _status("VmHWM")
    layer = model.model.layers[0].mlp.down_proj
    state = layer.state_dict()
    served = sorted(report.backends.items())
    print(json.dumps({"rss_before": before, "rss_after": after, "peak": peak, "seconds": seconds, "served": served,
                      "state_dict_keys": sorted(state), "canonical_kept": layer._weight is not None}))  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="cpu")
    parser.add_argument("--layers", type=int, default=24)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", default="reports/bench_cpu_memory.json")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(Path(args.child), args.layers, args.backend, args.threads)
        return 0
    folder = Path(tempfile.mkdtemp(prefix="wna16-mem-"))
    try:
        size = write(folder, args.layers)
        params = args.layers * sum(k * n for k, n in PROJECTIONS.values()) + VOCAB * HIDDEN
        cmd = [sys.executable, __file__, "--child", str(folder), "--layers", str(args.layers),
               "--backend", args.backend, "--threads", str(args.threads)]  # fmt: skip
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        got = json.loads(out.strip().splitlines()[-1])
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    resident = (got["rss_after"] - got["rss_before"]) / size
    peak = (got["peak"] - got["rss_before"]) / size
    report = {
        "benchmark": "bench_cpu_memory",
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch": torch.__version__,
        "parameters": params,
        "checkpoint_bytes": size,
        "load_average": os.getloadavg()[0],
        **got,
        "resident_ratio": round(resident, 3),
        "peak_ratio": round(peak, 3),
        "goals": {
            "resident_ratio": {"goal": GOALS["resident_ratio"], "met": resident <= GOALS["resident_ratio"]},
            "peak_ratio": {"goal": GOALS["peak_ratio"], "met": peak <= GOALS["peak_ratio"]},
        },
    }
    print(f"# patch_model memory, backend {args.backend}, {params / 1e6:.0f}M parameters, checkpoint "
          f"{size / 2**20:.0f} MiB, {report['cpu_capability']}, load {report['load_average']:.1f}")  # fmt: skip
    print(f"# resident {resident:.2f}x, peak {peak:.2f}x the checkpoint (goals 1.2x / 1.5x); "
          f"patch_model {got['seconds']:.1f} s; canonical kept: {got['canonical_kept']}")  # fmt: skip
    print(f"# served {got['served']}")
    path = Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
