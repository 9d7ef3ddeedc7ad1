"""Regrouping (act order, odd group sizes, partial groups) is exact: the kernel-order weight, fed the gathered x,
computes the same product as the canonical weight. Pure torch: runs without IPEX and without an XPU."""

from __future__ import annotations

import pytest
import torch
from ipex_testlib import make_weight, snapshot, unchanged

from wna16 import Scheme, quantize_rtn
from wna16.errors import UnsupportedError
from wna16.reference import dequantize
from wna16_ipex.layout import Regrouped, check_expansion, pad_columns, regroup


def kernel_weight(layout: Regrouped) -> torch.Tensor:
    """float64 [N, K']: what a plain grouped kernel dequantizes from the regrouped tensors."""
    rows = torch.arange(layout.kernel_in_features) // layout.rows
    codes = layout.codes.double()
    return (layout.scales.double()[rows] * (codes - layout.zeros.double()[rows])).t()


def product_through_layout(layout: Regrouped, x: torch.Tensor) -> torch.Tensor:
    return layout.gather_input(x) @ kernel_weight(layout).t()


@pytest.mark.parametrize(
    ("k", "group", "act_order", "round_rows", "pow2"),
    [
        (512, 128, "balanced", None, True),
        (512, 32, "uneven", None, True),
        (520, 128, "uneven", 32, False),
        (264, 48, None, None, True),  # group 48 is not a power of two: regrouped to 64
        (264, 48, None, 32, False),  # nor a multiple of 32: regrouped to 64
        (520, 128, None, 32, False),  # partial last group, forced (torch's XPU op has none)
    ],
)
def test_regrouped_product_is_exact(k: int, group: int, act_order: str | None, round_rows: int | None, pow2: bool):
    weight = make_weight(24, k, group, sym=False, act_order=act_order)
    before = snapshot(weight)
    layout = regroup(weight, round_rows, power_of_two=pow2, force=round_rows is not None)
    assert unchanged(weight, before)
    assert layout.gather is not None
    assert layout.kernel_in_features == layout.groups * layout.rows
    if pow2:
        assert layout.rows & (layout.rows - 1) == 0
    if round_rows is not None:
        assert layout.rows % round_rows == 0
    x = torch.randn(5, k, dtype=torch.float64)
    want = x @ dequantize(weight).double().t()
    torch.testing.assert_close(product_through_layout(layout, x), want, rtol=1e-12, atol=1e-12)


def test_padded_rows_dequantize_to_zero_and_read_a_zero_column():
    weight = make_weight(16, 256, 32, sym=False, act_order="uneven")
    layout = regroup(weight, None, power_of_two=True)
    padded = layout.gather == weight.in_features
    assert padded.any()
    assert torch.count_nonzero(kernel_weight(layout)[:, padded]) == 0
    x = torch.randn(3, 256)
    assert torch.count_nonzero(layout.gather_input(x)[:, padded]) == 0


def test_balanced_act_order_keeps_k_and_every_real_row_once():
    weight = make_weight(16, 512, 128, sym=True, act_order="balanced")
    layout = regroup(weight, None, power_of_two=True)
    assert layout.kernel_in_features == 512 and layout.rows == 128
    assert layout.gather is not None
    assert sorted(layout.gather.tolist()) == list(range(512))


def test_plain_weight_is_passed_through_without_a_gather():
    weight = make_weight(16, 520, 128, sym=False)
    layout = regroup(weight, None, power_of_two=True)
    assert layout.gather is None and layout.rows == 128
    assert torch.equal(layout.codes, weight.codes())
    x = torch.randn(2, 520)
    assert layout.gather_input(x) is x


def test_very_uneven_act_order_is_refused():
    k, group = 256, 8
    g_idx = torch.zeros(k, dtype=torch.int32)
    g_idx[:31] = torch.arange(1, 32, dtype=torch.int32)  # 31 groups of one row, one group of 225 rows
    weight = quantize_rtn(torch.randn(8, k), Scheme(4, group, False), g_idx=g_idx)
    layout = regroup(weight, None, power_of_two=True)
    assert layout.kernel_in_features == 32 * 256
    with pytest.raises(UnsupportedError, match="too uneven"):
        check_expansion(layout, weight, "ipex")


def test_pad_columns():
    t = torch.ones(2, 36)
    padded = pad_columns(t, 32, 7)
    assert padded.shape == (2, 64) and torch.all(padded[:, 36:] == 7) and torch.equal(padded[:, :36], t)
    same = t[:, :32]
    assert pad_columns(same, 32, 0) is same
