"""What the Marlin backend does without a GPU and without vLLM: honest unavailability, refusals from its declaration,
the op-schema adapter, and the prepare step checked end to end against the oracle (layouts undone with the
backend's own permutations; the proofs against vLLM's reference are in test_marlin_layout_vllm.py)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from marlin_testlib import emulate, make_weight, own_perms

from wna16 import Scheme
from wna16.errors import UnsupportedError
from wna16.protocol import LayerSpec
from wna16.quantize import quantize_rtn
from wna16.reference import dequantize
from wna16.registry import load_object
from wna16_marlin import MarlinBackend, declared_capabilities, plan_rows, prepare_marlin, resolution
from wna16_marlin import backend as marlin_backend
from wna16_marlin.backend import Resolution
from wna16_marlin.vllm_ops import (
    GEMM_ROLES,
    REPACK_ROLES,
    OpCall,
    QuantType,
    ResolutionError,
    VllmMarlin,
    op_call,
    quant_types,
)

NO_CUDA = not torch.cuda.is_available()


@pytest.mark.skipif(not NO_CUDA, reason="this machine has CUDA")
def test_unavailable_without_cuda_with_a_reason():
    backend = MarlinBackend()
    got = backend.available("cuda")
    assert not got and "no CUDA device" in got.reason
    assert not backend.available("cpu") and "CUDA devices only" in backend.available("cpu").reason
    assert resolution().marlin is None


def test_importable_and_unavailable_without_vllm():
    code = (
        "import sys; sys.modules['vllm'] = None\n"  # an import of vllm now raises ImportError
        "import wna16_marlin as m\n"
        "b = m.MarlinBackend(); a = b.available('cuda')\n"
        "assert not a, a\n"
        "print(a.reason)\n"
        "print(len(b.capabilities))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split("\n")
    assert out[0] and int(out[1]) == 2


def test_entry_point_loads():
    assert isinstance(load_object("wna16_marlin:MarlinBackend"), MarlinBackend)


def spec(bits=4, group=128, sym=True, dtype=torch.float16, device="cuda:0", capability=(8, 0), **kw):
    return LayerSpec(256, 512, Scheme(bits, group, sym), dtype, device=device, capability=capability, **kw)


@pytest.mark.parametrize(
    "layer",
    [spec(), spec(bits=8, group=-1), spec(sym=False, group=32), spec(dtype=torch.bfloat16, act_order=True)],
    ids=["w4g128", "w8channel", "w4g32asym", "bf16-act-order"],
)
def test_static_declaration_accepts_what_every_marlin_serves(layer):
    assert MarlinBackend().check(layer)


@pytest.mark.parametrize(
    ("layer", "reason"),
    [
        (spec(bits=3), "3-bit not supported"),
        (spec(bits=2, sym=False), "2-bit not supported"),
        (spec(bits=8, sym=False), "8-bit not supported"),
        (spec(group=256), "group size 256 not supported"),
        (spec(dtype=torch.float32), "activation dtype float32 not supported"),
        (spec(device="cpu", capability=None), "device type 'cpu' not supported"),
        (spec(capability=(7, 0)), "below the required"),
    ],
)
def test_refusals(layer, reason):
    support = MarlinBackend().check(layer)
    assert not support
    assert any(reason in r for r in support.reasons), support.reasons


def test_prepare_refuses_on_cpu():
    weight = make_weight(256, 512, Scheme(4, 128, True))
    with pytest.raises(UnsupportedError):
        MarlinBackend().prepare(weight, LayerSpec.of(weight, torch.float16, device="cpu"))


def test_declaration_without_vllm_is_two_rules():
    sym, asym = declared_capabilities(None)
    assert (sym.bits, sym.sym, sym.asym) == (frozenset({4, 8}), True, False)
    assert (asym.bits, asym.sym, asym.asym) == (frozenset({4}), False, True)
    assert sym.group_sizes == frozenset({-1, 32, 64, 128}) and sym.min_capability == (8, 0)


NEW_GEMM = (
    "marlin_gemm(Tensor a, Tensor? c_or_none, Tensor b_q_weight, Tensor? b_bias_or_none, Tensor b_scales, "
    "Tensor? a_scales, Tensor? global_scale, Tensor? b_zeros_or_none, Tensor workspace, int b_type_id, "
    "SymInt size_m, SymInt size_n, SymInt size_k, bool use_atomic_add, bool use_fp32_reduce, "
    "bool is_zp_float) -> Tensor"
)
ACT_ORDER_GEMM = (
    "marlin_gemm(Tensor a, Tensor? c_or_none, Tensor b_q_weight, Tensor? b_bias_or_none, Tensor b_scales, "
    "Tensor? a_scales, Tensor? global_scale, Tensor? b_zeros_or_none, Tensor? g_idx_or_none, Tensor? perm_or_none, "
    "Tensor workspace, int b_type_id, SymInt size_m, SymInt size_n, SymInt size_k, bool is_k_full, "
    "bool use_atomic_add, bool use_fp32_reduce, bool is_zp_float) -> Tensor"
)


@pytest.mark.parametrize("schema", [NEW_GEMM, ACT_ORDER_GEMM])
def test_gemm_schema_adapter_fills_every_argument(schema):
    call = op_call(torch._C.parse_schema(schema), GEMM_ROLES)
    values = {role: role for role in GEMM_ROLES}
    args = call.arguments(values)
    assert len(args) == len(torch._C.parse_schema(schema).arguments)
    assert args[0] == "a" and "workspace" in args and ("g_idx" in args) == ("g_idx_or_none" in schema)


def test_schema_adapter_refuses_unknown_arguments():
    with pytest.raises(ResolutionError, match="mystery"):
        op_call(torch._C.parse_schema("marlin_gemm(Tensor a, Tensor mystery) -> Tensor"), GEMM_ROLES)
    old_repack = "gptq_marlin_repack(Tensor b_q_weight, Tensor perm, SymInt size_k, SymInt size_n, int num_bits) -> T"
    old_repack += "ensor"
    assert op_call(torch._C.parse_schema(old_repack), REPACK_ROLES).roles[1] == "perm"


class FakeType:
    def __init__(self, bits, bias, integer=True, signed=False, type_id=0):
        self.size_bits, self.bias, self.id = bits, bias, type_id
        self._integer, self._signed = integer, signed

    def is_integer(self):
        return self._integer

    def is_signed(self):
        return self._signed

    def has_bias(self):
        return self.bias != 0

    def __str__(self):
        return f"u{self.size_bits}b{self.bias}"


class FakeMarlinUtils:
    @staticmethod
    def query_marlin_supported_quant_types(has_zp, include_fp_type=True, device_capability=None):
        if has_zp:
            return [FakeType(4, 0, type_id=1), FakeType(8, 0, type_id=2)]
        return [FakeType(4, 8, type_id=3), FakeType(8, 128, type_id=4), FakeType(8, 0, integer=False), FakeType(4, 7)]


def test_quant_types_keep_only_wna16_compatible_integer_types():
    got = {(t.bits, t.zero_points, t.type_id) for t in quant_types(FakeMarlinUtils, 80)}
    assert got == {(4, True, 1), (8, True, 2), (4, False, 3), (8, False, 4)}


def k_multiple_of_128(n, k_part, k, group):
    """vLLM's Marlin shape rule as releases before the (128, 64) tile family had it: K % 128 (and N % 64)."""
    ok = n % 64 == 0 and k_part % 128 == 0
    return ok, None if ok else f"input_size_per_partition = {k_part} is not divisible by min_thread_k = 128"


