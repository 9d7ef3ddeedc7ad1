"""Round-to-nearest: every element within half a step of its value, or one step where it was clipped."""

import torch
from hypothesis import given
from hypothesis import strategies as st
from strategies import schemes

from wna16 import Scheme, quantize_rtn
from wna16.reference import dequantize


@given(
    schemes(),
    st.integers(1, 6),
    st.integers(1, 40),
    st.sampled_from([torch.float16, torch.bfloat16, torch.float32]),
    st.integers(0, 2**31 - 1),
)
def test_rtn_error_is_at_most_half_a_step_except_clipped(
    scheme: Scheme, runs: int, n: int, scale_dtype: torch.dtype, seed: int
) -> None:
    k = 32 * runs
    w = torch.randn(n, k, generator=torch.Generator().manual_seed(seed))
    q = quantize_rtn(w, scheme, scale_dtype=scale_dtype)
    assert q.scales.dtype == scale_dtype
    step = q.scales.to(torch.float32).abs()[q.group_index()].t()  # [N, K]
    err = (dequantize(q) - w).abs()
    codes = q.codes().t()
    clipped = (codes == 0) | (codes == scheme.max_code)
    slack = 1e-5 * w.abs().max()
    assert bool((err <= 0.5 * step + slack).logical_or(clipped & (err <= step + slack)).all())


def test_symmetric_full_range_keeps_the_sign_of_the_peak() -> None:
    w = torch.tensor([[1.0, -2.0, 8.0, 3.0] * 8])  # peak +8 maps to code 0 with a negative scale
    q = quantize_rtn(w, Scheme(4, -1, True), scale_dtype=torch.float32)
    assert q.scales.item() == -1.0 and q.zeros.item() == 8
    assert torch.equal(dequantize(q), w)


def test_constant_and_zero_groups_are_exact() -> None:
    w = torch.cat([torch.full((2, 32), 0.75), torch.zeros(2, 32)], dim=1)
    for scheme in (Scheme(4, 32, True), Scheme(4, 32, False), Scheme(3, 32, False), Scheme(2, 32, True)):
        q = quantize_rtn(w, scheme, scale_dtype=torch.float32)
        assert bool(torch.isfinite(q.scales).all())
        assert torch.allclose(dequantize(q), w, atol=1e-6), scheme


def test_act_order_rtn_uses_the_given_groups() -> None:
    w = torch.randn(16, 64, generator=torch.Generator().manual_seed(0))
    g_idx = (torch.arange(64) % 2).to(torch.int32)  # interleaved groups
    q = quantize_rtn(w, Scheme(8, 32, False), g_idx=g_idx, scale_dtype=torch.float32)
    assert q.act_order
    assert (dequantize(q) - w).abs().max() <= 0.5 * q.scales.abs().max() + 1e-6
