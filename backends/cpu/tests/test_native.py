"""The native kernel: its packed layout (a bit-exact round trip), its build cache, its absence (no compiler), and
its products against the oracle under the wna16 error model for every scheme it serves, on both of its paths
(kernel and dequantize + GEMM) and on both of its implementations (AVX512-BF16 intrinsics and portable C).
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from wna16 import LayerSpec, QuantizedWeight, Scheme, Shard, quantize_rtn
from wna16.partition import shard_bias, shard_weight
from wna16.protocol import LazyCapabilities
from wna16.reference import dequantize
from wna16.tolerance import Precision, error_ratio
from wna16_cpu import CpuBackend, isa, native
from wna16_cpu.backend import NATIVE, _capabilities, tuning, uses_native
from wna16_cpu.int4 import Int4Linear
from wna16_cpu.native_linear import NativeLinear

SCHEMES = [Scheme(b, g, s) for b in (2, 3, 4, 8) for s in (True, False) for g in (-1, 32, 128)]
ROWS = (1, 2, 5, 8, 9, 33)

fast = pytest.mark.skipif(not native.availability()[0], reason=native.availability()[1])
"""Tests of the AVX512-BF16 kernel itself: they run wherever that path was built."""

ranked = pytest.mark.skipif(
    not uses_native(tuning(), torch.bfloat16),
    reason=f"{native.availability()[1]}; {isa.describe()}: {tuning().note}, native rule priority "
    f"{tuning().native_priority}",
)
"""Tests of the backend's native rules: they exist only where the AVX512-BF16 path was built *and* the ISA torch runs
with ranks it (``ATEN_CPU_CAPABILITY=avx2`` on a CPU with AVX512-BF16 builds the kernel but keeps the AVX2 rules)."""


def make_weight(n: int, k: int, scheme: Scheme, *, act_order: bool = False, seed: int = 0) -> QuantizedWeight:
    gen = torch.Generator().manual_seed(seed)
    g_idx = None
    if act_order:
        g_idx = (torch.randperm(k, generator=gen) % scheme.num_groups(k)).to(torch.int32)
    return quantize_rtn(torch.randn(n, k, generator=gen), scheme, scale_dtype=torch.float16, g_idx=g_idx)


def check_both_paths(layer: NativeLinear, weight: QuantizedWeight, dtype: torch.dtype, precision: Precision) -> None:
    """Every M of :data:`ROWS` on the kernel, then on dequantize + GEMM, within the declared bound."""
    for max_m in (1 << 30, 0):
        layer.kernel_max_m = max_m
        for m in ROWS:
            x = torch.randn(m, weight.in_features).to(dtype)
            y = layer(x)
            assert y.dtype == dtype and y.shape == (m, weight.out_features)
            assert error_ratio(y, x, weight, precision) <= 1.0, (weight.scheme, dtype, m, max_m)


@pytest.mark.parametrize("act_order", [False, True])
@pytest.mark.parametrize("scheme", SCHEMES, ids=str)
def test_layout_round_trip_is_bit_exact(scheme: Scheme, act_order: bool) -> None:
    """Repack then the native dequantizer gives the canonical dequantization bit for bit: codes exact, float32
    scales, the zero term ``(c - z) * s`` exact for fp16 scales (odd N, a partial last group, act order)."""
    weight = make_weight(43, 320, scheme, act_order=act_order, seed=scheme.bits)
    layer = NativeLinear(weight, torch.bfloat16, None, 1)
    assert torch.equal(layer.dequantize(), dequantize(weight))


@ranked
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("scheme", SCHEMES, ids=str)
def test_native_rule_matches_oracle(scheme: Scheme, dtype: torch.dtype) -> None:
    """The backend serves every scheme in bf16 and fp16 with the native layer, within the declared bound."""
    weight = make_weight(43, 320, scheme, seed=scheme.bits + 1)
    spec = LayerSpec.of(weight, dtype)
    backend = CpuBackend()
    layer = backend.prepare(weight, spec)
    assert isinstance(layer, NativeLinear)
    check_both_paths(layer, weight, dtype, Precision.for_backend(backend, spec))


@ranked
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_native_act_order_k_slice_and_bias(dtype: torch.dtype) -> None:
    """Each act-ordered K-slice (bias on rank 0) matches its own part of the weight within the declared bound. (A
    sum of the two slices is not compared with the full product: in fp16 with float32 accumulation the bound is
    about one output rounding, and two rounded partial sums may cancel.)"""
    full = make_weight(40, 512, Scheme(4, 64, False), act_order=True, seed=7)
    bias = torch.randn(40)
    x = torch.randn(3, 512).to(dtype)
    backend = CpuBackend()
    for rank, k0 in enumerate((0, 256)):
        shard = Shard(512, 40, k_start=k0, adds_bias=rank == 0)
        part = shard_weight(full, shard, 256, 40)
        spec = LayerSpec.of(part, dtype, bias=True, shard=shard)
        part_bias = shard_bias(bias, shard, 40)
        layer = backend.prepare(part, spec, part_bias)
        assert isinstance(layer, NativeLinear)
        xs = x[:, k0 : k0 + 256]
        added = part_bias if shard.adds_bias else None
        assert error_ratio(layer(xs), xs, part, Precision.for_backend(backend, spec), added) <= 1.0


@fast
def test_fp16_is_not_rounded_to_bf16() -> None:
    """fp16 activations keep their precision (x = bf16 hi + lo): the error is far below what rounding x to bf16,
    as the torch int4 path does, gives."""
    weight = make_weight(64, 1024, Scheme(4, 128, True), seed=3)
    x = torch.randn(4, 1024).to(torch.float16)
    layer = NativeLinear(weight, torch.float16, None, 1 << 30)
    exact = x.double() @ dequantize(weight).double().t()
    via_bf16 = x.to(torch.bfloat16).double() @ dequantize(weight).double().t()
    err = (layer(x).double() - exact).abs().max()
    assert err < (via_bf16 - exact).abs().max() / 4


@pytest.fixture
def portable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[native.Library]:
    """The portable C build (the AVX512-BF16 path compiled out), used by :mod:`wna16_cpu.native_linear`."""
    lib = native.build((*native.FLAGS, "-mno-avx512bf16"), tmp_path)
    monkeypatch.setattr(native, "library", lambda: lib)
    yield lib


PORTABLE = [Scheme(4, 128, True), Scheme(4, 32, False), Scheme(2, -1, False), Scheme(8, 64, False)]


@pytest.mark.parametrize("scheme", PORTABLE, ids=str)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_portable_path_matches_oracle(portable: native.Library, scheme: Scheme, dtype: torch.dtype) -> None:
    """The plain-C kernel (what CPUs without AVX512-BF16 compile) computes the same products within the bound,
    declared as the native rules declare them (exact parameters in the kernel; bf16 or float32 in the GEMM path)."""
    assert not portable.avx512bf16
    weight = make_weight(40, 320, scheme, act_order=scheme.bits == 4, seed=5)
    layer = NativeLinear(weight, dtype, None, 1 << 30, torch.bfloat16)
    assert torch.equal(layer.dequantize(), dequantize(weight))
    param = torch.bfloat16 if dtype == torch.bfloat16 else torch.float32
    check_both_paths(layer, weight, dtype, Precision(dtype, torch.float32, param))


def test_build_is_cached_and_a_corrupt_cache_is_rebuilt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A corrupt cache entry is rebuilt (one compiler run); loading again runs no compiler."""
    cc = native.compiler()
    if cc is None:
        pytest.skip("no C compiler on this machine")
    flags = (*native.FLAGS, "-DWNA16_CACHE_TEST")  # a key no other test loads (dlopen reuses a loaded path)
    target = native.cached_path(cc, flags, tmp_path)
    target.write_bytes(b"not a shared object")
    compiles: list[list[str]] = []
    run = subprocess.run

    def spy(args: list[str], **kw: Any) -> Any:
        if "-o" in args:
            compiles.append(args)
        return run(args, **kw)

    monkeypatch.setattr(subprocess, "run", spy)
    first = native.build(flags, tmp_path)
    assert len(compiles) == 1 and first.path == target and target.stat().st_size > 1000
    native.build(flags, tmp_path)
    assert len(compiles) == 1
    assert [p.name for p in tmp_path.iterdir()] == [target.name]  # no temporary left behind