def test_vllm_shape_rule_refuses_in_check_not_in_build(monkeypatch):
    """The installed vLLM's shape rule on the padded shape is a refusal of ``check`` (MarlinBackend.refusals), so
    ``prepare`` refuses before ``build`` and the registry sees the reason; under act order both tile families."""
    fake = VllmMarlin(
        version="0.test", gemm=lambda *a: torch.empty(0), gemm_call=OpCall("marlin_gemm", ()), repack=None,
        repack_call=None, types=(QuantType(4, False, 3, "uint4b8"),), group_sizes=frozenset({-1, 32, 64, 128}),
        min_capability=(8, 0), make_workspace=lambda device: torch.empty(0), check_shape=k_multiple_of_128,
    )  # fmt: skip
    monkeypatch.setattr(marlin_backend, "resolution", lambda: Resolution(fake, "", fake.version))
    backend = MarlinBackend()
    small = LayerSpec(64, 128, Scheme(4, -1, True), torch.float16, device="cuda:0", capability=(8, 0))
    support = backend.check(small)  # padded to the cheaper (N % 128, K % 64) family: N=128, K=64
    assert not support and support.reasons == (
        "vLLM 0.test refuses the padded shape N=128, K=64: input_size_per_partition = 64 is not divisible by "
        "min_thread_k = 128",
    )
    with pytest.raises(UnsupportedError, match="refuses the padded shape"):
        backend.prepare(make_weight(128, 64, Scheme(4, -1, True)), small)  # build (which would need a GPU) not reached
    assert backend.check(LayerSpec(256, 512, Scheme(4, 128, True), torch.float16, device="cuda", capability=(8, 0)))
    # K=192, groups of 64: without act order the (128, 64) family pads nothing and vLLM refuses K=192; under act order
    # the kernel's rows depend on g_idx, and either family may be chosen: one refused family refuses the spec.
    for act_order in (False, True):
        layer = LayerSpec(192, 128, Scheme(4, 64, True), torch.float16, act_order, device="cuda", capability=(8, 0))
        assert any("K=192" in r for r in backend.check(layer).reasons)
    fine = LayerSpec(256, 64, Scheme(4, 64, True), torch.float16, True, device="cuda", capability=(8, 0))
    assert backend.check(fine)


