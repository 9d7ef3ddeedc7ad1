"""The Python side of ``ci/device/gpu_check.sh``: install without a network, describe the machine, summarise a run.

The device machine is bare and offline: torch, Triton, pytest, pytest-xdist, hypothesis, safetensors and setuptools
are there, nothing else. Every step here uses only the standard library (and torch/triton for ``environment``), so
that it runs before anything of wna16 is installed.

    python ci/device/gpu_check.py install-path SITE DIST...    # dist-info for DISTs in SITE, SITE/pythonpath.txt
    python ci/device/gpu_check.py environment JSON              # device, versions, date
    python ci/device/gpu_check.py summarize OUT_DIR STEPS ENV   # OUT_DIR/summary.json, the table; exit 1 on failure
    python ci/device/gpu_check.py validate REPORT...             # schema-check reports written without jsonschema
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


# --- install without pip ---------------------------------------------------------------------------------------------


def _project_table(pyproject: Path) -> dict[str, Any]:
    """``[project]`` and ``[tool.setuptools.packages.find]`` of a pyproject.toml (tomllib, or a minimal reader on
    Python 3.10, which has no tomllib and where tomli may be absent)."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        return _read_toml_subset(pyproject.read_text())
    with pyproject.open("rb") as f:
        return tomllib.load(f)


def _read_toml_subset(text: str) -> dict[str, Any]:
    """Just enough TOML for this repository's pyproject files: tables, ``key = "string"`` and ``key = [strings]``."""
    data: dict[str, Any] = {}
    table = data
    for raw in text.splitlines():
        line = raw.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        header = re.fullmatch(r"\[([^\[\]]+)\]", line)
        if header:
            table = data
            for part in re.findall(r'"[^"]*"|[^.]+', header.group(1)):
                table = table.setdefault(part.strip().strip('"'), {})
            continue
        key, _, value = line.partition("=")
        value = value.strip()
        if value.startswith('"'):
            table[key.strip().strip('"')] = value.strip('"')
        elif value.startswith("["):
            table[key.strip().strip('"')] = re.findall(r'"([^"]*)"', value)
    return data


def install_path(site: Path, dists: list[Path]) -> list[Path]:
    """Make each distribution importable from its source tree without pip or a build backend: write a minimal
    ``NAME-VERSION.dist-info`` (METADATA, entry_points.txt) into ``site`` and return the source folders, which the
    caller puts on PYTHONPATH after ``site``. importlib.metadata finds dist-info folders on any sys.path entry, so
    backend discovery (group ``wna16.backends``) and the pytest plugin (group ``pytest11``) work as after
    ``pip install -e``."""
    site.mkdir(parents=True, exist_ok=True)
    sources = []
    for dist in dists:
        data = _project_table(dist / "pyproject.toml")
        project = data["project"]
        name, version = project["name"], project["version"]
        info = site / f"{re.sub(r'[-.]+', '_', name)}-{version}.dist-info"
        info.mkdir(exist_ok=True)
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        groups = project.get("entry-points", {})
        if "scripts" in project:
            groups = {"console_scripts": project["scripts"], **groups}
        lines = []
        for group, points in groups.items():
            lines += [f"[{group}]", *(f"{k} = {v}" for k, v in points.items()), ""]
        (info / "entry_points.txt").write_text("\n".join(lines))
        where = data.get("tool", {}).get("setuptools", {}).get("packages", {}).get("find", {}).get("where", ["."])
        sources += [(dist / w).resolve() for w in where]
    return sources


# --- environment -----------------------------------------------------------------------------------------------------


