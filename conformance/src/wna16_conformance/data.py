"""Cases and their data: everything is generated on the CPU from a seeded generator, then moved to the device.

A :class:`Case` is the complete description of one example (shape, batch layout, bias, scale dtype, seed): the same
case gives bit-identical inputs on every machine, so reports from different devices compare and a repro line is
enough to rebuild a failure. Magnitudes are bounded so that outputs stay well inside fp16 range: scales are
``~1 / (2**(bits-1) * sqrt(K))`` with random signs, activations standard normal.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch

from wna16.groups import trivial_g_idx
from wna16.scheme import Scheme
from wna16.weight import QuantizedWeight
from wna16_conformance.cells import DTYPES, Cell

_FIELDS = ("M", "K", "N", "3d", "bias", "scales", "seed")
_LATER_FIELDS = {"x": "contig", "xexp": "0", "bdtype": "act"}
"""Fields added after the first repro lines were written: optional in :meth:`Case.parse`, with these defaults."""

LAYOUTS: tuple[str, ...] = ("contig", "stride", "pad", "offset")
"""How ``x`` lies in memory: contiguous; every second element along K; rows padded (``qkv[..., :K]``: row stride
K + 8); at a storage offset. The memory around a strided, padded or offset ``x`` holds NaN: a kernel that reads it
returns NaN."""

SCALE_KINDS: tuple[str, ...] = (*DTYPES, "fp16sub")
"""Scale dtypes of a case; ``fp16sub`` is fp16 with subnormal magnitudes (scales 2**-10 times smaller, ``x`` drawn
2**10 times larger so outputs keep their size)."""

SUBNORMAL_SHIFT = 10


@dataclass(frozen=True)
class Case:
    """One example: ``m`` rows (per batch entry when ``three_d``; the input is then [2, m, K]), K, N, bias, scale
    kind, seed, the memory layout of ``x`` (:data:`LAYOUTS`), its magnitude ``2**xexp`` and the bias dtype
    (``act``: the activation dtype)."""

    m: int
    k: int
    n: int
    three_d: bool = False
    bias: bool = False
    scale_dtype: str = "fp16"
    seed: int = 0
    layout: str = "contig"
    xexp: int = 0
    bias_dtype: str = "act"

    @property
    def key(self) -> str:
        """``M=3,K=256,N=64,3d=0,bias=1,scales=fp16,seed=7,x=pad,xexp=0,bdtype=fp32``: what ``--wna16-case`` takes
        back."""
        values = (self.m, self.k, self.n, int(self.three_d), int(self.bias), self.scale_dtype, self.seed)
        later = (self.layout, self.xexp, self.bias_dtype)
        names = (*_FIELDS, *_LATER_FIELDS)
        return ",".join(f"{name}={value}" for name, value in zip(names, (*values, *later), strict=True))

    @classmethod
    def parse(cls, text: str) -> Case:
        """Inverse of :attr:`key`; raises ``ValueError`` naming the bad field."""
        pairs = dict(part.split("=", 1) for part in text.split(",") if "=" in part)
        missing = [f for f in _FIELDS if f not in pairs]
        unknown = sorted(set(pairs) - set(_FIELDS) - set(_LATER_FIELDS))
        if missing or unknown:
            raise ValueError(
                f"case {text!r}: expected the fields {','.join(_FIELDS)} (missing {missing}, unknown {unknown})"
            )
        pairs = {**_LATER_FIELDS, **pairs}
        if pairs["scales"] not in SCALE_KINDS:
            raise ValueError(f"case {text!r}: scales={pairs['scales']!r}, expected one of {list(SCALE_KINDS)}")
        if pairs["x"] not in LAYOUTS:
            raise ValueError(f"case {text!r}: x={pairs['x']!r}, expected one of {list(LAYOUTS)}")
        if pairs["bdtype"] not in ("act", *DTYPES):
            raise ValueError(f"case {text!r}: bdtype={pairs['bdtype']!r}, expected act or one of {sorted(DTYPES)}")
        return cls(
            int(pairs["M"]), int(pairs["K"]), int(pairs["N"]), pairs["3d"] == "1", pairs["bias"] == "1",
            pairs["scales"], int(pairs["seed"]), pairs["x"], int(pairs["xexp"]), pairs["bdtype"],
        )  # fmt: skip

    @property
    def rows(self) -> int:
        """Rows the kernel sees (``x`` flattened to 2-D)."""
        return self.m * (2 if self.three_d else 1)

    def generator(self) -> torch.Generator:
        """The CPU generator every tensor of the case is drawn from."""
        return torch.Generator().manual_seed(self.seed)


def act_order_g_idx(k: int, scheme: Scheme, gen: torch.Generator) -> torch.Tensor:
    """A non-trivial ``g_idx`` as GPTQ with ``desc_act`` writes it: the trivial assignment, rows permuted."""
    trivial = trivial_g_idx(k, scheme)
    for _ in range(8):
        g = trivial[torch.randperm(k, generator=gen)]
        if not torch.equal(g, trivial):
            return g
    raise ValueError(f"K={k} with {scheme}: every permutation of g_idx is trivial (only one group)")


def scale_magnitude(bits: int, k: int) -> float:
    """Scale size that keeps ``|x @ W^T|`` near 1 for standard-normal ``x``."""
    return 1.0 / ((1 << (bits - 1)) * math.sqrt(k))


def random_weight(cell: Cell, k: int, n: int, scale_dtype: str, gen: torch.Generator) -> QuantizedWeight:
    """Random codes, zeros (asymmetric: anywhere in [0, 2**bits - 1]), signed scales, act-order ``g_idx``."""
    scheme = cell.scheme
    groups = scheme.num_groups(k)
    codes = torch.randint(0, 1 << scheme.bits, (k, n), generator=gen, dtype=torch.int32)
    if scheme.sym:
        zeros = torch.full((groups, n), scheme.center, dtype=torch.int32)
    else:
        zeros = torch.randint(0, 1 << scheme.bits, (groups, n), generator=gen, dtype=torch.int32)
    size = scale_magnitude(scheme.bits, k) * (0.5 + torch.rand(groups, n, generator=gen))
    sign = torch.where(torch.rand(groups, n, generator=gen) < 0.25, -1.0, 1.0)
    if scale_dtype == "fp16sub":
        scales = (size * sign * 2.0**-SUBNORMAL_SHIFT).to(torch.float16)
    else:
        scales = (size * sign).to(DTYPES[scale_dtype])
    g_idx = act_order_g_idx(k, scheme, gen) if cell.act_order else None
    return QuantizedWeight.from_codes(scheme, codes, zeros, scales, g_idx)


def activations(case: Case, dtype: torch.dtype, gen: torch.Generator, rows: int | None = None) -> torch.Tensor:
    """``x``: [M, K], or [2, M, K] for 3-D cases (``rows`` instead of M when given), contiguous, normal with standard
    deviation ``2**xexp`` in ``dtype``."""
    m = case.m if rows is None else rows
    shape = (2, m, case.k) if case.three_d else (m, case.k)
    return (torch.randn(shape, generator=gen) * 2.0**case.xexp).to(dtype)


def bias_vector(case: Case, dtype: torch.dtype, gen: torch.Generator) -> torch.Tensor | None:
    """A bias (standard normal) when the case has one, in the case's bias dtype (``act``: ``dtype``): wna16's own
    ``QuantLinear`` passes a stored bias through in its own dtype."""
    if not case.bias:
        return None
    return torch.randn(case.n, generator=gen).to(dtype if case.bias_dtype == "act" else DTYPES[case.bias_dtype])


def other_rows(m: int) -> int:
    """Rows of the third call on a prepared layer: another dispatch regime than ``m`` (GEMV vs GEMM)."""
    return 3 if m <= 1 else 1


def laid_out(x: torch.Tensor, layout: str, device: str) -> torch.Tensor:
    """A fresh copy of the contiguous CPU ``x`` on ``device`` with the memory layout ``layout`` (:data:`LAYOUTS`);
    the memory around it holds NaN."""
    *lead, k = x.shape
    if layout == "contig":
        return x.to(device, copy=True)
    if layout == "stride":
        buf = torch.full((*lead, 2 * k), math.nan, dtype=x.dtype, device=device)
        view = buf[..., ::2]
    elif layout == "pad":
        buf = torch.full((*lead, k + 8), math.nan, dtype=x.dtype, device=device)
        view = buf[..., :k]
    elif layout == "offset":
        buf = torch.full((x.numel() + 8,), math.nan, dtype=x.dtype, device=device)
        view = buf[5 : 5 + x.numel()].view(x.shape)
    else:
        raise ValueError(f"x layout {layout!r}: expected one of {list(LAYOUTS)}")
    view.copy_(x)
    return view


@dataclass(frozen=True)
class Inputs:
    """The CPU tensors of a case: the canonical weight, the input and the bias (``None`` without bias), plus
    ``later``: inputs of the further calls on the same prepared layer (contiguous on the CPU, like ``x``; the memory
    layout of the case is applied when a call is made: :func:`laid_out`)."""

    weight: QuantizedWeight
    x: torch.Tensor
    bias: torch.Tensor | None
    later: tuple[torch.Tensor, ...] = ()
    layout: str = "contig"


def make_inputs(cell: Cell, case: Case) -> Inputs:
    """The random tensors of ``case`` in ``cell``, drawn in a fixed order from one generator: weight, ``x``, bias,
    then a second ``x`` of the same shape and a third of another row count (:func:`other_rows`)."""
    gen = case.generator()
    weight = random_weight(cell, case.k, case.n, case.scale_dtype, gen)
    x = activations(case, cell.dtype, gen)
    bias = bias_vector(case, cell.dtype, gen)
    later = (activations(case, cell.dtype, gen), activations(case, cell.dtype, gen, other_rows(case.m)))
    return Inputs(weight, x, bias, later, case.layout)


def edge_inputs(variant: str, cell: Cell, case: Case) -> Inputs:
    """The tensors of an edge variant (see :data:`wna16_conformance.cells.EDGE_VARIANTS`)."""
    base = make_inputs(cell, case)
    w, s = base.weight, cell.scheme
    codes = w.codes()
    zeros, scales = w.zeros, w.scales
    x = base.x
    if variant == "zero-codes":
        codes = torch.zeros_like(codes)
    elif variant == "max-codes":
        codes = torch.full_like(codes, s.max_code)
    elif variant == "negative-scales":
        scales = -scales.abs()
    elif variant == "zero-extremes":  # true zeros 0 and 2**bits (the value a GPTQ v1 stored zero of 2**bits-1 gives)
        pattern = torch.arange(zeros.numel()).reshape(zeros.shape) % 2
        zeros = torch.where(pattern == 0, 0, 1 << s.bits).to(torch.int32)
    elif variant == "large-k-cancellation":
        # Half the rows +d, half -d, all activations +8: the exact result is 0, but a running sum over K reaches
        # twice the fp16 maximum, so a kernel that accumulates in fp16 overflows to inf. d is a power of two and
        # the scale has 11 significant bits: every running sum (at most K/2 products) is exact in fp32, so a
        # correct kernel returns exactly 0 in any summation order, and one that rounds a partial sum to fp16 or
        # bf16 is off by far more than the bound (which relies on that exactness, not on a random walk).
        d = 1 << ((s.center - 1).bit_length() - 1) if s.bits > 1 else 1
        half = case.k // 2
        codes = torch.cat([torch.full((half, case.n), s.center + d), torch.full((case.k - half, case.n), s.center - d)])
        magnitude = 2 * 65504.0 / (half * 8 * d)
        scales = torch.full_like(scales, magnitude, dtype=torch.float32).to(scales.dtype)
        x = torch.full_like(x, 8.0)
        base = replace(base, later=tuple(torch.full_like(t, 8.0) for t in base.later))
    weight = QuantizedWeight.from_codes(s, codes, zeros, scales, w.g_idx)
    return replace(base, weight=weight, x=x)
