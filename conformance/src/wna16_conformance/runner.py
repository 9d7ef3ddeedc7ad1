"""The per-session context (backends under test, device, profile, filters) and the per-test runner the checks use.

The runner owns the three things every conformance test shares: drawing cases (hypothesis, or the one case named by
``--wna16-case``), recording each case's result for the report, and failing with a one-line repro that names the
cell, the spec and the seed and gives the command that reruns exactly that case.
"""

from __future__ import annotations

import shlex
import sys
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, Phase, given, seed, settings

from wna16.protocol import Availability, Backend, Capability, LayerSpec, describe_spec
from wna16_conformance.cells import Cell, Target
from wna16_conformance.checks import FAILED, SKIPPED, CaseResult
from wna16_conformance.data import Case
from wna16_conformance.filters import Decision, FilterEntry
from wna16_conformance.record import TestRecord
from wna16_conformance.strategies import SHAPE_CLASSES, cases, k_unit, min_k, misfit, n_unit, regime

PROFILES: dict[str, settings] = {
    # Seeded by the test's name (see Runner.draw: each cell draws its own cases), fixed examples per cell, no
    # deadline, no database, no shrinking: same cases on every run and for any number of xdist workers; the repro
    # line replaces the shrunk example.
    "ci": settings(
        max_examples=4, deadline=None, database=None, phases=(Phase.explicit, Phase.generate),
        suppress_health_check=list(HealthCheck), print_blob=False,
    ),
    "dev": settings(max_examples=20, deadline=None, suppress_health_check=list(HealthCheck)),
    "thorough": settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck)),
}  # fmt: skip


class ConformanceFailure(AssertionError):
    """A case failed; the message is the one-line repro."""


@dataclass
class BackendUnderTest:
    """A backend as the suite knows it: the instance, where it came from, whether it runs here."""

    name: str
    spec: str  # what --wna16-backend said (or the entry-point name)
    backend: Backend
    distribution: str
    version: str
    availability: Availability
    filters: list[FilterEntry] = field(default_factory=list)


@dataclass
class Context:
    """Everything the session decided at configure time."""

    backends: list[BackendUnderTest]
    device: str
    profile: str
    max_dim: int | None
    filters: list[FilterEntry]
    filter_args: list[str]
    replay: Case | None

    def entries_for(self, b: BackendUnderTest) -> list[FilterEntry]:
        """Filter entries that may apply to ``b``: its own file and the command-line files."""
        return [*b.filters, *self.filters]


