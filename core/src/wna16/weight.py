"""The canonical in-memory quantized weight that every on-disk layout converts to and every backend repacks from.

Layout (GPTQ packing with true zeros):

- ``qweight``: int32 [K*bits/32, N], codes packed along K (:mod:`wna16.packing`), ``codes[k, n]`` in [0, 2**bits).
- ``zeros``: int32 [G, N], the *true* zero point of each group and column, unpacked, in [0, 2**bits]. The value
  2**bits only arises from a GPTQ v1 stored zero of 2**bits - 1 (see :mod:`wna16.formats`); zeros are kept unpacked
  so that this value, and N that is not a multiple of 32, need no special case.
- ``scales``: float [G, N] as stored (fp16, bf16 or fp32); may be negative.
- ``g_idx``: ``None``, or int32 [K] mapping each input row to its group when it is *not* ``arange(K) // group_size``
  (act order). A trivial ``g_idx`` is dropped at construction.

The dequantized weight is ``W[n, k] = scales[g(k), n] * (codes[k, n] - zeros[g(k), n])``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch

from wna16.errors import FormatError, describe, expect_tensor
from wna16.groups import stored_groups, trivial_g_idx
from wna16.packing import pack_rows, packed_rows, unpack_rows
from wna16.scheme import Scheme

SCALE_DTYPES: tuple[torch.dtype, ...] = (torch.float16, torch.bfloat16, torch.float32)


def zero_problem(zeros: torch.Tensor, scheme: Scheme) -> str | None:
    """What is wrong with unpacked zero points for ``scheme`` (outside ``[0, 2**bits]``, or not all the centre for a
    symmetric scheme), or None. The coverage audit asks this of stored zeros before any weight is built."""
    if not zeros.numel():
        return None
    lo, hi = int(zeros.min()), int(zeros.max())
    if lo < 0 or hi > 1 << scheme.bits:
        return f"values in [{lo}, {hi}], expected [0, {1 << scheme.bits}]"
    if scheme.sym and (lo != scheme.center or hi != scheme.center):
        return f"scheme {scheme} is symmetric but zeros lie in [{lo}, {hi}], expected all {scheme.center}"
    return None


@dataclass(frozen=True, eq=False)
class QuantizedWeight:
    """A quantized weight of a linear layer with ``in_features`` K and ``out_features`` N (see module docstring)."""

    scheme: Scheme
    in_features: int
    out_features: int
    qweight: torch.Tensor
    zeros: torch.Tensor
    scales: torch.Tensor
    g_idx: torch.Tensor | None = field(default=None)
    name: str = "weight"

    def __post_init__(self) -> None:
        k, n, s = self.in_features, self.out_features, self.scheme
        expect_tensor(
            self.qweight, f"{self.name}.qweight", (packed_rows(k, s.bits, f"{self.name}.qweight"), n), (torch.int32,)
        )
        if self.g_idx is not None:
            self._check_g_idx()
        groups = self.num_groups
        expect_tensor(self.scales, f"{self.name}.scales", (groups, n), SCALE_DTYPES)
        expect_tensor(self.zeros, f"{self.name}.zeros", (groups, n), (torch.int32,))
        problem = zero_problem(self.zeros, s)
        if problem is not None:
            raise FormatError(f"{self.name}.zeros: {problem}")

    def _check_g_idx(self) -> None:
        g_idx = self.g_idx
        assert g_idx is not None
        expect_tensor(g_idx, f"{self.name}.g_idx", (self.in_features,), (torch.int32,))
        groups = self.scales.shape[0] if self.scales.dim() == 2 else -1
        trivial = trivial_g_idx(self.in_features, self.scheme)
        if groups == len(stored_groups(self.scheme, self.in_features)) and bool(torch.equal(g_idx.cpu(), trivial)):
            object.__setattr__(self, "g_idx", None)  # exports ship arange(K) // group_size without act order
            return
        lo, hi = int(g_idx.min()), int(g_idx.max())
        if lo < 0 or hi >= groups:
            raise FormatError(
                f"{self.name}.g_idx: values in [{lo}, {hi}], expected [0, {groups - 1}] ({groups} groups)"
            )

    @property
    def act_order(self) -> bool:
        """True when rows map to groups through a non-trivial ``g_idx``."""
        return self.g_idx is not None

    @property
    def num_groups(self) -> int:
        """Rows of ``scales`` (:func:`wna16.groups.stored_groups`): ceil(K / group_size) without act order; with act
        order what ``scales`` carries (a K-slice carries every group of its full layer, which the weight alone does not
        know)."""
        if self.g_idx is not None:
            return int(self.scales.shape[0])
        return len(stored_groups(self.scheme, self.in_features))

    def group_index(self) -> torch.Tensor:
        """int64 [K]: the group of each input row, whether or not the weight is act-ordered."""
        g = self.g_idx if self.g_idx is not None else trivial_g_idx(self.in_features, self.scheme, self.qweight.device)
        return g.to(torch.int64)

    def codes(self) -> torch.Tensor:
        """int32 [K, N]: the unpacked codes."""
        return unpack_rows(self.qweight, self.scheme.bits, f"{self.name}.qweight")

    def to(self, device: torch.device | str) -> QuantizedWeight:
        """The same weight with every tensor on ``device``."""
        g = None if self.g_idx is None else self.g_idx.to(device)
        return replace(
            self, qweight=self.qweight.to(device), zeros=self.zeros.to(device), scales=self.scales.to(device), g_idx=g
        )

    @classmethod
    def from_codes(
        cls,
        scheme: Scheme,
        codes: torch.Tensor,
        zeros: torch.Tensor,
        scales: torch.Tensor,
        g_idx: torch.Tensor | None = None,
        name: str = "weight",
    ) -> QuantizedWeight:
        """Build from unpacked codes [K, N] (any integer dtype), zeros [G, N] and scales [G, N]."""
        if codes.dim() != 2:
            raise FormatError(f"{name}.codes: got {describe(codes)}, expected [K, N]")
        k, n = codes.shape
        return cls(
            scheme,
            int(k),
            int(n),
            pack_rows(codes, scheme.bits, f"{name}.codes"),
            zeros.to(torch.int32),
            scales,
            None if g_idx is None else g_idx.to(torch.int32),
            name,
        )
