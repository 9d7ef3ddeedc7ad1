"""Launch configurations: which kernel, block sizes and split-K for a shape, per target, and the tuner that picks one.

Every candidate respects the layout's one hard rule: in ``UNIFORM`` group mode the K block divides the group's rows,
so a tile never straddles two groups (:func:`max_block_k`); a split's K range is a whole number of K blocks, so
splits never straddle either.

Targets: ``gfx9*`` (MI300-class gfx942 first: 64-lane wavefronts, 304 CUs, matrix cores with 16x16 instructions,
where AMD's Triton wants ``num_stages=2`` and takes ``waves_per_eu``/``matrix_instr_nonkdim``/``kpack`` hints),
NVIDIA (``sm*``, the secondary target: 32-lane warps, deeper software pipelines), and the interpreter (one
configuration, large blocks: the interpreter's cost is per program and per operation, not per element).

On a GPU the first call of each shape bucket benchmarks the candidates (``triton.testing.do_bench``) and caches the
fastest for the process; ``WNA16_ROCM_AUTOTUNE=0`` skips the benchmark and takes the heuristic choice.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from wna16_rocm.repack import MIN_BLOCK_K, GroupMode, RepackedWeight

GEMV_MAX_M = 4
"""Up to this many rows the GEMV (no matrix cores; each row streams the weight once from cache) beats the GEMM."""

ENV_AUTOTUNE = "WNA16_ROCM_AUTOTUNE"


@dataclass(frozen=True)
class LaunchConfig:
    """One launch: kernel (``gemv``/``gemm``), block sizes, split-K and compiler hints."""

    kernel: str
    block_n: int
    block_k: int
    block_m: int = 1
    split_k: int = 1
    num_warps: int = 4
    num_stages: int = 2
    hints: tuple[tuple[str, int], ...] = field(default=())

    def launch_options(self) -> dict[str, int]:
        """Keyword arguments of the kernel launch besides the kernel's own parameters."""
        return {"num_warps": self.num_warps, "num_stages": self.num_stages, **dict(self.hints)}


def _pow2_ceil(v: int) -> int:
    return 1 << (max(v, 1) - 1).bit_length()


def max_block_k(weight: RepackedWeight) -> int:
    """Largest K block allowed: in ``UNIFORM`` mode the largest power of two dividing the group's rows (>= 16)."""
    if weight.group_mode != GroupMode.UNIFORM:
        return 256
    rows = weight.group_rows
    return min(256, rows & -rows)


def bucket_m(m: int) -> int:
    """Rows rounded up to a power of two: configurations are tuned per bucket, not per exact M."""
    return _pow2_ceil(m)


def _split_k(tiles_mn: int, k_blocks: int, units: int) -> int:
    """Split K until the grid fills about ``units`` compute units, keeping >= 4 K blocks per split."""
    split = 1
    while tiles_mn * split * 2 <= units and k_blocks // (split * 2) >= 4:
        split *= 2
    return split


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def candidates(target: str, weight: RepackedWeight, m: int) -> list[LaunchConfig]:
    """Every configuration worth timing for ``m`` rows on ``target`` (the heuristic choice first)."""
    n, k, kmax = weight.out_features, weight.in_features, max_block_k(weight)
    amd = target.startswith("gfx")
    units = 304 if target == "gfx942" else 228 if amd else 132
    k_pad = max(MIN_BLOCK_K, _pow2_ceil(k))
    out: list[LaunchConfig] = []
    if m <= GEMV_MAX_M:
        for bn in (32, 64, 128) if amd else (64, 128, 256):
            for bk in (64, 128, 256):
                bk = min(bk, kmax, k_pad)
                split = _split_k(_cdiv(n, bn) * m, _cdiv(k, bk), units)
                warps = 4 if bn * bk <= 8192 else 8
                hints: tuple[tuple[str, int], ...] = (("waves_per_eu", 2),) if amd else ()
                out.append(LaunchConfig("gemv", bn, bk, 1, split, warps, 1 if amd else 3, hints))
    else:
        tiles_m = (16, 32, 64) if m <= 64 else (64, 128, 256) if amd else (64, 128)
        for bm in tiles_m:
            for bn in (64, 128, 256) if amd else (64, 128):
                for bk in (32, 64, 128):
                    bk = min(bk, kmax, k_pad)
                    tiles = _cdiv(m, bm) * _cdiv(n, bn)
                    split = _split_k(tiles, _cdiv(k, bk), units) if m <= 64 else 1
                    warps = 8 if bm * bn >= 128 * 128 else 4
                    if amd:
                        hints = (("matrix_instr_nonkdim", 16), ("kpack", 2 if bk >= 64 else 1), ("waves_per_eu", 0))
                        out.append(LaunchConfig("gemm", bn, bk, bm, split, warps, 2, hints))
                    else:
                        out.append(LaunchConfig("gemm", bn, bk, bm, split, warps, 3 if bm * bn * bk <= 1 << 19 else 2))
    unique = list(dict.fromkeys(out))
    unique.sort(key=lambda c: c != heuristic(target, weight, m))
    return unique


