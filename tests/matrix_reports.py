"""Synthetic conformance reports (schema version 1) for the matrix tests: small, explicit, every status present."""

from typing import Any

CELLS = [
    (4, 128, True, "bf16", False),
    (4, 128, True, "fp32", False),
    (4, 128, False, "bf16", True),
    (3, 32, False, "fp16", False),
    (2, -1, True, "fp32", False),
]


def cell(
    bits: int,
    group: int,
    sym: bool,
    dtype: str,
    act: bool,
    status: str,
    ratio: float | None = 0.25,
    multiplier: float = 1.0,
) -> dict[str, Any]:
    counts = {"passed": 0, "failed": 0, "refused": 0, "skipped": 0}
    counts[{"pass": "passed", "fail": "failed", "refused": "refused", "skipped": "skipped"}[status]] = 3
    scheme = f"w{bits}{'channel' if group == -1 else f'g{group}'}{'sym' if sym else 'asym'}"
    cell_id = f"{scheme}-{dtype}" + ("-actorder" if act else "")
    test = {
        "test": f"numerics[{cell_id}]",
        "outcome": "passed" if status != "fail" else "failed",
        "worst_ratio": ratio,
        "multiplier": multiplier,
        "filters": [],
        "message": "",
        "repro": None,
        **counts,
    }
    return {
        "cell": cell_id,
        "bits": bits,
        "group_size": group,
        "sym": sym,
        "dtype": dtype,
        "act_order": act,
        "worst_ratio": ratio,
        "filters": [],
        "tests": [test],
        **counts,
    }


def report(backend: str, device_type: str, device_name: str, statuses: list[str], **cell_kwargs: Any) -> dict[str, Any]:
    cells = [cell(*c, s, **cell_kwargs) for c, s in zip(CELLS, statuses, strict=True)]
    failed = sum(c["failed"] > 0 for c in cells)
    totals = {
        "passed": 0,
        "failed": 0,
        "refused": 0,
        "skipped": 0,
        "cells": len(cells),
        "cells_failed": failed,
        "tests": len(cells),
    }
    return {
        "schema": "wna16-conformance-report",
        "schema_version": 1,
        "suite": {"distribution": "wna16-conformance", "version": "0.1.0"},
        "profile": "ci",
        "max_dim": None,
        "device": {"type": device_type, "name": device_name, "capability": None},
        "environment": {"python": "3.11", "torch": "2.13.0", "platform": "linux", "hypothesis": "6"},
        "filters": [],
        "warnings": [],
        "backends": [
            {
                "name": backend,
                "spec": backend,
                "distribution": f"wna16-{backend}",
                "version": "0.1.0",
                "available": True,
                "unavailable_reason": "",
                "totals": totals,
                "worst_ratio": 0.25,
                "cells": cells,
            }
        ],
        "run": {"date": "2026-11-24T00:00:00+00:00", "duration_s": 1.0, "workers": 0},
    }
