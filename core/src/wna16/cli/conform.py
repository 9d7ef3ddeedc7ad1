"""The main job: conformance of every backend available here, real checkpoints end to end, reports and the matrix.

On whatever machine it runs: (1) runs the conformance suite (ci profile unless told otherwise) for every installed
backend available on the device, one report per backend in ``--reports``; (2) for every checkpoint given (default:
the real auto-round checkpoints embedded in this repository, ``tests/checkpoints/embedded``) loads it with the
coverage audit, builds a ``QuantLinear`` per quantized layer through the registry, and checks each layer's output on
seeded inputs against the oracle within the conformance error bound; (3) merges the reports into
``SUPPORT_MATRIX.md`` and ``support_matrix.html``. Exits non-zero on any failure, mismatch or failing audit.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import torch

from wna16.checkpoint.load import load_checkpoint
from wna16.errors import Wna16Error
from wna16.matrix import build
from wna16.nn import QuantLinear
from wna16.registry import default_registry
from wna16.tolerance import error_ratio

EMBEDDED = Path("tests") / "checkpoints" / "embedded"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``wna16 conform``."""
    parser.add_argument("--device", default="cpu", help="device to test (default: cpu)")
    parser.add_argument("--profile", default="ci", choices=["ci", "dev", "thorough"], help="hypothesis profile")
    parser.add_argument("--backend", action="append", default=[], help="only these backends (repeatable)")
    parser.add_argument("--max-dim", type=int, default=None, help="cap K and N of the conformance cases")
    parser.add_argument("--workers", default="2", help="pytest-xdist workers per suite run (default 2)")
    parser.add_argument("--reports", type=Path, default=Path("reports"), help="folder for reports and the matrix")
    parser.add_argument(
        "--checkpoint",
        action="append",
        type=Path,
        default=[],
        help="checkpoint folder (repeatable; default: every folder under tests/checkpoints/embedded)",
    )
    parser.add_argument("--dtype", default="bfloat16", choices=["float16", "bfloat16", "float32"])


def available_backends(device: str, only: list[str]) -> list[str]:
    """Names of the installed backends available on ``device`` (optionally restricted to ``only``)."""
    names = []
    for entry in default_registry().entries():
        if entry.backend is None or (only and entry.name not in only):
            continue
        if entry.backend.available(device):
            names.append(entry.name)
    return names


def run_suite(name: str, args: argparse.Namespace) -> tuple[bool, Path]:
    """Run the conformance suite for one backend in a subprocess; returns (passed, report path)."""
    device_type = args.device.split(":", 1)[0]
    report = args.reports / f"{device_type}-{name}.json"
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        "--pyargs",
        "wna16_conformance",
        f"--wna16-backend={name}",
        f"--wna16-device={args.device}",
        f"--wna16-profile={args.profile}",
        f"--wna16-report={report}",
        "-n",
        str(args.workers),
    ]
    if args.max_dim:
        cmd.append(f"--wna16-max-dim={args.max_dim}")
    print(f"[conform] {name}: {' '.join(cmd[1:])}", flush=True)
    done = subprocess.run(cmd, capture_output=True, text=True)
    tail = (done.stdout.strip().splitlines() or ["(no output)"])[-1]
    print(f"[conform] {name}: {tail}", flush=True)
    if done.returncode not in (0, 1):  # 1 = failures, reported; anything else = the run itself broke
        print(done.stdout[-3000:] + done.stderr[-3000:], file=sys.stderr)
    return done.returncode == 0 and report.exists(), report


def check_checkpoint(path: Path, device: str, dtype: torch.dtype) -> list[str]:
    """Load ``path`` (audit included) and compare every quantized layer's output with the oracle's bound."""
    problems: list[str] = []
    try:
        ckpt = load_checkpoint(path)
    except Wna16Error as exc:
        return [f"{path}: {exc}"]
    gen = torch.Generator().manual_seed(0)
    worst, served = 0.0, dict[str, int]()
    for name, layer in ckpt.layers.items():
        weight, bias = ckpt.weight(name), ckpt.bias(name)
        try:
            module = QuantLinear(weight, bias, dtype=dtype, device=device, weight_format=layer.packed_format)
        except Wna16Error as exc:
            problems.append(f"{path}: {name}: {exc}")
            continue
        x = torch.randn(3, layer.in_features, generator=gen).to(dtype)
        y = module(x.to(device))
        rule = module.backend.check(module.spec).rule
        assert rule is not None
        ratio = error_ratio(y, x, weight, rule, bias)
        served[module.backend_name] = served.get(module.backend_name, 0) + 1
        worst = max(worst, ratio)
        if not ratio <= 1.0:
            problems.append(f"{path}: {name} on {module.backend_name}: error/bound {ratio:.3g} > 1")
    backends = ", ".join(f"{n} x{c}" for n, c in sorted(served.items()))
    print(
        f"[conform] {path}: {len(ckpt.layers)} quantized layers, audit clean, served by {backends}, "
        f"worst error/bound {worst:.3g}",
        flush=True,
    )
    return problems


def run(args: argparse.Namespace) -> int:
    """Run everything; print a summary; 0 only when every suite, checkpoint and matrix cell passed."""
    start = time.monotonic()
    args.reports.mkdir(parents=True, exist_ok=True)
    dtype = getattr(torch, args.dtype)
    names = available_backends(args.device, args.backend)
    failures: list[str] = [] if names else [f"no backend available on {args.device}"]
    reports = []
    for name in names:
        passed, report = run_suite(name, args)
        if report.exists():
            reports.append(report)
        if not passed:
            failures.append(f"conformance of {name} on {args.device} failed (report: {report})")
    checkpoints = args.checkpoint or sorted(p.parent for p in EMBEDDED.glob("*/config.json"))
    if not checkpoints:
        failures.append(f"no checkpoint given and none found under {EMBEDDED} (run from the repository root)")
    for path in checkpoints:
        failures += check_checkpoint(path, args.device, dtype)
    if reports:
        matrix = build(reports, args.reports / "SUPPORT_MATRIX.md", args.reports / "support_matrix.html")
        failing = sum(m.status == "fail" for cells in matrix.rows.values() for m in cells.values())
        print(
            f"[conform] matrix: {len(matrix.rows)} row(s) x {len(matrix.columns)} cells, {failing} failing; "
            f"wrote {args.reports / 'SUPPORT_MATRIX.md'} and {args.reports / 'support_matrix.html'}"
        )
    print(
        f"\nwna16 conform on {args.device}: {len(names)} backend(s) [{', '.join(names)}], "
        f"{len(checkpoints)} checkpoint(s), {time.monotonic() - start:.0f} s"
    )
    for failure in failures:
        print(f"  FAIL {failure}")
    print("  all passed" if not failures else f"  {len(failures)} failure(s)")
    return 1 if failures else 0
