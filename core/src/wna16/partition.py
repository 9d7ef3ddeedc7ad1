"""Tensor-parallel partitions of a linear layer, and how a slice of a canonical weight is cut.

Semantics (what every backend and runtime must agree on):

- An **N-slice** (column parallel) holds output columns ``[n_start, n_start + N)`` of the full layer, with their
  scales, zeros and bias entries, and yields exactly those output columns.
- A **K-slice** (row parallel) holds input rows ``[k_start, k_start + K)`` and yields a *partial sum*: the full output
  is the sum over K-slices. Without act order both ends lie on group boundaries (or the end is the full K), so the
  slice owns whole groups; with a single group (``group_size == -1``) the scales are replicated; with act order the
  slice carries the scales and zeros of every group (its rows may use any of them) and its part of ``g_idx``.
- The bias is added by exactly one K-slice, the one with ``adds_bias`` (by convention the first).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from wna16.errors import FormatError, UsageError, layer_shape
from wna16.groups import stored_groups
from wna16.packing import run_length
from wna16.scheme import Scheme
from wna16.weight import QuantizedWeight


@dataclass(frozen=True)
class Shard:
    """Where a slice sits in the full layer ([full_out_features, full_in_features])."""

    full_in_features: int
    full_out_features: int
    k_start: int = 0
    n_start: int = 0
    adds_bias: bool = True

    @classmethod
    def row_parallel(cls, full_in_features: int, full_out_features: int, rank: int, world_size: int) -> Shard:
        """Rank ``rank`` of ``world_size`` equal row-parallel (K) slices, as vLLM's ``RowParallelLinear`` cuts them:
        rows ``[rank * K / world_size, (rank + 1) * K / world_size)``, all output columns, the bias added by rank 0."""
        if world_size <= 0 or not 0 <= rank < world_size or full_in_features % world_size:
            raise UsageError(
                f"row-parallel rank {rank} of {world_size}: expected 0 <= rank < world_size and K={full_in_features} "
                "divisible by world_size"
            )
        k = full_in_features // world_size
        return cls(full_in_features, full_out_features, k_start=rank * k, n_start=0, adds_bias=rank == 0)

    def groups(self, scheme: Scheme, in_features: int, act_order: bool) -> range:
        """The full layer's groups this K-slice of ``in_features`` rows stores (:func:`wna16.groups.stored_groups`)."""
        return stored_groups(
            scheme, in_features, full_in_features=self.full_in_features, k_start=self.k_start, act_order=act_order
        )

    def problems(self, in_features: int, out_features: int, group_size: int, bits: int, act_order: bool) -> list[str]:
        """Every reason this shard is not a valid slice of ``in_features`` x ``out_features`` (empty when valid)."""
        out: list[str] = []
        k_end, n_end = self.k_start + in_features, self.n_start + out_features
        if self.k_start < 0 or k_end > self.full_in_features:
            out.append(f"K-slice [{self.k_start}, {k_end}) lies outside K={self.full_in_features}")
        if self.n_start < 0 or n_end > self.full_out_features:
            out.append(f"N-slice [{self.n_start}, {n_end}) lies outside N={self.full_out_features}")
        if self.k_start % run_length(bits)[0]:
            out.append(f"K-slice start {self.k_start} does not fall on a {bits}-bit packing word boundary")
        grouped = not act_order and group_size != -1 and in_features != self.full_in_features
        if grouped and (self.k_start % group_size or (k_end % group_size and k_end != self.full_in_features)):
            out.append(f"K-slice [{self.k_start}, {k_end}) does not start and end on groups of {group_size}")
        return out


def shard_weight(full: QuantizedWeight, shard: Shard, in_features: int, out_features: int) -> QuantizedWeight:
    """Cut the slice ``shard`` of size ``in_features`` x ``out_features`` from the full canonical weight."""
    if (full.in_features, full.out_features) != (shard.full_in_features, shard.full_out_features):
        raise FormatError(
            f"{full.name}: weight is {layer_shape(full.in_features, full.out_features)}, shard describes "
            f"{layer_shape(shard.full_in_features, shard.full_out_features)}"
        )
    s = full.scheme
    problems = shard.problems(in_features, out_features, s.group_size, s.bits, full.act_order)
    if problems:
        raise FormatError(f"{full.name}: invalid shard: " + "; ".join(problems))
    n0, n1 = shard.n_start, shard.n_start + out_features
    k0, k1 = shard.k_start, shard.k_start + in_features
    codes, words = run_length(s.bits)
    qweight = full.qweight[k0 // codes * words : k1 // codes * words, n0:n1]
    g_idx = None if full.g_idx is None else full.g_idx[k0:k1]
    # An act-order slice keeps every group the full weight carries (its rows may use any of them).
    kept = range(full.num_groups) if full.act_order else shard.groups(s, in_features, act_order=False)
    g0, g1 = kept.start, kept.stop
    return replace(
        full,
        in_features=in_features,
        out_features=out_features,
        qweight=qweight.contiguous(),
        zeros=full.zeros[g0:g1, n0:n1].contiguous(),
        scales=full.scales[g0:g1, n0:n1].contiguous(),
        g_idx=None if g_idx is None else g_idx.contiguous(),
    )


def shard_bias(bias: torch.Tensor | None, shard: Shard, out_features: int) -> torch.Tensor | None:
    """The bias entries of an N-slice (every K-slice carries them; only the one with ``adds_bias`` adds them)."""
    if bias is None:
        return None
    return bias[shard.n_start : shard.n_start + out_features].contiguous()
