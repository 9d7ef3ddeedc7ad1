"""The ``ipex`` backend, run for real through IPEX's CPU kernel (skipped where IPEX is not installed; the
``conformance-ipex`` nox session installs torch 2.8 + IPEX 2.8, runs this file and fails if it cannot import IPEX)."""

from __future__ import annotations

import os

import pytest
import torch
from ipex_testlib import make_weight, snapshot, unchanged, with_zeros

from wna16 import LayerSpec, QuantizedWeight, Scheme, quantize_rtn
from wna16.errors import UnsupportedError
from wna16.packing import pack_cols
from wna16.reference import dequantize
from wna16.tolerance import error_ratio

if os.environ.get("WNA16_REQUIRE_IPEX") != "1":  # the conformance-ipex session sets it: there, a skip is a failure
    pytest.importorskip("intel_extension_for_pytorch", reason="IPEX 2.8 is installed only in the conformance-ipex env")

from wna16_ipex.ipex import IpexBackend, IpexLinear, _from_weight, gptq_tensors, lowp_mode_name
from wna16_ipex.layout import regroup

BACKEND = IpexBackend()
DTYPES = [torch.float32, torch.float16]  # bf16 is refused on CPU (see test_bf16_refused_on_cpu)


def ratio(weight, dtype, bias=None, x_shape=(3,)):
    spec = LayerSpec.of(weight, dtype, bias=bias is not None)
    layer = BACKEND.prepare(weight, spec, bias)
    x = torch.randn(*x_shape, weight.in_features).to(dtype)
    y = layer(x)
    assert y.dtype == dtype and tuple(y.shape) == (*x_shape, weight.out_features)
    rule = BACKEND.check(spec).rule
    assert rule is not None
    return error_ratio(y, x, weight, rule, bias)


def test_available_on_cpu():
    assert BACKEND.available("cpu"), BACKEND.available("cpu").reason


@pytest.mark.parametrize(
    ("n", "k", "group", "sym", "act_order"),
    [
        (64, 256, 128, True, None),
        (64, 256, 32, False, None),
        (36, 520, 128, False, None),  # N % 32 != 0 (IPEX is wrong there unless padded), partial last group
        (40, 264, 48, True, None),  # group 48: not a power of two, regrouped
        (32, 512, -1, False, None),
        (32, 128, 128, False, None),  # a single explicit group: must be passed to IPEX as -1
        (32, 512, 64, False, "balanced"),
        (40, 512, 128, True, "uneven"),  # IPEX's own g_idx corrupts the heap here; regrouped instead
    ],
)
@pytest.mark.parametrize("dtype", DTYPES)
def test_matches_the_oracle(n, k, group, sym, act_order, dtype):
    weight = make_weight(n, k, group, sym, act_order=act_order)
    before = snapshot(weight)
    assert ratio(weight, dtype) <= 1.0
    assert unchanged(weight, before)


def test_bias_is_added_once_and_not_mutated():
    weight = make_weight(36, 256, 64, sym=False)
    bias = torch.randn(36)
    kept = bias.clone()
    assert ratio(weight, torch.float16, bias, x_shape=(2, 4)) <= 1.0
    assert torch.equal(bias, kept)


def test_bf16_refused_on_cpu():
    """IPEX's CPU kernel overflows to inf on bf16 activations of magnitude 2**17: declared, so refused in check."""
    weight = make_weight(64, 256, 128, True)
    support = BACKEND.check(LayerSpec.of(weight, torch.bfloat16))
    assert not support and any("bfloat16 not supported" in r for r in support.reasons), support.reasons


def test_zero_point_zero_is_served():
    weight = with_zeros(make_weight(32, 256, 128, sym=False), 0)
    assert ratio(weight, torch.float32) <= 1.0


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("act_order", [None, "uneven"])
def test_zero_point_sixteen_is_served_through_a_correction(dtype, act_order):
    """IPEX cannot take a zero of 16 (GPTQ v1 stored 15): served as 15 plus ``-s * sum(x over the group)``."""
    base = make_weight(40, 512, 64, sym=False, act_order=act_order)
    zeros = base.zeros.clone()
    zeros[::2] = 16  # every other group row: 16; the rest: 0 (both ends of the range)
    zeros[1::2] = 0
    weight = QuantizedWeight(base.scheme, 512, 40, base.qweight, zeros, base.scales, base.g_idx)
    assert ratio(weight, dtype, torch.randn(40)) <= 1.0
    layer = BACKEND.prepare(weight, LayerSpec.of(weight, dtype))
    assert isinstance(layer, IpexLinear) and layer.correction is not None and layer.compute == torch.float32


