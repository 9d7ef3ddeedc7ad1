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
from wna16_conformance.cells import DTYPES, Cell
from wna16_conformance.data import Case

K_MAX = 1024
"""Largest K drawn by the numerics cells (large K has its own edge test)."""
N_MAX = 256
"""Largest N drawn."""


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


def multiples(unit: int, lo: int, cap: int) -> st.SearchStrategy[int]:
    """Multiples of ``unit`` in [lo, cap] (at least ``lo`` when the cap is below it)."""
    first = math.ceil(lo / unit)
    last = max(first, cap // unit)
    return st.integers(first, last).map(lambda j: j * unit)


@st.composite
def cases(draw: st.DrawFn, cell: Cell, rule: Capability | None, max_dim: int | None) -> Case:
    """A case in ``cell``: M in {1, odd, >= 64}, 2-D or 3-D input, bias or not, any scale dtype, any seed."""
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
    m = draw(st.one_of(st.just(1), st.integers(1, 31).map(lambda i: 2 * i + 1), st.integers(64, 80)))
    return Case(
        m=m,
        k=k,
        n=n,
        three_d=draw(st.booleans()),
        bias=draw(st.booleans()),
        scale_dtype=draw(st.sampled_from(sorted(DTYPES))),
        seed=draw(st.integers(0, 2**31 - 1)),
    )
