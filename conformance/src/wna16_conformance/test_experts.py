"""Experts blocks (mixture of experts) against the oracle, per variant of routing (see
:mod:`wna16_conformance.experts`): served within the bound summed over the top-k contributions, or refused honestly.
A backend that declares no experts rule is checked through the generic per-expert path over its own layers."""

from __future__ import annotations

from wna16_conformance.checks import SKIPPED, CaseResult
from wna16_conformance.data import Case
from wna16_conformance.experts import experts_case, experts_spec, make_experts_inputs
from wna16_conformance.runner import Runner

HIDDEN, INTERMEDIATE = 256, 128
"""H and I of every case: several groups along both K's, small enough for any backend."""


def test_experts(conformance: Runner) -> None:
    variant = conformance.target.variant

    def body(case: Case) -> None:
        if conformance.unavailable():
            conformance.record(case, [CaseResult(case.key, SKIPPED, None, conformance.unavailable())])
            return
        inputs = make_experts_inputs(variant, conformance.cell, case)
        spec = experts_spec(inputs, conformance.cell.dtype, conformance.ctx.device)
        conformance.record(case, [experts_case(conformance.backend, spec, inputs, case.key, conformance.multiplier)])

    decode, prefill = Case(1, HIDDEN, INTERMEDIATE, seed=41), Case(9, HIDDEN, INTERMEDIATE, seed=42)
    conformance.fixed(body, [decode, prefill])
    conformance.finish()
