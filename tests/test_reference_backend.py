"""The reference backend against the oracle in float64: every bits/sym/group/act-order, 3-D input, bias, M=1, and
tensor-parallel N- and K-slices summed back to the full result."""

import itertools

import pytest
import torch
from strategies import weights

from wna16 import LayerSpec, QuantizedWeight, Scheme, Shard, quantize_rtn
from wna16.partition import shard_bias, shard_weight
from wna16.reference import dequantize
from wna16_reference import ReferenceBackend

BACKEND = ReferenceBackend()
DTYPES = (torch.float16, torch.bfloat16, torch.float32)
UNIT = {torch.float16: 2.0**-11, torch.bfloat16: 2.0**-8, torch.float32: 2.0**-24}


def assert_close(y: torch.Tensor, x: torch.Tensor, weight: QuantizedWeight, bias: torch.Tensor | None) -> None:
    """|y - ref| <= u_out |ref| + K u_fp32 (|x| @ |W|^T): output rounding plus float32 accumulation."""
    w = dequantize(weight).double()
    x64 = x.double().reshape(-1, x.shape[-1])
    ref = x64 @ w.t() + (0 if bias is None else bias.double())
    slack = UNIT[y.dtype] * ref.abs() + weight.in_features * 2.0**-24 * (x64.abs() @ w.abs().t()) + 1e-30
    err = (y.double().reshape(ref.shape) - ref).abs()
    assert bool((err <= slack).all()), f"worst ratio {(err / slack).max().item():.3g}"


# Act order needs more than one group; with group_size -1 every g_idx is trivial.
CELLS = [
    c
    for c in itertools.product((2, 3, 4, 8), (-1, 32, 48, 128), (True, False), (False, True))
    if c[1] != -1 or not c[3]
]


@pytest.mark.parametrize(("bits", "group", "sym", "act_order"), CELLS)
def test_numerics_against_the_oracle(bits: int, group: int, sym: bool, act_order: bool) -> None:
    scheme = Scheme(bits, group, sym)
    k, n = 160, 24  # 160 = a partial last group for 48 and 128
    gen = torch.Generator().manual_seed(bits * 1000 + group)
    g_idx = (torch.arange(k) // scheme.group_rows(k))[torch.randperm(k, generator=gen)] if act_order else None
    weight = quantize_rtn(torch.randn(n, k, generator=gen), scheme, g_idx=g_idx)
    assert weight.act_order == act_order
    for dtype, m, with_bias in itertools.product(DTYPES, (1, 7), (False, True)):
        bias = torch.randn(n, generator=gen).to(dtype) if with_bias else None
        spec = LayerSpec.of(weight, dtype, bias=with_bias)
        layer = BACKEND.prepare(weight, spec, bias)
        x = torch.randn(m, k, generator=gen).to(dtype)
        y = layer(x)
        assert y.dtype == dtype and y.shape == (m, n)
        assert_close(y, x, weight, bias)


def test_three_dimensional_input_and_noncontiguous_x() -> None:
    weight = quantize_rtn(torch.randn(40, 96), Scheme(4, 32, False))
    layer = BACKEND.prepare(weight, LayerSpec.of(weight, torch.bfloat16))
    x = torch.randn(2, 96, 3).to(torch.bfloat16).transpose(1, 2)  # [2, 3, 96], non-contiguous
    y = layer(x)
    assert y.shape == (2, 3, 40)
    assert_close(y, x, weight, None)


def test_chunking_covers_every_row(monkeypatch: pytest.MonkeyPatch) -> None:
    import wna16_reference

    monkeypatch.setattr(wna16_reference, "CHUNK_BYTES", 1)  # one packing run per chunk
    weight = quantize_rtn(torch.randn(8, 320), Scheme(3, 64, True))
    layer = BACKEND.prepare(weight, LayerSpec.of(weight, torch.float32))
    assert wna16_reference.chunk_rows(3, 8) == 32
    x = torch.randn(5, 320)
    assert_close(layer(x), x, weight, None)


@pytest.mark.parametrize(("group", "act_order"), [(-1, False), (32, False), (64, False), (32, True), (64, True)])
def test_tensor_parallel_slices_sum_to_the_full_result(group: int, act_order: bool) -> None:
    k, n = 256, 48
    scheme = Scheme(4, group, False)
    gen = torch.Generator().manual_seed(7)
    g_idx = (torch.arange(k) // scheme.group_rows(k))[torch.randperm(k, generator=gen)] if act_order else None
    full = quantize_rtn(torch.randn(n, k, generator=gen), scheme, g_idx=g_idx)
    bias = torch.randn(n, generator=gen)
    x = torch.randn(3, k, generator=gen)
    expected = BACKEND.prepare(full, LayerSpec.of(full, torch.float32, bias=True), bias)(x)

    # Column parallel: two N-slices, each yields its own columns.
    cols = []
    for n0 in (0, 16):
        shard = Shard(k, n, n_start=n0)
        part = shard_weight(full, shard, k, 16)
        s = LayerSpec.of(part, torch.float32, bias=True, shard=shard)
        cols.append(BACKEND.prepare(part, s, shard_bias(bias, shard, 16))(x))
    assert torch.allclose(torch.cat(cols, dim=1), expected[:, :32], atol=1e-5)

    # Row parallel: two K-slices of 128 rows; partial sums add up, the bias is added once.
    total = torch.zeros_like(expected)
    for i, k0 in enumerate((0, 128)):
        shard = Shard(k, n, k_start=k0, adds_bias=i == 0)
        part = shard_weight(full, shard, 128, n)
        s = LayerSpec.of(part, torch.float32, bias=True, shard=shard)
        assert s.is_k_slice and s.adds_bias == (i == 0)
        total += BACKEND.prepare(part, s, bias)(x[:, k0 : k0 + 128])
    assert torch.allclose(total, expected, atol=1e-4)


def test_k_slice_off_group_boundary_is_invalid() -> None:
    full = quantize_rtn(torch.randn(16, 256), Scheme(4, 64, True))
    shard = Shard(256, 16, k_start=32)
    spec = LayerSpec(96, 16, full.scheme, torch.float32, shard=shard)
    support = BACKEND.check(spec)
    assert not support and "groups of 64" in support.reasons[0]


def test_prepare_does_not_mutate_its_inputs() -> None:
    weight = quantize_rtn(torch.randn(16, 64), Scheme(4, 32, False))
    before = [t.clone() for t in (weight.qweight, weight.zeros, weight.scales)]
    bias = torch.randn(16)
    bias_before = bias.clone()
    BACKEND.prepare(weight, LayerSpec.of(weight, torch.float16, bias=True), bias.half())(torch.randn(2, 64).half())
    assert all(torch.equal(a, b) for a, b in zip(before, (weight.qweight, weight.zeros, weight.scales), strict=True))
    assert torch.equal(bias, bias_before)


def test_hypothesis_weights_match_the_oracle() -> None:
    from hypothesis import given, settings

    @settings(max_examples=25)
    @given(weights())
    def check(weight: QuantizedWeight) -> None:
        x = torch.randn(3, weight.in_features)
        assert_close(BACKEND.prepare(weight, LayerSpec.of(weight, torch.float32))(x), x, weight, None)

    check()
