"""Every on-disk layout converts losslessly to and from the canonical weight; bad input gets a typed error."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from strategies import schemes, weights

from wna16 import FormatError, QuantizedWeight, Scheme, SchemeError, Shard, quantize_rtn
from wna16.formats import AWQ, COMPRESSED_TENSORS, GPTQ_V1, GPTQ_V2, get_format
from wna16.packing import pack_cols, pack_rows, run_length, unpack_cols, unpack_rows
from wna16.partition import shard_weight
from wna16.reference import dequantize


@given(st.sampled_from((2, 3, 4, 8)), st.integers(1, 6), st.integers(1, 9), st.integers(0, 2**31 - 1))
def test_pack_unpack_rows_is_identity(bits: int, runs: int, cols: int, seed: int) -> None:
    codes = torch.randint(
        0, 1 << bits, (run_length(bits)[0] * runs, cols), generator=torch.Generator().manual_seed(seed)
    )
    packed = pack_rows(codes, bits)
    assert packed.dtype == torch.int32 and packed.shape == (codes.shape[0] * bits // 32, cols)
    assert torch.equal(unpack_rows(packed, bits), codes.to(torch.int32))
    assert torch.equal(unpack_cols(pack_cols(codes.t(), bits), bits), codes.t().to(torch.int32))


def _gptq_compatible(weight: QuantizedWeight) -> QuantizedWeight:
    """GPTQ packs qzeros along N; restrict zeros to what v1 and v2 can both hold (1 .. 2**bits - 1)."""
    zeros = weight.zeros.clamp(1, (1 << weight.scheme.bits) - 1)
    if weight.scheme.sym:
        zeros = weight.zeros
    return QuantizedWeight(
        weight.scheme, weight.in_features, weight.out_features, weight.qweight, zeros, weight.scales, weight.g_idx
    )


@given(weights(n_multiple=32))
def test_gptq_v1_and_v2_round_trip(weight: QuantizedWeight) -> None:
    weight = _gptq_compatible(weight)
    expected = dequantize(weight)
    for fmt in (GPTQ_V1, GPTQ_V2):
        tensors = fmt.pack(weight)
        assert set(tensors) == {"qweight", "qzeros", "scales", "g_idx"}
        back = fmt.unpack(tensors, weight.scheme, weight.in_features, weight.out_features)
        assert torch.equal(back.qweight, weight.qweight)
        assert torch.equal(back.zeros, weight.zeros)
        assert torch.equal(back.scales, weight.scales)
        assert (back.g_idx is None) == (weight.g_idx is None)
        assert torch.equal(dequantize(back), expected)


@given(weights(schemes(bits=(4,)), n_multiple=8, act_order=False, whole_groups=True))
def test_awq_round_trip_and_conversion_preserves_dequantize(weight: QuantizedWeight) -> None:
    expected = dequantize(weight)
    awq = AWQ.pack(weight)
    assert awq["qweight"].shape == (weight.in_features, weight.out_features // 8)
    from_awq = AWQ.unpack(awq, weight.scheme, weight.in_features, weight.out_features)
    assert torch.equal(dequantize(from_awq), expected)
    if int(weight.zeros.min()) >= 1:  # v1 cannot hold a true zero of 0
        v1 = GPTQ_V1.unpack(GPTQ_V1.pack(from_awq), weight.scheme, weight.in_features, weight.out_features)
        assert torch.equal(
            dequantize(AWQ.unpack(AWQ.pack(v1), weight.scheme, weight.in_features, weight.out_features)), expected
        )
    v2 = GPTQ_V2.unpack(GPTQ_V2.pack(from_awq), weight.scheme, weight.in_features, weight.out_features)
    assert torch.equal(dequantize(v2), expected)


def test_trivial_g_idx_is_dropped_and_nontrivial_kept() -> None:
    scheme = Scheme(4, 32, sym=True)
    codes, zeros, scales = (
        torch.zeros(64, 8, dtype=torch.int32),
        torch.full((2, 8), 8),
        torch.ones(2, 8, dtype=torch.float16),
    )
    trivial = torch.arange(64) // 32
    assert QuantizedWeight.from_codes(scheme, codes, zeros, scales, trivial).g_idx is None
    shuffled = trivial.flip(0)
    kept = QuantizedWeight.from_codes(scheme, codes, zeros, scales, shuffled)
    assert kept.act_order and torch.equal(kept.g_idx, shuffled.to(torch.int32))


def test_oracle_hand_example() -> None:
    # K=4, N=2, one group: W[n, k] = s[n] * (q[k, n] - z[n]), with a negative scale kept.
    scheme = Scheme(2, -1, sym=False)
    codes = torch.tensor([[0, 3], [1, 2], [2, 1], [3, 0]] * 4)  # K=16 (2-bit packs 16 codes a word)
    weight = QuantizedWeight.from_codes(scheme, codes, torch.tensor([[1, 2]]), torch.tensor([[0.5, -2.0]]))
    w = dequantize(weight)
    assert w.dtype == torch.float32 and w.shape == (2, 16)
    assert w[0, :4].tolist() == [-0.5, 0.0, 0.5, 1.0]
    assert w[1, :4].tolist() == [-2.0, 0.0, 2.0, 4.0]


def test_oracle_honours_g_idx() -> None:
    scheme = Scheme(4, 32, sym=False)
    codes = torch.full((64, 1), 5)
    g_idx = torch.cat([torch.ones(32), torch.zeros(32)]).to(torch.int32)  # first half uses group 1
    weight = QuantizedWeight.from_codes(scheme, codes, torch.tensor([[0], [4]]), torch.tensor([[1.0], [10.0]]), g_idx)
    w = dequantize(weight)
    assert w[0, :32].eq(10.0).all() and w[0, 32:].eq(5.0).all()


# --- bad input: typed errors that name the tensor and the expectation ---------------------------------------------


def _tensors(k: int = 64, n: int = 32) -> dict[str, torch.Tensor]:
    return {
        "qweight": torch.zeros(k // 8, n, dtype=torch.int32),
        "qzeros": torch.zeros(1, n // 8, dtype=torch.int32),
        "scales": torch.ones(1, n, dtype=torch.float16),
    }


def test_wrong_dtype_is_named() -> None:
    bad = {**_tensors(), "qweight": torch.zeros(8, 32, dtype=torch.int64)}
    with pytest.raises(FormatError, match=r"layers\.0\.qweight: got int64\[8, 32\], expected int32\[8, 32\]"):
        GPTQ_V2.unpack(bad, Scheme(4, -1, False), 64, 32, prefix="layers.0.")


def test_wrong_shape_is_named() -> None:
    bad = {**_tensors(), "scales": torch.ones(2, 32, dtype=torch.float16)}
    with pytest.raises(FormatError, match=r"scales: got float16\[2, 32\], expected .*\[1, 32\]"):
        GPTQ_V1.unpack(bad, Scheme(4, -1, False), 64, 32)


def test_missing_tensor_is_named() -> None:
    bad = _tensors()
    del bad["scales"]
    with pytest.raises(FormatError, match=r"x\.scales: missing"):
        GPTQ_V1.unpack(bad, Scheme(4, -1, False), 64, 32, prefix="x.")


def test_three_bit_awq_is_refused() -> None:
    with pytest.raises(FormatError, match="AWQ stores 4-bit codes only"):
        AWQ.expected_shapes(Scheme(3, 32, True), 64, 32)


def test_v1_cannot_write_a_true_zero_of_zero() -> None:
    scheme = Scheme(4, -1, sym=False)
    weight = QuantizedWeight.from_codes(
        scheme, torch.zeros(8, 8, dtype=torch.int32), torch.zeros(1, 8), torch.ones(1, 8)
    )
    with pytest.raises(FormatError, match=r"weight\.zeros: .* cannot be written as gptq, .*\[1, 16\]"):
        GPTQ_V1.pack(weight)


def test_v2_and_awq_cannot_write_a_zero_of_two_to_the_bits() -> None:
    scheme = Scheme(4, -1, sym=False)
    weight = QuantizedWeight.from_codes(
        scheme, torch.zeros(8, 8, dtype=torch.int32), torch.full((1, 8), 16), torch.ones(1, 8)
    )
    with pytest.raises(FormatError, match="gptq_v2"):
        GPTQ_V2.pack(weight)
    with pytest.raises(FormatError, match="zero of 16"):
        AWQ.pack(weight)


def test_symmetric_weight_with_other_zeros_is_refused() -> None:
    with pytest.raises(FormatError, match="symmetric but zeros lie in"):
        QuantizedWeight.from_codes(
            Scheme(4, -1, True), torch.zeros(8, 8, dtype=torch.int32), torch.full((1, 8), 7), torch.ones(1, 8)
        )


def test_g_idx_out_of_range_is_refused() -> None:
    with pytest.raises(FormatError, match=r"g_idx: values in \[0, 5\], expected \[0, 1\]"):
        QuantizedWeight.from_codes(
            Scheme(4, 32, False),
            torch.zeros(64, 8, dtype=torch.int32),
            torch.zeros(2, 8),
            torch.ones(2, 8),
            torch.tensor([5] + [0] * 63),
        )


def test_codes_that_do_not_fill_words_are_refused() -> None:
    with pytest.raises(FormatError, match="expected a multiple of 32"):
        pack_rows(torch.zeros(40, 4, dtype=torch.int32), 3)


def test_unknown_format_name() -> None:
    with pytest.raises(FormatError, match="expected one of"):
        get_format("exl2")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"bits": 5}, "bits=5: expected one of"),
        ({"bits": 4, "group_size": 0}, "group_size=0"),
        ({"bits": 4, "group_size": -2}, "group_size=-2"),
        ({"bits": 4, "sym": 1}, "sym=1"),
        ({"bits": True}, "bits=True"),
    ],
)
def test_scheme_rejects_invalid_values(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(SchemeError, match=match):
        Scheme(**kwargs)  # type: ignore[arg-type]


def test_scheme_groups() -> None:
    assert Scheme(4, 128).num_groups(300) == 3  # the last group is partial
    assert Scheme(4, -1).num_groups(300) == 1
    assert str(Scheme(3, 32, False)) == "w3g32asym"


def test_act_order_k_slice_that_leaves_groups_unused_round_trips() -> None:
    # Rows 0..63 use groups 0-1 only; their K-slice still carries the scales and zeros of all four groups.
    scheme = Scheme(4, 32, sym=False)
    g_idx = torch.cat([torch.arange(64) % 2, 2 + torch.arange(64) % 2]).to(torch.int32)
    full = quantize_rtn(torch.randn(16, 128, generator=torch.Generator().manual_seed(3)), scheme, g_idx=g_idx)
    part = shard_weight(full, Shard(128, 16, k_start=0), 64, 16)
    assert part.num_groups == 4 and int(part.g_idx.max()) == 1
    for fmt in (GPTQ_V1, GPTQ_V2):
        if fmt is GPTQ_V1 and int(part.zeros.min()) == 0:
            continue
        back = fmt.unpack(fmt.pack(part), scheme, 64, 16)
        assert torch.equal(dequantize(back), dequantize(part))


# compressed-tensors pack-quantized (llm-compressor, auto-round's llm_compressor export)


def test_compressed_tensors_golden_asymmetric() -> None:
    """4-bit, K=8, N=2, group 4, asymmetric: every stored int written out by hand from the layout's definition (codes
    LSB first along K per output row; zero points packed along N; scales [N, G])."""
    tensors = {
        "weight_packed": torch.tensor([[-2023406815], [-1718022385]], dtype=torch.int32),  # 0x87654321, 0x99990F0F
        "weight_scale": torch.tensor([[0.5, -0.25], [2.0, 1.0]], dtype=torch.float16),
        "weight_zero_point": torch.tensor([[195, 240]], dtype=torch.int32),  # 0xC3: n0=3, n1=12; 0xF0: n0=0, n1=15
        "weight_shape": torch.tensor([2, 8]),
    }
    weight = COMPRESSED_TENSORS.unpack(tensors, Scheme(4, 4, False), 8, 2)
    assert weight.codes().t().tolist() == [[1, 2, 3, 4, 5, 6, 7, 8], [15, 0, 15, 0, 9, 9, 9, 9]]
    assert weight.zeros.tolist() == [[3, 12], [0, 15]]
    assert dequantize(weight).tolist() == [
        [-1.0, -0.5, 0.0, 0.5, -1.25, -1.5, -1.75, -2.0],
        [6.0, -24.0, 6.0, -24.0, -6.0, -6.0, -6.0, -6.0],
    ]
    packed = COMPRESSED_TENSORS.pack(weight)
    assert set(packed) == {"weight_packed", "weight_scale", "weight_zero_point", "weight_shape"}
    for key, tensor in tensors.items():
        assert torch.equal(packed[key], tensor), key


def test_compressed_tensors_golden_symmetric_channel() -> None:
    """8-bit per channel, symmetric: no zero point stored; code 128 is zero (the signed value plus 128)."""
    tensors = {
        "weight_packed": torch.tensor([[33521664]], dtype=torch.int32),  # 0x01FF8000: codes 0, 128, 255, 1
        "weight_scale": torch.tensor([[0.5]], dtype=torch.bfloat16),
        "weight_shape": torch.tensor([1, 4], dtype=torch.int32),
    }
    weight = COMPRESSED_TENSORS.unpack(tensors, Scheme(8, -1, True), 4, 1)
    assert dequantize(weight).tolist() == [[-64.0, 0.0, 63.5, -63.5]]
    packed = COMPRESSED_TENSORS.pack(weight)
    assert set(packed) == {"weight_packed", "weight_scale", "weight_shape"}
    assert torch.equal(packed["weight_packed"], tensors["weight_packed"])
    assert packed["weight_shape"].tolist() == [1, 4]


def _ct_storable(weight: QuantizedWeight) -> QuantizedWeight:
    """compressed-tensors zero points are b-bit: 2**b (a GPTQ v1 artefact) cannot be stored."""
    zeros = weight.zeros if weight.scheme.sym else weight.zeros.clamp(0, (1 << weight.scheme.bits) - 1)
    return QuantizedWeight(
        weight.scheme, weight.in_features, weight.out_features, weight.qweight, zeros, weight.scales, weight.g_idx
    )


@given(weights())
def test_compressed_tensors_round_trip(weight: QuantizedWeight) -> None:
    """Every bit width, any N (zero points padded along N), act order or not: pack then unpack is the identity."""
    weight = _ct_storable(weight)
    tensors = COMPRESSED_TENSORS.pack(weight)
    s, k, n = weight.scheme, weight.in_features, weight.out_features
    assert tensors["weight_packed"].shape == (n, k * s.bits // 32)
    assert ("weight_zero_point" in tensors) == (not s.sym)
    assert ("weight_g_idx" in tensors) == weight.act_order
    if not s.sym:
        assert tensors["weight_zero_point"].shape == (-(-n * s.bits // 32), weight.num_groups)
    back = COMPRESSED_TENSORS.unpack(tensors, s, k, n)
    assert torch.equal(back.qweight, weight.qweight)
    assert torch.equal(back.zeros, weight.zeros)
    assert torch.equal(back.scales, weight.scales)
    assert (back.g_idx is None) == (weight.g_idx is None)
    assert torch.equal(dequantize(back), dequantize(weight))


@given(weights(n_multiple=32))
def test_compressed_tensors_converts_to_and_from_gptq(weight: QuantizedWeight) -> None:
    weight = _ct_storable(_gptq_compatible(weight))
    gptq = GPTQ_V2.unpack(GPTQ_V2.pack(weight), weight.scheme, weight.in_features, weight.out_features)
    ct = COMPRESSED_TENSORS.unpack(
        COMPRESSED_TENSORS.pack(gptq), weight.scheme, weight.in_features, weight.out_features
    )
    assert torch.equal(dequantize(ct), dequantize(weight))


def _ct_tensors() -> dict[str, torch.Tensor]:
    weight = quantize_rtn(torch.randn(16, 64, generator=torch.Generator().manual_seed(0)), Scheme(4, 32, False))
    return COMPRESSED_TENSORS.pack(weight)


@pytest.mark.parametrize(
    ("key", "value", "match"),
    [
        ("weight_shape", torch.tensor([16, 32]), r"weight_shape: holds \[16, 32\], expected \[16, 64\]"),
        ("weight_shape", torch.tensor([16.0, 64.0]), r"weight_shape: got float32\[2\]"),
        ("weight_packed", torch.zeros(16, 8, dtype=torch.int64), r"weight_packed: got int64\[16, 8\]"),
        ("weight_packed", torch.zeros(16, 9, dtype=torch.int32), r"weight_packed: got int32\[16, 9\]"),
        ("weight_scale", torch.zeros(2, 16, dtype=torch.float16), r"weight_scale: got float16\[2, 16\]"),
        ("weight_zero_point", torch.zeros(3, 2, dtype=torch.int32), r"weight_zero_point: got int32\[3, 2\]"),
        ("weight_g_idx", torch.zeros(64, dtype=torch.int32) - 1, r"g_idx: values in \[-1, -1\]"),
    ],
)
def test_compressed_tensors_bad_tensors_are_named(key: str, value: torch.Tensor, match: str) -> None:
    tensors = {**_ct_tensors(), key: value}
    with pytest.raises(FormatError, match=match):
        COMPRESSED_TENSORS.unpack(tensors, Scheme(4, 32, False), 64, 16, prefix="layer.")


def test_compressed_tensors_missing_zero_point_of_asymmetric_layer() -> None:
    tensors = _ct_tensors()
    del tensors["weight_zero_point"]
    with pytest.raises(FormatError, match=r"layer\.weight_zero_point: missing; scheme w4g32asym is asymmetric"):
        COMPRESSED_TENSORS.unpack(tensors, Scheme(4, 32, False), 64, 16, prefix="layer.")
    with pytest.raises(FormatError, match=r"layer\.weight_packed: missing"):
        COMPRESSED_TENSORS.unpack({}, Scheme(4, 32, True), 64, 16, prefix="layer.")


def test_compressed_tensors_cannot_write_a_zero_of_two_to_the_bits() -> None:
    weight = GPTQ_V1.unpack(
        GPTQ_V1.pack(
            quantize_rtn(torch.randn(32, 64, generator=torch.Generator().manual_seed(1)), Scheme(4, 32, False))
        )
        | {"qzeros": torch.full((2, 4), -1, dtype=torch.int32)},
        Scheme(4, 32, False),
        64,
        32,
    )
    assert int(weight.zeros.max()) == 16
    with pytest.raises(FormatError, match="a true zero of 16 cannot be written as compressed-tensors"):
        COMPRESSED_TENSORS.pack(weight)


def test_compressed_tensors_k_that_does_not_fill_words_is_refused() -> None:
    with pytest.raises(FormatError, match="cannot be packed at 3 bits"):
        COMPRESSED_TENSORS.expected_shapes(Scheme(3, -1, True), 40, 8)
