"""4-bit weights on ``aten._weight_int4pack_mm_for_cpu``: the row layout the kernel needs, the repack, the call.

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

Zero points: the kernel's zero is a float added after scaling, so ``zero = (8 - z) * scale``. It is computed in
float32 (exact for fp16/bf16 scales: a 5-bit integer times an 11-bit mantissa) and rounded once to the activation
dtype; the scales are rounded to the activation dtype too, which is what the backend declares as ``param_dtype``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from wna16.errors import FormatError, describe
from wna16.groups import regroup_rows
from wna16.weight import QuantizedWeight

KERNEL_GROUPS: tuple[int, ...] = (256, 128, 64, 32)
"""Block sizes ``aten._weight_int4pack_mm_for_cpu`` accepts, largest first (fewer blocks = fewer scale bytes)."""

CENTER = 8
"""The kernel subtracts 8 from every 4-bit code before scaling."""

FAST_DTYPES: tuple[torch.dtype, ...] = (torch.bfloat16,)
"""Activation dtypes with a vectorised (AVX512-BF16 / AMX) kernel; the others run a scalar loop."""

SCALAR_MAX_M = 4
"""Rows of ``x`` up to which the scalar kernel beats dequantize-then-matmul in fp16/fp32. Measured with
``ci/bench/bench_cpu.py`` (4096x4096, fp16, 2 threads, load average 4): the scalar kernel costs about M x 28 ms, the
dequantize path 90-160 ms for M from 1 to 128 (the reference backend 330-420 ms)."""

CHUNK_BYTES = 16 << 20
"""Upper bound on the float32 dequantized chunk of the fp16/fp32 large-M path."""

INNER_K_TILES = 2
"""``innerKTiles`` argument of the CPU repack; the CPU layout does not depend on it (checked for 1..16)."""


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
        if self.dest is None:
            return x2.contiguous()
        out = x2.new_zeros(x2.shape[0], self.padded_features)
        return out.index_copy_(1, self.dest, x2)


def pack_int4(weight: QuantizedWeight, dtype: torch.dtype) -> tuple[RowLayout, torch.Tensor, torch.Tensor]:
    """Lay out a 4-bit canonical weight (on CPU) for the kernel: its row layout, the codes int32 [N, K_padded] in
    kernel row order (code 8 in the padding) and ``sz`` [K_padded / gk, N, 2] in ``dtype``."""
    if weight.scheme.bits != 4:
        raise FormatError(f"{weight.name}: the int4 CPU kernel takes 4-bit codes, got a {weight.scheme} weight")
    k, n = weight.in_features, weight.out_features
    layout = RowLayout.of(weight.group_index(), weight.num_groups, kernel_group(weight.scheme.group_rows(k)))
    codes = weight.codes().t()  # [N, K] int32 in [0, 15]
    if layout.dest is not None:
        padded = torch.full((n, layout.padded_features), CENTER, dtype=torch.int32)
        codes = padded.index_copy_(1, layout.dest, codes)
    scales = weight.scales.to(torch.float32)[layout.block_group]  # [blocks, N]
    zeros = weight.zeros.to(torch.float32)[layout.block_group]
    sz = torch.stack([scales.to(dtype), ((CENTER - zeros) * scales).to(dtype)], dim=-1).contiguous()
    return layout, codes.contiguous(), sz


class Int4Linear:
    """The prepared 4-bit layer: ``x @ W^T + b`` through ``aten._weight_int4pack_mm_for_cpu``.

    In fp16/fp32 the kernel is a scalar loop whose cost grows linearly with M, so above ``SCALAR_MAX_M`` rows the
    layer instead dequantizes its weight in float32, one bounded chunk of output columns at a time, from a nibble copy
    of the codes it keeps for that purpose (N*K/2 bytes more), and calls a BLAS matmul.
    Both paths use the same rounded scales and zero terms and accumulate in float32: one declared error model.
    """

    def __init__(self, weight: QuantizedWeight, dtype: torch.dtype, bias: torch.Tensor | None) -> None:
        self.in_features, self.out_features, self.dtype = weight.in_features, weight.out_features, dtype
        self.layout, codes, self.sz = pack_int4(weight, dtype)
        self.packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes, INNER_K_TILES)
        self.nibbles: torch.Tensor | None = None
        if dtype not in FAST_DTYPES:
            self.nibbles = (codes[:, 0::2] | (codes[:, 1::2] << 4)).to(torch.uint8)  # [N, K_padded / 2]
            params = self.sz.to(torch.float32).transpose(0, 1)  # [N, blocks, 2]
            self.block_scale = params[..., :1].contiguous()  # [N, blocks, 1]
            self.block_offset = (params[..., 1:] - CENTER * params[..., :1]).contiguous()  # zero - 8 * scale
        self.bias = None if bias is None else bias.to(torch.float32)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` [..., K] in the layer's dtype, any strides; returns [..., N] in the same dtype."""
        if x.dtype != self.dtype or x.shape[-1] != self.in_features:
            raise FormatError(f"x: got {describe(x)}, expected {self.dtype} [..., {self.in_features}]")
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)
        if x2.shape[0] == 0:
            y = x2.new_empty(0, self.out_features)
        elif self.nibbles is not None and x2.shape[0] > SCALAR_MAX_M:
            y = self.dequantized_matmul(self.layout.scatter(x2))
        else:
            xp = self.layout.scatter(x2)
            y = torch.ops.aten._weight_int4pack_mm_for_cpu(xp, self.packed, self.layout.block_rows, self.sz)
        if self.bias is not None:
            y = y.to(torch.float32) + self.bias
        return y.to(self.dtype).reshape(*lead, self.out_features)

    def dequantized_matmul(self, xp: torch.Tensor) -> torch.Tensor:
        """float32 [M, N]: ``xp @ W^T`` (``xp`` in kernel row order) with ``W = q * scale + (zero - 8 * scale)``
        dequantized in float32 from the kernel's own rounded parameters, at most ``CHUNK_BYTES`` of it at a time.

        Folding the 8 into the offset (in float32) saves a pass over ``W`` and moves it by float32 rounding only.
        """
        assert self.nibbles is not None
        n, kp, gk = self.out_features, self.layout.padded_features, self.layout.block_rows
        xf = xp.to(torch.float32)
        y = xf.new_empty(xf.shape[0], n)
        rows = max(1, CHUNK_BYTES // (4 * kp))
        for n0 in range(0, n, rows):
            nib = self.nibbles[n0 : n0 + rows]
            q = torch.empty(nib.shape[0], kp // 2, 2, dtype=torch.float32)
            q[..., 0] = nib & 15
            q[..., 1] = nib >> 4
            w = q.view(nib.shape[0], kp // gk, gk).mul_(self.block_scale[n0 : n0 + rows])
            w.add_(self.block_offset[n0 : n0 + rows])
            y[:, n0 : n0 + rows] = xf @ w.view(nib.shape[0], kp).t()
        return y