@pytest.fixture
def no_compiler(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No C compiler found: the native library is resolved again without one, and the backend's rules too."""
    monkeypatch.setattr(native, "compiler", lambda: None)
    native.load.cache_clear()
    monkeypatch.setattr(CpuBackend, "capabilities", LazyCapabilities({"cpu"}, lambda: _capabilities(tuning())))
    yield
    native.load.cache_clear()


def test_without_a_compiler_the_torch_paths_serve(no_compiler: None) -> None:
    """The native path says why it is unavailable, and the backend serves through its torch rules."""
    ok, reason = native.availability()
    assert not ok and "no C compiler" in reason
    backend = CpuBackend()
    assert reason in backend.description
    assert not any(r.label.startswith(NATIVE) for r in CpuBackend.capabilities)
    weight = make_weight(32, 256, Scheme(4, 128, True))
    spec = LayerSpec.of(weight, torch.bfloat16)
    layer = backend.prepare(weight, spec)
    assert isinstance(layer, Int4Linear)
    x = torch.randn(2, 256).to(torch.bfloat16)
    assert error_ratio(layer(x), x, weight, Precision.for_backend(backend, spec)) <= 1.0
    with pytest.raises(native.Unavailable, match="no C compiler"):
        NativeLinear(weight, torch.bfloat16, None, 1)


@pytest.mark.parametrize("bits", [4, 8])
def test_threads_split_columns_only(bits: int) -> None:
    """Threads take disjoint column blocks (``torch.get_num_threads()`` of them), so the product is bit for bit the
    one-thread product, including a block count that does not divide evenly (49 blocks: 3 threads of at least 16)."""
    weight = make_weight(16 * 49, 256, Scheme(bits, 64, False), seed=11)
    layer = NativeLinear(weight, torch.float16, None, 1 << 30)
    x = torch.randn(5, 256).to(torch.float16)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = layer(x)
        torch.set_num_threads(3)
        assert torch.equal(layer(x), one)
    finally:
        torch.set_num_threads(before)
