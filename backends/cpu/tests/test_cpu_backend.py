"""The CPU backend against the oracle under the wna16 error model, its row layout, and its refusals.

Every numerical test compares with :func:`wna16.tolerance.error_ratio` (the float64 product with the oracle's
dequantized weight, bound derived from the capability rule the backend matched), so a wrong zero term, a swapped
group or a mis-scattered column fails by an order of magnitude, not by a hair.
"""

from __future__ import annotations

import pytest
import torch

from wna16 import LayerSpec, QuantizedWeight, Registry, Scheme, Shard, quantize_rtn
from wna16.errors import FormatError, UnsupportedError
from wna16.partition import shard_bias, shard_weight
from wna16.tolerance import Precision, error_ratio
from wna16_cpu import CpuBackend
from wna16_cpu.int4 import SCALAR_MAX_M, Int4Linear, RowLayout, kernel_group
from wna16_cpu.int8 import SCALAR_MAX_M as INT8_SCALAR_MAX_M
from wna16_cpu.int8 import Int8Linear
from wna16_reference import ReferenceBackend

DTYPES = (torch.bfloat16, torch.float16, torch.float32)


def make_weight(
    n: int,
    k: int,
    scheme: Scheme,
    *,
    act_order: bool = False,
    scale_dtype: torch.dtype = torch.float16,
    seed: int = 0,
) -> QuantizedWeight:
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=gen)
    g_idx = None
    if act_order:
        groups = scheme.num_groups(k)
        g_idx = (torch.randperm(k, generator=gen) % groups).to(torch.int32)  # GPTQ desc_act: groups interleaved
    return quantize_rtn(w, scheme, scale_dtype=scale_dtype, g_idx=g_idx)


def run(weight: QuantizedWeight, dtype: torch.dtype, x: torch.Tensor, bias: torch.Tensor | None = None) -> float:
    backend = CpuBackend()
    spec = LayerSpec.of(weight, dtype, bias=bias is not None)
    layer = backend.prepare(weight, spec, bias)
    y = layer(x)
    assert y.dtype == dtype and y.shape == (*x.shape[:-1], weight.out_features)
    return error_ratio(y, x, weight, Precision.for_backend(backend, spec), bias)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("group", [-1, 32, 64, 128, 256])
@pytest.mark.parametrize("sym", [True, False])
def test_int4_matches_oracle(dtype: torch.dtype, group: int, sym: bool) -> None:
    weight = make_weight(48, 512, Scheme(4, group, sym), scale_dtype=torch.bfloat16, seed=group)
    x = torch.randn(5, 512).to(dtype)
    assert run(weight, dtype, x) <= 1.0


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
@pytest.mark.parametrize("m", sorted({1, SCALAR_MAX_M, SCALAR_MAX_M + 1, 33}))
def test_int4_scalar_dtypes_both_paths(dtype: torch.dtype, m: int) -> None:
    """fp16/fp32 run the scalar kernel up to SCALAR_MAX_M rows and dequantize-then-matmul above: both match."""
    weight = make_weight(32, 320, Scheme(4, 64, False), act_order=True, scale_dtype=torch.float32, seed=m)
    x = torch.randn(m, 320).to(dtype)
    assert run(weight, dtype, x, torch.randn(32)) <= 1.0
    layer = CpuBackend().prepare(weight, LayerSpec.of(weight, dtype))
    assert isinstance(layer, Int4Linear)
    xp = layer.layout.scatter(x)
    kernel = torch.ops.aten._weight_int4pack_mm_for_cpu(xp, layer.packed, layer.layout.block_rows, layer.sz)
    torch.testing.assert_close(layer.dequantized_matmul(xp).to(dtype), kernel, rtol=4e-3, atol=1e-3)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("group", [32, 128])
def test_int4_act_order(dtype: torch.dtype, group: int) -> None:
    weight = make_weight(32, 384, Scheme(4, group, False), act_order=True, seed=1)
    assert weight.act_order
    x = torch.randn(3, 384).to(dtype)
    assert run(weight, dtype, x) <= 1.0


@pytest.mark.parametrize(("k", "group"), [(320, 128), (200, -1), (96, 64)])
def test_int4_partial_last_group_is_padded(k: int, group: int) -> None:
    weight = make_weight(16, k, Scheme(4, group, False), seed=k)
    x = torch.randn(4, k).to(torch.bfloat16)
    assert run(weight, torch.bfloat16, x) <= 1.0


