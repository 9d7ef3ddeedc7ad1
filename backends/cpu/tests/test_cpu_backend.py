"""The CPU backend's torch paths against the oracle under the wna16 error model, its row layout, and its refusals.

The native kernel's rules outrank the torch paths where it is built (``test_native.py`` tests them): here an autouse
fixture resolves the backend's rules without them, so these tests keep covering the torch int4/int8 paths, which
serve fp32 everywhere and everything on CPUs without the native kernel.

Every numerical test compares with :func:`wna16.tolerance.error_ratio` (the float64 product with the oracle's
dequantized weight, bound derived from the capability rule the backend matched), so a wrong zero term, a swapped
group or a mis-scattered column fails by an order of magnitude, not by a hair.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from typing import Any

import pytest
import torch

from wna16 import LayerSpec, QuantizedWeight, Registry, Scheme, Shard, quantize_rtn
from wna16.errors import FormatError, UnsupportedError
from wna16.partition import shard_bias, shard_weight
from wna16.protocol import LazyCapabilities
from wna16.reference import dequantize
from wna16.tolerance import Precision, error_ratio
from wna16_cpu import CpuBackend, int4, isa
from wna16_cpu.backend import FALLBACK, NATIVE, TUNING, _capabilities, tuning
from wna16_cpu.int4 import CHUNK_ROWS, Int4Linear, PackedColumns, RowLayout, _convert, kernel_group
from wna16_cpu.int8 import Int8Linear
from wna16_reference import ReferenceBackend

DTYPES = (torch.bfloat16, torch.float16, torch.float32)


@pytest.fixture(autouse=True)
def torch_paths(monkeypatch: pytest.MonkeyPatch) -> None:
    """The backend's rules without the native kernel's (resolved fresh, so every other rule is the real one)."""
    rules = tuple(r for r in CpuBackend.capabilities if not r.label.startswith(NATIVE))
    monkeypatch.setattr(CpuBackend, "capabilities", LazyCapabilities({"cpu"}, lambda: rules))


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


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bits", [2, 3, 8])
@pytest.mark.parametrize("sym", [True, False])
@pytest.mark.parametrize("group", [-1, 64])
def test_every_bit_width_matches_oracle(dtype: torch.dtype, bits: int, sym: bool, group: int) -> None:
    weight = make_weight(48, 384, Scheme(bits, group, sym), act_order=group > 0, seed=bits + group)
    x = torch.randn(3, 384).to(dtype)
    assert run(weight, dtype, x, torch.randn(48)) <= 1.0


@pytest.mark.parametrize("bits", [2, 3])
@pytest.mark.parametrize("sym", [True, False])
@pytest.mark.parametrize("act_order", [False, True])
def test_shifted_codes_are_exact(bits: int, sym: bool, act_order: bool) -> None:
    """2/3-bit codes enter the int4 kernel as ``q - z + 8`` with a zero term of 0, so each dequantized weight is the
    integer ``q - z`` times the bf16 scale, exact in float32: the identity matrix gives back ``W^T`` rounded once.
    A float zero term ``(8 - z) * s`` rounded to bf16 would not (that is what this test catches)."""
    weight = make_weight(32, 128, Scheme(bits, 32, sym), act_order=act_order, scale_dtype=torch.bfloat16, seed=bits)
    layer = CpuBackend().prepare(weight, LayerSpec.of(weight, torch.bfloat16))
    assert isinstance(layer, Int4Linear) and layer.shifted
    exact = dequantize(weight).to(torch.float64).t().to(torch.bfloat16)  # [K, N]
    eye = torch.eye(128, dtype=torch.bfloat16)
    assert torch.equal(layer(eye), exact)
    assert torch.equal(layer.dequantized_matmul(layer.layout.scatter(eye)).to(torch.bfloat16), exact)


@pytest.mark.parametrize(
    ("scheme", "dtype"),
    [
        (Scheme(3, 64, False), torch.bfloat16),
        (Scheme(4, 64, False), torch.bfloat16),
        (Scheme(4, 64, False), torch.float16),
        (Scheme(8, -1, True), torch.bfloat16),
    ],
)
def test_kernel_and_gemm_paths_both_match(scheme: Scheme, dtype: torch.dtype) -> None:
    """Layers with a kernel have two paths over the same bytes (kernel up to ``kernel_max_m`` rows, GEMM above):
    forced to each, both stay within the bound at the same M."""
    weight = make_weight(80, 320, scheme, act_order=scheme.group_size > 0, scale_dtype=torch.float32, seed=3)
    spec = LayerSpec.of(weight, dtype, bias=True)
    bias = torch.randn(80)
    x = torch.randn(6, 320).to(dtype)
    precision = Precision.for_backend(CpuBackend(), spec)
    layer = CpuBackend().prepare(weight, spec, bias)
    assert isinstance(layer, (Int4Linear, Int8Linear))
    for max_m in (0, 1 << 20):
        layer.kernel_max_m = max_m
        assert error_ratio(layer(x), x, weight, precision, bias) <= 1.0


def test_fp32_and_grouped_8bit_never_call_a_kernel() -> None:
    """torch has no fast fp32 int4 loop and no grouped/asymmetric int8 kernel: those layers are GEMM-only."""
    w4 = make_weight(32, 256, Scheme(4, 128, True))
    w8 = make_weight(32, 256, Scheme(8, 128, False))
    for weight, dtype in ((w4, torch.float32), (w8, torch.bfloat16), (w8, torch.float32)):
        layer = CpuBackend().prepare(weight, LayerSpec.of(weight, dtype))
        assert isinstance(layer, (Int4Linear, Int8Linear)) and layer.kernel_max_m <= 0


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


def test_int8_kernel_only_where_memory_safe() -> None:
    """The int8 kernel reads out of bounds for K % 16 != 0: such layers take the GEMM path at every M."""
    weight = make_weight(24, 40, Scheme(8, -1, True), seed=2)
    layer = CpuBackend().prepare(weight, LayerSpec.of(weight, torch.bfloat16))
    assert isinstance(layer, Int8Linear) and layer.kernel_max_m == 0
    x = torch.randn(1, 40).to(torch.bfloat16)
    assert run(weight, torch.bfloat16, x) <= 1.0


def test_int8_kernel_input_with_a_storage_offset() -> None:
    """``_weight_int8pack_mm`` segfaults on a contiguous view with a storage offset; the layer hands it a copy. Run in
    a child process so that a regression fails this test instead of killing the run."""
    if tuning().max_m(tuning().int8_max_m) < 3:
        pytest.skip(f"{isa.describe()}: the int8 kernel is not used here ({tuning().note})")
    child = textwrap.dedent(
        """
        import torch
        from wna16.protocol import LayerSpec
        from wna16.quantize import quantize_rtn
        from wna16.scheme import Scheme
        from wna16_cpu import CpuBackend

        weight = quantize_rtn(torch.randn(300, 256) / 16, Scheme(8, -1, True))
        layer = CpuBackend().prepare(weight, LayerSpec.of(weight, torch.bfloat16))
        assert layer.kernel_max_m >= 3, layer.kernel_max_m
        for offset in range(1, 9):
            base = torch.randn(offset + 3 * 256, dtype=torch.bfloat16)
            x = base[offset:].view(3, 256)
            assert x.is_contiguous() and x.storage_offset() == offset
            assert torch.equal(layer(x), layer(x.clone()))
        print("ok")
        """
    )
    done = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0 and done.stdout.strip() == "ok", (done.returncode, done.stderr[-2000:])


@pytest.mark.parametrize("m", [16, 1])
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
        (Scheme(4, 16, True), 32, 256, "group size 16 not supported"),
        (Scheme(3, 48, True), 32, 288, "group size 48 not supported"),
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


@pytest.mark.parametrize(("bits", "sym", "n"), [(4, True, 40), (4, False, 1), (2, False, 24), (3, True, 1043)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_int4_any_out_features(bits: int, sym: bool, n: int, dtype: torch.dtype) -> None:
    """N % 16 != 0 (the kernel's own limit): zero-weight columns up to the next multiple of 16, sliced off. Both
    paths, act order and a bias; N = 1043 spans a repack chunk and a partial column block."""
    weight = make_weight(n, 256, Scheme(bits, 64, sym), act_order=True, seed=n)
    spec = LayerSpec.of(weight, dtype, bias=True)
    assert CpuBackend().check(spec)
    bias = torch.randn(n)
    layer = CpuBackend().prepare(weight, spec, bias)
    assert isinstance(layer, Int4Linear) and layer.packed.shape[0] == -(-n // 16) * 16
    x = torch.randn(2, 3, 256).to(dtype)
    precision = Precision.for_backend(CpuBackend(), spec)
    for max_m in (0, 1 << 20):
        layer.kernel_max_m = max_m if dtype != torch.float32 else -1
        y = layer(x)
        assert y.shape == (2, 3, n) and y.is_contiguous() and y.dtype == dtype
        assert error_ratio(y, x, weight, precision, bias) <= 1.0


def test_refuses_other_devices() -> None:
    spec = LayerSpec(256, 32, Scheme(4, 128, True), torch.bfloat16, device="meta")
    assert not CpuBackend().check(spec)


def test_wrong_input_dtype_is_a_format_error() -> None:
    weight = make_weight(16, 64, Scheme(4, 32, True))
    layer = CpuBackend().prepare(weight, LayerSpec.of(weight, torch.bfloat16))
    with pytest.raises(FormatError, match="x: got float32"):
        layer(torch.randn(1, 64))


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("dtype", DTYPES)
def test_registry_prefers_cpu_over_reference(bits: int, dtype: torch.dtype) -> None:
    registry = Registry(discover=False)
    registry.register(CpuBackend())
    registry.register(ReferenceBackend())
    selection = registry.select(LayerSpec(256, 64, Scheme(bits, 128, False), dtype))
    assert selection.backend.name == "cpu"
    assert selection.support.priority > 0
    assert "lower priority" in selection.rejected["reference"][0]


def test_selection_follows_the_isa() -> None:
    """Rules, priorities and crossovers come from the ISA torch reports: on an ISA without a vectorised kernel the
    layers never call it, and the labels ``wna16 backends`` prints say which ISA and crossover they assume."""
    assert tuning() is TUNING.get(isa.isa(), FALLBACK)
    avx2, avx512 = _capabilities(TUNING["AVX2"]), _capabilities(TUNING["AVX512-BF16"])
    assert avx2[0].priority < avx512[0].priority
    assert all(isa.isa() in rule.label for rule in avx512 if "fp32" not in rule.label)
    assert FALLBACK.max_m(FALLBACK.int4_max_m) == 0 and FALLBACK.int4_priority < TUNING["AVX2"].int4_priority
    assert f"M={tuning().max_m(tuning().int4_max_m)}" in CpuBackend.capabilities[0].label
    assert isa.isa() in CpuBackend().description


def test_layer_follows_its_crossover(monkeypatch: pytest.MonkeyPatch) -> None:
    weight = make_weight(32, 256, Scheme(4, 128, True), seed=4)
    layer = CpuBackend().prepare(weight, LayerSpec.of(weight, torch.bfloat16))
    assert isinstance(layer, Int4Linear)
    calls: list[int] = []
    original = int4.dequantized_matmul

    def spy(xp: torch.Tensor, *args: Any) -> torch.Tensor:
        calls.append(xp.shape[0])
        return original(xp, *args)

    monkeypatch.setattr(int4, "dequantized_matmul", spy)
    m = layer.kernel_max_m
    layer(torch.randn(max(m, 1), 256).to(torch.bfloat16))
    layer(torch.randn(m + 1, 256).to(torch.bfloat16))
    assert calls == ([m + 1] if m >= 1 else [1, m + 1])


@pytest.mark.parametrize("n", [16, 48, 64, 80, 112, 2 * CHUNK_ROWS + 48])
def test_packed_columns_unpack_the_kernel_layout(n: int) -> None:
    """The learned column layout reads torch's opaque int4 bytes back exactly (whole blocks and a tail), and row
    chunks packed separately give the bytes of one pack: the repack need not hold N * K int32 codes."""
    columns = PackedColumns.of(n)
    assert columns is not None, "this torch build packs int4 differently: the GEMM path would be disabled"
    assert torch.equal(torch.sort(columns.perm).values, torch.arange(n))
    codes = torch.randint(0, 16, (n, 96), dtype=torch.int32, generator=torch.Generator().manual_seed(n))
    packed = _convert(codes)
    assert torch.equal(columns.unpack(packed, 96).to(torch.int32), codes.t()[:, columns.perm])
    centered = torch.cat([columns.centered(packed, 96, a, b, w, torch.float32) for a, b, w in columns.blocks(128)], 1)
    assert torch.equal(centered, (codes.t()[:, columns.perm] - 8).to(torch.float32))
    chunks = torch.cat([_convert(codes[i : i + CHUNK_ROWS]) for i in range(0, n, CHUNK_ROWS)])
    assert torch.equal(chunks, packed)


def test_available_on_cpu() -> None:
    assert CpuBackend().available("cpu")
    assert not CpuBackend().available("meta")