def environment() -> dict[str, Any]:
    """The machine and the versions a GPU report needs (device, torch, CUDA, Triton, Python, date)."""
    import torch

    try:
        import triton

        triton_version = triton.__version__
    except ImportError as exc:
        triton_version = f"not importable: {exc}"
    env: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "triton": triton_version,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_count": os.cpu_count(),
        "cuda_available": torch.cuda.is_available(),
        "devices": [],
    }
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            env["devices"].append({
                "index": i, "name": props.name, "capability": [props.major, props.minor],
                "memory_gib": round(props.total_memory / 2**30, 1), "multiprocessors": props.multi_processor_count,
            })  # fmt: skip
    try:
        smi = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20, check=False)
        env["nvidia_smi"] = smi.stdout.strip() or smi.stderr.strip()
    except (OSError, subprocess.TimeoutExpired) as exc:
        env["nvidia_smi"] = f"not run: {exc}"
    return env


def device_slug(name: str) -> str:
    """A file-name-safe form of a device name: ``NVIDIA H200`` -> ``nvidia-h200``."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "device"


# --- summary ---------------------------------------------------------------------------------------------------------


def read_steps(path: Path) -> list[dict[str, Any]]:
    """The step table written by the shell script: name, exit status, wall seconds, time limit (tab-separated)."""
    steps = []
    for line in path.read_text().splitlines():
        name, rc, wall, limit = line.split("\t")
        status = "timeout" if rc in ("124", "137") else "ok" if rc == "0" else "failed" if rc != "skip" else "skipped"
        steps.append({"step": name, "rc": rc, "wall_s": float(wall), "limit_s": int(limit), "status": status})
    return steps


def _backend_line(entry: dict[str, Any]) -> dict[str, Any]:
    totals = entry["totals"]
    return {
        "backend": entry["name"],
        "available": entry["available"],
        "unavailable_reason": entry["unavailable_reason"],
        "tests": totals["tests"],
        "cells": totals["cells"],
        "cells_failed": totals["cells_failed"],
        **{k: totals[k] for k in ("passed", "failed", "refused", "skipped")},
        "worst_ratio": entry["worst_ratio"],
    }


MAX_FILES = 8
MAX_FILE_BYTES = 16 << 20
EXPECTED = ("SUPPORT_MATRIX.md", "support_matrix.html", "log.txt")


def output_problems(out: Path) -> list[str]:
    """What breaks the output contract: at most 8 files (summary.json, written last, counted), flat, each under
    16 MiB (what comes back from the device machine), the expected files present, each backend's report present."""
    problems = []
    entries = list(out.iterdir())
    files = {p.name for p in entries if p.is_file()} | {"summary.json"}
    if len(files) > MAX_FILES:
        problems.append(f"{len(files)} files under {out} (at most {MAX_FILES}): {sorted(files)}")
    problems += [f"{p.name}: a folder under {out} (the output is flat)" for p in entries if p.is_dir()]
    for p in entries:
        if p.is_file() and p.stat().st_size >= MAX_FILE_BYTES:
            problems.append(f"{p.name}: {p.stat().st_size} bytes (limit {MAX_FILE_BYTES})")
    problems += [f"{name} missing" for name in EXPECTED if name not in files]
    for backend in ("reference", "rocm", "marlin"):
        if not list(out.glob(f"conformance-{backend}-*.json")):
            problems.append(f"conformance-{backend}-*.json missing")
    return problems


