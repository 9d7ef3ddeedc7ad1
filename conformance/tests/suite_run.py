"""Runs the conformance suite in a subprocess (the way an author runs it) and hands back its JSON report."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent


@dataclass
class SuiteRun:
    rc: int
    output: str
    report: dict[str, Any]

    def backend(self, name: str) -> dict[str, Any]:
        return next(b for b in self.report["backends"] if b["name"] == name)

    def tests(self, name: str) -> dict[str, dict[str, Any]]:
        """Every test of backend ``name`` by test name."""
        return {t["test"]: t for c in self.backend(name)["cells"] for t in c["tests"]}


def run_suite(tmp: Path, backends: list[str], *args: str, workers: int = 2, timeout: int = 900) -> SuiteRun:
    """``pytest --pyargs wna16_conformance`` on ``backends`` (``planted:Name`` or entry-point names), ci profile."""
    report = tmp / f"report-{len(list(tmp.glob('report-*.json')))}.json"
    cmd = [sys.executable, "-m", "pytest", "--pyargs", "wna16_conformance", "-q", "-rs", "-p", "no:cacheprovider"]
    cmd += [f"--wna16-backend={b}" for b in backends]
    cmd += ["--wna16-profile=ci", f"--wna16-report={report}", "-n", str(workers), *args]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout, cwd=tmp)
    output = proc.stdout + proc.stderr
    data = json.loads(report.read_text()) if report.exists() else {}
    return SuiteRun(proc.returncode, output, data)
