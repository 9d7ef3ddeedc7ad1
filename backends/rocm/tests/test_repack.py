"""The kernel layout: exact, decodable, and in the group mode the kernels rely on. Pure torch (no triton)."""

from __future__ import annotations

import pytest
import torch

from wna16 import Scheme, Shard, quantize_rtn
from wna16.partition import shard_weight
from wna16.reference import dequantize
from wna16.weight import QuantizedWeight
from wna16_rocm.repack import GroupMode, RepackedWeight, repack


def _weight(bits: int, group: int, sym: bool, k: int = 128, n: int = 40, g_idx: torch.Tensor | None = None):
    torch.manual_seed(bits * 1000 + group + 7 * sym)
    return quantize_rtn(torch.randn(n, k), Scheme(bits, group, sym), scale_dtype=torch.float16, g_idx=g_idx)


def _dequantize_repacked(rp: RepackedWeight) -> torch.Tensor:
    """float32 [N, K] in *input* row order, decoded only from the repacked layout (what the kernel reads)."""
    codes = rp.codes().to(torch.float32)  # kernel row order
    k = rp.in_features
    if rp.group_mode == GroupMode.SINGLE:
        group = torch.zeros(k, dtype=torch.long)
    elif rp.group_mode == GroupMode.UNIFORM:
        group = torch.arange(k) // rp.group_rows
    else:
        assert rp.row_group is not None
        group = rp.row_group.long()
    zeros = float(rp.center) if rp.zeros is None else rp.zeros[group]
    w_kernel = rp.scales[group] * (codes - zeros)
    out = torch.empty_like(w_kernel)
    rows = torch.arange(k) if rp.perm is None else rp.perm.long()
    out[rows] = w_kernel  # kernel row i is input row perm[i]
    return out.t()


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize(("group", "sym"), [(-1, True), (32, False), (64, True), (8, False), (48, True)])
def test_repack_is_exact(bits: int, group: int, sym: bool) -> None:
    w = _weight(bits, group, sym, k=96 if group == 48 else 128)
    rp = repack(w, "cpu")
    assert torch.equal(_dequantize_repacked(rp), dequantize(w))
    assert torch.equal(rp.codes(), w.codes())


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_act_order_sorts_rows_by_group(bits: int) -> None:
    k, group = 128, 32
    g_idx = torch.randperm(k, generator=torch.Generator().manual_seed(bits)) % (k // group)
    w = _weight(bits, group, False, k=k, g_idx=g_idx)
    assert w.act_order
    rp = repack(w, "cpu")
    assert rp.perm is not None
    perm = rp.perm.long()
    assert torch.equal(torch.sort(perm).values, torch.arange(k))
    sorted_groups = g_idx[perm]
    assert bool((sorted_groups[1:] >= sorted_groups[:-1]).all())
    # stable: within a group the rows keep their input order
    for g in range(k // group):
        rows = perm[sorted_groups == g]
        assert bool((rows[1:] > rows[:-1]).all())
    assert rp.group_mode == GroupMode.UNIFORM  # equal-sized groups become contiguous runs of `group` rows
    assert torch.equal(rp.codes(), w.codes()[perm])
    assert torch.equal(_dequantize_repacked(rp), dequantize(w))


def test_irregular_act_order_uses_per_row_groups() -> None:
    k = 128
    g_idx = torch.randint(0, 4, (k,), generator=torch.Generator().manual_seed(3))
    w = _weight(4, 32, False, k=k, g_idx=g_idx)
    rp = repack(w, "cpu")
    assert rp.group_mode == GroupMode.PER_ROW
    assert rp.row_group is not None and rp.perm is not None
    assert torch.equal(rp.row_group.long(), g_idx[rp.perm.long()])
    assert torch.equal(_dequantize_repacked(rp), dequantize(w))


def test_k_slice_of_act_order_layer_keeps_global_groups() -> None:
    k, n = 256, 32
    g_idx = torch.randperm(k, generator=torch.Generator().manual_seed(5)) % 8
    full = _weight(3, 32, False, k=k, n=n, g_idx=g_idx)
    part = shard_weight(full, Shard(k, n, k_start=128, adds_bias=False), 128, n)
    rp = repack(part, "cpu")
    assert rp.scales.shape[0] == 8  # every group travels with the slice
    assert torch.equal(_dequantize_repacked(rp), dequantize(part))


def test_group_modes() -> None:
    assert repack(_weight(4, -1, True), "cpu").group_mode == GroupMode.SINGLE
    assert repack(_weight(4, 256, True), "cpu").group_mode == GroupMode.SINGLE  # one group covers K=128
    uniform = repack(_weight(4, 64, True), "cpu")
    assert (uniform.group_mode, uniform.group_rows, uniform.row_group) == (GroupMode.UNIFORM, 64, None)
    per_row = repack(_weight(4, 8, True), "cpu")  # 8 rows: no K block of 16 fits in one group
    assert per_row.group_mode == GroupMode.PER_ROW
    assert per_row.row_group is not None
    assert torch.equal(per_row.row_group.long(), torch.arange(128) // 8)


def test_three_bit_planes() -> None:
    w = _weight(3, 32, True, k=64, n=8)
    rp = repack(w, "cpu")
    assert rp.lo_bits == 2
    assert rp.lo.shape == (64 * 2 // 32, 8) and rp.lo.dtype == torch.int32
    assert rp.hi is not None and rp.hi.shape == (64 // 32, 8)
    codes = w.codes()
    # plane contents, independently of RepackedWeight.codes(): code of row k is in word k // 16 at bit 2 * (k % 16)
    k = 37
    low = (int(rp.lo[k // 16, 5]) >> (2 * (k % 16))) & 3
    high = (int(rp.hi[k // 32, 5]) >> (k % 32)) & 1
    assert low | (high << 2) == int(codes[k, 5])


def test_layout_dtypes_and_no_mutation() -> None:
    w = _weight(4, 32, False)
    before = [t.clone() for t in (w.qweight, w.zeros, w.scales)]
    rp = repack(w, "cpu")
    assert rp.scales.dtype == torch.float32 and rp.zeros is not None and rp.zeros.dtype == torch.float32
    assert torch.equal(rp.scales, w.scales.float())
    assert torch.equal(rp.lo, w.qweight)  # 2/4/8 bits without act order: the canonical packing is the kernel's
    assert all(torch.equal(a, b) for a, b in zip(before, (w.qweight, w.zeros, w.scales), strict=True))
    assert repack(_weight(4, 32, True), "cpu").zeros is None  # symmetric zeros are the compile-time centre


def test_v1_zero_of_two_to_the_bits_survives() -> None:
    """A GPTQ v1 zero of 2**bits (stored 2**bits - 1) is a legal canonical zero and must dequantize exactly."""
    k, n = 64, 16
    codes = torch.randint(0, 16, (k, n), generator=torch.Generator().manual_seed(1))
    zeros = torch.full((2, n), 16, dtype=torch.int32)
    scales = torch.rand(2, n, dtype=torch.float32).to(torch.bfloat16)
    w = QuantizedWeight.from_codes(Scheme(4, 32, False), codes, zeros, scales)
    assert torch.equal(_dequantize_repacked(repack(w, "cpu")), dequantize(w))
