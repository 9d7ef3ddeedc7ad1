"""Hypothesis strategies shared by the core tests: schemes, shapes that the packed layouts accept, weights."""

import math

import torch
from hypothesis import strategies as st

from wna16 import QuantizedWeight, Scheme, quantize_rtn
from wna16.packing import run_length

BITS = (2, 3, 4, 8)
GROUPS = (-1, 32, 64, 128, 48)


@st.composite
def schemes(draw: st.DrawFn, bits: tuple[int, ...] = BITS, groups: tuple[int, ...] = GROUPS) -> Scheme:
    return Scheme(draw(st.sampled_from(bits)), draw(st.sampled_from(groups)), draw(st.booleans()))


@st.composite
def weights(
    draw: st.DrawFn,
    scheme_strategy: st.SearchStrategy[Scheme] | None = None,
    *,
    n_multiple: int = 1,
    whole_groups: bool = False,
    k_max: int = 320,
    act_order: bool | None = None,
    scale_dtypes: tuple[torch.dtype, ...] = (torch.float16, torch.bfloat16, torch.float32),
) -> QuantizedWeight:
    """A quantized weight with random codes, zeros, signed scales and (optionally) a random g_idx."""
    s = draw(schemes() if scheme_strategy is None else scheme_strategy)
    unit = run_length(s.bits)[0]
    if whole_groups and s.group_size != -1:
        unit = unit * s.group_size // math.gcd(unit, s.group_size)
    k = unit * draw(st.integers(1, max(1, k_max // unit)))
    n = n_multiple * draw(st.integers(1, max(1, 96 // n_multiple)))
    groups = s.num_groups(k)
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    codes = torch.randint(0, 1 << s.bits, (k, n), generator=gen)
    zeros = torch.full((groups, n), s.center) if s.sym else torch.randint(0, 1 << s.bits, (groups, n), generator=gen)
    scales = (torch.randn(groups, n, generator=gen) * 0.05).to(draw(st.sampled_from(scale_dtypes)))
    g_idx = None
    if act_order if act_order is not None else draw(st.booleans()):
        g_idx = torch.arange(k) // s.group_rows(k)
        g_idx = g_idx[torch.randperm(k, generator=gen)]
    return QuantizedWeight.from_codes(s, codes, zeros, scales, g_idx)


def float_weight(n: int, k: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, k, generator=gen)


__all__ = ["BITS", "GROUPS", "float_weight", "quantize_rtn", "schemes", "weights"]
