"""Hypothesis strategies of cases inside one cell, shaped by the backend's declared divisibility.

Shapes satisfy the canonical packing (K a multiple of :func:`wna16.packing.run_length`, e.g. 32 for 3 bits) and,
for claimed cells, the ``k_multiple``/``n_multiple``/whole-group rules of the capability that claims the cell. When
the rule has such constraints, some draws violate them on purpose: those specs must then be refused honestly.
"""

from __future__ import annotations

import math

from hypothesis import strategies as st

from wna16.packing import run_length
from wna16.protocol import Capability
from wna16_conformance.cells import DTYPES, Cell, all_cells
from wna16_conformance.data import LAYOUTS, SCALE_KINDS, SUBNORMAL_SHIFT, Case

K_MAX = 1024
"""Largest K drawn by hypothesis (the large-shape classes are fixed cases: :func:`shape_class_cases`)."""
N_MAX = 320
"""Largest N drawn (past the first 128- and 256-column tiles)."""

ROW_REGIMES: tuple[tuple[int, int], ...] = ((0, 0), (1, 1), (2, 16), (17, 64), (65, 255), (256, 300))
"""Row counts (M) where kernels switch path: empty, GEMV, small-batch GEMV, tensor-core tiles, larger tiles, and
dequantize-then-GEMM. Each draw picks a regime, then M inside it (rows above ``--wna16-max-dim`` are capped)."""

X_EXPONENTS: dict[str, tuple[int, ...]] = {"fp16": (0, 4, -4), "bf16": (0, 17, -20), "fp32": (0, 17, -20)}
"""Magnitudes ``2**e`` of ``x``: for bf16 and fp32 activations beyond the fp16 maximum (2**17) and in the fp16
subnormal range (2**-20), where a kernel that converts activations to fp16 overflows or loses them."""


def layouts(rule: Capability | None) -> tuple[str, ...]:
    """The memory layouts of ``x`` a rule must serve: all of them, or contiguous ones (a storage offset included)
    when it declares ``noncontiguous_input=False``."""
    return LAYOUTS if rule is None or rule.noncontiguous_input else ("contig", "offset")


def row_regime(m: int) -> str:
    """The dispatch regime of ``m`` rows, for messages: ``M=0`` ... ``M>=256``."""
    for lo, hi in ROW_REGIMES:
        if lo <= m <= hi or (hi == ROW_REGIMES[-1][1] and m >= lo):
            return f"M={lo}" if lo == hi else f"M={lo}-{hi}" if hi != ROW_REGIMES[-1][1] else f"M>={lo}"
    return f"M={m}"


def k_unit(cell: Cell, rule: Capability | None) -> int:
    """The step of valid K: packing run, the rule's ``k_multiple``, and the group unless partial groups are claimed."""
    unit = run_length(cell.bits)[0]
    if rule is not None:
        unit = math.lcm(unit, rule.k_multiple)
        if cell.group_size != -1 and not rule.partial_last_group:
            unit = math.lcm(unit, cell.group_size)
    return unit


def n_unit(rule: Capability | None) -> int:
    """The step of valid N."""
    return 1 if rule is None else rule.n_multiple


def min_k(cell: Cell, unit: int) -> int:
    """Smallest K of a cell: act order needs at least two groups for a non-trivial ``g_idx``."""
    if cell.act_order:
        return unit * math.ceil((cell.group_size + 1) / unit)
    return unit


def misfit(cell: Cell, case: Case) -> str:
    """Why ``case`` has no data in ``cell`` (``""``: it has): K off the packing run of the cell's bits, or below the
    cell's smallest K (:func:`min_k`: act order needs two groups). A ``--wna16-case`` names one case of one cell; the
    cells it does not fit skip it with this reason."""
    unit = k_unit(cell, None)
    if case.k % unit:
        return f"K={case.k} is not a multiple of {unit}, the packing run of {cell.bits}-bit codes"
    smallest = min_k(cell, unit)
    if case.k < smallest:
        return f"K={case.k} is one group of {cell.scheme}: act order needs two (K >= {smallest})"
    return ""


