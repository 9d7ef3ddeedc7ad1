"""2-, 3- and 4-bit weights on ``aten._weight_int4pack_mm_for_cpu``: the row layout the kernel needs, the repack,
the call, and a dequantize-then-GEMM path read from the same packed bytes for large M and fp32.

The kernel computes ``x @ W^T`` with ``W[n, k] = (q[n, k] - 8) * scale[b, n] + zero[b, n]`` where ``b = k // gk`` is a
*kernel block* of ``gk`` in {32, 64, 128, 256} consecutive input rows, ``scale`` and ``zero`` live in one tensor
``sz [K/gk, N, 2]`` in the activation dtype, and ``q`` is packed into an opaque, ISA-specific byte layout (so it is
rebuilt at every load and never serialised).

A canonical weight does not always have consecutive groups of ``gk`` rows: act order maps rows to groups through
``g_idx``, a partial last group is shorter, a K-slice of an act-ordered layer holds any number of rows per group, and
group -1 is one group over all of K. :class:`RowLayout` makes every case consecutive: it sorts the input rows by
group (once, at load) and pads each group with rows of code 8 (weight exactly 0) up to a multiple of ``gk``; each
call scatters ``x``'s columns to the same positions (padding columns stay 0). Without act order and with whole
groups the layout is the identity and ``x`` is passed through untouched.

Zero points: 2- and 3-bit codes and symmetric 4-bit codes are *shifted*, ``q' = q - z + 8`` (in [0, 15] for any
zero of those schemes), with a float zero term of 0: the kernel then computes ``(q - z) * scale`` exactly, an integer
times the rounded scale. Asymmetric 4-bit codes already fill [0, 15], so there the kernel's float zero carries the
zero point, ``zero = (8 - z) * scale``, computed in float32 and rounded once to the parameter dtype. Scales are
rounded to the parameter dtype (bf16 for the kernel, fp32 for the fp32 path), what the backend declares.

The packed bytes are the only copy of the codes: :class:`PackedColumns` learns, once per process and shape, which
output column each nibble of torch's opaque layout holds (it is ISA-specific: blocks of 64 columns on AVX-512, 32 on
AVX2), so that large M and fp32 can dequantize chunks of it and call BLAS instead of the kernel.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from wna16.errors import FormatError
from wna16.groups import regroup_rows
from wna16.ops import PreparedOp, register_kernel
from wna16.packing import unpack_rows
from wna16.weight import QuantizedWeight

KERNEL_GROUPS: tuple[int, ...] = (256, 128, 64, 32)
"""Block sizes ``aten._weight_int4pack_mm_for_cpu`` accepts, largest first (fewer blocks = fewer scale bytes)."""

CENTER = 8
"""The kernel subtracts 8 from every 4-bit code before scaling."""

KERNEL_DTYPE = torch.bfloat16
"""The only activation dtype with a vectorised int4 kernel in torch (fp16 and fp32 run a scalar loop); fp16 inputs
are rounded to it on the kernel path (declared by the fp16 rule as bf16 parameters and accumulation)."""

CHUNK_BYTES = 8 << 20
"""Upper bound on the float32 dequantized chunk of the GEMM path."""

CHUNK_ROWS = 1024
"""Output rows repacked at a time (a multiple of every ISA's column block): bounds the int32 codes the repack needs
to ``CHUNK_ROWS * K * 4`` bytes instead of ``N * K * 4``."""

INNER_K_TILES = 2
"""``innerKTiles`` argument of the CPU repack; the CPU layout does not depend on it (checked for 1..16)."""

N_MULTIPLE = 16
"""The kernel (and its repack) take only N a multiple of 16: other layers get zero-weight output columns up to the
next multiple (at most 15, code 8 with scale 0), packed with the rest and sliced off the product."""


def padded_columns(n: int) -> int:
    """``n`` rounded up to :data:`N_MULTIPLE`: the output columns a layer of ``n`` stores and computes."""
    return -(-n // N_MULTIPLE) * N_MULTIPLE


def kernel_group(group_rows: int) -> int:
    """The largest kernel block size dividing ``group_rows`` (rows per scheme group); 32 when none does, in which
    case each group is padded to a multiple of 32."""
    return next((g for g in KERNEL_GROUPS if group_rows % g == 0), KERNEL_GROUPS[-1])


@dataclass(frozen=True)
class RowLayout:
    """Where each input row of the weight sits in the kernel's padded, group-sorted row order.

    ``dest``: int64 [K], the padded position of input row ``k``, or ``None`` when the layout is the identity.
    ``block_group``: int64 [K_padded / gk], the scheme group whose scale and zero each kernel block uses.
    """

    in_features: int
    padded_features: int
    block_rows: int
    dest: torch.Tensor | None
    block_group: torch.Tensor

    @classmethod
    def of(cls, group: torch.Tensor, num_groups: int, block_rows: int) -> RowLayout:
        """Layout for rows whose groups are ``group`` (int64 [K]): rows sorted by group (stable, so a trivial
        ``g_idx`` keeps its order) and every group padded to a multiple of ``block_rows``."""
        rows = regroup_rows(group, num_groups, multiple=block_rows)
        dest = None if rows.identity else rows.dest
        return cls(rows.in_features, rows.kernel_rows, block_rows, dest, rows.block_groups(block_rows))

    def scatter(self, x2: torch.Tensor) -> torch.Tensor:
        """``x2`` [M, K] -> contiguous [M, K_padded] in kernel row order (zeros in the padding columns)."""
        return scatter(x2, self.dest, self.padded_features)


def scatter(x2: torch.Tensor, dest: torch.Tensor | None, padded_features: int) -> torch.Tensor:
    """:meth:`RowLayout.scatter` from the layout's call-time fields (what the op's state carries)."""
    if dest is None:
        return x2.contiguous()
    out = x2.new_zeros(x2.shape[0], padded_features)
    return out.index_copy_(1, dest, x2)


def _convert(codes: torch.Tensor) -> torch.Tensor:
    return torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes.contiguous(), INNER_K_TILES)


def _nibble_columns(packed: torch.Tensor, rows: int, block: int) -> torch.Tensor:
    """uint8 [rows, blocks * block]: the codes of ``packed`` (the bytes of whole column blocks, ``[blocks, rows,
    block / 2]``) with each block's low nibbles first, then its high nibbles: the *packed column order*."""
    v = packed.view(-1, rows, block // 2).transpose(0, 1)
    return torch.cat([v & 15, v >> 4], dim=-1).reshape(rows, -1)


@dataclass(frozen=True)
class PackedColumns:
    """Which output column each packed column of torch's int4 CPU layout holds, for ``N`` columns.

    The layout (read from torch's ``weight_to_int4pack_kernel``, and *checked* here rather than trusted): columns in
    blocks of ``block`` (64 with AVX-512, 32 otherwise), block-major; a block stores, for each input row, ``block / 2``
    bytes whose low and high nibbles are two of its columns, in an ISA-specific pairing; a last, shorter block of
    ``tail`` columns is stored the same way with its own pairing. ``perm[c]`` is the column held at packed column ``c``
    (low nibbles of a block first, see :func:`_nibble_columns`).
    """

    block: int
    tail: int
    perm: torch.Tensor

    @classmethod
    def of(cls, n: int) -> PackedColumns | None:
        """The layout for ``n`` columns (a multiple of 16: :func:`padded_columns`), or None when this torch build
        packs differently."""
        block = _column_block()
        return None if block is None else _columns(n, block)

    def unpack(self, packed: torch.Tensor, rows: int, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """uint8 [rows, c]: the codes of packed columns ``start:stop`` (block-aligned), in packed column order."""
        n = int(self.perm.numel())
        stop = n if stop is None else stop
        full = n - self.tail
        flat = packed.view(-1)
        parts = []
        if start < full:
            parts.append(_nibble_columns(flat[start * rows // 2 : min(stop, full) * rows // 2], rows, self.block))
        if stop > full:
            parts.append(_nibble_columns(flat[full * rows // 2 :], rows, self.tail))
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)

    def blocks(self, chunk_columns: int) -> list[tuple[int, int, int]]:
        """``(start, stop, block)`` column ranges of at most ``chunk_columns`` (rounded to whole blocks) that share
        one block width: the full blocks in chunks, then the tail."""
        n = int(self.perm.numel())
        full = n - self.tail
        step = max(1, chunk_columns // self.block) * self.block
        out = [(c0, min(c0 + step, full), self.block) for c0 in range(0, full, step)]
        return out + ([(full, n, self.tail)] if self.tail else [])

    def centered(
        self, packed: torch.Tensor, rows: int, start: int, stop: int, block: int, dtype: torch.dtype
    ) -> torch.Tensor:
        """[rows, stop - start] in ``dtype``: ``code - 8`` of packed columns ``start:stop`` (one range of
        :meth:`blocks`), in packed column order (what :meth:`unpack` gives, centred and converted in fewer passes)."""
        v = packed.view(-1)[start * rows // 2 : stop * rows // 2].view(-1, rows, block // 2).transpose(0, 1)
        codes = torch.cat([v & 15, v >> 4], dim=-1).sub_(CENTER).view(torch.int8)  # uint8 wraps: int8 q - 8
        return codes.to(dtype).view(rows, stop - start)


def _columns(n: int, block: int) -> PackedColumns:
    rows = 32
    full = n // block * block
    col = torch.arange(n, dtype=torch.int32)[:, None].expand(n, rows)
    perm = torch.zeros(n, dtype=torch.int64)
    layout = PackedColumns(block, n - full, perm)
    for digit in range(4):  # column numbers < 65536, one hex digit per probe
        held = layout.unpack(_convert((col >> (4 * digit)) & 15), rows)[0]
        perm += held.to(torch.int64) << (4 * digit)
    return layout


@functools.cache
def _column_block() -> int | None:
    """The column block of this build's int4 layout, found by probing candidates against a random weight whose
    columns include a partial block; also checks that packing row chunks separately gives the same bytes."""
    rows, n = 64, 2 * CHUNK_ROWS + 48
    generator = torch.Generator().manual_seed(0)
    codes = torch.randint(0, 16, (n, rows), dtype=torch.int32, generator=generator)
    packed = _convert(codes)
    chunked = torch.cat([_convert(codes[i : i + CHUNK_ROWS]) for i in range(0, n, CHUNK_ROWS)])
    if not torch.equal(packed, chunked):
        return None
    for block in (64, 32, 16):
        layout = _columns(n, block)
        if torch.equal(torch.sort(layout.perm).values, torch.arange(n)) and torch.equal(
            layout.unpack(packed, rows).to(torch.int32), codes.t()[:, layout.perm]
        ):
            return block
    return None


def kernel_codes(weight: QuantizedWeight, start: int, stop: int) -> tuple[torch.Tensor, bool]:
    """int32 [stop - start, K] codes of output columns ``start:stop`` as the kernel takes them, and whether they are
    shifted (``q - z + 8``, zero term 0: every scheme but asymmetric 4-bit) or raw (the float zero carries ``z``)."""
    s = weight.scheme
    codes = unpack_rows(weight.qweight[:, start:stop], s.bits, f"{weight.name}.qweight").t()
    if s.bits == 4 and not s.sym:
        return codes, False
    if s.sym:
        return codes + (CENTER - s.center), True
    return codes + (CENTER - weight.zeros[:, start:stop].t()[:, weight.group_index()]), True


def shifts_codes(weight: QuantizedWeight) -> bool:
    """Whether :func:`kernel_codes` shifts this weight's codes (and its float zero term is 0)."""
    return not (weight.scheme.bits == 4 and not weight.scheme.sym)


def pack_int4(weight: QuantizedWeight, param_dtype: torch.dtype) -> tuple[RowLayout, torch.Tensor, torch.Tensor]:
    """Lay out a 2-, 3- or 4-bit canonical weight (on CPU) for the kernel: its row layout, the packed bytes
    ``[N', K_padded / 2]`` (codes in kernel row order, code 8 in the padding), repacked ``CHUNK_ROWS`` output columns
    at a time, and ``sz`` [K_padded / gk, N', 2] in ``param_dtype``, where ``N' = padded_columns(N)``: the padding
    columns hold code 8 and scale 0 (weight exactly 0) and are written chunk by chunk like the others, so the only
    copy of the codes is still the packed one."""
    if weight.scheme.bits not in (2, 3, 4):
        raise FormatError(
            f"{weight.name}: the int4 CPU kernel takes 2-, 3- or 4-bit codes, got a {weight.scheme} weight"
        )
    k, n = weight.in_features, weight.out_features
    n_padded = padded_columns(n)
    layout = RowLayout.of(weight.group_index(), weight.num_groups, kernel_group(weight.scheme.group_rows(k)))
    packed = torch.empty(n_padded, layout.padded_features // 2, dtype=torch.uint8)
    step = CHUNK_ROWS if _column_block() is not None else n_padded
    shifted = shifts_codes(weight)
    for n0 in range(0, n_padded, step):
        stop = min(n0 + step, n_padded)
        codes, _ = kernel_codes(weight, n0, min(stop, n))
        if layout.dest is not None or stop > n:  # padding rows of x, padding output columns: code 8
            padded = torch.full((stop - n0, layout.padded_features), CENTER, dtype=torch.int32)
            rows = padded[: codes.shape[0]]
            if layout.dest is None:
                rows.copy_(codes)
            else:
                rows.index_copy_(1, layout.dest, codes)
            codes = padded
        packed[n0:stop] = _convert(codes)
        del codes
    scales = weight.scales.to(torch.float32)[layout.block_group]  # [blocks, N]
    if shifted:
        zero = torch.zeros_like(scales)
    else:
        zero = (CENTER - weight.zeros.to(torch.float32)[layout.block_group]) * scales
    sz = torch.stack([scales.to(param_dtype), zero.to(param_dtype)], dim=-1)
    sz = torch.nn.functional.pad(sz, (0, 0, 0, n_padded - n)).contiguous()  # padding columns: scale 0, zero 0
    return layout, packed, sz


KERNEL = "cpu.int4"
"""The name of this layer's kernel for ``wna16::linear`` (:mod:`wna16.ops`)."""


class Int4Linear(PreparedOp):
    """The prepared 2/3/4-bit layer: ``x @ W^T + b`` from one packed copy of the codes, computed by
    :func:`int4_linear` through ``wna16::linear``.

    Two paths over the same bytes and parameters: the int4 kernel (bf16; fp16 rounded to bf16 on the way in and
    out), for ``M <= kernel_max_m``; above that, and always in fp32, the layer dequantizes chunks of the packed
    columns (:class:`PackedColumns`) in ``gemm_dtype`` (bf16 on CPUs with native bf16, else float32; float32 for fp32
    layers) and calls BLAS, accumulating in float32. ``kernel_max_m`` is the measured crossover for this ISA and GEMM
    dtype, chosen by the backend. Without a known column layout (a torch build that
    packs differently) the kernel serves every M (a scalar loop in fp32). The fields stay named (and writable, for
    tests that force a path): the op's state and options are read from them at each call.
    """

    def __init__(
        self,
        weight: QuantizedWeight,
        dtype: torch.dtype,
        bias: torch.Tensor | None,
        kernel_max_m: int,
        gemm_dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__(KERNEL, weight.in_features, weight.out_features, dtype)
        self.param_dtype = torch.float32 if dtype == torch.float32 else KERNEL_DTYPE
        self.layout, self.packed, self.sz = pack_int4(weight, self.param_dtype)
        self.shifted = shifts_codes(weight)
        self.columns = PackedColumns.of(padded_columns(self.out_features))
        self.kernel_max_m = -1 if self.param_dtype == torch.float32 else kernel_max_m
        self.gemm_dtype = torch.float32 if self.param_dtype == torch.float32 else gemm_dtype
        if self.columns is None:
            self.kernel_max_m = 1 << 62
        self.bias = None if bias is None else bias.to(torch.float32)

    @property
    def state(self) -> tuple[torch.Tensor | None, ...]:
        """``(packed, sz, row destinations or None, packed column order or None, float32 bias or None)``."""
        perm = None if self.columns is None else self.columns.perm
        return (self.packed, self.sz, self.layout.dest, perm, self.bias)

    @property
    def options(self) -> tuple[int, ...]:
        """``(kernel block rows, kernel_max_m, codes shifted, column block, column tail, GEMM in bf16, N)``: ``N``
        without the zero columns that pad the packed weight to the kernel's multiple of 16."""
        block, tail = (0, 0) if self.columns is None else (self.columns.block, self.columns.tail)
        bf16 = int(self.gemm_dtype == torch.bfloat16)
        return (self.layout.block_rows, self.kernel_max_m, int(self.shifted), block, tail, bf16, self.out_features)

    def dequantized_matmul(self, xp: torch.Tensor) -> torch.Tensor:
        """:func:`dequantized_matmul` of this layer (``xp`` in kernel row order)."""
        assert self.columns is not None
        return dequantized_matmul(xp, self.packed, self.sz, self.columns, self.layout.block_rows, self.shifted,
                                  self.gemm_dtype)  # fmt: skip


@register_kernel(KERNEL, ["cpu"])
def int4_linear(x: torch.Tensor, state: Sequence[torch.Tensor | None], options: Sequence[int]) -> torch.Tensor:
    """``x`` [..., K] (any strides) -> [..., N] in ``x``'s dtype, from :attr:`Int4Linear.state` and ``options``:
    the kernel up to ``kernel_max_m`` rows, the dequantize-then-GEMM path above."""
    packed, sz, dest, perm, bias = state
    assert packed is not None and sz is not None
    block_rows, kernel_max_m, shifted, block, tail, bf16, out_features = options
    n, padded = packed.shape[0], packed.shape[1] * 2
    x2 = x.reshape(-1, x.shape[-1])
    if x2.shape[0] == 0:
        y = x2.new_empty(0, n)
    elif x2.shape[0] > kernel_max_m:
        assert perm is not None
        gemm = torch.bfloat16 if bf16 else torch.float32
        columns = PackedColumns(block, tail, perm)
        y = dequantized_matmul(scatter(x2, dest, padded), packed, sz, columns, block_rows, bool(shifted), gemm)
    else:
        xp = scatter(x2.to(sz.dtype), dest, padded)  # bf16, or fp32 (scalar loop) without a known layout
        y = torch.ops.aten._weight_int4pack_mm_for_cpu(xp, packed, block_rows, sz)
    return finish(y, x, bias, out_features)


def finish(y: torch.Tensor, x: torch.Tensor, bias: torch.Tensor | None, out_features: int) -> torch.Tensor:
    """The end of every padded-column CPU kernel: ``y`` [M, N'] without the padding columns (a view, copied at most
    once), the float32 bias added to the rounded product, one rounding to ``x``'s dtype, ``x``'s leading shape."""
    y = y[:, :out_features]
    if bias is not None:
        y = y.to(torch.float32) + bias
    return y.to(x.dtype).contiguous().reshape(*x.shape[:-1], out_features)


def dequantized_matmul(
    xp: torch.Tensor,
    packed: torch.Tensor,
    sz: torch.Tensor,
    columns: PackedColumns,
    block_rows: int,
    shifted: bool,
    gemm: torch.dtype,
) -> torch.Tensor:
    """[M, N'] in ``gemm`` (N' = the packed columns, padding included): ``xp @ W^T`` (``xp`` in kernel row order)
    with ``W = (q - 8) * scale + zero`` dequantized in ``gemm`` from the packed bytes and the kernel's own
    parameters, a chunk of at most ``CHUNK_BYTES / 4 / K`` columns at a time, then a GEMM (bf16 where the CPU
    multiplies bf16 natively, with float32 accumulation; float32 elsewhere). ``q - 8`` is exact in both; in bf16 the
    product with the scale is rounded once, and for asymmetric 4-bit the zero term adds a second rounding (both
    within the declared bf16 parameter rounding); in float32 the product is exact for bf16/fp16 scales.
    """
    n, kp, gk = packed.shape[0], packed.shape[1] * 2, block_rows
    xg = xp.to(gemm)
    params = sz[:, columns.perm].to(gemm)  # [blocks, N, 2] in packed column order
    scale, zero = params[..., 0].unsqueeze(1).contiguous(), params[..., 1].unsqueeze(1).contiguous()
    y = xg.new_empty(xg.shape[0], n)
    for c0, c1, block in columns.blocks(CHUNK_BYTES // (4 * kp)):
        w = columns.centered(packed, kp, c0, c1, block, gemm).view(-1, gk, c1 - c0)
        w.mul_(scale[..., c0:c1])
        if not shifted:
            w.add_(zero[..., c0:c1])
        y[:, c0:c1] = xg @ w.view(kp, c1 - c0)
    return torch.empty_like(y).index_copy_(1, columns.perm, y)
