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