def heuristic(target: str, weight: RepackedWeight, m: int) -> LaunchConfig:
    """One configuration without timing anything: the interpreter's choice, and the GPU's before (or without) tuning."""
    n, k, kmax = weight.out_features, weight.in_features, max_block_k(weight)
    k_pad = max(MIN_BLOCK_K, _pow2_ceil(k))
    if target == "interpreter":  # few, large programs: the interpreter pays per program and per op
        bn = min(256, max(16, _pow2_ceil(n)))
        bk = min(kmax, k_pad, 128)
        if m <= GEMV_MAX_M:
            return LaunchConfig("gemv", bn, bk, 1, 1)
        return LaunchConfig("gemm", bn, bk, min(64, max(16, _pow2_ceil(m))), 1)
    amd = target.startswith("gfx")
    units = 304 if target == "gfx942" else 228 if amd else 132
    if m <= GEMV_MAX_M:
        bn, bk = (64, min(128, kmax, k_pad)) if amd else (128, min(128, kmax, k_pad))
        split = _split_k(_cdiv(n, bn) * m, _cdiv(k, bk), units)
        gemv_hints: tuple[tuple[str, int], ...] = (("waves_per_eu", 2),) if amd else ()
        return LaunchConfig("gemv", bn, bk, 1, split, 4, 1 if amd else 3, gemv_hints)
    bm = 16 if m <= 16 else 32 if m <= 32 else 64 if m <= 64 else 128
    bn, bk = 128, min(64, kmax, k_pad)
    split = _split_k(_cdiv(m, bm) * _cdiv(n, bn), _cdiv(k, bk), units) if m <= 64 else 1
    warps = 8 if bm * bn >= 128 * 128 else 4
    if amd:
        hints = (("matrix_instr_nonkdim", 16), ("kpack", 2 if bk >= 64 else 1), ("waves_per_eu", 0))
        return LaunchConfig("gemm", bn, bk, bm, split, warps, 2, hints)
    return LaunchConfig("gemm", bn, bk, bm, split, warps, 3)


class Tuner:
    """Per-process cache of the chosen configuration per (target, layout, M bucket)."""

    def __init__(self) -> None:
        self._cache: dict[tuple[object, ...], LaunchConfig] = {}

    def choose(
        self, target: str, weight: RepackedWeight, m: int, bench: Callable[[LaunchConfig], float] | None
    ) -> LaunchConfig:
        """The configuration for ``m`` rows; with ``bench`` (milliseconds of one launch) the fastest candidate."""
        key = (
            target, weight.bits, weight.in_features, weight.out_features, int(weight.group_mode), weight.group_rows,
            weight.zeros is None, bucket_m(m),
        )  # fmt: skip
        found = self._cache.get(key)
        if found is not None:
            return _fit(found, m)
        tune = bench is not None and target != "interpreter" and os.environ.get(ENV_AUTOTUNE, "1") != "0"
        if not tune or bench is None:
            choice = heuristic(target, weight, m)
        else:
            timed = []
            for config in candidates(target, weight, bucket_m(m)):
                try:
                    timed.append((bench(_fit(config, m)), config))
                except Exception:  # a candidate that does not compile or fit (registers, LDS) is not a choice
                    continue
            choice = min(timed, key=lambda t: t[0])[1] if timed else heuristic(target, weight, m)
        self._cache[key] = choice
        return _fit(choice, m)


def _fit(config: LaunchConfig, m: int) -> LaunchConfig:
    """A bucket's configuration adapted to the exact ``m``: a GEMM row block no larger than needed (>= 16)."""
    if config.kernel == "gemm" and config.block_m > max(16, _pow2_ceil(m)):
        return replace(config, block_m=max(16, _pow2_ceil(m)))
    return config
