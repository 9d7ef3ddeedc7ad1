"""wna16.groups: the one definition of which scale groups a layer or K-slice stores, and the row-parallel Shard."""

from __future__ import annotations

import pytest
import torch

from wna16 import Scheme, Shard, UsageError, quantize_rtn
from wna16.groups import has_partial_group, stored_groups, trivial_g_idx
from wna16.partition import shard_weight


def test_whole_layer_stores_ceil_k_over_group() -> None:
    assert stored_groups(Scheme(4, 32), 96) == range(3)
    assert stored_groups(Scheme(4, 32), 100) == range(4)  # partial last group
    assert stored_groups(Scheme(4, -1), 100) == range(1)
    assert has_partial_group(Scheme(4, 32), 100) and not has_partial_group(Scheme(4, 32), 96)
    assert not has_partial_group(Scheme(4, -1), 100)


def test_k_slices_store_the_groups_their_rows_touch() -> None:
    s = Scheme(4, 32)
    assert stored_groups(s, 64, full_in_features=256, k_start=128) == range(4, 6)
    assert stored_groups(s, 36, full_in_features=100, k_start=64) == range(2, 4)  # the partial last group
    assert stored_groups(Scheme(4, -1), 64, full_in_features=256, k_start=128) == range(1)  # replicated
    assert stored_groups(s, 64, full_in_features=256, k_start=128, act_order=True) == range(8)  # every group
    assert has_partial_group(s, 36, full_in_features=100) and not has_partial_group(s, 64, full_in_features=256)


def test_trivial_g_idx_maps_rows_to_groups() -> None:
    assert trivial_g_idx(5, Scheme(4, 2)).tolist() == [0, 0, 1, 1, 2]
    assert trivial_g_idx(3, Scheme(4, -1)).dtype == torch.int32


def test_row_parallel_shard_and_shard_weight_agree_with_stored_groups() -> None:
    full = quantize_rtn(torch.randn(16, 256), Scheme(4, 32))
    for rank in range(4):
        shard = Shard.row_parallel(256, 16, rank, 4)
        assert (shard.k_start, shard.n_start, shard.adds_bias) == (rank * 64, 0, rank == 0)
        part = shard_weight(full, shard, 64, 16)
        kept = shard.groups(full.scheme, 64, act_order=False)
        assert kept == stored_groups(full.scheme, 64, full_in_features=256, k_start=rank * 64)
        assert torch.equal(part.scales, full.scales[kept.start : kept.stop])
    for rank, world in ((4, 4), (-1, 4), (0, 3), (0, 0)):
        with pytest.raises(UsageError, match="row-parallel"):
            Shard.row_parallel(256, 16, rank, world)


def test_groups_with_g_idx_counts_named_and_stored_groups() -> None:
    from wna16.groups import groups_with_g_idx

    g_idx = torch.tensor([0, 3, 1], dtype=torch.int32)
    assert groups_with_g_idx(2, g_idx, None) == 4  # g_idx names group 3
    assert groups_with_g_idx(2, g_idx, 6) == 6  # an act-order slice keeps every stored group
    assert groups_with_g_idx(5, g_idx, None) == 5
    assert groups_with_g_idx(2, torch.empty(0, dtype=torch.int32), None) == 2
