"""The quantization scheme: how many bits a code has, how many input rows share a scale, and whether zeros are fixed.

A scheme is pure data and independent of any tensor; a layer's shape (in_features = K) gives it a number of groups.
"""

from __future__ import annotations

from dataclasses import dataclass

from wna16.errors import SchemeError

SUPPORTED_BITS: tuple[int, ...] = (2, 3, 4, 8)


@dataclass(frozen=True, order=True)
class Scheme:
    """Weight-only integer quantization of a linear layer.

    ``bits``: code width, one of 2, 3, 4, 8. ``group_size``: input rows (along K) that share one scale and zero;
    -1 means a single group over all of K. ``sym``: symmetric "full range" quantization as AutoRound and GPTQ write
    it, where every zero point is the centre ``2**(bits-1)`` (scales may be negative); asymmetric schemes carry a
    zero point per group and column.
    """

    bits: int
    group_size: int = 128
    sym: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.bits, bool) or not isinstance(self.bits, int) or self.bits not in SUPPORTED_BITS:
            raise SchemeError(f"bits={self.bits!r}: expected one of {SUPPORTED_BITS}")
        gs = self.group_size
        if isinstance(gs, bool) or not isinstance(gs, int) or (gs != -1 and gs <= 0):
            raise SchemeError(f"group_size={gs!r}: expected -1 (one group over K) or a positive integer")
        if not isinstance(self.sym, bool):
            raise SchemeError(f"sym={self.sym!r}: expected a bool")

    @property
    def max_code(self) -> int:
        """Largest code value, ``2**bits - 1``."""
        return (1 << self.bits) - 1

    @property
    def center(self) -> int:
        """The symmetric zero point, ``2**(bits-1)``."""
        return 1 << (self.bits - 1)

    def group_rows(self, in_features: int) -> int:
        """Rows per group for a layer with ``in_features`` inputs (-1 resolves to K)."""
        return in_features if self.group_size == -1 else self.group_size

    def num_groups(self, in_features: int) -> int:
        """``ceil(K / group_size)``: the last group may be partial."""
        if in_features <= 0:
            raise SchemeError(f"in_features={in_features}: expected a positive integer")
        rows = self.group_rows(in_features)
        return -(-in_features // rows)

    def __str__(self) -> str:
        group = "channel" if self.group_size == -1 else f"g{self.group_size}"
        return f"w{self.bits}{group}{'sym' if self.sym else 'asym'}"
