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


@dataclass(frozen=True)
class Case:
    """One example: ``m`` rows (per batch entry when ``three_d``; the input is then [2, m, K]), K, N, ..."""

    m: int
    k: int
    n: int
    three_d: bool = False
    bias: bool = False
    scale_dtype: str = "fp16"
    seed: int = 0

    @property
    def key(self) -> str:
        """``M=3,K=256,N=64,3d=0,bias=1,scales=fp16,seed=7``: what ``--wna16-case`` takes back."""
        values = (self.m, self.k, self.n, int(self.three_d), int(self.bias), self.scale_dtype, self.seed)
        return ",".join(f"{name}={value}" for name, value in zip(_FIELDS, values, strict=True))

    @classmethod
    def parse(cls, text: str) -> Case:
        """Inverse of :attr:`key`; raises ``ValueError`` naming the bad field."""
        pairs = dict(part.split("=", 1) for part in text.split(",") if "=" in part)
        missing = [f for f in _FIELDS if f not in pairs]
        if missing or len(pairs) != len(_FIELDS):
            raise ValueError(f"case {text!r}: expected the fields {','.join(_FIELDS)} (missing {missing})")
        if pairs["scales"] not in DTYPES:
            raise ValueError(f"case {text!r}: scales={pairs['scales']!r}, expected one of {sorted(DTYPES)}")
        return cls(
            int(pairs["M"]), int(pairs["K"]), int(pairs["N"]), pairs["3d"] == "1", pairs["bias"] == "1",
            pairs["scales"], int(pairs["seed"]),
        )  # fmt: skip

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
    scales = (size * sign).to(DTYPES[scale_dtype])
    g_idx = act_order_g_idx(k, scheme, gen) if cell.act_order else None
    return QuantizedWeight.from_codes(scheme, codes, zeros, scales, g_idx)


def activations(case: Case, dtype: torch.dtype, gen: torch.Generator) -> torch.Tensor:
    """``x``: [M, K], or [2, M, K] for 3-D cases, standard normal in ``dtype``."""
    shape = (2, case.m, case.k) if case.three_d else (case.m, case.k)
    return torch.randn(shape, generator=gen).to(dtype)


def bias_vector(case: Case, dtype: torch.dtype, gen: torch.Generator) -> torch.Tensor | None:
    """A bias of the activation dtype when the case has one."""
    return torch.randn(case.n, generator=gen).to(dtype) if case.bias else None


@dataclass(frozen=True)
class Inputs:
    """The CPU tensors of a case: the canonical weight, the input and the bias (``None`` without bias)."""

    weight: QuantizedWeight
    x: torch.Tensor
    bias: torch.Tensor | None


def make_inputs(cell: Cell, case: Case) -> Inputs:
    """The random tensors of ``case`` in ``cell``, drawn in a fixed order from one generator."""
    gen = case.generator()
    weight = random_weight(cell, case.k, case.n, case.scale_dtype, gen)
    return Inputs(weight, activations(case, cell.dtype, gen), bias_vector(case, cell.dtype, gen))


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
        # twice the fp16 maximum, so a kernel that accumulates in fp16 overflows to inf.
        d = s.center - 1 if s.bits > 1 else 1
        half = case.k // 2
        codes = torch.cat([torch.full((half, case.n), s.center + d), torch.full((case.k - half, case.n), s.center - d)])
        magnitude = 2 * 65504.0 / (half * 8 * d)
        scales = torch.full_like(scales, magnitude, dtype=torch.float32).to(scales.dtype)
        x = torch.full_like(x, 8.0)
    weight = QuantizedWeight.from_codes(s, codes, zeros, scales, w.g_idx)
    return replace(base, weight=weight, x=x)
