"""The kernel's weight layout, built once at prepare time from the canonical :class:`~wna16.weight.QuantizedWeight`.

Why a repack at all: the kernel loads a ``[BLOCK_K, BLOCK_N]`` tile of codes with one gather per element
(``word = k // codes_per_word``, ``shift = (k % codes_per_word) * bits``). That only works when every code lies in a
single word, which holds for 2/4/8 bits but not for 3 bits, where codes 10 and 21 of each 32-code run straddle two
words. And with act order, rows of one group are scattered over K, so a K tile would need many scales.

The layout (``N`` = out_features, ``K`` = in_features, rows in *kernel order*):

- ``perm``: int32 [K] or ``None``. Kernel row ``i`` is input row ``perm[i]`` (the kernel gathers ``x[:, perm[i]]``).
  With act order the rows are sorted by group (stable), so each group's rows become contiguous.
- ``lo``: int32 [K * lo_bits / 32, N], the low ``lo_bits`` bits of every code packed along K, LSB first (the GPTQ
  bit order). ``lo_bits`` is ``bits`` for 2/4/8 bits (``lo`` is then the canonical ``qweight``, rows permuted) and 2
  for 3 bits.
- ``hi``: int32 [K / 32, N], 3 bits only: bit 2 of every code, one bit per row, LSB first. Two planes of 2 + 1 bits
  store exactly 3 bits per code (no padding), and every code's bits lie in one word of each plane.
- ``scales``: float32 [G, N] (exact: every stored fp16/bf16/fp32 scale is a float32). ``zeros``: float32 [G, N],
  asymmetric schemes only (symmetric zeros are the compile-time centre ``2**(bits-1)``).
- ``group_mode`` says how a kernel row finds its group: ``SINGLE`` (one group: every row uses row 0 of ``scales``),
  ``UNIFORM`` (row ``i`` is in group ``i // group_rows``; the kernel takes a K block that divides ``group_rows`` so a
  tile never straddles two groups and loads one scale row per tile), or ``PER_ROW`` (``row_group[i]`` int32 [K] is
  looked up per row: act order whose sorted groups are not uniform, K-slices of act-ordered layers, group sizes that
  are not a multiple of 16).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import torch

from wna16.groups import regroup_rows, trivial_g_idx
from wna16.packing import pack_rows
from wna16.weight import QuantizedWeight

MIN_BLOCK_K = 16
"""The smallest K block the kernels use (``tl.dot`` needs 16); ``UNIFORM`` needs group rows that it divides."""


class GroupMode(enum.IntEnum):
    """How the kernel maps a row to its group (a compile-time constant of the kernel)."""

    SINGLE = 0
    UNIFORM = 1
    PER_ROW = 2


@dataclass(frozen=True)
class RepackedWeight:
    """The kernel layout of one weight (see the module docstring); every tensor lives on one device."""

    bits: int
    in_features: int
    out_features: int
    lo: torch.Tensor
    hi: torch.Tensor | None
    scales: torch.Tensor
    zeros: torch.Tensor | None
    perm: torch.Tensor | None
    row_group: torch.Tensor | None
    group_mode: GroupMode
    group_rows: int

    @property
    def lo_bits(self) -> int:
        """Bits per code in the ``lo`` plane."""
        return 2 if self.bits == 3 else self.bits

    @property
    def center(self) -> int:
        """The symmetric zero point ``2**(bits-1)``."""
        return 1 << (self.bits - 1)

    def codes(self) -> torch.Tensor:
        """int32 [K, N]: the codes in kernel row order, decoded from the planes (for tests and debugging)."""
        per_word = 32 // self.lo_bits
        k = torch.arange(self.in_features, device=self.lo.device)
        shift = ((k % per_word) * self.lo_bits).to(torch.int32)[:, None]
        codes = (self.lo[k // per_word] >> shift) & ((1 << self.lo_bits) - 1)
        if self.hi is not None:
            codes = codes | (((self.hi[k // 32] >> (k % 32).to(torch.int32)[:, None]) & 1) << 2)
        return codes


def _group_layout(weight: QuantizedWeight, row_group: torch.Tensor) -> tuple[GroupMode, int, torch.Tensor | None]:
    """Pick the cheapest group mode that is exact for the (kernel-order) ``row_group``."""
    k = weight.in_features
    if weight.num_groups == 1 and not weight.act_order:
        return GroupMode.SINGLE, k, None
    rows = weight.scheme.group_rows(k)
    uniform = rows % MIN_BLOCK_K == 0 and torch.equal(row_group, trivial_g_idx(k, weight.scheme, row_group.device))
    if uniform:
        return GroupMode.UNIFORM, rows, None
    return GroupMode.PER_ROW, rows, row_group.to(torch.int32).contiguous()


def repack(weight: QuantizedWeight, device: torch.device | str) -> RepackedWeight:
    """Build the kernel layout of ``weight`` on ``device``. Never mutates ``weight``; exact (no value is rounded)."""
    w = weight.to(device)
    bits = w.scheme.bits
    perm: torch.Tensor | None = None
    row_group = w.group_index()
    if w.g_idx is not None:
        order = regroup_rows(row_group, w.num_groups).order  # rows sorted by group, no padding
        perm, row_group = order.to(torch.int32).contiguous(), row_group[order]
    if bits == 3 or perm is not None:
        codes = w.codes()
        if perm is not None:
            codes = codes[perm.long()]
        lo_bits = 2 if bits == 3 else bits
        lo = pack_rows(codes & ((1 << lo_bits) - 1), lo_bits, f"{w.name}.lo")
        hi = pack_rows((codes >> 2) & 1, 1, f"{w.name}.hi") if bits == 3 else None
    else:
        lo, hi = w.qweight.contiguous(), None
    mode, group_rows, table = _group_layout(w, row_group)
    return RepackedWeight(
        bits=bits,
        in_features=w.in_features,
        out_features=w.out_features,
        lo=lo,
        hi=hi,
        scales=w.scales.to(torch.float32).contiguous(),
        zeros=None if w.scheme.sym else w.zeros.to(torch.float32).contiguous(),
        perm=perm,
        row_group=table,
        group_mode=mode,
        group_rows=group_rows,
    )
