"""The Triton kernels themselves, run under the interpreter on CPU (conftest.py requests it), against the oracle
with the error model of ``wna16.tolerance`` and the precision the backend declares for each spec."""

from __future__ import annotations

import pytest
import torch

from wna16 import FormatError, LayerSpec, Scheme, Shard, quantize_rtn
from wna16.partition import shard_bias, shard_weight
from wna16.reference import dequantize
from wna16.tolerance import error_ratio
from wna16.weight import QuantizedWeight
from wna16_rocm import RocmBackend, runtime
from wna16_rocm.configs import LaunchConfig
from wna16_rocm.linear import TritonLinear

BACKEND = RocmBackend()
DTYPES = [torch.float16, torch.bfloat16, torch.float32]


@pytest.fixture(autouse=True, scope="module")
def _interpreter() -> None:
    availability = BACKEND.available("cpu")
    assert availability, f"the kernel tests need the Triton interpreter: {availability.reason}"
    assert runtime.interpreted()


def _check(weight: QuantizedWeight, x: torch.Tensor, bias: torch.Tensor | None = None, **spec_kw: object) -> float:
    spec = LayerSpec.of(weight, x.dtype, bias=bias is not None, **spec_kw)  # type: ignore[arg-type]
    y = BACKEND.prepare(weight, spec, bias)(x)
    assert y.dtype == x.dtype and y.shape == (*x.shape[:-1], weight.out_features)
    rule = BACKEND.check(spec).rule
    assert rule is not None
    return error_ratio(y, x, weight, rule, bias if spec.adds_bias else None)


