"""Launch configurations: the group rule (a K block never straddles two groups), split-K ranges and per-target
choices. Pure python (no triton, no GPU)."""

from __future__ import annotations

import pytest
import torch

from wna16 import Scheme, quantize_rtn
from wna16_rocm.configs import GEMV_MAX_M, LaunchConfig, Tuner, candidates, heuristic, max_block_k
from wna16_rocm.repack import GroupMode, RepackedWeight, repack

TARGETS = ["gfx942", "gfx90a", "sm90", "sm80", "interpreter"]


def _layout(group: int, k: int = 4096, n: int = 4096, act_order: bool = False) -> RepackedWeight:
    """A layout with the real shape metadata and empty tensors (configurations read only the metadata)."""
    if act_order:
        g_idx = torch.randint(0, 4, (128,), generator=torch.Generator().manual_seed(0))
        small = repack(quantize_rtn(torch.randn(8, 128), Scheme(4, group, True), g_idx=g_idx), "cpu")
        mode, rows = small.group_mode, small.group_rows
    elif group == -1 or group >= k:
        mode, rows = GroupMode.SINGLE, k
    else:
        mode, rows = (GroupMode.UNIFORM if group % 16 == 0 else GroupMode.PER_ROW), group
    empty = torch.empty(0, dtype=torch.int32)
    return RepackedWeight(4, k, n, empty, None, empty.float(), None, None, None, mode, rows)


def test_layout_helper_matches_repack() -> None:
    for group in (-1, 32, 48):
        real = repack(quantize_rtn(torch.randn(8, 96), Scheme(4, group, True)), "cpu")
        fake = _layout(group, k=96, n=8)
        assert (real.group_mode, real.group_rows) == (fake.group_mode, fake.group_rows)


@pytest.mark.parametrize("group", [-1, 32, 48, 64, 128, 256])
@pytest.mark.parametrize("m", [1, 3, 16, 64, 512])
@pytest.mark.parametrize("target", TARGETS)
def test_k_block_never_straddles_groups(group: int, m: int, target: str) -> None:
    layout = _layout(group, k=1536)
    configs = [heuristic(target, layout, m)]
    if target != "interpreter":
        configs += candidates(target, layout, m)
    for c in configs:
        assert c.block_k >= 16 and c.block_k & (c.block_k - 1) == 0
        if layout.group_mode == GroupMode.UNIFORM:
            assert layout.group_rows % c.block_k == 0, (c, layout.group_rows)
        assert c.kernel == ("gemv" if m <= GEMV_MAX_M else "gemm")
        assert c.split_k >= 1


def test_max_block_k() -> None:
    assert max_block_k(_layout(48, k=96)) == 16
    assert max_block_k(_layout(128)) == 128
    assert max_block_k(_layout(-1)) == 256  # one group: any block
    assert max_block_k(_layout(32, k=128, act_order=True)) == 256  # per-row lookup: any block


def test_amd_hints_only_on_amd() -> None:
    layout = _layout(128)
    for m in (1, 64, 1024):
        assert all(dict(c.hints) for c in candidates("gfx942", layout, m))
        assert not any(c.hints for c in candidates("sm90", layout, m))
        assert all(c.num_stages <= 2 for c in candidates("gfx942", layout, m))


def test_small_m_splits_k_to_fill_the_gpu() -> None:
    layout = _layout(128, k=8192, n=1024)
    gemv = heuristic("gfx942", layout, 1)
    assert gemv.kernel == "gemv" and gemv.split_k > 1
    big = heuristic("gfx942", layout, 4096)
    assert big.kernel == "gemm" and big.split_k == 1


def test_tuner_benchmarks_once_per_bucket_and_picks_the_fastest() -> None:
    layout = _layout(128, k=2048, n=2048)
    calls: list[LaunchConfig] = []

    def bench(c: LaunchConfig) -> float:
        calls.append(c)
        return 1.0 if c.block_n != 64 else 0.5

    tuner = Tuner()
    first = tuner.choose("sm90", layout, 33, bench)
    assert first.block_n == 64 and calls
    n_calls = len(calls)
    again = tuner.choose("sm90", layout, 60, bench)  # same M bucket (64): cached
    assert len(calls) == n_calls and again.block_n == 64
    assert Tuner().choose("interpreter", layout, 33, bench) == heuristic("interpreter", layout, 33)
    assert len(calls) == n_calls  # never benchmarks under the interpreter


def test_tuner_survives_failing_candidates(monkeypatch: pytest.MonkeyPatch) -> None:
    layout = _layout(64, k=1024, n=1024)

    def bench(c: LaunchConfig) -> float:
        if c.block_m == 16:
            raise RuntimeError("out of resources")
        return float(c.block_m)

    chosen = Tuner().choose("gfx942", layout, 40, bench)
    assert chosen.block_m == 32
    monkeypatch.setenv("WNA16_ROCM_AUTOTUNE", "0")
    assert Tuner().choose("gfx942", layout, 40, bench) == heuristic("gfx942", layout, 40)
