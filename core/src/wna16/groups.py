"""Which scale groups a layer, or a tensor-parallel K-slice of one, stores, and which group each input row uses.

This is the one definition every module that sizes, cuts or reads scales calls (:mod:`~wna16.weight`,
:mod:`~wna16.formats`, :mod:`~wna16.partition`, :mod:`~wna16.protocol`, the checkpoint audit, the vLLM
integration), so that they cannot disagree on a slice:

- Rows per group come from the *full* layer's K: ``group_size``, or the whole full K when ``group_size == -1``.
- Without act order, row ``k`` of the full layer uses group ``k // rows``; a slice holding rows
  ``[k_start, k_start + K)`` stores the groups those rows touch, ``range(k_start // rows, ceil((k_start + K) / rows))``
  (one group, replicated, when ``group_size == -1``). The last group may be partial.
- With act order a row may use any group (``g_idx``), so a slice stores every group of the full layer.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from wna16.errors import SchemeError
from wna16.scheme import Scheme


def stored_groups(
    scheme: Scheme, in_features: int, *, full_in_features: int | None = None, k_start: int = 0, act_order: bool = False
) -> range:
    """The groups of the full layer whose scales and zeros a layer of ``in_features`` rows stores, as indices into the
    full layer's groups. ``full_in_features``/``k_start`` place a K-slice in its layer (default: the whole layer)."""
    full = in_features if full_in_features is None else full_in_features
    if in_features <= 0 or full <= 0:
        raise SchemeError(f"in_features={in_features}, full_in_features={full}: expected positive integers")
    if act_order:
        return range(scheme.num_groups(full))
    rows = scheme.group_rows(full)
    return range(k_start // rows, -(-(k_start + in_features) // rows))


def groups_with_g_idx(groups: int, g_idx: torch.Tensor, stored: int | None) -> int:
    """How many scale groups a layer whose layout implies ``groups`` stores when it ships ``g_idx``: enough for every
    group ``g_idx`` names, and, where the file's scales have ``stored`` groups, all of them (a row-parallel slice under
    act order carries the scales of every group, used or not: :func:`stored_groups`)."""
    needed = max(groups, int(g_idx.max()) + 1) if g_idx.numel() else groups
    return needed if stored is None else max(needed, stored)


def trivial_g_idx(in_features: int, scheme: Scheme, device: torch.device | str = "cpu") -> torch.Tensor:
    """int32 [K]: the group of each row without act order, ``arange(K) // group_size`` (what exports ship as
    ``g_idx`` when there is no act order)."""
    rows = scheme.group_rows(in_features)
    return torch.arange(in_features, dtype=torch.int32, device=device) // rows


def has_partial_group(scheme: Scheme, in_features: int, *, full_in_features: int | None = None) -> bool:
    """Whether a layer (or K-slice) of ``in_features`` rows ends inside a group: ``K % group_size != 0`` with rows
    per group taken from the full layer (never with one group over K)."""
    full = in_features if full_in_features is None else full_in_features
    return scheme.group_size != -1 and in_features % scheme.group_rows(full) != 0


@dataclass(frozen=True)
class RowRegroup:
    """Where each input row goes when the rows are sorted by group (stable: a row keeps its place within its group)
    and every group is padded to the rows a kernel wants.

    ``order``: int64 [K], the input rows in group order. ``dest``: int64 [K], the kernel row of input row ``k``.
    ``counts``/``padded``/``start``: int64 [G], the real rows, padded rows and first kernel row of each group.
    ``kernel_rows``: K', the rows the kernel sees (the sum of ``padded``).
    """

    order: torch.Tensor
    dest: torch.Tensor
    counts: torch.Tensor
    padded: torch.Tensor
    start: torch.Tensor
    kernel_rows: int

    @property
    def in_features(self) -> int:
        """K: the input rows regrouped."""
        return int(self.dest.numel())

    @property
    def identity(self) -> bool:
        """True when the kernel order is the input order with no padding row."""
        k = self.in_features
        return self.kernel_rows == k and bool(torch.equal(self.dest, torch.arange(k, device=self.dest.device)))

    def source(self, kernel_rows: int | None = None) -> torch.Tensor:
        """int64 [K']: the input row each kernel row reads, ``K`` for a padding row (a zero column appended to the
        activations); ``kernel_rows`` pads the tail further (default :attr:`kernel_rows`)."""
        total = self.kernel_rows if kernel_rows is None else kernel_rows
        if total < self.kernel_rows:
            raise ValueError(f"kernel_rows={total} is smaller than the {self.kernel_rows} rows the regrouping needs")
        out = torch.full((total,), self.in_features, dtype=torch.int64, device=self.dest.device)
        out[self.dest] = torch.arange(self.in_features, device=self.dest.device)
        return out

    def block_groups(self, block_rows: int) -> torch.Tensor:
        """int64 [K' / block_rows]: the group of each block of ``block_rows`` kernel rows (groups padded to a multiple
        of ``block_rows``)."""
        groups = torch.arange(int(self.counts.numel()), device=self.counts.device)
        return torch.repeat_interleave(groups, self.padded // block_rows)


def regroup_rows(group: torch.Tensor, num_groups: int, *, multiple: int = 1, rows: int | None = None) -> RowRegroup:
    """Sort the rows whose groups are ``group`` (int64 [K], values in ``[0, num_groups)``) by group and pad each group
    to a multiple of ``multiple`` rows, or to exactly ``rows`` rows (every group the same size; ``rows`` must hold the
    largest group). A group no row uses gets no row (``multiple``) or ``rows`` padding rows."""
    group = group.to(torch.int64)
    k = int(group.numel())
    sorted_group, order = torch.sort(group, stable=True)
    counts = torch.bincount(sorted_group, minlength=num_groups)
    if rows is not None:
        if counts.numel() and int(counts.max()) > rows:
            raise ValueError(f"rows={rows} cannot hold a group of {int(counts.max())} rows")
        padded = torch.full_like(counts, rows)
    else:
        padded = (counts + multiple - 1) // multiple * multiple
    start = torch.cumsum(padded, 0) - padded
    rank = torch.arange(k, device=group.device) - (torch.cumsum(counts, 0) - counts)[sorted_group]
    dest = torch.empty(k, dtype=torch.int64, device=group.device)
    dest[order] = start[sorted_group] + rank
    return RowRegroup(order, dest, counts, padded, start, int(padded.sum()))
