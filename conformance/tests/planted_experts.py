"""Experts backends with a fused path (``experts_capabilities``): one correct, and one broken per bug class the
experts check must catch. Each computes the block in float32 from dequantized weights, as the reference would;
their per-linear path is the reference's. Loaded by the suite as ``planted_experts:NAME``."""

from __future__ import annotations

from collections.abc import Callable

import torch
from planted import dequant, parts

from wna16.experts import ExpertsCapability, ExpertsSpec, ExpertWeights, PreparedExperts
from wna16.weight import QuantizedWeight
from wna16_reference import ReferenceBackend

REF_RULE = ReferenceBackend.capabilities[0]


class FusedExperts(ReferenceBackend):
    """Correct: one scheme for all experts (mixed schemes refused), every routing-weight placement."""

    name = "fused-experts"
    experts_capabilities = (ExpertsCapability(REF_RULE, mixed_schemes=False),)

    def wt(self, weight: QuantizedWeight, expert: int, weights: ExpertWeights) -> torch.Tensor:
        """W^T [K, N] in float32."""
        return dequant(*parts(weight))

    def expert_of(self, e: int, active: list[int]) -> int:
        """The expert whose weights serve the tokens routed to ``e``."""
        return e

    def routing_weight(self, w: torch.Tensor) -> torch.Tensor:
        return w

    def build_experts(self, weights: ExpertWeights, spec: ExpertsSpec) -> PreparedExperts:
        mats = [[self.wt(w, e, weights) for w in weights.expert(e)] for e in range(spec.num_experts)]

        def call(x: torch.Tensor, ids: torch.Tensor, topk_weights: torch.Tensor) -> torch.Tensor:
            x2 = x.reshape(-1, spec.hidden_size).float()
            out = torch.zeros_like(x2)
            active = sorted(set(ids.flatten().tolist()))
            for e in active:
                token, slot = (ids == e).nonzero(as_tuple=True)
                w = self.routing_weight(topk_weights[token, slot].float()[:, None])
                gate, up, down = mats[self.expert_of(e, active)]
                h = torch.nn.functional.silu(x2[token] @ gate) * (x2[token] @ up)
                out.index_add_(0, token, (w * h) @ down)
            return out.to(x.dtype).reshape(x.shape)

        return call


class WrongExpertPicked(FusedExperts):
    """Indexes the weights by the position among the active experts instead of the expert id (a compaction bug)."""

    name = "wrong-expert-picked"

    def expert_of(self, e: int, active: list[int]) -> int:
        return active.index(e)


class RoutingWeightDropped(FusedExperts):
    """Sums the chosen experts' outputs without their routing weights."""

    name = "routing-weight-dropped"

    def routing_weight(self, w: torch.Tensor) -> torch.Tensor:
        return torch.ones_like(w)


class ExpertScalesReused(FusedExperts):
    """Every expert's codes scaled with expert 0's scales (a stride of 0 across experts in the scales tensor)."""

    name = "expert-scales-reused"

    def wt(self, weight: QuantizedWeight, expert: int, weights: ExpertWeights) -> torch.Tensor:
        codes, zeros, scales, group = parts(weight)
        proj = next(p for p, w in enumerate(weights.expert(expert)) if w is weight)
        first = weights.expert(0)[proj]
        return dequant(codes, zeros, parts(first)[2] if first.scales.shape == weight.scales.shape else scales, group)


BROKEN_EXPERTS: dict[str, Callable[[], FusedExperts]] = {
    cls.__name__: cls for cls in (WrongExpertPicked, RoutingWeightDropped, ExpertScalesReused)
}
"""Every broken experts backend the suite must catch."""
