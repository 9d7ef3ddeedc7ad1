"""Experts blocks (:mod:`wna16.experts`) against the oracle: their data and the check of one case.

Every variant uses E = 8 experts, H = ``case.k`` and I = ``case.n``; the experts carry the cell's scheme (the
``mixed-schemes`` variant gives the last expert another one). The routing differs per variant:

- ``random-routing``: each token picks ``top_k = 2`` distinct experts at random, softmax weights renormalized;
- ``one-expert``: ``top_k = 1``, every token goes to the same expert, weights not summing to one;
- ``empty-experts``: every token picks experts 1 and 6 (in random order): six experts get no token;
- ``weights-before-down``: random routing with the weights applied to the down projection's input;
- ``mixed-schemes``: random routing, the last expert in another bit width: served within the bound or refused
  honestly (a reason from ``check_experts`` and :class:`wna16.errors.UnsupportedError` from ``prepare_experts``).

The bound is :func:`wna16.tolerance.experts_model`'s: each linear's bound from the precisions of the rule that
serves it, carried through the block and summed over the k contributions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from wna16.errors import UnsupportedError
from wna16.experts import ExpertsSpec, ExpertWeights, check_experts, describe_experts, prepare_experts
from wna16.protocol import Backend
from wna16.tolerance import Precision, experts_error_ratio
from wna16_conformance.cells import Cell
from wna16_conformance.checks import FAILED, PASSED, REFUSED, CaseResult
from wna16_conformance.data import Case, activations, random_weight

NUM_EXPERTS = 8
EMPTY_EXPERTS_CHOICE = (1, 6)
"""The only experts that get tokens in the ``empty-experts`` variant."""


@dataclass(frozen=True)
class ExpertsInputs:
    """The CPU tensors of one case: the experts, ``x`` [M, H], the router's ids and weights [M, top_k]."""

    weights: ExpertWeights
    x: torch.Tensor
    topk_ids: torch.Tensor
    topk_weights: torch.Tensor
    weights_before_down: bool


def other_cell(cell: Cell) -> Cell:
    """The scheme the last expert carries in ``mixed-schemes``: another bit width, same group, dtype and symmetry."""
    return Cell(8 if cell.bits != 8 else 4, cell.group_size, cell.sym, cell.dtype_name, cell.act_order)


def make_experts_inputs(variant: str, cell: Cell, case: Case) -> ExpertsInputs:
    """The random tensors of ``case`` for ``variant``, drawn in a fixed order from the case's generator."""
    gen = case.generator()
    h, i, m = case.k, case.n, case.m
    gate, up, down = [], [], []
    for e in range(NUM_EXPERTS):
        c = other_cell(cell) if variant == "mixed-schemes" and e == NUM_EXPERTS - 1 else cell
        gate.append(random_weight(c, h, i, case.scale_dtype, gen))
        up.append(random_weight(c, h, i, case.scale_dtype, gen))
        down.append(random_weight(c, i, h, case.scale_dtype, gen))
    x = activations(case, cell.dtype, gen)
    if variant == "one-expert":
        expert = int(torch.randint(0, NUM_EXPERTS, (1,), generator=gen))
        ids = torch.full((m, 1), expert, dtype=torch.int64)
        weights = 0.2 + 0.8 * torch.rand(m, 1, generator=gen)
    elif variant == "empty-experts":
        pair = torch.tensor(EMPTY_EXPERTS_CHOICE)
        ids = torch.stack([pair[torch.randperm(2, generator=gen)] for _ in range(m)])
        weights = torch.softmax(torch.randn(m, 2, generator=gen), dim=-1)
    else:
        ids = torch.stack([torch.randperm(NUM_EXPERTS, generator=gen)[:2] for _ in range(m)])
        logits = torch.randn(m, NUM_EXPERTS, generator=gen)
        top = torch.softmax(logits, dim=-1).gather(1, ids)
        weights = top / top.sum(dim=-1, keepdim=True)
    experts = ExpertWeights(tuple(gate), tuple(up), tuple(down))
    return ExpertsInputs(experts, x, ids, weights.to(cell.dtype), variant == "weights-before-down")


def experts_spec(inputs: ExpertsInputs, dtype: torch.dtype, device: str) -> ExpertsSpec:
    """The spec of the case's block on ``device``."""
    top_k = inputs.topk_ids.shape[1]
    return ExpertsSpec.of(inputs.weights, top_k, dtype, weights_before_down=inputs.weights_before_down, device=device)


def experts_case(backend: Backend, spec: ExpertsSpec, inputs: ExpertsInputs, key: str, multiplier: float) -> CaseResult:
    """Compute when ``check_experts`` claims the block (within ``multiplier`` times the bound), else verify the
    refusal: at least one reason, and ``prepare_experts`` raising :class:`UnsupportedError`."""
    support = check_experts(backend, spec)
    if not support:
        if not support.reasons or not all(isinstance(r, str) and r.strip() for r in support.reasons):
            return CaseResult(key, FAILED, None, f"check_experts refused {describe_experts(spec)} without a reason")
        try:
            prepare_experts(backend, inputs.weights.to(spec.device), spec)
        except UnsupportedError as exc:
            if not exc.reasons:
                return CaseResult(key, FAILED, None, "prepare_experts raised UnsupportedError without reasons")
            return CaseResult(key, REFUSED, None, "; ".join(support.reasons))
        except Exception as exc:
            return CaseResult(key, FAILED, None, f"prepare_experts raised {type(exc).__name__}: {exc}")
        return CaseResult(key, FAILED, None, "check_experts refused but prepare_experts accepted the block")
    try:
        block = prepare_experts(backend, inputs.weights.to(spec.device), spec)
        x = inputs.x.to(spec.device)
        y = block(x, inputs.topk_ids.to(spec.device), inputs.topk_weights.to(spec.device))
    except UnsupportedError as exc:
        message = (
            f"check_experts accepted {describe_experts(spec)} but it was refused when prepared or called ({exc}): a "
            "refusal must come from check, through the declared capabilities or Backend.refusals()"
        )
        return CaseResult(key, FAILED, None, message)
    except Exception as exc:
        return CaseResult(key, FAILED, None, f"raised {type(exc).__name__}: {exc}")
    if not isinstance(y, torch.Tensor) or y.shape != x.shape or y.dtype != x.dtype or y.device != x.device:
        got = f"{y.dtype}{list(y.shape)} on {y.device}" if isinstance(y, torch.Tensor) else type(y).__name__
        return CaseResult(key, FAILED, None, f"returned {got}, expected {x.dtype}{list(x.shape)} on {x.device}")

    def precision(e: int, p: int) -> Precision:
        return Precision.of(support.linear_rule(backend, spec.layer(e, p)), spec.dtype)

    ratio = experts_error_ratio(
        y, inputs.x, inputs.topk_ids, inputs.topk_weights, inputs.weights, precision,
        weights_before_down=spec.weights_before_down,
    )  # fmt: skip
    if not ratio <= multiplier:  # NaN-safe
        shown = "inf" if math.isinf(ratio) else f"{ratio:.3g}"
        return CaseResult(key, FAILED, ratio, f"error/bound ratio {shown} > {multiplier:g}")
    return CaseResult(key, PASSED, ratio)
