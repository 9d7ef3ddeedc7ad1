"""The enumerated matrix: cells (bits x group x sym/asym x activation dtype x act order) and the tests run on each.

Cells are enumerated, never left to chance, so that every report lists the same cells in the same order whatever the
backend, device or worker count. Hypothesis only draws *inside* a cell (shapes, M, bias, seeds).

Act order with a single group (``group_size == -1``) is left out: every row then maps to group 0, so the ``g_idx``
is trivial and :class:`wna16.QuantizedWeight` drops it; such a weight cannot exist.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from wna16.scheme import Scheme

BITS: tuple[int, ...] = (2, 3, 4, 8)
GROUP_SIZES: tuple[int, ...] = (-1, 32, 64, 128, 256)
DTYPES: dict[str, torch.dtype] = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}

EDGE_VARIANTS: tuple[str, ...] = (
    "zero-codes",
    "max-codes",
    "negative-scales",
    "zero-extremes",
    "k-equals-group",
    "partial-last-group",
    "large-k",
    "large-k-cancellation",
)
"""Edge cases run on every (bits, dtype); the scheme of each is fixed (see :func:`edge_cell`)."""


@dataclass(frozen=True, order=True)
class Cell:
    """One point of the matrix: a scheme, an activation dtype and whether rows are act-ordered."""

    bits: int
    group_size: int
    sym: bool
    dtype_name: str
    act_order: bool

    @property
    def scheme(self) -> Scheme:
        """The quantization scheme of the cell."""
        return Scheme(self.bits, self.group_size, self.sym)

    @property
    def dtype(self) -> torch.dtype:
        """The activation (and output) dtype."""
        return DTYPES[self.dtype_name]

    @property
    def id(self) -> str:
        """Stable name, e.g. ``w4g128asym-bf16`` or ``w3g32sym-fp16-actorder``."""
        return f"{self.scheme}-{self.dtype_name}" + ("-actorder" if self.act_order else "")


@dataclass(frozen=True)
class Target:
    """One parametrized test: a check (``numerics``, ``edges``, ...), a variant of it, and the cell it runs on."""

    check: str
    cell: Cell
    variant: str = ""

    @property
    def key(self) -> str:
        """The part of the test id after the backend, e.g. ``w4g128asym-bf16`` or ``large-k-w4g128asym-bf16``."""
        return f"{self.variant}-{self.cell.id}" if self.variant else self.cell.id

    @property
    def test_name(self) -> str:
        """The name filter patterns match: ``numerics[w4g128asym-bf16]``."""
        return f"{self.check}[{self.key}]"


def all_cells() -> list[Cell]:
    """Every cell of the matrix in report order."""
    return [
        Cell(bits, group, sym, dtype, act)
        for bits in BITS
        for group in GROUP_SIZES
        for sym in (True, False)
        for dtype in DTYPES
        for act in (False, True)
        if not (act and group == -1)
    ]


def edge_cell(variant: str, bits: int, dtype_name: str) -> Cell:
    """The scheme an edge variant runs with: symmetric where the point is the scale (negative scales, cancellation),
    asymmetric where zero points matter, group 128 throughout so that K == group and partial groups are meaningful."""
    sym = variant in ("negative-scales", "large-k-cancellation")
    return Cell(bits, 128, sym, dtype_name, False)


def _family_cell(bits: int, group: int, i: int, j: int) -> Cell:
    """The one cell of the (bits, group) family that the hygiene and tensor-parallel checks run: sym/asym, dtype and
    act order rotate over the families so that each bits and each group size sees both schemes, every dtype and act
    order on and off."""
    dtype = list(DTYPES)[(i + j) % len(DTYPES)]
    return Cell(bits, group, (i + j) % 2 == 1, dtype, group != -1 and (j + i // 2) % 2 == 0)


def targets(check: str) -> list[Target]:
    """The parametrization of one check, in a fixed order."""
    if check == "numerics":
        return [Target(check, cell) for cell in all_cells()]
    if check == "edges":
        return [
            Target(check, edge_cell(v, bits, d), v) for v in EDGE_VARIANTS for bits in BITS for d in DTYPES
        ]  # fmt: skip
    if check in ("hygiene", "compile"):
        return [Target(check, _family_cell(b, g, i, j)) for i, b in enumerate(BITS) for j, g in enumerate(GROUP_SIZES)]
    if check == "tensor_parallel":
        return [
            Target(check, _family_cell(b, g, i, j))
            for i, b in enumerate(BITS) for j, g in enumerate(GROUP_SIZES) if g != -1
        ]  # fmt: skip
    if check == "experts":
        return [
            Target(check, Cell(bits, 64, False, d, False), v) for v in EXPERTS_VARIANTS for bits in BITS for d in DTYPES
        ]
    raise KeyError(f"unknown conformance check {check!r}")


EXPERTS_VARIANTS: tuple[str, ...] = (
    "random-routing", "one-expert", "empty-experts", "weights-before-down", "mixed-schemes",
)  # fmt: skip
"""Routing variants of the experts check (see :mod:`wna16_conformance.experts`)."""

CHECKS: tuple[str, ...] = ("numerics", "edges", "hygiene", "tensor_parallel", "experts", "compile")
