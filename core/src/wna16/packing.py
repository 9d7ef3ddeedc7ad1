"""Bit packing of integer codes into int32 words, the primitive every on-disk layout is built from.

Codes are written LSB first as one continuous bit stream: code ``i`` of a run occupies stream bits
``[i*bits, (i+1)*bits)`` and word ``w`` holds stream bits ``[32*w, 32*w+32)``. For 2/4/8 bits this is the familiar
"element j at bits [j*b, (j+1)*b)"; for 3 bits it gives the GPTQ triple of words where codes 10 and 21 straddle a
word boundary. Words are stored as signed int32 (as in the checkpoints) and unpacked with shift-then-mask.
"""

from __future__ import annotations

import math

import torch

from wna16.errors import FormatError, describe

_WORD = 32
_U32 = 0xFFFFFFFF


def run_length(bits: int) -> tuple[int, int]:
    """``(codes, words)`` of the smallest run that fills whole words: (16, 1) for 2 bits, (32, 3) for 3 bits."""
    common = math.gcd(bits, _WORD)
    return _WORD // common, bits // common


def packed_rows(rows: int, bits: int, what: str = "codes") -> int:
    """Number of int32 rows that ``rows`` codes pack into; raises unless they fill whole words."""
    codes, words = run_length(bits)
    if rows % codes:
        raise FormatError(f"{what}: {rows} rows cannot be packed at {bits} bits; expected a multiple of {codes}")
    return rows // codes * words


def _to_int32(words: torch.Tensor) -> torch.Tensor:
    """Wrap int64 words holding unsigned 32-bit patterns into signed int32, as checkpoints store them."""
    words = words & _U32
    return torch.where(words >= 1 << 31, words - (1 << 32), words).to(torch.int32)


def pack_rows(codes: torch.Tensor, bits: int, what: str = "codes") -> torch.Tensor:
    """Pack integer ``codes`` of shape [R, C] along dim 0 into int32 of shape [R*bits/32, C]."""
    if codes.dim() != 2 or codes.dtype.is_floating_point or codes.dtype == torch.bool:
        raise FormatError(f"{what}: got {describe(codes)}, expected a 2-D integer tensor")
    rows, cols = codes.shape
    n_codes, n_words = run_length(bits)
    out_rows = packed_rows(rows, bits, what)
    values = codes.to(torch.int64)
    if values.numel() and (int(values.min()) < 0 or int(values.max()) >= 1 << bits):
        raise FormatError(f"{what}: values outside [0, {(1 << bits) - 1}] cannot be packed at {bits} bits")
    runs = values.reshape(rows // n_codes, n_codes, cols)
    words = torch.zeros(rows // n_codes, n_words, cols, dtype=torch.int64, device=codes.device)
    for i in range(n_codes):
        word, offset = divmod(i * bits, _WORD)
        words[:, word] |= (runs[:, i] << offset) & _U32
        if offset + bits > _WORD:
            words[:, word + 1] |= runs[:, i] >> (_WORD - offset)
    return _to_int32(words.reshape(out_rows, cols))


def unpack_rows(packed: torch.Tensor, bits: int, what: str = "packed") -> torch.Tensor:
    """Inverse of :func:`pack_rows`: int32 [R*bits/32, C] -> int32 codes [R, C] in ``[0, 2**bits)``."""
    if packed.dim() != 2 or packed.dtype != torch.int32:
        raise FormatError(f"{what}: got {describe(packed)}, expected a 2-D int32 tensor")
    n_codes, n_words = run_length(bits)
    rows, cols = packed.shape
    if rows % n_words:
        raise FormatError(
            f"{what}: {rows} int32 rows do not hold whole {bits}-bit runs; expected a multiple of {n_words}"
        )
    mask = (1 << bits) - 1
    if n_words == 1:  # 2/4/8 bits: no code straddles a word; shift-then-mask on int32 is exact for every shift
        shifts = torch.arange(0, _WORD, bits, dtype=torch.int32, device=packed.device).reshape(1, n_codes, 1)
        return ((packed.unsqueeze(1) >> shifts) & mask).reshape(rows * n_codes, cols)
    words = (packed.to(torch.int64) & _U32).reshape(rows // n_words, n_words, cols)
    codes = torch.empty(rows // n_words, n_codes, cols, dtype=torch.int64, device=packed.device)
    for i in range(n_codes):
        word, offset = divmod(i * bits, _WORD)
        value = words[:, word] >> offset
        if offset + bits > _WORD:
            value = value | (words[:, word + 1] << (_WORD - offset))
        codes[:, i] = value & mask
    return codes.reshape(rows // n_words * n_codes, cols).to(torch.int32)


def pack_cols(codes: torch.Tensor, bits: int, what: str = "codes") -> torch.Tensor:
    """Pack integer ``codes`` [R, C] along dim 1 into int32 [R, C*bits/32] (GPTQ ``qzeros``)."""
    return pack_rows(codes.t(), bits, what).t().contiguous()


def unpack_cols(packed: torch.Tensor, bits: int, what: str = "packed") -> torch.Tensor:
    """Inverse of :func:`pack_cols`."""
    return unpack_rows(packed.t(), bits, what).t().contiguous()