def test_int4_three_dim_noncontiguous_input_and_bias() -> None:
    weight = make_weight(64, 256, Scheme(4, 64, False), scale_dtype=torch.float32, seed=3)
    x = torch.randn(256, 3, 2).to(torch.bfloat16).permute(1, 2, 0)  # [3, 2, 256], not contiguous
    assert not x.is_contiguous()
    bias = torch.randn(64)
    assert run(weight, torch.bfloat16, x, bias) <= 1.0


def test_int4_empty_batch() -> None:
    weight = make_weight(16, 64, Scheme(4, 32, True))
    layer = CpuBackend().prepare(weight, LayerSpec.of(weight, torch.bfloat16))
    assert layer(torch.empty(0, 64, dtype=torch.bfloat16)).shape == (0, 16)


@pytest.mark.parametrize("act_order", [False, True])
def test_int4_tensor_parallel_k_slice(act_order: bool) -> None:
    full = make_weight(32, 512, Scheme(4, 64, False), act_order=act_order, seed=7)
    bias = torch.randn(32)
    x = torch.randn(2, 512).to(torch.bfloat16)
    total = torch.zeros(2, 32, dtype=torch.float64)
    for rank, k0 in enumerate((0, 256)):
        shard = Shard(512, 32, k_start=k0, adds_bias=rank == 0)
        part = shard_weight(full, shard, 256, 32)
        spec = LayerSpec.of(part, torch.bfloat16, bias=True, shard=shard)
        layer = CpuBackend().prepare(part, spec, shard_bias(bias, shard, 32))
        total += layer(x[:, k0 : k0 + 256]).to(torch.float64)
    bound_ratio = error_ratio(total, x, full, Precision.of(CpuBackend.capabilities[0], torch.bfloat16), bias)
    assert bound_ratio <= 2.0  # two partial sums, each rounded to bf16 once


def test_int4_zero_term_sign_matters() -> None:
    """The test can fail: feeding the kernel (z - 8) * s instead of (8 - z) * s is caught by a wide margin."""
    weight = make_weight(32, 256, Scheme(4, 128, False), seed=11)
    layer = CpuBackend().prepare(weight, LayerSpec.of(weight, torch.bfloat16))
    x = torch.randn(4, 256).to(torch.bfloat16)
    precision = Precision.for_backend(CpuBackend(), LayerSpec.of(weight, torch.bfloat16))
    assert error_ratio(layer(x), x, weight, precision) <= 1.0
    assert isinstance(layer, Int4Linear)
    layer.sz[..., 1].neg_()
    assert error_ratio(layer(x), x, weight, precision) > 10.0


def test_row_layout_identity_and_padding() -> None:
    trivial = torch.arange(256) // 128
    layout = RowLayout.of(trivial, 2, 128)
    assert layout.dest is None and layout.padded_features == 256 and layout.block_group.tolist() == [0, 1]

    group = torch.tensor([1, 0, 1, 0, 0])  # act order, uneven groups: 3 rows in group 0, 2 in group 1
    layout = RowLayout.of(group, 2, 4)
    assert layout.padded_features == 8
    assert layout.dest is not None and layout.dest.tolist() == [4, 0, 5, 1, 2]
    assert layout.block_group.tolist() == [0, 1]
    x = torch.tensor([[10.0, 20.0, 30.0, 40.0, 50.0]])
    assert layout.scatter(x).tolist() == [[20.0, 40.0, 50.0, 0.0, 10.0, 30.0, 0.0, 0.0]]


def test_kernel_group_choice() -> None:
    assert [kernel_group(r) for r in (32, 64, 128, 256, 4096, 384, 200)] == [32, 64, 128, 256, 256, 128, 32]


@pytest.mark.parametrize("dtype", DTYPES)
def test_int8_per_channel_symmetric(dtype: torch.dtype) -> None:
    weight = make_weight(24, 160, Scheme(8, -1, True), scale_dtype=torch.float16, seed=5)
    assert int(weight.codes().min()) == 0 or int(weight.codes().max()) == 255  # full range reaches an end
    x = torch.randn(2, 3, 160).to(dtype)
    assert run(weight, dtype, x, torch.randn(24)) <= 1.0


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
@pytest.mark.parametrize("m", sorted({1, INT8_SCALAR_MAX_M, INT8_SCALAR_MAX_M + 1, 40}))
def test_int8_scalar_dtypes_both_paths(dtype: torch.dtype, m: int) -> None:
    weight = make_weight(40, 96, Scheme(8, -1, True), scale_dtype=torch.float32, seed=m)
    x = torch.randn(m, 96).to(dtype)
    assert run(weight, dtype, x, torch.randn(40)) <= 1.0
    layer = CpuBackend().prepare(weight, LayerSpec.of(weight, dtype))
    assert isinstance(layer, Int8Linear)
    kernel = torch.ops.aten._weight_int8pack_mm(x, layer.qweight, layer.scales)
    torch.testing.assert_close(layer.dequantized_matmul(x).to(dtype), kernel, rtol=4e-3, atol=1e-3)


