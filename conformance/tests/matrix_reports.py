"""Synthetic conformance reports (schema version 1) for the matrix tests: every cell of the matrix, with the outcome
of each chosen by a function, so a test states exactly what it expects. Cell ids come from the writer's cells."""

from collections.abc import Callable
from typing import Any

from wna16_conformance.cells import Cell, all_cells
from wna16_conformance.report import OUTCOMES, SCHEMA_ID, SCHEMA_VERSION

Outcome = str | None
"""passed / failed / refused / skipped, or None: the cell is not in the report."""


def record_of(cell: Cell, outcome: str, *, multiplier: float = 1.0, filters: list[str] | None = None,
                message: str = "", repro: str | None = None, check: str = "numerics",
                ratio: float | None = 0.25) -> dict[str, Any]:  # fmt: skip
    counts = dict.fromkeys(OUTCOMES, 0)
    counts[outcome] = 1 if outcome == "skipped" else 3
    return {
        "test": f"{check}[{cell.id}]",
        "outcome": {"refused": "passed"}.get(outcome, outcome),
        "worst_ratio": ratio if outcome in ("passed", "failed") else None,
        "multiplier": multiplier,
        "filters": filters or [],
        "message": message,
        "repro": repro,
        **counts,
    }


def cell_record(cell: Cell, tests: list[dict[str, Any]]) -> dict[str, Any]:
    ratios = [t["worst_ratio"] for t in tests if t["worst_ratio"] is not None]
    return {
        "cell": cell.id,
        "bits": cell.bits,
        "group_size": cell.group_size,
        "sym": cell.sym,
        "dtype": cell.dtype_name,
        "act_order": cell.act_order,
        **{k: sum(t[k] for t in tests) for k in OUTCOMES},
        "worst_ratio": max(ratios, default=None),
        "filters": sorted({f for t in tests for f in t["filters"]}),
        "tests": tests,
    }


def simple(outcome_of: Callable[[Cell], Outcome], **test_kwargs: Any) -> Callable[[Cell], list[dict[str, Any]]]:
    """A cell -> tests function giving one numerics test per cell with the chosen outcome."""

    def tests(cell: Cell) -> list[dict[str, Any]]:
        outcome = outcome_of(cell)
        return [] if outcome is None else [record_of(cell, outcome, **test_kwargs)]

    return tests


def report(
    backend: str,
    device_type: str,
    device_name: str,
    tests_of: Callable[[Cell], list[dict[str, Any]]],
    *,
    profile: str = "ci",
    max_dim: int | None = None,
    filters: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """A whole report of one backend: ``tests_of(cell)`` gives the tests of each cell (none: cell left out)."""
    cells = [cell_record(c, t) for c in all_cells() if (t := tests_of(c))]
    totals = {k: sum(c[k] for c in cells) for k in OUTCOMES}
    return {
        "schema": SCHEMA_ID,
        "schema_version": SCHEMA_VERSION,
        "suite": {"distribution": "wna16-conformance", "version": "0.1.0"},
        "profile": profile,
        "max_dim": max_dim,
        "device": {"type": device_type, "name": device_name, "capability": None},
        "environment": {"python": "3.11", "torch": "2.13.0", "platform": "linux", "hypothesis": "6"},
        "filters": filters or [],
        "warnings": [],
        "backends": [
            {
                "name": backend,
                "spec": backend,
                "distribution": f"wna16-{backend}",
                "version": "0.1.0",
                "available": True,
                "unavailable_reason": "",
                "totals": {
                    **totals,
                    "cells": len(cells),
                    "cells_failed": sum(c["failed"] > 0 for c in cells),
                    "tests": sum(len(c["tests"]) for c in cells),
                },
                "worst_ratio": max((c["worst_ratio"] for c in cells if c["worst_ratio"] is not None), default=None),
                "cells": cells,
            }
        ],
        "run": {"date": "2026-11-24T00:00:00+00:00", "duration_s": 1.0, "workers": 0},
    }


def filter_entry(id_: str, action: str, match: str, reason: str, multiplier: float = 1.0) -> dict[str, Any]:
    return {"id": id_, "source": "filters.toml", "action": action, "match": match, "reason": reason,
            "multiplier": multiplier, "backend": None}  # fmt: skip


def four_bit_only(cell: Cell) -> Outcome:
    return "passed" if cell.bits == 4 else "refused"


def showcase() -> list[tuple[str, dict[str, Any]]]:
    """A realistic set of reports: several backends and devices, a filtered and an unfiltered report of one
    backend that agree, two reports of another that really disagree, skips inside cells, a tolerance multiplier."""
    target = Cell(4, 128, False, "bf16", False)
    repro = f"python -m pytest numerics[{target.id}] --wna16-backend=marlin --wna16-case=k256n128m3b0s17"
    mult = filter_entry("f1", "tolerance", "numerics[w2*]", "2-bit codes amplify fp16 rounding", 2.0)

    def rocm_tests(cell: Cell) -> list[dict[str, Any]]:
        tests = [record_of(cell, "passed", multiplier=2.0 if cell.bits == 2 else 1,
                             filters=["f1"] if cell.bits == 2 else [])]  # fmt: skip
        if cell.group_size == 128 and not cell.act_order:
            tests.append(record_of(cell, "skipped", check="edges", message="large-k: K=8192 > --wna16-max-dim=512"))
        return tests

    def marlin_b(cell: Cell) -> Outcome:
        return "failed" if cell == target else four_bit_only(cell)

    epyc, h100, pvc, mi300 = "AMD EPYC 9654", "NVIDIA H100", "Intel Data Center GPU Max 1550", "AMD Instinct MI300X"
    skip_act = filter_entry("s1", "skip", "*actorder*", "act order not wired")
    ipex_filtered = simple(lambda c: "skipped" if c.act_order else four_bit_only(c), filters=["s1"])
    marlin_failing = simple(marlin_b, message="error/bound 3.2 > 1", repro=repro)
    no_three_bit = simple(lambda c: "refused" if c.bits == 3 else "passed")
    return [
        ("cpu-reference.json", report("reference", "cpu", epyc, simple(lambda c: "passed"))),
        ("cpu-cpu.json", report("cpu", "cpu", epyc, simple(four_bit_only))),
        ("cpu-rocm-interpreter.json", report("rocm", "cpu", epyc, rocm_tests, max_dim=512, filters=[mult])),
        ("cuda-marlin-a.json", report("marlin", "cuda", h100, simple(four_bit_only))),
        ("cuda-marlin-b.json", report("marlin", "cuda", h100, marlin_failing)),
        ("xpu-ipex-filtered.json", report("ipex", "xpu", pvc, ipex_filtered, filters=[skip_act])),
        ("xpu-ipex.json", report("ipex", "xpu", pvc, simple(four_bit_only))),
        ("rocm-rocm.json", report("rocm", "cuda", mi300, no_three_bit, profile="thorough")),
    ]