def test_without_the_correction_zero_sixteen_is_wrong():
    """The correction is needed (and the check sees it): the same layer without it is far outside the bound."""
    weight = with_zeros(make_weight(32, 256, 128, sym=False), 16)
    spec = LayerSpec.of(weight, torch.float32)
    layer = BACKEND.prepare(weight, spec)
    assert isinstance(layer, IpexLinear)
    layer.correction = None
    x = torch.randn(3, 256)
    rule = BACKEND.check(spec).rule
    assert rule is not None
    assert error_ratio(layer(x), x, weight, rule) > 10


def test_unpadded_columns_would_be_wrong():
    """Why N is padded to 32: IPEX 2.8 given N=36 directly computes garbage (if this starts passing, IPEX fixed it
    and the padding can go)."""
    quant = pytest.importorskip("intel_extension_for_pytorch.llm.quantization")
    weight = make_weight(36, 256, 128, sym=True)
    module = quant.IPEXWeightOnlyQuantizedLinear.from_weight(
        weight.qweight.clone(), weight.scales.float().clone(), None, 256, 36, group_size=128
    )
    x = torch.randn(2, 256)
    y = module(x)
    exact = x.double() @ dequantize(weight).double().t()
    assert (y.double() - exact).abs().max() > 0.1 * exact.abs().max()


def test_wrong_zero_offset_is_caught():
    """The oracle comparison can fail: zeros stored without the v1 offset are off by one and far out of bound."""
    weight = make_weight(32, 256, 128, sym=False)
    spec = LayerSpec.of(weight, torch.float32)
    layout = regroup(weight, None, power_of_two=True)
    tensors = gptq_tensors(layout, sym=False)
    tensors["zero_points"] = pack_cols(layout.zeros & 0xF, 4)  # no "- 1"
    module = _from_weight(tensors, torch.float32, torch.device("cpu"), None)
    layer = IpexLinear(module, layout.row_order("cpu"), 256, 32, torch.float32, torch.float32)
    x = torch.randn(3, 256)
    rule = BACKEND.check(spec).rule
    assert rule is not None
    assert error_ratio(layer(x), x, weight, rule) > 10


@pytest.mark.parametrize("dtype", DTYPES)
def test_lowp_mode_is_pinned_never_int8(dtype):
    weight = make_weight(32, 256, 128, sym=True)
    layer = BACKEND.prepare(weight, LayerSpec.of(weight, dtype))
    assert isinstance(layer, IpexLinear)
    impl = layer.module.woq_linear_impl
    q = pytest.importorskip("intel_extension_for_pytorch.quantization")
    assert impl._lowp_mode == getattr(q.WoqLowpMode, lowp_mode_name(dtype))
    assert impl._lowp_mode != q.WoqLowpMode.INT8


@pytest.mark.parametrize("dtype", DTYPES)
def test_declared_precision_is_what_the_kernel_does(dtype):
    """param_dtype = activation dtype, accum = fp32: with one-hot rows the output is each dequantized weight
    rounded once to the activation dtype; with two-hot rows it is the fp32 sum of two such rounded weights."""
    k, n = 256, 32
    weight = make_weight(n, k, 64, sym=False, scale_dtype=torch.float32)
    layer = BACKEND.prepare(weight, LayerSpec.of(weight, dtype))
    w = dequantize(weight).double().t()  # [K, N], exact
    eye = torch.eye(k)
    assert torch.equal(layer(eye.to(dtype)), w.to(dtype))
    two = eye[:-1] + eye[1:]
    rounded = w.to(dtype).double()
    want = (two.double() @ rounded).float().to(dtype)
    assert torch.equal(layer(two.to(dtype)), want)


@pytest.mark.parametrize(
    ("scheme", "device", "needle"),
    [
        (Scheme(8, 128, True), "cpu", "8-bit not supported"),
        (Scheme(2, 128, False), "cpu", "2-bit not supported"),
        (Scheme(4, 128, True), "cuda", "device type 'cuda' not supported"),
    ],
)
def test_check_refuses(scheme, device, needle):
    spec = LayerSpec(256, 64, scheme, torch.bfloat16, device=device)
    support = BACKEND.check(spec)
    assert not support and any(needle in r for r in support.reasons), support.reasons
    with pytest.raises(UnsupportedError, match=needle):
        BACKEND.prepare(quantize_rtn(torch.randn(64, 256), scheme), spec)


def test_xpu_unavailable_on_the_cpu_build():
    availability = BACKEND.available("xpu")
    if not torch.xpu.is_available():
        assert not availability and availability.reason
