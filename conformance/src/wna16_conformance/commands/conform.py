"""The main job: conformance of every backend available here, real checkpoints end to end, reports and the matrix.

On whatever machine it runs: (1) runs the conformance suite (ci profile unless told otherwise) for every installed
backend available on the device, one report per backend in ``--reports``; (2) for every checkpoint given (default:
the real auto-round checkpoints embedded in this repository, ``tests/checkpoints/embedded``, found from where the
distribution is installed, or ``$WNA16_CHECKPOINTS``, never from the current directory) loads it with the
coverage audit, builds a ``QuantLinear`` per quantized layer through the registry, and checks each layer's output on
seeded inputs against the oracle within the conformance error bound; (3) merges the reports into
``SUPPORT_MATRIX.md`` and ``support_matrix.html``. Exits non-zero on any failure, mismatch or failing audit.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

from wna16.checkpoint.load import load_checkpoint
from wna16.errors import Wna16Error
from wna16.nn import QuantLinear
from wna16.registry import default_registry
from wna16.tolerance import error_ratio
from wna16_conformance.invocation import report_name, suite_command, worker_env
from wna16_conformance.matrix import build

EMBEDDED = Path("tests") / "checkpoints" / "embedded"
"""Where the embedded checkpoints live in a checkout of the repository."""

REQUIRED = {"pytest": "pytest", "xdist": "pytest-xdist", "hypothesis": "hypothesis", "jsonschema": "jsonschema"}
"""Modules a suite run imports -> the distribution that provides each (checked before starting any run)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``wna16 conform``."""
    parser.add_argument("--device", default="cpu", help="device to test (default: cpu)")
    parser.add_argument("--profile", default="ci", choices=["ci", "dev", "thorough"], help="hypothesis profile")
    parser.add_argument("--backend", action="append", default=[], help="only these backends (repeatable)")
    parser.add_argument("--max-dim", type=int, default=None, help="cap K and N of the conformance cases")
    parser.add_argument("--workers", type=int, default=2, help="pytest-xdist workers per suite run (default 2)")
    parser.add_argument("--reports", type=Path, default=Path("reports"), help="folder for reports and the matrix")
    parser.add_argument(
        "--checkpoint",
        action="append",
        type=Path,
        default=[],
        help="checkpoint folder (repeatable; default: $WNA16_CHECKPOINTS, else the repository's "
        "tests/checkpoints/embedded)",
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


def missing_requirements() -> list[str]:
    """The distributions a suite run needs that do not import here (``pip install`` names)."""
    return [dist for module, dist in REQUIRED.items() if importlib.util.find_spec(module) is None]


def embedded_checkpoints() -> Path | None:
    """The folder of embedded checkpoints: ``$WNA16_CHECKPOINTS``, else ``tests/checkpoints/embedded`` of the
    repository checkout this module is installed from (an editable or source install); None when neither exists."""
    if os.environ.get("WNA16_CHECKPOINTS"):
        return Path(os.environ["WNA16_CHECKPOINTS"])
    for folder in Path(__file__).resolve().parents:
        if (folder / EMBEDDED).is_dir():
            return folder / EMBEDDED
    return None


def run_suite(name: str, args: argparse.Namespace) -> tuple[bool, Path]:
    """Run the conformance suite for one backend in a subprocess; returns (passed, report path). When the run
    cannot start or crashes, its own output (stderr first) is printed: that is the only place the cause is."""
    report = args.reports / report_name(args.device, name)
    report.unlink(missing_ok=True)  # a report left by an earlier run must not pass for this one
    cmd = suite_command(
        sys.executable, name, device=args.device, report=str(report), profile=args.profile,
        max_dim=args.max_dim, workers=args.workers,
    )  # fmt: skip
    print(f"[conform] {name}: {' '.join(cmd[1:])}", flush=True)
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **worker_env(args.workers)})
    lines = done.stdout.strip().splitlines()
    print(f"[conform] {name}: {lines[-1] if lines else '(the suite printed nothing on stdout)'}", flush=True)
    # 0 = passed, 1 = failures (in the report); anything else, or no report, means the run itself broke.
    if done.returncode not in (0, 1) or not report.exists():
        print(
            f"[conform] {name}: the suite run did not complete (exit status {done.returncode}"
            f"{'' if report.exists() else ', no report written'}); its output:",
            file=sys.stderr,
        )
        print(done.stderr.strip()[-3000:] or "(stderr empty)", file=sys.stderr)
        print(done.stdout.strip()[-3000:], file=sys.stderr, flush=True)
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
    missing = missing_requirements()
    if missing:
        print(
            f"wna16 conform: a suite run needs {', '.join(missing)}: pip install {' '.join(missing)}", file=sys.stderr
        )
        return 2
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
    embedded = embedded_checkpoints()
    checkpoints = args.checkpoint or sorted(p.parent for p in (embedded or Path()).glob("*/config.json"))
    if not checkpoints:
        where = f"under {embedded}" if embedded else "(not installed from a checkout; $WNA16_CHECKPOINTS unset)"
        failures.append(f"no checkpoint given with --checkpoint and none found {where}")
    for path in checkpoints:
        failures += check_checkpoint(path, args.device, dtype)
    if reports:
        matrix = build(reports, args.reports / "SUPPORT_MATRIX.md", args.reports / "support_matrix.html")
        failing = len(matrix.failing())
        print(
            f"[conform] matrix: {len(matrix.rows)} row(s), {failing} failing cell(s); "
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
