"""2/3/4/8-bit weights on the native kernel (``native.c``, built by :mod:`wna16_cpu.native`): its packed layout, the
repack, and the call, with a dequantize-then-GEMM path from the same bytes above the small-M crossover.

Why a kernel of our own: torch's int4 CPU kernel is bound by its nibble unpacking at M = 1 (about 40% of the memory
roofline on Zen4) and 8-bit grouped or asymmetric weights have no torch kernel at all (dequantize + BLAS, 0.25x
dense at M = 1). The native layout is built so that unpacking costs a few instructions per 64 weights: per block of
16 output columns, codes are stored so that widening 32 bytes gives ``(k, k+1)`` word pairs per column, mapped to
bf16 by a 16-entry table (4-bit) or converted from int8, and fed to AVX512-BF16 dot products against ``(x[k],
x[k+1])`` pairs (``native.c`` has the byte order).

Numerics: codes enter as small integers (exact in bf16): 2/3-bit and symmetric 4-bit *shifted*, ``q - z + 8`` in
[0, 15] (:func:`wna16_cpu.int4.kernel_codes`), 8-bit as ``q - 128``; the zero point of asymmetric 4- and 8-bit
weights is a float32 term ``zs = (c - z) * scale`` (``c`` = 8 or 128, exact for fp16/bf16 scales) multiplied with
the per-group sum of ``x``. Scales stay float32 (exact). ``x`` is split into bf16 ``hi + lo`` (exact for bf16 and
fp16 inputs), so every product is exact and sums are float32: fp16 activations get float32 accumulation, not the
bf16 rounding of torch's int4 path. Above the crossover the layer dequantizes column chunks (float32 for fp16
inputs: exact parameters; bf16 for bf16 inputs on CPUs with native bf16, rounded once: the declared bf16 parameter
rounding) and calls BLAS.

Rows use :class:`wna16_cpu.int4.RowLayout` (sorted by group, each group padded to a multiple of 32 rows with zero
codes), so act order, partial groups and K-slices all become whole groups, and ``N`` is padded to 16 columns with
scale 0. The packed codes are the layer's only copy of the weight.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from wna16.errors import FormatError
from wna16.ops import PreparedOp, register_kernel
from wna16.packing import unpack_rows
from wna16.weight import QuantizedWeight
from wna16_cpu import native
from wna16_cpu.int4 import (
    CENTER,
    CHUNK_ROWS,
    RowLayout,
    finish,
    kernel_codes,
    kernel_group,
    padded_columns,
    scatter,
)

COLS = 16
"""Output columns per block of the layout (one 512-bit vector of float32 accumulators)."""

INT8_CENTER = 128
"""8-bit codes are stored as ``q - 128`` in int8."""

CHUNK_BYTES = 8 << 20
"""Upper bound on the dequantized float32 chunk of the GEMM path."""


def layout_codes(codes: torch.Tensor, bits8: bool) -> torch.Tensor:
    """uint8 bytes of ``codes`` (int32 [n, K_padded], ``n`` a multiple of 16, values in [0, 15] or [-128, 127] for
    8-bit) in the native byte order: column-block-major, then 32-byte units (``native.c`` documents them)."""
    n, kp = codes.shape
    if bits8:
        units = codes.view(n // COLS, COLS, kp // 2, 2).permute(0, 2, 1, 3)  # [blocks, pairs, column, parity]
        return units.to(torch.int8).contiguous().view(torch.uint8).reshape(-1)
    v = codes.view(n // COLS, COLS, kp // 4, 2, 2).permute(0, 2, 1, 4, 3)  # [blocks, units, column, parity, half]
    return (v[..., 0] | (v[..., 1] << 4)).to(torch.uint8).contiguous().reshape(-1)


def pack_native(weight: QuantizedWeight) -> tuple[RowLayout, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Lay out a canonical weight (on CPU) for the native kernel: its row layout, the packed codes (``N' * K_padded
    / 2`` bytes, or ``N' * K_padded`` for 8-bit, ``N' = padded_columns(N)``), float32 ``scale [N' / 16, K_padded /
    gk, 16]`` and the zero term ``zs`` of the same shape (None when every zero is folded into the codes): each block
    of 16 columns has its parameters in one run (one stream per block, not one page per group). Repacked
    ``CHUNK_ROWS`` output columns at a time, so it never holds ``N * K`` int32 codes."""
    s = weight.scheme
    if s.bits not in (2, 3, 4, 8):
        raise FormatError(f"{weight.name}: the native CPU kernel takes 2-, 3-, 4- or 8-bit codes, got {s}")
    bits8 = s.bits == 8
    k, n = weight.in_features, weight.out_features
    n_padded = padded_columns(n)
    layout = RowLayout.of(weight.group_index(), weight.num_groups, kernel_group(s.group_rows(k)))
    kp = layout.padded_features
    packed = torch.empty(n_padded * kp // (1 if bits8 else 2), dtype=torch.uint8)
    per_column = kp // (1 if bits8 else 2)
    shifted = True
    for n0 in range(0, n_padded, CHUNK_ROWS):
        stop = min(n0 + CHUNK_ROWS, n_padded)
        if bits8:
            codes = unpack_rows(weight.qweight[:, n0 : min(stop, n)], 8, f"{weight.name}.qweight").t() - INT8_CENTER
            shifted = s.sym
        else:
            codes, shifted = kernel_codes(weight, n0, min(stop, n))
        filler = 0 if bits8 else CENTER  # weight 0 (or only the zero term, against x = 0 in padding rows)
        rows = torch.full((stop - n0, kp), filler, dtype=torch.int32)
        if layout.dest is None:
            rows[: codes.shape[0]] = codes
        else:
            rows[: codes.shape[0]].index_copy_(1, layout.dest, codes)
        packed[n0 * per_column : stop * per_column] = layout_codes(rows, bits8)
        del codes, rows
    scales = weight.scales.to(torch.float32)[layout.block_group]  # [blocks, N]
    pad = (0, n_padded - n)
    zs = None
    if not shifted:
        center = INT8_CENTER if bits8 else CENTER
        zs = torch.nn.functional.pad((center - weight.zeros.to(torch.float32)[layout.block_group]) * scales, pad)
    return layout, packed, by_block(torch.nn.functional.pad(scales, pad)), None if zs is None else by_block(zs)


def by_block(params: torch.Tensor) -> torch.Tensor:
    """[groups, N'] -> contiguous [N' / 16, groups, 16]: the parameter layout of ``native.c``."""
    groups, n = params.shape
    return params.view(groups, n // COLS, COLS).transpose(0, 1).contiguous()


def dequantize_native(
    packed: torch.Tensor,
    scale: torch.Tensor,
    zs: torch.Tensor | None,
    bits8: bool,
    block_rows: int,
    start: int = 0,
    stop: int | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """``W^T`` [K_padded, stop - start] in ``dtype`` (float32 or bf16) of padded columns ``start:stop`` (multiples of
    16), rows in the layout's order, dequantized by the native library from the packed codes."""
    lib = native.library()
    kp, n = scale.shape[1] * block_rows, scale.shape[0] * COLS
    stop = n if stop is None else stop
    out = torch.empty(kp, stop - start, dtype=dtype)
    zs_ptr = None if zs is None else zs.data_ptr()
    lib.dequant(packed.data_ptr(), int(bits8), scale.data_ptr(), zs_ptr, kp, block_rows, start // COLS,
                stop // COLS, out.data_ptr(), int(dtype == torch.bfloat16))  # fmt: skip
    return out


KERNEL = "cpu.native"
"""The name of this layer's kernel for ``wna16::linear`` (:mod:`wna16.ops`)."""


class NativeLinear(PreparedOp):
    """The prepared layer on the native kernel: ``x @ W^T + b`` (bf16 or fp16 ``x``) from one packed copy, computed
    by :func:`native_linear` through ``wna16::linear``: the kernel up to ``kernel_max_m`` rows, dequantize + GEMM
    above (bf16 GEMM for bf16 activations where ``gemm_dtype`` is bf16, float32 otherwise). Fields stay named and
    writable (tests force a path); the op reads them at each call."""

    def __init__(
        self,
        weight: QuantizedWeight,
        dtype: torch.dtype,
        bias: torch.Tensor | None,
        kernel_max_m: int,
        gemm_dtype: torch.dtype = torch.float32,
    ) -> None:
        if dtype not in (torch.bfloat16, torch.float16):
            raise FormatError(f"{weight.name}: the native CPU kernel takes bf16 or fp16 activations, got {dtype}")
        native.library()  # raises Unavailable (with the reason) before any repacking
        super().__init__(KERNEL, weight.in_features, weight.out_features, dtype)
        self.bits8 = weight.scheme.bits == 8
        self.layout, self.packed, self.scale, self.zs = pack_native(weight)
        self.kernel_max_m = kernel_max_m
        self.gemm_dtype = gemm_dtype if dtype == torch.bfloat16 else torch.float32
        self.bias = None if bias is None else bias.to(torch.float32)

    @property
    def state(self) -> tuple[torch.Tensor | None, ...]:
        """``(packed codes, float32 scale and zero term (or None) [N' / 16, groups, 16], row destinations or None,
        float32 bias or None)``."""
        return (self.packed, self.scale, self.zs, self.layout.dest, self.bias)

    @property
    def options(self) -> tuple[int, ...]:
        """``(8-bit codes, rows per scale block, kernel_max_m, GEMM in bf16, N)``."""
        bf16 = int(self.gemm_dtype == torch.bfloat16)
        return (int(self.bits8), self.layout.block_rows, self.kernel_max_m, bf16, self.out_features)

    def dequantize(self) -> torch.Tensor:
        """float32 ``W`` [N, K] from the packed layout (rows back in input order, padding dropped): the layout's
        round trip, for tests and tools."""
        w = dequantize_native(self.packed, self.scale, self.zs, self.bits8, self.layout.block_rows)
        rows = w if self.layout.dest is None else w[self.layout.dest]
        return rows[: self.in_features, : self.out_features].t().contiguous()


@register_kernel(KERNEL, ["cpu"])
def native_linear(x: torch.Tensor, state: Sequence[torch.Tensor | None], options: Sequence[int]) -> torch.Tensor:
    """``x`` [..., K] (any strides) -> [..., N] in ``x``'s dtype, from :attr:`NativeLinear.state` and ``options``."""
    packed, scale, zs, dest, bias = state
    assert packed is not None and scale is not None
    bits8, block_rows, kernel_max_m, bf16, out_features = options
    kp, n = scale.shape[1] * block_rows, scale.shape[0] * COLS
    x2 = x.reshape(-1, x.shape[-1])
    m = x2.shape[0]
    if m == 0:
        y = x2.new_empty(0, n, dtype=torch.float32)
    elif m > kernel_max_m:
        gemm = torch.bfloat16 if bf16 else torch.float32
        y = dequantized_matmul(scatter(x2.to(gemm), dest, kp), packed, scale, zs, bool(bits8), block_rows)
    else:
        xp = scatter(x2.to(torch.float32), dest, kp)
        y = torch.empty(m, n, dtype=torch.float32)
        zs_ptr = None if zs is None else zs.data_ptr()
        split = int(x.dtype != torch.bfloat16)  # fp16: x = hi + lo, both bf16
        status = native.library().linear(xp.data_ptr(), m, kp, packed.data_ptr(), bits8, scale.data_ptr(), zs_ptr,
                                         n, block_rows, split, y.data_ptr(), torch.get_num_threads())  # fmt: skip
        if status != 0:
            raise MemoryError(f"native CPU kernel: no memory for the bf16 copies of x [{m}, {kp}]")
    return finish(y, x, bias, out_features)


def dequantized_matmul(
    xp: torch.Tensor, packed: torch.Tensor, scale: torch.Tensor, zs: torch.Tensor | None, bits8: bool, block_rows: int
) -> torch.Tensor:
    """[M, N'] in ``xp``'s dtype (bf16 or float32, the GEMM dtype): ``xp @ W^T`` with ``W`` dequantized from the packed
    layout in that dtype, at most :data:`CHUNK_BYTES` of float32 at a time, each chunk then one GEMM."""
    kp, n = xp.shape[1], scale.shape[0] * COLS
    y = xp.new_empty(xp.shape[0], n)
    step = max(COLS, CHUNK_BYTES // (4 * kp) // COLS * COLS)
    for c0 in range(0, n, step):
        c1 = min(c0 + step, n)
        y[:, c0:c1] = xp @ dequantize_native(packed, scale, zs, bits8, block_rows, c0, c1, xp.dtype)
    return y
