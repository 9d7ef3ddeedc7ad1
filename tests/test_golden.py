"""Golden vectors written out literally, computed by hand from the layouts in shared/FACTS.md.

A wrong bit order, a wrong word order or a wrong AWQ interleave cannot pass these by symmetry.
"""

import torch

from wna16 import QuantizedWeight, Scheme
from wna16.formats import AWQ, GPTQ_V1, GPTQ_V2
from wna16.packing import pack_rows, unpack_rows


def words(*values: int) -> list[int]:
    """Unsigned 32-bit patterns as the signed int32 values checkpoints store."""
    return [v - (1 << 32) if v >= 1 << 31 else v for v in values]


def test_three_bit_word_triple_counting() -> None:
    # v_i = i % 8. word0: v0..v9 at bits 3i, low 2 bits of v10 at 30-31; word1: bit 2 of v10 at bit 0, v11..v20 at
    # bits 3i+1, bit 0 of v21 at 31; word2: bits 1-2 of v21 at 0-1, v22..v31 at bits 3i+2.
    codes = (torch.arange(32) % 8).reshape(32, 1)
    assert pack_rows(codes, 3)[:, 0].tolist() == words(0x88FAC688, 0xC688FAC6, 0xFAC688FA)


def test_three_bit_word_triple_descending() -> None:
    codes = torch.tensor([(7 * i + 3) % 8 for i in range(32)]).reshape(32, 1)
    packed = torch.tensor(words(0x53977053, 0x70539770, 0x97705397), dtype=torch.int32).reshape(3, 1)
    assert pack_rows(codes, 3).tolist() == packed.tolist()
    assert unpack_rows(packed, 3)[:, 0].tolist() == codes[:, 0].tolist()


def test_two_four_eight_bit_words_lsb_first() -> None:
    assert pack_rows(torch.arange(16).reshape(16, 1) % 4, 2)[:, 0].tolist() == words(0xE4E4E4E4)
    assert pack_rows(torch.arange(8).reshape(8, 1), 4)[:, 0].tolist() == words(0x76543210)
    assert pack_rows(torch.tensor([[1], [2], [3], [250]]), 8)[:, 0].tolist() == words(0xFA030201)


def test_awq_interleaved_word() -> None:
    # Nibble p holds column [0, 2, 4, 6, 1, 3, 5, 7][p]: columns 0..7 holding codes 0..7 pack to 0x75316420.
    scheme = Scheme(4, -1, sym=False)
    codes = torch.arange(8, dtype=torch.int32).repeat(8, 1)  # K=8 rows, column j holds code j
    weight = QuantizedWeight.from_codes(scheme, codes, torch.zeros(1, 8), torch.ones(1, 8, dtype=torch.float16))
    packed = AWQ.pack(weight)
    assert packed["qweight"][:, 0].tolist() == words(0x75316420) * 8
    assert packed["qzeros"].tolist() == [[0]]


def _symmetric_4bit(n: int = 8) -> QuantizedWeight:
    scheme = Scheme(4, -1, sym=True)
    codes = torch.zeros(8, n, dtype=torch.int32)
    return QuantizedWeight.from_codes(scheme, codes, torch.full((1, n), 8), torch.ones(1, n, dtype=torch.float16))


def test_v1_symmetric_zero_word() -> None:
    assert GPTQ_V1.pack(_symmetric_4bit())["qzeros"].tolist() == [words(0x77777777)]


def test_v2_symmetric_zero_word() -> None:
    assert GPTQ_V2.pack(_symmetric_4bit())["qzeros"].tolist() == [words(0x88888888)]


def test_v1_stored_max_reads_as_two_to_the_bits() -> None:
    # The documented v1 policy: a stored zero of 2**bits - 1 is a true zero of 2**bits (stored + 1, no wrap).
    scheme = Scheme(4, -1, sym=False)
    tensors = {
        "qweight": torch.zeros(1, 8, dtype=torch.int32),
        "qzeros": torch.tensor([words(0xFFFFFFFF)], dtype=torch.int32),
        "scales": torch.ones(1, 8, dtype=torch.float16),
    }
    weight = GPTQ_V1.unpack(tensors, scheme, 8, 8)
    assert weight.zeros.tolist() == [[16] * 8]
    assert GPTQ_V1.pack(weight)["qzeros"].tolist() == [words(0xFFFFFFFF)]
