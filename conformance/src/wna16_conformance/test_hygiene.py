"""Hygiene: inputs are not mutated, the same input twice gives the same output, the output has the promised dtype,
shape and device, and a non-contiguous ``x`` is served unless the declaration says it is not."""

from __future__ import annotations

from wna16_conformance import checks
from wna16_conformance.checks import SKIPPED, CaseResult
from wna16_conformance.data import Case, make_inputs
from wna16_conformance.runner import Runner
from wna16_conformance.strategies import k_unit, n_unit

HYGIENE_CASES = (
    (1, False, True, "fp16", 11),
    (5, True, False, "bf16", 12),
)
"""(M, 3-D, bias, scale dtype, seed) of the fixed hygiene cases."""


def test_hygiene(wna16: Runner) -> None:
    rule = wna16.rule()
    ku, nu = k_unit(wna16.cell, rule), n_unit(rule)
    k, n = ku * -(-256 // ku), nu * -(-64 // nu)

    def body(case: Case) -> None:
        spec = wna16.spec(case.k, case.n, case.bias)
        if wna16.backend.check(spec) and wna16.unavailable():
            wna16.record(case, [CaseResult(case.key, SKIPPED, None, wna16.unavailable())])
            return
        inputs = make_inputs(wna16.cell, case)
        wna16.record(case, checks.hygiene(wna16.backend, spec, inputs, case.key, wna16.multiplier))

    wna16.fixed(body, [Case(m, k, n, three_d, bias, scales, seed) for m, three_d, bias, scales, seed in HYGIENE_CASES])
    wna16.finish()
