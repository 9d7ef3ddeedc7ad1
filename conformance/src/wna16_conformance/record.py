"""The record of one conformance test: what ran (backend, test, cell, check), every case's result, the filters that
applied and how it ended. One type for every path that makes one (a test that ran, a test skipped or failed before
its runner existed, a worker that crashed); it travels from an xdist worker to the controller as JSON and the report
is built from it (:mod:`wna16_conformance.report`)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from wna16_conformance.cells import Target
from wna16_conformance.checks import CaseResult

PROPERTY = "wna16"
"""Key of the user property that carries a test's record from a worker to the controller."""


@dataclass
class TestRecord:
    """One test of one backend. ``outcome`` and ``error`` are filled in on the controller from pytest's report."""

    backend: str
    test: str
    cell: str
    check: str
    cases: list[CaseResult] = field(default_factory=list)
    multiplier: float = 1.0
    filters: list[str] = field(default_factory=list)
    repro: str | None = None
    skip_reason: str = ""
    crashed: bool = False
    outcome: str = ""
    error: str = ""

    __test__ = False  # not a pytest test class, whatever its name

    @classmethod
    def of(cls, backend: str, target: Target, multiplier: float = 1.0, filters: list[str] | None = None) -> TestRecord:
        """An empty record of ``target`` run against ``backend``."""
        return cls(backend, target.test_name, target.cell.id, target.check, [], multiplier, list(filters or []))

    def to_json(self) -> str:
        """JSON text (NaN and inf ratios allowed: the report rounds them)."""
        return json.dumps(asdict(self), allow_nan=True)

    @classmethod
    def from_json(cls, text: str) -> TestRecord:
        """Inverse of :meth:`to_json`."""
        data: dict[str, Any] = json.loads(text)
        data["cases"] = [CaseResult(**c) for c in data["cases"]]
        return cls(**data)
