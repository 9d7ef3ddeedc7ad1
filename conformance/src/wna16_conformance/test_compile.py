"""The op contract compiled engines rely on (:mod:`wna16.ops`): the prepared layer is one ``wna16::linear`` call,
``torch.library.opcheck`` passes with the real prepared state, and ``torch.compile(fullgraph=True)`` equals eager
bitwise. Runs one small case on one cell of every (bits, group) family, like hygiene (compiling costs seconds)."""

from __future__ import annotations

from wna16_conformance import checks
from wna16_conformance.data import Case, make_inputs
from wna16_conformance.runner import Runner
from wna16_conformance.strategies import k_unit, layouts, min_k, n_unit


def test_compile(conformance: Runner) -> None:
    rule = conformance.rule()
    ku, nu = k_unit(conformance.cell, rule), n_unit(rule)
    k, n = ku * -(-max(128, min_k(conformance.cell, ku)) // ku), nu * -(-32 // nu)
    kinds = layouts(rule)

    def body(case: Case) -> None:
        spec = conformance.spec(case.k, case.n, case.bias)
        if conformance.skip_unrunnable(case, spec):
            return
        inputs = make_inputs(conformance.cell, case)
        conformance.record(case, checks.compiled(conformance.backend, spec, inputs, case.key))

    conformance.fixed(body, [Case(3, k, n, True, True, "fp16", 31, kinds[-1])])
    conformance.finish()