def _weight(bits: int, group: int, sym: bool, k: int, n: int, scale_dtype: torch.dtype = torch.float16, **kw: object):
    torch.manual_seed(17 * bits + group + k + n)
    return quantize_rtn(torch.randn(n, k), Scheme(bits, group, sym), scale_dtype=scale_dtype, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize(("group", "sym"), [(-1, True), (32, False), (64, True), (128, False)])
@pytest.mark.parametrize("m", [1, 19])  # GEMV, GEMM
def test_schemes(bits: int, group: int, sym: bool, m: int) -> None:
    dtype = DTYPES[(bits + group + m) % 3]  # every dtype meets every path without the full product
    w = _weight(bits, group, sym, k=256, n=72, scale_dtype=torch.bfloat16 if dtype == torch.bfloat16 else dtype)
    x = torch.randn(m, 256, dtype=dtype)
    bias = torch.randn(72, dtype=dtype) if m == 19 else None
    assert _check(w, x, bias) <= 1.0


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m", [2, 33])
@pytest.mark.parametrize("regular", [True, False])
def test_act_order(dtype: torch.dtype, m: int, regular: bool) -> None:
    k = 192
    gen = torch.Generator().manual_seed(m)
    g_idx = torch.randperm(k, generator=gen) % 6 if regular else torch.randint(0, 6, (k,), generator=gen)
    w = _weight(4 if regular else 3, 32, False, k=k, n=40, g_idx=g_idx)
    assert w.act_order
    assert _check(w, torch.randn(m, k, dtype=dtype)) <= 1.0


@pytest.mark.parametrize("group", [8, 48])
def test_group_sizes_that_are_not_powers_of_two(group: int) -> None:
    w = _weight(4, group, False, k=96, n=24)
    assert _check(w, torch.randn(5, 96, dtype=torch.bfloat16)) <= 1.0


def test_partial_last_group() -> None:
    w = _weight(8, 64, False, k=160, n=32)  # groups of 64, 64, 32
    assert _check(w, torch.randn(7, 160, dtype=torch.float16)) <= 1.0


@pytest.mark.parametrize("act_order", [False, True])
def test_tensor_parallel_slices(act_order: bool) -> None:
    k, n = 256, 64
    g_idx = torch.randperm(k, generator=torch.Generator().manual_seed(9)) % 8 if act_order else None
    full = _weight(4, 32, False, k=k, n=n, g_idx=g_idx)
    bias = torch.randn(n, dtype=torch.float16)
    x = torch.randn(6, k, dtype=torch.float16)
    for k_start, adds_bias in ((0, True), (128, False)):
        shard = Shard(k, n, k_start=k_start, n_start=32, adds_bias=adds_bias)
        part = shard_weight(full, shard, 128, 32)
        ratio = _check(part, x[:, k_start : k_start + 128], shard_bias(bias, shard, 32), shard=shard)
        assert ratio <= 1.0


def test_input_shapes_and_strides() -> None:
    w = _weight(4, 32, True, k=128, n=48)
    x = torch.randn(2, 3, 256, dtype=torch.float16)[..., ::2]  # 3-D, non-contiguous
    assert _check(w, x) <= 1.0
    lin = BACKEND.prepare(w, LayerSpec.of(w, torch.float16))
    assert lin(torch.empty(0, 128, dtype=torch.float16)).shape == (0, 48)
    with pytest.raises(FormatError, match=r"x: got bfloat16\[4, 128\]"):
        lin(torch.zeros(4, 128, dtype=torch.bfloat16))
    with pytest.raises(FormatError, match=r"\[\.\.\., 128\]"):
        lin(torch.zeros(4, 64, dtype=torch.float16))


def _integer_problem(bits: int, sym: bool, dtype: torch.dtype) -> tuple[QuantizedWeight, torch.Tensor]:
    """Small integers and scales of few significant bits: every product and sum is exact in float32, so a correct
    kernel returns exactly the float64 result rounded once to ``dtype``."""
    k, n, group = 128, 40, 32
    gen = torch.Generator().manual_seed(bits)
    codes = torch.randint(0, 1 << bits, (k, n), generator=gen)
    zeros = torch.randint(0, (1 << bits) + 1, (k // group, n), generator=gen)
    if sym:
        zeros = torch.full_like(zeros, 1 << (bits - 1))
    scales = (torch.randint(-96, 96, (k // group, n), generator=gen) / 64 + 1 / 128).to(torch.float16)
    weight = QuantizedWeight.from_codes(Scheme(bits, group, sym), codes, zeros, scales)
    x = torch.randint(-8, 9, (9, k), generator=gen).to(dtype) / 8
    return weight, x


@pytest.mark.parametrize("bits", [3, 8])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m", [1, 9])
def test_exact_arithmetic_gives_the_correctly_rounded_result(bits: int, dtype: torch.dtype, m: int) -> None:
    weight, x = _integer_problem(bits, sym=bits == 8, dtype=dtype)
    x = x[:m]
    y = BACKEND.prepare(weight, LayerSpec.of(weight, dtype))(x)
    expected = (x.double() @ dequantize(weight).double().t()).to(dtype)  # one round-to-nearest-even
    assert torch.equal(y, expected)


@pytest.mark.parametrize(("kernel", "split"), [("gemv", 2), ("gemv", 3), ("gemm", 2), ("gemm", 4)])
def test_split_k(kernel: str, split: int) -> None:
    """Split-K partial sums (the small-M GPU path) reduce to the same result; splits never straddle a group."""
    weight, x = _integer_problem(4, sym=False, dtype=torch.bfloat16)
    bias = torch.randint(-4, 5, (weight.out_features,)).to(torch.bfloat16)
    spec = LayerSpec.of(weight, torch.bfloat16, bias=True)
    lin = BACKEND.prepare(weight, spec, bias)
    assert isinstance(lin, TritonLinear)
    m = 3 if kernel == "gemv" else 9
    out = torch.empty(m, weight.out_features, dtype=torch.bfloat16)
    lin._launch(x[:m], out, LaunchConfig(kernel, block_n=16, block_k=16, block_m=16, split_k=split))
    expected = (x[:m].double() @ dequantize(weight).double().t() + bias.double()).to(torch.bfloat16)
    assert torch.equal(out, expected)
