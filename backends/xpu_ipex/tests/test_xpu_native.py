"""The torch-native XPU path without an XPU: its declaration and refusals, and its layout conversion, run through
an emulation of ``aten._weight_int4pack_mm_with_scales_and_zeros`` written from the op's documented contract
(oneDNN u4 weights [N, K/8] int32 with K contiguous, int8 zero points, per-group scales) and through the op's own
meta kernel (which checks the dtypes the real schema takes)."""

from __future__ import annotations

import pytest
import torch
from ipex_testlib import make_weight, snapshot, unchanged, with_zeros

from wna16 import LayerSpec, Scheme, quantize_rtn
from wna16.errors import NoBackendError, UnsupportedError
from wna16.registry import Registry
from wna16.tolerance import error_ratio
from wna16_ipex.native import GROUP_MULTIPLE, XpuInt4Linear, XpuInt4Weight, XpuNativeBackend, convert

BACKEND = XpuNativeBackend()


def op_preconditions(x: torch.Tensor, mat2: torch.Tensor, group: int, scales: torch.Tensor, zeros: torch.Tensor):
    """The TORCH_CHECKs of the XPU kernel (Blas.cpp / WoQMatmul.cpp), as assertions."""
    k = x.shape[1]
    n = mat2.shape[0]
    assert x.dtype in (torch.float16, torch.bfloat16) and x.is_contiguous() and x.dim() == 2
    assert mat2.dtype == torch.int32 and mat2.dim() == 2 and mat2.is_contiguous() and mat2.shape[1] * 8 == k
    assert group > 1 and group % 32 == 0 and k % group == 0
    assert scales.dim() == 2 and tuple(scales.shape) == (k // group, n) and scales.dtype == x.dtype
    assert zeros.dim() == 2 and tuple(zeros.shape) == (k // group, n) and zeros.dtype == torch.int8


def emulated_op(x: torch.Tensor, mat2: torch.Tensor, group: int, scales: torch.Tensor, zeros: torch.Tensor):
    """``x @ ((q - zp) * scale)^T`` in float64, rounded to x's dtype; q read byte-wise (little-endian u4 pairs:
    byte j of a row holds k = 2j in its low nibble and k = 2j + 1 in its high one), not with wna16's unpacker."""
    op_preconditions(x, mat2, group, scales, zeros)
    n = mat2.shape[0]
    nbytes = mat2.contiguous().view(torch.uint8).to(torch.int64)  # [N, K/2]
    q = torch.stack([nbytes & 0xF, nbytes >> 4], dim=-1).reshape(n, -1).double()  # [N, K]
    g = torch.arange(q.shape[1]) // group
    w = (q - zeros.double().t()[:, g]) * scales.double().t()[:, g]
    return (x.double() @ w.t()).to(x.dtype)


def run_emulated(weight, dtype, bias=None, x_shape=(3,)):
    converted = convert(weight, dtype)
    layer = XpuInt4Linear(converted, bias, torch.device("cpu"), op=emulated_op)
    x = torch.randn(*x_shape, weight.in_features).to(dtype)
    spec = LayerSpec.of(weight, dtype, bias=bias is not None, device="xpu")
    support = BACKEND.check(spec)
    assert support, support.reasons
    assert support.rule is not None
    return error_ratio(layer(x), x, weight, support.rule, bias)


CASES = [
    # (n, k, group, sym, act_order)
    (64, 256, 128, True, None),
    (40, 256, 32, False, None),
    (24, 520, 128, False, None),  # partial last group: padded to whole groups
    (24, 264, 48, True, None),  # group 48: regrouped to 64
    (24, 256, 16, False, None),  # group 16: regrouped to 32
    (24, 200, -1, False, None),  # one group, K not a multiple of 32
    (24, 512, 128, False, "balanced"),
    (24, 512, 64, True, "uneven"),
]


@pytest.mark.parametrize(("n", "k", "group", "sym", "act_order"), CASES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_conversion_computes_the_oracle_product(n, k, group, sym, act_order, dtype):
    weight = make_weight(n, k, group, sym, act_order=act_order, scale_dtype=torch.float32)
    before = snapshot(weight)
    assert run_emulated(weight, dtype) <= 1.0
    assert unchanged(weight, before)


def test_bias_and_batched_input():
    weight = make_weight(48, 256, 64, sym=False)
    bias = torch.randn(48)
    assert run_emulated(weight, torch.bfloat16, bias=bias, x_shape=(2, 5)) <= 1.0


@pytest.mark.parametrize("zero", [0, 16])
def test_edge_zero_points_are_integer_and_exact(zero):
    weight = with_zeros(make_weight(32, 256, 128, sym=False), zero)
    converted = convert(weight, torch.float16)
    assert converted.zeros.dtype == torch.int8 and int(converted.zeros.max()) == zero
    assert run_emulated(weight, torch.float16) <= 1.0


def test_layout_is_gptq_qweight_transposed_for_plain_weights():
    weight = make_weight(32, 256, 128, sym=True)
    converted = convert(weight, torch.bfloat16)
    assert torch.equal(converted.mat2, weight.qweight.t().contiguous())
    assert converted.group_size == 128 and converted.layout.gather is None
    assert converted.scales.dtype == torch.bfloat16


def test_emulation_catches_a_wrong_zero_convention():
    """The check is able to fail: a v1-style offset (zero - 1) in the int8 zeros is far outside the bound."""
    weight = make_weight(32, 256, 128, sym=False)
    good = convert(weight, torch.float16)
    bad = XpuInt4Weight(good.mat2, good.scales, good.zeros - 1, good.group_size, good.layout)
    x = torch.randn(4, 256).to(torch.float16)
    spec = LayerSpec.of(weight, torch.float16, device="xpu")
    rule = BACKEND.check(spec).rule
    assert rule is not None
    y = XpuInt4Linear(bad, None, torch.device("cpu"), op=emulated_op)(x)
    assert error_ratio(y, x, weight, rule) > 10


def test_meta_kernel_accepts_the_converted_operands():
    weight = make_weight(40, 520, 128, sym=False, act_order="uneven")
    c = convert(weight, torch.bfloat16)
    meta = [t.to("meta") for t in (c.mat2, c.scales, c.zeros)]
    x = torch.empty(3, c.layout.kernel_in_features, dtype=torch.bfloat16, device="meta")
    y = torch.ops.aten._weight_int4pack_mm_with_scales_and_zeros(x, meta[0], c.group_size, meta[1], meta[2])
    assert tuple(y.shape) == (3, 40) and y.dtype == torch.bfloat16
    assert c.group_size % GROUP_MULTIPLE == 0


def test_schema_matches_the_call():
    schema = str(torch.ops.aten._weight_int4pack_mm_with_scales_and_zeros.default._schema)
    assert "(Tensor self, Tensor mat2, int qGroupSize, Tensor qScale, Tensor qZeros) -> Tensor" in schema


@pytest.mark.parametrize(
    ("scheme", "dtype", "device", "needle"),
    [
        (Scheme(8, 128, True), torch.float16, "xpu", "8-bit not supported"),
        (Scheme(3, 128, False), torch.bfloat16, "xpu", "3-bit not supported"),
        (Scheme(4, 128, True), torch.float32, "xpu", "activation dtype float32 not supported"),
        (Scheme(4, 128, True), torch.float16, "cpu", "device type 'cpu' not supported"),
        (Scheme(4, 128, True), torch.float16, "cuda", "device type 'cuda' not supported"),
    ],
)
def test_check_refuses_what_the_op_cannot_do(scheme, dtype, device, needle):
    spec = LayerSpec(256, 64, scheme, dtype, device=device)
    support = BACKEND.check(spec)
    assert not support
    assert any(needle in r for r in support.reasons), support.reasons
    with pytest.raises(UnsupportedError, match=needle):
        BACKEND.prepare(quantize_rtn(torch.randn(64, 256), scheme), spec)


def test_convert_refuses_fp32_directly():
    with pytest.raises(UnsupportedError, match="fp16/bf16"):
        convert(make_weight(32, 256, 128, sym=True), torch.float32)


def test_unavailable_without_an_xpu_and_says_why():
    assert not BACKEND.available("cpu")
    reason = BACKEND.available("xpu").reason
    if not torch.xpu.is_available():
        assert reason, "an XPU-less machine must give a reason"
    registry = Registry(discover=False)
    registry.register(BACKEND)
    spec = LayerSpec(256, 64, Scheme(4, 128, True), torch.float16, device="xpu")
    if not torch.xpu.is_available():
        with pytest.raises(NoBackendError, match="xpu-native: unavailable"):
            registry.select(spec)