def summarize(out: Path, steps_tsv: Path, env_json: Path) -> tuple[dict[str, Any], list[str]]:
    """Collect the run's results from ``out`` (and the machine from ``env_json``) and the problems that make it fail.

    A problem: a step that failed or timed out, a conformance report missing or with a failing cell, an
    *unavailable* backend with any passed case (the suite must not count what did not run), an available backend
    with nothing passed, a benchmark missing or whose Triton result disagrees with cuBLAS."""
    problems: list[str] = []
    steps = read_steps(steps_tsv)
    for s in steps:
        if s["status"] != "ok" and not s["step"].endswith("(optional)"):
            problems.append(f"step {s['step']}: {s['status']} (rc {s['rc']}, {s['wall_s']:.0f} s of {s['limit_s']})")
    backends = []
    for path in sorted(out.glob("conformance-*.json")):
        for entry in json.loads(path.read_text())["backends"]:
            line = {"report": path.name, **_backend_line(entry)}
            backends.append(line)
            if line["failed"] or line["cells_failed"]:
                problems.append(f"{path.name}: {line['failed']} failed case(s) in {line['cells_failed']} cell(s)")
            if not line["available"] and line["passed"]:
                problems.append(f"{path.name}: {entry['name']} is unavailable yet {line['passed']} case(s) passed")
            if line["available"] and not line["passed"]:
                problems.append(f"{path.name}: {entry['name']} is available but no case passed")
    bench = None
    bench_paths = sorted(out.glob("bench-*.json"))
    if bench_paths:
        bench = json.loads(bench_paths[0].read_text())
        problems += [f"{bench_paths[0].name}: {p}" for p in bench.get("problems", [])]
        if not bench.get("complete", False):
            problems.append(f"{bench_paths[0].name}: incomplete ({len(bench['rows'])} rows measured)")
    else:
        problems.append("no benchmark report (bench-*.json)")
    problems += output_problems(out)
    if not env_json.exists():
        problems.append("the machine was not recorded (environment step)")
    summary = {
        "environment": json.loads(env_json.read_text()) if env_json.exists() else None,
        "steps": steps,
        "reports_schema_validated": os.environ.get("WNA16_REPORT_UNVALIDATED") != "1",
        "conformance": backends,
        "benchmark": None if bench is None else {"file": bench_paths[0].name, "rows": bench["rows"]},
        "problems": problems,
    }
    return summary, problems


def print_summary(summary: dict[str, Any]) -> None:
    """The closing table: steps, conformance per backend, the benchmark."""
    print("\n== gpu_check summary")
    for s in summary["steps"]:
        print(f"  step {s['step']:<22} {s['status']:<8} {s['wall_s']:7.1f} s (limit {s['limit_s']} s)")
    if not summary["reports_schema_validated"]:
        print("  reports written WITHOUT schema validation (no jsonschema here): run gpu_check.py validate on them")
    for b in summary["conformance"]:
        state = "available" if b["available"] else f"UNAVAILABLE ({b['unavailable_reason']})"
        print(
            f"  {b['backend']:<10} {state}: {b['tests']} tests, {b['cells']} cells ({b['cells_failed']} failing); "
            f"cases passed {b['passed']}, failed {b['failed']}, refused {b['refused']}, not run {b['skipped']}; "
            f"worst ratio {b['worst_ratio']}"
        )
    if summary["benchmark"] is not None:
        print("  benchmark (median ms; fraction = memory-roofline time / Triton time):")
        for r in summary["benchmark"]["rows"]:
            print(
                f"    M={r['m']:<4} K={r['k']:<5} N={r['n']:<6} triton {r['triton_ms']:9.4f}  cublas_bf16 "
                f"{r['dense_ms']:9.4f}  triton/cublas {r['triton_over_dense']:6.2f}  roofline {r['roofline_ms']:9.4f}"
                f"  fraction {r['roofline_fraction']:5.2f}"
            )
    for p in summary["problems"]:
        print(f"  PROBLEM: {p}")
    print("== " + ("FAILED" if summary["problems"] else "all steps passed"))


def main(argv: list[str]) -> int:
    command, *args = argv
    if command == "install-path":
        sources = ":".join(str(s) for s in install_path(Path(args[0]), [Path(a) for a in args[1:]]))
        (Path(args[0]) / "pythonpath.txt").write_text(sources)
        print(f"dist-info written to {args[0]}; PYTHONPATH gets {sources}")
        return 0
    if command == "environment":
        env = environment()
        Path(args[0]).write_text(json.dumps(env, indent=1) + "\n")
        print(json.dumps(env))
        return 0
    if command == "device-slug":
        print(device_slug(args[0]))
        return 0
    if command == "summarize":
        out = Path(args[0])
        summary, problems = summarize(out, Path(args[1]), Path(args[2]))
        (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
        print_summary(summary)
        return 1 if problems else 0
    if command == "validate":
        import jsonschema

        from wna16_conformance.report import schema

        for path in args:
            jsonschema.validate(json.loads(Path(path).read_text()), schema())
            print(f"{path}: valid")
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
