"""The offline GPU script's Python side (ci/device/gpu_check.py): the pip-free install, the output contract, the
summary's verdicts. The whole script runs in the `gpu-check-dry-run` nox session; these are the cheap parts."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "ci" / "device" / "gpu_check.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


gpu_check = _load()
DISTS = ["core", "backends/reference", "backends/rocm", "backends/cuda_marlin", "conformance"]


def test_install_path_makes_entry_points_visible_without_pip(tmp_path: Path) -> None:
    """dist-info written from pyproject.toml: a python that sees only the standard library plus PYTHONPATH finds
    the backends' and the pytest plugin's entry points, from our folder, with the versions of the pyprojects."""
    sources = gpu_check.install_path(tmp_path / "site", [ROOT / d for d in DISTS])
    assert sources == [(ROOT / d / "src").resolve() for d in DISTS]
    probe = (
        "import importlib.metadata as m, json;"
        "eps = {e.name: e.value for e in m.entry_points(group='wna16.backends')};"
        "plug = [e.value for e in m.entry_points(group='pytest11') if e.name == 'wna16_conformance'];"
        "d = m.distribution('wna16-rocm');"
        "print(json.dumps([eps, plug, d.version, str(d.locate_file(''))]))"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path / "site"), *map(str, sources)])}
    # -S: no site-packages, so nothing installed in this environment can answer instead of the dist-info
    out = subprocess.run([sys.executable, "-S", "-c", probe], env=env, capture_output=True, text=True, check=True)
    eps, plugin, version, located = json.loads(out.stdout)
    assert eps == {
        "reference": "wna16_reference:ReferenceBackend",
        "rocm": "wna16_rocm:RocmBackend",
        "marlin": "wna16_marlin:MarlinBackend",
    }
    assert plugin == ["wna16_conformance.plugin"] and version == "0.1.0"
    assert Path(located) == tmp_path / "site"


def test_toml_subset_reader_agrees_with_tomllib() -> None:
    """Python 3.10 has no tomllib: the fallback reader gives the same [project] for every installed pyproject."""
    tomllib = pytest.importorskip("tomllib")
    for d in DISTS:
        text = (ROOT / d / "pyproject.toml").read_text()
        full, subset = tomllib.loads(text), gpu_check._read_toml_subset(text)
        assert subset["project"]["name"] == full["project"]["name"]
        assert subset["project"].get("entry-points") == full["project"].get("entry-points")
        assert subset["project"].get("scripts") == full["project"].get("scripts")
        assert subset["tool"]["setuptools"]["packages"] == full["tool"]["setuptools"]["packages"]


def test_device_slug() -> None:
    assert gpu_check.device_slug("NVIDIA H200") == "nvidia-h200"
    assert gpu_check.device_slug("AMD Instinct MI300X / gfx942") == "amd-instinct-mi300x-gfx942"


def _report(path: Path, name: str, available: bool, passed: int, failed: int = 0) -> None:
    totals = {"passed": passed, "failed": failed, "refused": 3, "skipped": 0 if available else 5, "cells": 2,
              "cells_failed": int(failed > 0), "tests": 2}  # fmt: skip
    backend = {"name": name, "available": available, "unavailable_reason": "" if available else "vLLM is not installed",
               "totals": totals, "worst_ratio": 0.5 if passed else None}  # fmt: skip
    path.write_text(json.dumps({"backends": [backend]}))


def _outputs(out: Path) -> Path:
    for name in ("SUPPORT_MATRIX.md", "support_matrix.html", "log.txt"):
        (out / name).write_text("{}")
    _report(out / "conformance-reference-x.json", "reference", True, 10)
    _report(out / "conformance-rocm-x.json", "rocm", True, 10)
    _report(out / "conformance-marlin-x.json", "marlin", False, 0)
    row = {"m": 1, "k": 64, "n": 64, "triton_ms": 1.0, "dense_ms": 1.0, "triton_over_dense": 1.0, "roofline_ms": 0.5,
           "roofline_fraction": 0.5}  # fmt: skip
    (out / "bench-triton-x.json").write_text(json.dumps({"rows": [row], "problems": [], "complete": True}))
    (out.parent / "environment.json").write_text('{"torch": "2.11.0"}')
    steps = out.parent / "steps.tsv"
    steps.write_text("environment\t0\t1.0\t30\ninstall-pip(optional)\t1\t2.0\t90\nsuite-rocm\t0\t3.0\t250\n")
    return steps


def test_summary_passes_an_honest_run(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    steps = _outputs(out)
    summary, problems = gpu_check.summarize(out, steps, out.parent / "environment.json")
    assert problems == []  # the optional pip step failed: the fallback installed, not a problem
    marlin = next(b for b in summary["conformance"] if b["backend"] == "marlin")
    assert not marlin["available"] and marlin["passed"] == 0 and marlin["unavailable_reason"]


def test_summary_names_every_problem(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    steps = _outputs(out)
    steps.write_text(steps.read_text() + "bench\t124\t150.0\t150\n")
    _report(out / "conformance-marlin-x.json", "marlin", False, 4)  # unavailable, yet cases "passed"
    _report(out / "conformance-rocm-x.json", "rocm", True, 0, failed=2)
    (out / "extra").mkdir()
    for i in range(4):
        (out / f"stray{i}.txt").write_text("")
    _, problems = gpu_check.summarize(out, steps, out.parent / "environment.json")
    text = "\n".join(problems)
    assert "step bench: timeout" in text
    assert "marlin is unavailable yet 4 case(s) passed" in text
    assert "2 failed case(s)" in text and "rocm is available but no case passed" in text
    assert "a folder under" in text and "files under" in text


def test_reports_without_jsonschema_only_when_asked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The offline GPU machine has no jsonschema: the suite refuses to write an unvalidated report unless
    WNA16_REPORT_UNVALIDATED=1 says so (the script sets it, and validates later with `gpu_check.py validate`)."""
    from wna16_conformance import report

    monkeypatch.setitem(sys.modules, "jsonschema", None)  # import jsonschema -> ModuleNotFoundError
    monkeypatch.delenv(report.ENV_UNVALIDATED, raising=False)
    with pytest.raises(ModuleNotFoundError):
        report.write(tmp_path / "r.json", {"schema": "x"})
    assert not (tmp_path / "r.json").exists()
    monkeypatch.setenv(report.ENV_UNVALIDATED, "1")
    report.write(tmp_path / "r.json", {"schema": "x"})
    assert json.loads((tmp_path / "r.json").read_text()) == {"schema": "x"}
