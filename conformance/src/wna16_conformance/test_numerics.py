"""Numerics: hypothesis cases drawn inside the cell (each cell its own), plus fixed cases of the regimes kernels
switch on (no rows, the GEMM regime, and two large-shape classes of :data:`strategies.SHAPE_CLASSES`). Every case
is computed and measured against the bound when ``check`` claims it, else its refusal is verified."""

from __future__ import annotations

from wna16_conformance import checks
from wna16_conformance.data import Case, make_inputs
from wna16_conformance.runner import Runner
from wna16_conformance.strategies import ROW_CASES, fixed_case, shape_classes


def test_numerics(conformance: Runner) -> None:
    rule = conformance.rule()
    names = [*ROW_CASES, *shape_classes(conformance.cell)]
    seed = conformance.draw_seed
    fixed = {fixed_case(name, conformance.cell, rule, seed + i): name for i, name in enumerate(names)}

    def body(case: Case) -> None:
        spec = conformance.spec(case.k, case.n, case.bias)
        if conformance.skip_unrunnable(case, spec, fixed.get(case, "")):
            return
        inputs = make_inputs(conformance.cell, case)
        conformance.record(case, [checks.case(conformance.backend, spec, inputs, case.key, conformance.multiplier)])

    conformance.draw(body, rule, list(fixed))
    conformance.finish()