CASES = [
    (Scheme(4, 128, True), 256, 512, False),
    (Scheme(8, 32, True), 100, 200, True),
    (Scheme(4, 64, False), 72, 96, True),
    (Scheme(4, -1, False), 64, 128, False),
]


@pytest.mark.parametrize(("scheme", "n", "k", "act_order"), CASES, ids=str)
def test_prepare_computes_the_oracle(scheme, n, k, act_order):
    weight = make_weight(n, k, scheme, act_order=act_order, seed=3)
    bias = torch.randn(n).half()
    t = prepare_marlin(weight, torch.float16, bias)
    x = torch.randn(4, k).half()
    expected = x.double() @ dequantize(weight).double().t() + bias.double()
    torch.testing.assert_close(emulate(t, x, own_perms()), expected, rtol=1e-9, atol=1e-9)


def test_act_order_plan_sorts_rows_into_whole_groups():
    weight = make_weight(64, 256, Scheme(4, 64, True), act_order=True)
    plan = plan_rows(weight)
    group = weight.group_index()
    assert plan.source.numel() == 256 and not plan.identity_prefix
    assert torch.equal(group[plan.source].view(4, 64), torch.arange(4).view(4, 1).expand(4, 64))


def test_zero_point_sixteen_is_refused():
    weight = make_weight(64, 128, Scheme(4, 128, False))
    zeros = weight.zeros.clone()
    zeros[0, 0] = 16  # a GPTQ-v1 stored zero of 15 means a true zero of 16
    wrapped = type(weight)(weight.scheme, 128, 64, weight.qweight, zeros, weight.scales)
    with pytest.raises(UnsupportedError, match="zero point 16"):
        prepare_marlin(wrapped, torch.float16)


def test_uneven_groups_take_several_runs():
    """A g_idx whose groups are not all group_size rows (any assignment of rows to groups is a valid weight): a group
    with more rows than group_size takes several runs of the kernel, one with fewer is padded."""
    k, rows = 256, 64
    g_idx = torch.tensor([0] * 100 + [1] * 28 + [2] * 64 + [3] * 64, dtype=torch.int32)
    g_idx = g_idx[torch.randperm(k, generator=torch.Generator().manual_seed(5))]
    weight = quantize_rtn(torch.randn(128, k), Scheme(4, rows, True), g_idx=g_idx)
    plan = plan_rows(weight)
    assert plan.source.numel() == 5 * rows  # group 0 takes two runs, group 1 one padded run
    assert plan.group.tolist() == [0, 0, 1, 2, 3]
    bias = torch.randn(128).half()
    t = prepare_marlin(weight, torch.float16, bias)
    x = torch.randn(3, k).half()
    expected = x.double() @ dequantize(weight).double().t() + bias.double()
    torch.testing.assert_close(emulate(t, x, own_perms()), expected, rtol=1e-9, atol=1e-9)
