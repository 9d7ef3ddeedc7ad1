"""Tensor-parallel slices per :mod:`wna16.partition`: an N-slice yields its columns of the full output; a K-slice
yields a partial sum (bias only on the slice with ``adds_bias``) and the partial sums add up to the full output.
A backend that does not declare ``k_slices`` must refuse K-slices."""

from __future__ import annotations

import dataclasses

import torch

from wna16.partition import Shard, shard_bias, shard_weight
from wna16.protocol import LayerSpec, describe_spec
from wna16.tolerance import bound, reference_output
from wna16_conformance import checks
from wna16_conformance.checks import FAILED, PASSED, SKIPPED, CaseResult
from wna16_conformance.data import Case, Inputs, make_inputs
from wna16_conformance.runner import Runner
from wna16_conformance.strategies import layouts, n_unit

FULL_K, SMALL_K, SLICES = 512, 256, 2
"""K of the full layer (SMALL_K under a --wna16-max-dim below FULL_K): two K-slices on group and 3-bit word bounds."""


def own_spec(result: CaseResult, spec: LayerSpec) -> CaseResult:
    """A failing slice names its own spec (the slice's shape and shard), not only the full layer's."""
    if result.outcome != FAILED:
        return result
    return dataclasses.replace(result, message=f"{result.message} | slice spec: {describe_spec(spec)}")


def test_tensor_parallel(conformance: Runner) -> None:
    nu = n_unit(conformance.rule())
    n = nu * SLICES * -(-128 // (nu * SLICES))
    k = FULL_K if (conformance.ctx.max_dim or FULL_K) >= FULL_K else SMALL_K

    def body(case: Case) -> None:
        group = conformance.cell.scheme.group_size
        if group > 0 and case.k < SLICES * group:  # only under a --wna16-max-dim below FULL_K (groups of 256)
            reason = (
                f"--wna16-max-dim={conformance.ctx.max_dim}: K={case.k} cannot be cut into {SLICES} K-slices of whole "
                f"groups of {group} (needs K >= {SLICES * group})"
            )
            conformance.record(case, [CaseResult(case.key, SKIPPED, None, reason)])
            return
        full = make_inputs(conformance.cell, case)
        results: list[CaseResult] = []
        if conformance.skip_unrunnable(case, conformance.spec(case.k, case.n, case.bias)):
            return
        n_part = case.n // SLICES
        for i in range(SLICES):
            shard = Shard(case.k, case.n, 0, i * n_part)
            spec = conformance.spec(case.k, n_part, case.bias, shard=shard)
            part = Inputs(
                shard_weight(full.weight, shard, case.k, n_part), full.x, shard_bias(full.bias, shard, n_part),
                full.later, full.layout,
            )  # fmt: skip
            key = f"{case.key}|n-slice{i}"
            results.append(own_spec(checks.case(conformance.backend, spec, part, key, conformance.multiplier), spec))
        k_part = case.k // SLICES
        partials: list[torch.Tensor] = []
        bounds = torch.zeros(())
        for i in range(SLICES):
            shard = Shard(case.k, case.n, i * k_part, 0, adds_bias=i == 0)
            spec = conformance.spec(k_part, case.n, case.bias, shard=shard)
            rows = slice(i * k_part, (i + 1) * k_part)
            x = full.x[..., rows].contiguous()
            later = tuple(t[..., rows].contiguous() for t in full.later)
            part = Inputs(shard_weight(full.weight, shard, k_part, case.n), x, full.bias, later, full.layout)
            key = f"{case.key}|k-slice{i}"
            if not conformance.backend.check(spec):
                results.append(own_spec(checks.refusal(conformance.backend, spec, part, key), spec))
                continue
            result, y = checks.compute(conformance.backend, spec, part, key, conformance.multiplier)
            results.append(own_spec(result, spec))
            if y is not None:
                partials.append(y.to(torch.float64))
                rule = conformance.backend.check(spec).rule
                assert rule is not None
                bounds = bounds + bound(x, part.weight, rule, full.bias if spec.adds_bias else None)
        if len(partials) == SLICES:
            ref = reference_output(full.x, full.weight, full.bias)
            ratio = float(((sum(partials) - ref).abs() / bounds).max())
            ok = ratio <= conformance.multiplier
            message = "" if ok else f"sum of K-slices: error/bound ratio {ratio:.3g} > {conformance.multiplier:g}"
            results.append(CaseResult(f"{case.key}|k-sum", PASSED if ok else FAILED, ratio, message))
        conformance.record(case, results)

    kinds = layouts(conformance.rule())
    fixed = [Case(5, k, n, False, True, "fp16", 31, kinds[-1]), Case(2, k, n, True, True, "bf16", 32, kinds[0])]
    conformance.fixed(body, fixed)
    conformance.finish()
