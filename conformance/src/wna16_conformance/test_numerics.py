"""Numerics and refusal honesty of every cell: claimed specs compute within the error model's bound, unclaimed
specs (a cell the backend does not claim, or a shape that violates its declared divisibility) are refused by
``check`` with a reason and by ``prepare`` with :class:`wna16.errors.UnsupportedError`."""

from __future__ import annotations

from wna16_conformance import checks
from wna16_conformance.checks import SKIPPED, CaseResult
from wna16_conformance.data import Case, make_inputs
from wna16_conformance.runner import Runner


def test_numerics(wna16: Runner) -> None:
    rule = wna16.rule()

    def body(case: Case) -> None:
        spec = wna16.spec(case.k, case.n, case.bias)
        inputs = make_inputs(wna16.cell, case)
        if wna16.backend.check(spec) and wna16.unavailable():
            wna16.record(case, [CaseResult(case.key, SKIPPED, None, wna16.unavailable())])
            return
        wna16.record(case, [checks.case(wna16.backend, spec, inputs, case.key, wna16.multiplier)])

    wna16.draw(body, rule)
    wna16.finish()
