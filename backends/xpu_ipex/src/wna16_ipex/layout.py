"""Kernel-neutral layout work shared by both backends: contiguous groups of a fixed size, padded rows and columns.

Both kernels this package drives (IPEX's weight-only linear and torch's XPU int4 op) take a plain grouped weight:
one group size for every group, groups in row order, no ``g_idx`` of their own that wna16 can trust (IPEX corrupts
its heap on a ``g_idx`` whose groups are not all ``group_size`` rows; torch's op has no ``g_idx`` input). So every
weight that is not already in that form is *regrouped* once, at prepare time:

- the rows of each group are gathered together (act order: rows sorted by group, stable);
- each group is padded with rows up to ``rows`` (a size the kernel accepts, e.g. the next power of two); padded
  rows hold the group's zero point as code (so they dequantize to exactly 0) and read a zero column of ``x``;
- the per-call cost is one gather of ``x`` into the regrouped order (:meth:`Regrouped.gather_input`).

Columns are padded separately (:func:`pad_columns`) for kernels that need ``N`` to be a multiple of a tile width.
Everything here is pure torch and runs on any device; it never mutates the weight it reads.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from wna16.errors import UnsupportedError
from wna16.groups import regroup_rows
from wna16.weight import QuantizedWeight

MAX_EXPANSION = 4
"""Regrouping may grow K at most this much (padding rows of sparse groups); beyond that a backend refuses."""


@dataclass(frozen=True)
class Regrouped:
    """A weight as codes [K', N] with ``K' = groups * rows`` (or K when ``gather`` is None), every group ``rows``
    rows long except possibly the last (only when ``gather`` is None), zeros/scales [groups, N] as stored.

    ``gather`` (int64 [K'], or None when the rows are already in kernel order) gives, for each kernel row, the input
    feature it reads; the value ``in_features`` means "a zero column" (a padded row).
    """

    codes: torch.Tensor
    zeros: torch.Tensor
    scales: torch.Tensor
    rows: int
    in_features: int
    gather: torch.Tensor | None

    @property
    def kernel_in_features(self) -> int:
        """K': the number of rows the kernel sees."""
        return int(self.codes.shape[0])

    @property
    def groups(self) -> int:
        """Number of groups the kernel sees."""
        return int(self.scales.shape[0])

    def row_order(self, device: torch.device | str) -> RowOrder:
        """What a prepared layer keeps at run time (not the codes), with the gather on ``device``."""
        gather = None if self.gather is None else self.gather.to(device)
        return RowOrder(gather, self.rows, self.groups, self.kernel_in_features)

    def gather_input(self, x2: torch.Tensor) -> torch.Tensor:
        """``x2`` [M, K] in the kernel's row order [M, K'] (padded rows read 0); ``x2`` itself when none is needed."""
        return self.row_order(x2.device).gather_input(x2)


@dataclass(frozen=True)
class RowOrder:
    """The run-time part of a :class:`Regrouped`: how to gather ``x`` and how kernel rows fall into groups."""

    gather: torch.Tensor | None
    rows: int
    groups: int
    kernel_in_features: int

    def gather_input(self, x2: torch.Tensor) -> torch.Tensor:
        """``x2`` [M, K] in the kernel's row order [M, K'] (padded rows read 0); ``x2`` itself when none is needed."""
        if self.gather is None:
            return x2
        return torch.nn.functional.pad(x2, (0, 1)).index_select(1, self.gather)


def regroup(weight: QuantizedWeight, round_rows: int | None, power_of_two: bool, force: bool = False) -> Regrouped:
    """The weight in a plain grouped layout whose group size a kernel accepts.

    ``round_rows``: group sizes must be a multiple of this (torch's XPU op: 32), or ``None``; ``power_of_two``: group
    sizes must be powers of two (IPEX). A weight without act order whose group size already qualifies is returned
    as is (no gather, a partial last group kept) unless ``force`` (used by kernels without partial last groups).
    """
    k = weight.in_features
    rows = weight.scheme.group_rows(k)
    codes = weight.codes()
    if not weight.act_order and _accepted(rows, round_rows, power_of_two) and not force:
        return Regrouped(codes, weight.zeros, weight.scales, rows, k, None)
    group = weight.group_index().cpu()
    used, inverse, counts = torch.unique(group, sorted=True, return_inverse=True, return_counts=True)
    target = _round_up_rows(int(counts.max()), round_rows, power_of_two)
    # Rows of (used) group 0, then group 1, ... in their original order, each group padded to `target` rows.
    rows_of = regroup_rows(inverse, int(used.numel()), rows=target)
    gather = rows_of.source()
    zeros = weight.zeros.cpu()[used]
    pad_code = zeros.clamp(max=weight.scheme.max_code).to(torch.int32)  # [groups, N]: dequantizes to 0 (z <= max)
    out = pad_code.repeat_interleave(target, dim=0)
    out[rows_of.dest] = codes.cpu()
    return Regrouped(out, zeros, weight.scales.cpu()[used], target, k, gather)


def check_expansion(layout: Regrouped, weight: QuantizedWeight, backend: str) -> None:
    """Raise :class:`UnsupportedError` when regrouping grew K more than :data:`MAX_EXPANSION` times (act order
    whose groups are very uneven: each is padded to the largest one)."""
    if layout.kernel_in_features > MAX_EXPANSION * weight.in_features:
        raise UnsupportedError(
            f"backend {backend!r} cannot serve {weight.name}",
            [f"act-order groups too uneven: regrouping grows K {weight.in_features} -> {layout.kernel_in_features}"],
        )


def _accepted(rows: int, round_rows: int | None, power_of_two: bool) -> bool:
    if round_rows is not None and rows % round_rows:
        return False
    return not power_of_two or rows & (rows - 1) == 0


def _round_up_rows(count: int, round_rows: int | None, power_of_two: bool) -> int:
    """Smallest accepted group size >= ``count`` (and >= 8, so that K' packs into whole int32 words)."""
    size = max(count, 8)
    if power_of_two:
        size = 1 << (size - 1).bit_length()
    if round_rows is not None:
        size = -(-size // round_rows) * round_rows
    return size


def pad_columns(tensor: torch.Tensor, multiple: int, value: float | int) -> torch.Tensor:
    """``tensor`` [R, N] padded with ``value`` on the right to a multiple of ``multiple`` columns (a copy if padded)."""
    n = tensor.shape[1]
    extra = -n % multiple
    if not extra:
        return tensor
    return torch.nn.functional.pad(tensor, (0, extra), value=value)
