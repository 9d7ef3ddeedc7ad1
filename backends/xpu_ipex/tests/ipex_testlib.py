"""Helpers of the wna16-ipex tests: seeded weights in every shape the backends must handle.

A plain module, not a conftest: every backend's tests run in one pytest session, and conftest names collide."""

from __future__ import annotations

import torch

from wna16 import QuantizedWeight, Scheme, quantize_rtn


def make_weight(
    n: int,
    k: int,
    group_size: int,
    sym: bool,
    *,
    act_order: str | None = None,
    scale_dtype: torch.dtype = torch.float16,
    seed: int = 0,
) -> QuantizedWeight:
    """An RTN-quantized 4-bit weight; ``act_order`` is None, ``"balanced"`` (a permutation of the trivial g_idx,
    as GPTQ writes) or ``"uneven"`` (random group of each row)."""
    gen = torch.Generator().manual_seed(seed)
    scheme = Scheme(4, group_size, sym)
    groups = scheme.num_groups(k)
    g_idx = None
    if act_order == "balanced":
        g_idx = (torch.arange(k) // scheme.group_rows(k))[torch.randperm(k, generator=gen)].to(torch.int32)
    elif act_order == "uneven":
        g_idx = torch.randint(0, groups, (k,), generator=gen, dtype=torch.int32)
    w = torch.randn(n, k, generator=gen)
    return quantize_rtn(w, scheme, scale_dtype=scale_dtype, g_idx=g_idx)


def with_zeros(weight: QuantizedWeight, value: int) -> QuantizedWeight:
    """The same asymmetric weight with every zero point set to ``value`` (e.g. 0 or 16, the edges)."""
    zeros = torch.full_like(weight.zeros, value)
    return QuantizedWeight(
        weight.scheme, weight.in_features, weight.out_features, weight.qweight, zeros, weight.scales, weight.g_idx
    )


def snapshot(weight: QuantizedWeight) -> list[torch.Tensor]:
    """Copies of every tensor of ``weight``, to prove prepare did not mutate it."""
    tensors = [weight.qweight, weight.zeros, weight.scales] + ([] if weight.g_idx is None else [weight.g_idx])
    return [t.clone() for t in tensors]


def unchanged(weight: QuantizedWeight, before: list[torch.Tensor]) -> bool:
    tensors = [weight.qweight, weight.zeros, weight.scales] + ([] if weight.g_idx is None else [weight.g_idx])
    pairs = zip(tensors, before, strict=True)
    return all(t.shape == b.shape and t.stride() == b.stride() and torch.equal(t, b) for t, b in pairs)