class Runner:
    """Runs the cases of one test and records them; see the module docstring."""

    def __init__(self, ctx: Context, b: BackendUnderTest, target: Target, decision: Decision, item: pytest.Item):
        self.ctx, self.b, self.target, self.decision, self.item = ctx, b, target, decision, item
        self.results: list[CaseResult] = []
        self.repro: str | None = None

    @property
    def backend(self) -> Backend:
        """The backend under test."""
        return self.b.backend

    @property
    def cell(self) -> Cell:
        """The cell of this test."""
        return self.target.cell

    @property
    def multiplier(self) -> float:
        """Tolerance multiplier from the filters (1 without one)."""
        return self.decision.multiplier

    def spec(self, k: int, n: int, bias: bool = False, **kw: object) -> LayerSpec:
        """The layer spec of this cell at (K, N) on the device under test."""
        c = self.cell
        return LayerSpec(k, n, c.scheme, c.dtype, c.act_order, bias, self.ctx.device, **kw)  # type: ignore[arg-type]

    def rule(self) -> Capability | None:
        """The capability that claims this cell at its smallest aligned shape (``None``: the cell is refused)."""
        for rule in self.backend.capabilities:
            unit = k_unit(self.cell, rule)
            spec = self.spec(min_k(self.cell, unit), n_unit(rule))
            if not rule.reasons(spec) and self.backend.check(spec):
                return rule
        return None

    def unavailable(self) -> str:
        """Why cases that compute cannot run here (``""`` when they can)."""
        a = self.b.availability
        return "" if a else f"backend {self.b.name!r} unavailable on {self.ctx.device}: {a.reason}"

    def skip_unrunnable(self, case: Case, spec: LayerSpec, fixed_class: str = "") -> bool:
        """Record ``case`` as skipped, and say so, when it cannot run here: the backend would compute it but is
        unavailable on this device, or the case is a fixed shape class larger than ``--wna16-max-dim`` (the message
        names the class not reached). The one place that decides it for every check."""
        reason = ""
        cap = self.ctx.max_dim
        if fixed_class in SHAPE_CLASSES and cap is not None and max(case.k, case.n, case.rows) > cap:
            reason = (
                f"--wna16-max-dim={cap}: shape class {fixed_class} ({SHAPE_CLASSES[fixed_class]}) not reached "
                f"(K={case.k}, N={case.n}, rows={case.rows})"
            )
        elif self.backend.check(spec) and self.unavailable():
            reason = self.unavailable()
        if reason:
            self.record(case, [CaseResult(case.key, SKIPPED, None, reason)])
        return bool(reason)

    def record(self, case: Case, results: Sequence[CaseResult]) -> None:
        """Keep ``results`` (deduplicated by key: hypothesis replays a failing example) and fail on the first
        failure with the repro line."""
        known = {r.key for r in self.results}
        self.results += [r for r in results if r.key not in known]
        failed = next((r for r in results if r.outcome == FAILED), None)
        if failed is not None:
            self.repro = self.repro_line(case, failed)
            raise ConformanceFailure(self.repro)

    def draw(self, body: Callable[[Case], None], rule: Capability | None, fixed_cases: Sequence[Case] = ()) -> None:
        """Run ``body`` on ``fixed_cases``, then on the hypothesis cases of this cell (or only on the
        ``--wna16-case`` one). In the ``ci`` profile the draw is seeded by the test's name: every cell draws its
        own cases, the same on every run and in every xdist worker."""
        if self.ctx.replay is not None:
            self.fixed(body, ())
            return
        for case in fixed_cases:
            body(case)
        test = given(cases(self.cell, rule, self.ctx.max_dim))(settings(PROFILES[self.ctx.profile])(body))
        if self.ctx.profile == "ci":
            test = seed(self.draw_seed)(test)
        test()

    @property
    def draw_seed(self) -> int:
        """The ``ci`` profile's seed of this test: a CRC of the backend-independent test name."""
        return zlib.crc32(self.target.test_name.encode())

    def fixed(self, body: Callable[[Case], None], fixed_cases: Sequence[Case]) -> None:
        """Run ``body`` on fixed cases (edge values, slices), or on the ``--wna16-case`` one (skipping a cell it does
        not fit, with the reason: ``-k`` may select several cells)."""
        replay = self.ctx.replay
        why = "" if replay is None else misfit(self.cell, replay)
        if why:
            pytest.skip(f"--wna16-case={replay.key} does not fit cell {self.cell.id}: {why}")
        for case in [replay] if replay is not None else fixed_cases:
            body(case)

    def finish(self) -> None:
        """Skip the test (never pass it) when no case could compute or be refused here."""
        if self.results and all(r.outcome == SKIPPED for r in self.results):
            pytest.skip(self.results[0].message)

    def repro_line(self, case: Case, failed: CaseResult) -> str:
        """One line: what failed, the spec, the case with its seed, and the command that reruns only this case."""
        spec = self.spec(case.k, case.n, case.bias)
        cmd = [sys.executable, "-m", "pytest", f"{self.item.path}::{self.item.name}", "-p", "no:randomly"]
        cmd += [f"--wna16-backend={self.b.spec}", f"--wna16-device={self.ctx.device}"]
        cmd += [f"--wna16-profile={self.ctx.profile}", *(f"--wna16-filter={f}" for f in self.ctx.filter_args)]
        if self.ctx.max_dim is not None:
            cmd.append(f"--wna16-max-dim={self.ctx.max_dim}")
        cmd.append(f"--wna16-case={case.key}")
        return (
            f"wna16 conformance FAILED {self.b.name} {self.target.test_name} [{failed.key}]: {failed.message} | "
            f"regime: {regime(case, self.cell.group_size)} | spec: {describe_spec(spec)} | case: {case.key} "
            f"(seed {case.seed}) | rerun: {shlex.join(cmd)}"
        )

    def as_record(self) -> TestRecord:
        """The record the report is built from."""
        record = TestRecord.of(self.b.name, self.target, self.multiplier, [e.id for e in self.decision.applied])
        record.cases, record.repro = list(self.results), self.repro
        return record