def multiples(unit: int, lo: int, cap: int) -> st.SearchStrategy[int]:
    """Multiples of ``unit`` in [lo, cap] (at least ``lo`` when the cap is below it)."""
    first = math.ceil(lo / unit)
    last = max(first, cap // unit)
    return st.integers(first, last).map(lambda j: j * unit)


@st.composite
def cases(draw: st.DrawFn, cell: Cell, rule: Capability | None, max_dim: int | None) -> Case:
    """A case in ``cell``: M in one of :data:`ROW_REGIMES`, 2-D or 3-D input, bias or not (of the activation dtype
    or another), any scale kind (subnormal fp16 included), a memory layout and magnitude of ``x``, any seed."""
    unit, nu = k_unit(cell, rule), n_unit(rule)
    k_cap = min(K_MAX, max_dim or K_MAX)
    n_cap = min(N_MAX, max_dim or N_MAX)
    k = draw(multiples(unit, min_k(cell, unit), k_cap))
    n = draw(multiples(nu, 1, n_cap))
    constrained = unit > run_length(cell.bits)[0] or nu > 1
    if constrained and draw(st.booleans()):  # violate the declaration: the spec must then be refused
        pack = run_length(cell.bits)[0]
        if unit > pack and draw(st.booleans()):
            k += pack
        elif nu > 1:
            n += draw(st.integers(1, nu - 1))
        else:
            k += pack
    lo, hi = draw(st.sampled_from(ROW_REGIMES))
    m_cap = max_dim or hi
    m = draw(st.integers(min(lo, m_cap), min(hi, m_cap)))
    three_d = draw(st.booleans()) if m < 256 else False
    scales = draw(st.sampled_from(SCALE_KINDS))
    xexp = SUBNORMAL_SHIFT if scales == "fp16sub" else draw(st.sampled_from(X_EXPONENTS[cell.dtype_name]))
    return Case(
        m=m,
        k=k,
        n=n,
        three_d=three_d,
        bias=draw(st.booleans()),
        scale_dtype=scales,
        seed=draw(st.integers(0, 2**31 - 1)),
        layout=draw(st.sampled_from(layouts(rule))),
        xexp=xexp,
        bias_dtype=draw(st.sampled_from(("act", *sorted(DTYPES)))),
    )


SHAPE_CLASSES: dict[str, str] = {
    "split-k": "K > 2048 (split-K)",
    "k-8192": "K > 8192",
    "n-tile": "N past the 128- and 256-column tiles, not a multiple of either",
    "many-groups": "G > 64 groups",
    "g-equals-n": "G == N (square scales)",
}
"""Shapes where real kernels change behaviour, run as fixed cases: every numerics cell runs two of them, rotated
over the cells of its (bits, group) family so that each family covers every class (see :func:`shape_classes`)."""

ROW_CASES: dict[str, int] = {"rows-0": 0, "rows-256": 272}
"""Fixed row-count cases every numerics cell runs (cheap: small K and N): no rows, and the GEMM regime."""


def _align(value: int, unit: int) -> int:
    return unit * -(-value // unit)


def shape_classes(cell: Cell) -> list[str]:
    """The two large-shape classes ``cell`` runs: rotated over its (bits, group) family (``many-groups`` does not
    apply to a single group)."""
    family = [c for c in all_cells() if (c.bits, c.group_size) == (cell.bits, cell.group_size)]
    applicable = [name for name in SHAPE_CLASSES if not (name == "many-groups" and cell.group_size == -1)]
    i = family.index(cell)
    return [applicable[(2 * i) % len(applicable)], applicable[(2 * i + 1) % len(applicable)]]


def fixed_case(name: str, cell: Cell, rule: Capability | None, seed: int) -> Case:
    """The case of a shape class (:data:`SHAPE_CLASSES`) or row case (:data:`ROW_CASES`) in ``cell``, aligned to
    the claiming rule's units; rows, scale kind, layout, magnitude of ``x`` and bias dtype rotate with ``seed``."""
    unit, nu = k_unit(cell, rule), n_unit(rule)
    rows_of = (1, 5, 33)[seed % 3]
    base = _align(max(256, min_k(cell, unit)), unit)
    gs = cell.group_size if cell.group_size != -1 else None
    if name in ROW_CASES:
        k, n, m = base, _align(40, nu), ROW_CASES[name]
    elif name == "split-k":
        k, n, m = _align(3072, unit), _align(72, nu), rows_of
    elif name == "k-8192":
        k, n, m = _align(8448, unit), _align(16, nu), 1
    elif name == "n-tile":
        k, n, m = base, _align(300, nu), rows_of
    elif name == "many-groups":
        assert gs is not None
        k, n, m = _align(gs * 72, unit), _align(8, nu), rows_of
    elif name == "g-equals-n":
        groups = _align(24, nu) if gs is not None else 1
        k = _align(gs * groups, unit) if gs is not None else base
        n = groups if gs is not None else nu
        k, m = max(k, min_k(cell, unit)), rows_of
    else:
        raise KeyError(f"unknown shape class {name!r}")
    scales = SCALE_KINDS[seed % len(SCALE_KINDS)]
    xexp = SUBNORMAL_SHIFT if scales == "fp16sub" else X_EXPONENTS[cell.dtype_name][seed % 3]
    kinds = layouts(rule)
    bias_dtype = ("act", *sorted(DTYPES))[seed // 2 % 4]
    return Case(m, k, n, False, seed % 2 == 0, scales, seed, kinds[seed % len(kinds)], xexp, bias_dtype)


def regime(case: Case, group_size: int) -> str:
    """Where a case sits among the regimes kernels switch on: rows, K split, N tile, group count."""
    groups = 1 if group_size == -1 else -(-case.k // group_size)
    k_part = "K > 8192" if case.k > 8192 else "K > 2048 (split-K)" if case.k > 2048 else "K <= 2048"
    if case.n > 256:
        n_part = f"N past the 256 tile (N % 128 = {case.n % 128})"
    elif case.n > 128:
        n_part = f"N past the 128 tile (N % 128 = {case.n % 128})"
    else:
        n_part = "N within one 128 tile"
    g_part = f"G={groups}" + (" > 64" if groups > 64 else "") + (" == N" if groups == case.n else "")
    return f"rows {row_regime(case.rows)} ({case.rows}), {k_part}, {n_part}, {g_part}, x {case.layout}"
