"""The Ascend layout on CPU: signed codes, int4-in-int32 packing and the operator's documented formula
``(w + offset) * scale`` reproduce wna16's oracle exactly; the declaration refuses what the operator cannot do."""

import pytest
import torch

from wna16 import LayerSpec, Scheme, UnsupportedError, quantize_rtn
from wna16.reference import dequantize
from wna16_ascend import (
    AscendBackend,
    antiquant_params,
    npu_dequantize,
    pack_int4_in_int32,
    signed_codes,
    unpack_int4_from_int32,
)


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("group", [-1, 32, 128])
@pytest.mark.parametrize("sym", [True, False])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_documented_formula_equals_the_oracle(bits: int, group: int, sym: bool, dtype: torch.dtype) -> None:
    weight = quantize_rtn(
        torch.randn(48, 256, generator=torch.Generator().manual_seed(bits + group)),
        Scheme(bits, group, sym),
        scale_dtype=dtype,
    )
    codes = signed_codes(weight)
    assert codes.dtype == torch.int8 and int(codes.min()) >= -(1 << (bits - 1)) and int(codes.max()) < 1 << (bits - 1)
    scale, offset = antiquant_params(weight, dtype)
    assert scale.dtype == offset.dtype == dtype and scale.shape == (weight.scheme.num_groups(256), 48)
    assert torch.equal(npu_dequantize(codes, scale, offset), dequantize(weight))


def test_int4_in_int32_round_trip_and_nibble_order() -> None:
    codes = torch.tensor([[0, 1, 2, 3, -1, -2, -3, -8]], dtype=torch.int8)
    packed = pack_int4_in_int32(codes)
    assert packed.tolist() == [[0x8DEF3210 - (1 << 32)]]  # first code in the lowest nibble, signed nibbles
    weight = quantize_rtn(torch.randn(64, 128), Scheme(4, 32, False))
    assert torch.equal(unpack_int4_from_int32(pack_int4_in_int32(signed_codes(weight))), signed_codes(weight))


def test_declaration_and_availability_on_cpu() -> None:
    backend = AscendBackend()
    availability = backend.available("npu")
    assert not availability and "torch_npu" in availability.reason
    weight = quantize_rtn(torch.randn(48, 256), Scheme(4, 32, True), scale_dtype=torch.float16)
    ok = LayerSpec.of(weight, torch.float16, device="cpu")
    assert "device type 'cpu' not supported" in " ".join(backend.check(ok).reasons)
    npu = LayerSpec(256, 48, Scheme(4, 32, True), torch.float16, device="npu")
    assert backend.check(npu)
    for bad, reason in [
        (LayerSpec(256, 48, Scheme(3, 32, True), torch.float16, device="npu"), "3-bit not supported"),
        (LayerSpec(256, 48, Scheme(4, 48, True), torch.float16, device="npu"), "group size 48 not supported"),
        (LayerSpec(256, 44, Scheme(4, 32, True), torch.float16, device="npu"), "not a multiple of 8"),
        (LayerSpec(256, 48, Scheme(4, 32, True), torch.float32, device="npu"), "float32 not supported"),
        (LayerSpec(256, 48, Scheme(4, 32, True), torch.float16, act_order=True, device="npu"), "act order"),
    ]:
        support = backend.check(bad)
        assert not support and any(reason in r for r in support.reasons), (bad, support.reasons)
    with pytest.raises(UnsupportedError, match="device type 'cpu'"):
        backend.prepare(weight, ok)