@pytest.mark.parametrize("m", [16, 1])  # both fp32 paths
def test_int8_full_range_codes_are_exact(m: int) -> None:
    """Codes 0 and 255 (q - 128 = -128 and 127) survive the int8 conversion."""
    codes = torch.tensor([[0, 255], [255, 0]] * 8, dtype=torch.int32)  # [K=16, N=2]
    zeros = torch.full((1, 2), 128, dtype=torch.int32)
    weight = QuantizedWeight.from_codes(Scheme(8, -1, True), codes, zeros, torch.tensor([[0.5, -0.25]]))
    x = torch.eye(16, dtype=torch.float32)[:m]
    y = CpuBackend().prepare(weight, LayerSpec.of(weight, torch.float32))(x)
    assert torch.equal(y, torch.tensor([[-64.0, -31.75], [63.5, 32.0]] * 8)[:m])


@pytest.mark.parametrize(
    ("scheme", "n", "k", "needle"),
    [
        (Scheme(2, 128, True), 32, 256, "2-bit not supported"),
        (Scheme(3, 128, False), 32, 256, "3-bit not supported"),
        (Scheme(4, 16, True), 32, 256, "group size 16 not supported"),
        (Scheme(4, 48, True), 32, 288, "group size 48 not supported"),
        (Scheme(4, 128, True), 40, 256, "out_features 40 is not a multiple of 16"),
        (Scheme(8, -1, False), 32, 256, "asymmetric"),
        (Scheme(8, 128, True), 32, 256, "group size 128 not supported"),
        (Scheme(8, -1, True), 32, 40, "in_features 40 is not a multiple of 16"),
    ],
)
def test_refusals(scheme: Scheme, n: int, k: int, needle: str) -> None:
    spec = LayerSpec(k, n, scheme, torch.bfloat16)
    support = CpuBackend().check(spec)
    assert not support
    assert any(needle in reason for reason in support.reasons), support.reasons
    weight = make_weight(n, k, scheme)
    with pytest.raises(UnsupportedError):
        CpuBackend().prepare(weight, spec)


def test_refuses_other_devices() -> None:
    spec = LayerSpec(256, 32, Scheme(4, 128, True), torch.bfloat16, device="meta")
    assert not CpuBackend().check(spec)


def test_wrong_input_dtype_is_a_format_error() -> None:
    weight = make_weight(16, 64, Scheme(4, 32, True))
    layer = CpuBackend().prepare(weight, LayerSpec.of(weight, torch.bfloat16))
    with pytest.raises(FormatError, match="x: got float32"):
        layer(torch.randn(1, 64))


@pytest.mark.parametrize(
    ("scheme", "dtype", "winner"),  # fp16/fp32: scalar kernel for few rows, dequantize-then-matmul above
    [
        (Scheme(4, 128, False), torch.bfloat16, "cpu"),
        (Scheme(4, 128, False), torch.float16, "cpu"),
        (Scheme(4, 128, False), torch.float32, "cpu"),
        (Scheme(8, -1, True), torch.bfloat16, "cpu"),
        (Scheme(8, -1, True), torch.float16, "cpu"),
        (Scheme(8, -1, True), torch.float32, "cpu"),
    ],
)
def test_registry_prefers_cpu_where_it_is_fast(scheme: Scheme, dtype: torch.dtype, winner: str) -> None:
    registry = Registry(discover=False)
    registry.register(CpuBackend())
    registry.register(ReferenceBackend())
    selection = registry.select(LayerSpec(256, 64, scheme, dtype))
    assert selection.backend.name == winner
    assert selection.support.priority == (10 if dtype == torch.bfloat16 else 1)


def test_available_on_cpu() -> None:
    assert CpuBackend().available("cpu")
    assert not CpuBackend().available("meta")
