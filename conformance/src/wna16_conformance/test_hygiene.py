"""Hygiene: inputs are not mutated, the same input twice gives the same output, the output has the promised dtype,
shape and device, and a non-contiguous ``x`` is served unless the declaration says it is not. Runs on one cell of
every (bits, group, act order) family (:func:`wna16_conformance.cells.targets`)."""

from __future__ import annotations

from wna16_conformance import checks
from wna16_conformance.data import Case, make_inputs
from wna16_conformance.runner import Runner
from wna16_conformance.strategies import k_unit, layouts, min_k, n_unit

HYGIENE_CASES = (
    (1, False, True, "fp16", 11),
    (5, True, False, "bf16", 12),
)
"""(M, 3-D, bias, scale dtype, seed) of the fixed hygiene cases."""


def test_hygiene(conformance: Runner) -> None:
    rule = conformance.rule()
    ku, nu = k_unit(conformance.cell, rule), n_unit(rule)
    k, n = ku * -(-max(256, min_k(conformance.cell, ku)) // ku), nu * -(-64 // nu)
    kinds = layouts(rule)

    def body(case: Case) -> None:
        spec = conformance.spec(case.k, case.n, case.bias)
        if conformance.skip_unrunnable(case, spec):
            return
        inputs = make_inputs(conformance.cell, case)
        conformance.record(case, checks.hygiene(conformance.backend, spec, inputs, case.key, conformance.multiplier))

    fixed = [
        Case(m, k, n, three_d, bias, scales, seed, kinds[seed % len(kinds)])
        for m, three_d, bias, scales, seed in HYGIENE_CASES
    ]
    conformance.fixed(body, fixed)
    conformance.finish()
