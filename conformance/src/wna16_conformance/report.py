"""The JSON report: what ran where, and per cell the cases passed / failed / refused / skipped, the worst
error-to-bound ratio and the filter entries that applied. Schema: ``report.schema.json`` (shipped in the package).

Built on the controlling process from the records the tests attach to their reports (so it is the same with or
without xdist), plus crash reports xdist makes when a worker dies. Everything outside the ``run`` block is a
function of the backend, device, options, seeds and torch's thread count: two runs of the same suite (``-n 0`` or
``-n 2``, same threads) give equal reports once ``run`` (date, duration, worker count) is removed. Ratios are rounded
to 4 significant digits.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import platform
import sys
from collections.abc import Iterable
from dataclasses import replace
from importlib import metadata, resources
from pathlib import Path
from typing import Any

import torch

from wna16_conformance.cells import Cell, all_cells
from wna16_conformance.checks import SKIPPED, CaseResult
from wna16_conformance.data import Case
from wna16_conformance.record import TestRecord
from wna16_conformance.runner import Context

SCHEMA_ID = "wna16-conformance-report"
SCHEMA_VERSION = 1
OUTCOMES = ("passed", "failed", "refused", "skipped")


def schema() -> dict[str, Any]:
    """The JSON Schema of the report."""
    text = resources.files("wna16_conformance").joinpath("report.schema.json").read_text()
    loaded: dict[str, Any] = json.loads(text)
    return loaded


def _ratio(value: float | None) -> float | str | None:
    if value is None:
        return None
    if math.isnan(value) or math.isinf(value):
        return "inf"
    return float(f"{value:.4g}")


def worst(values: Iterable[float | str | None]) -> float | str | None:
    """The worst of some ratios as the report writes them (``"inf"`` beats any number; ``None``: nothing computed).
    The matrix merges reports with it too."""
    present = [v for v in values if v is not None]
    if "inf" in present:
        return "inf"
    return max((float(v) for v in present), default=None)


def device_info(device: str) -> dict[str, Any]:
    """Type, name and capability of the device under test."""
    dev = torch.device(device)
    name, capability = platform.processor() or platform.machine(), None
    if dev.type == "cpu":
        try:
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
        except OSError:
            pass
    elif dev.type == "cuda" and torch.cuda.is_available():
        name = torch.cuda.get_device_name(dev)
        capability = list(torch.cuda.get_device_capability(dev))
    return {"type": dev.type, "name": name, "capability": capability}


def environment() -> dict[str, str]:
    """Versions that change numerics or case generation."""
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": sys.platform,
        "hypothesis": metadata.version("hypothesis"),
    }


class Collector:
    """Test records by backend and test name, fed from ``pytest_runtest_logreport`` on the controller."""

    def __init__(self) -> None:
        self.records: dict[tuple[str, str], TestRecord] = {}

    def add(self, record: TestRecord, outcome: str, longrepr: str = "") -> None:
        """Keep the record of a finished test (a later phase overrides an earlier one)."""
        rec = replace(record, outcome=outcome)
        if outcome == "failed" and not any(c.outcome == "failed" for c in rec.cases):
            first = longrepr.strip().splitlines()[-1] if longrepr.strip() else "failed outside any case"
            rec.error = "process crashed (worker restarted)" if rec.crashed else first[:500]
        self.records[(rec.backend, rec.test)] = rec

    def cells(self, backend: str) -> list[dict[str, Any]]:
        """Per-cell summaries of ``backend`` in matrix order (only cells with at least one test)."""
        by_cell: dict[str, list[TestRecord]] = {}
        for (b, _), rec in sorted(self.records.items()):
            if b == backend:
                by_cell.setdefault(rec.cell, []).append(rec)
        return [_cell_summary(c, by_cell[c.id]) for c in all_cells() if c.id in by_cell]

    def unreached(self) -> list[str]:
        """One warning per shape class a ``--wna16-max-dim`` kept from running, with how many cases it skipped."""
        counts: dict[str, int] = {}
        for rec in self.records.values():
            for c in rec.cases:
                if c.outcome == SKIPPED and c.message.startswith("--wna16-max-dim="):
                    head = c.message.split(" (K=", 1)[0]
                    counts[head] = counts.get(head, 0) + 1
        return [f"{head} in {n} cases" for head, n in sorted(counts.items())]


def drawn(cases: list[CaseResult], group_size: int) -> dict[str, Any] | None:
    """The ranges of rows, K, N and group count the cases of a test ran with (from their keys; skipped cases left
    out), or ``None``."""
    shapes = []
    for c in cases:
        if c.outcome == SKIPPED:
            continue
        try:
            shapes.append(Case.parse(c.key.split("|", 1)[0]))
        except ValueError:
            continue
    if not shapes:
        return None
    unique = {s.key: s for s in shapes}.values()

    def span(values: list[int]) -> list[int]:
        return [min(values), max(values)]

    return {
        "cases": len(unique),
        "rows": span([s.rows for s in unique]),
        "k": span([s.k for s in unique]),
        "n": span([s.n for s in unique]),
        "groups": span([1 if group_size == -1 else -(-s.k // group_size) for s in unique]),
    }


def _test_summary(rec: TestRecord, cell: Cell) -> dict[str, Any]:
    counts = {k: sum(c.outcome == k for c in rec.cases) for k in OUTCOMES}
    if rec.outcome == "skipped" and not rec.cases:
        counts["skipped"] = 1
    if rec.outcome == "failed" and not counts["failed"]:
        counts["failed"] = 1  # crashed or errored outside any case
    failing = next((c for c in rec.cases if c.outcome == "failed"), None)
    summary = {
        "test": rec.test,
        "outcome": rec.outcome,
        **counts,
        "worst_ratio": worst([_ratio(c.ratio) for c in rec.cases]),
        "multiplier": rec.multiplier,
        "filters": rec.filters,
        "message": rec.error or (failing.message if failing else rec.skip_reason),
        "repro": rec.repro,
    }
    shapes = drawn(rec.cases, cell.group_size)
    if shapes is not None:
        summary["drawn"] = shapes
    return summary


def _cell_summary(cell: Cell, recs: list[TestRecord]) -> dict[str, Any]:
    tests = [_test_summary(r, cell) for r in recs]
    return {
        "cell": cell.id,
        "bits": cell.bits,
        "group_size": cell.group_size,
        "sym": cell.sym,
        "dtype": cell.dtype_name,
        "act_order": cell.act_order,
        **{k: sum(t[k] for t in tests) for k in OUTCOMES},
        "worst_ratio": worst([t["worst_ratio"] for t in tests]),
        "filters": sorted({f for t in tests for f in t["filters"]}),
        "tests": tests,
    }


def build(ctx: Context, collector: Collector, warnings: list[str], run: dict[str, Any]) -> dict[str, Any]:
    """The report as a JSON-ready dict."""
    backends = []
    for b in ctx.backends:
        cells = collector.cells(b.name)
        totals = {k: sum(c[k] for c in cells) for k in OUTCOMES}
        backends.append({
            "name": b.name, "spec": b.spec, "distribution": b.distribution, "version": b.version,
            "available": bool(b.availability), "unavailable_reason": b.availability.reason,
            "totals": {**totals, "cells": len(cells), "cells_failed": sum(c["failed"] > 0 for c in cells),
                       "tests": sum(len(c["tests"]) for c in cells)},
            "worst_ratio": worst([c["worst_ratio"] for c in cells]),
            "cells": cells,
        })  # fmt: skip
    entries = {e.id: e for b in ctx.backends for e in ctx.entries_for(b)}
    return {
        "schema": SCHEMA_ID,
        "schema_version": SCHEMA_VERSION,
        "suite": {"distribution": "wna16-conformance", "version": metadata.version("wna16-conformance")},
        "profile": ctx.profile,
        "max_dim": ctx.max_dim,
        "device": device_info(ctx.device),
        "environment": environment(),
        "filters": [e.as_json() for _, e in sorted(entries.items())],
        "warnings": sorted([*warnings, *collector.unreached()]),
        "backends": backends,
        "run": run,
    }


def run_block(started: float, finished: float, workers: int) -> dict[str, Any]:
    """The nondeterministic part: when, how long, how many workers."""
    date = datetime.datetime.fromtimestamp(started, tz=datetime.timezone.utc).isoformat(timespec="seconds")
    return {"date": date, "duration_s": round(finished - started, 2), "workers": workers}


ENV_UNVALIDATED = "WNA16_REPORT_UNVALIDATED"
"""Set to ``1`` to write reports even where jsonschema is not installed (an offline GPU machine, see
``ci/device/gpu_check.sh``); they are validated later, elsewhere. Where jsonschema imports it always validates."""


def write(path: str | Path, report: dict[str, Any]) -> None:
    """Validate against the schema and write (indent 1, keys in insertion order)."""
    try:
        import jsonschema  # type: ignore[import-untyped]
    except ModuleNotFoundError:
        if os.environ.get(ENV_UNVALIDATED) != "1":
            raise
    else:
        jsonschema.validate(report, schema())
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(report, indent=1, allow_nan=False) + "\n")
