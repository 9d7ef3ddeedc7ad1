"""Edge values: all-zero and all-max codes, negative scales, zero points at 0 and 2**bits, K equal to the group
size, a partial last group, and large K (random data, and a cancellation that overflows an fp16 accumulator)."""

from __future__ import annotations

import pytest

from wna16_conformance import checks
from wna16_conformance.data import Case, edge_inputs
from wna16_conformance.runner import Runner
from wna16_conformance.strategies import n_unit

LARGE_K = 4096
EDGE_K = {"k-equals-group": 128, "partial-last-group": 128 + 32, "large-k": LARGE_K, "large-k-cancellation": LARGE_K}
"""K of each variant (the others use 256: two groups of 128)."""


def test_edges(conformance: Runner) -> None:
    variant = conformance.target.variant
    k = EDGE_K.get(variant, 256)
    if k > (conformance.ctx.max_dim or k):
        pytest.skip(f"{variant}: K={k} exceeds --wna16-max-dim={conformance.ctx.max_dim}")
    nu = n_unit(conformance.rule())
    n = nu * -(-64 // nu)

    def body(case: Case) -> None:
        spec = conformance.spec(case.k, case.n, case.bias)
        if conformance.skip_unrunnable(case, spec):
            return
        inputs = edge_inputs(variant, conformance.cell, case)
        conformance.record(case, [checks.case(conformance.backend, spec, inputs, case.key, conformance.multiplier)])

    conformance.fixed(body, [Case(4, k, n, False, True, "fp16", 21), Case(1, k, n, False, False, "bf16", 22)])
    conformance.finish()
