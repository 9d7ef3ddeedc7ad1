"""Marlin's tensor layouts as plain torch index arithmetic, so that they run (and are proven) on any device.

Marlin feeds tensor-core ``mma.m16n8k16`` instructions straight from registers. Everything it reads is stored in the
order the threads consume it, so the layouts below are permutations, each derived from the fragment ownership of
that instruction: in a 16x16 tile of the weight (rows k, columns n), thread ``t`` of a warp holds rows
``2*(t%4) + {0, 1}`` and ``2*(t%4) + {8, 9}`` of column ``t//4`` of each 8-column half. The dequantizer then turns
one int32 word into fp16/bf16 pairs with shifts that want the codes of a word in an interleaved order.

Nothing here knows about vLLM; the CPU layout proofs compare every function with vLLM's own reference.
"""

from __future__ import annotations

import math
from functools import cache

import torch

TILE = 16
"""Marlin's weight tile is 16x16 (k x n); a packed weight row holds one k-tile row of the whole N."""

CHUNK = 1024
"""The weight permutation acts on runs of 1024 tile entries: four 16x16 tiles, i.e. 64 output columns."""

INTERLEAVE: dict[int, tuple[int, ...]] = {4: (0, 2, 4, 6, 1, 3, 5, 7), 8: (0, 2, 1, 3)}
"""Order of the codes inside one int32 word, as the dequantizer's shift-and-mask trick extracts them in pairs."""

THREAD_TILE_FAMILIES: tuple[tuple[int, int], ...] = ((64, 128), (128, 64))
"""(n, k) multiples the GEMM's thread tiles need: N % 64 and K % 128, or N % 128 and K % 64."""


def pack_last(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """int32 [..., C*bits/32]: consecutive runs of 32/bits codes along the last dim in one word each, the first code
    in the lowest bits (GPTQ's column packing, vectorised: Marlin's padded N is always a multiple of the run)."""
    per_word = 32 // bits
    runs = codes.to(torch.int32).reshape(*codes.shape[:-1], codes.shape[-1] // per_word, per_word)
    words = runs[..., 0].clone()
    for i in range(1, per_word):  # the top code's shift reaches the sign bit: int32 shifts wrap, as the format wants
        words |= runs[..., i] << (bits * i)
    return words


def _check_bits(bits: int) -> None:
    if bits not in INTERLEAVE:
        raise ValueError(f"bits={bits}: Marlin packs 4- or 8-bit codes")


@cache
def weight_permutation(bits: int) -> torch.Tensor:
    """int64 [1024]: entry ``p`` of a permuted chunk takes entry ``perm[p]`` of the tile-major chunk.

    The order is (thread t, tile j of the four, half b of the tile, register r of the four), so that each thread's
    codes end up consecutive and a word holds what one thread dequantizes at once; then the codes of each word are
    interleaved.
    """
    _check_bits(bits)
    t = torch.arange(32).view(32, 1, 1, 1)
    j = torch.arange(4).view(1, 4, 1, 1)
    b = torch.arange(2).view(1, 1, 2, 1)
    r = torch.arange(4).view(1, 1, 1, 4)
    row = 2 * (t % 4) + r % 2 + 8 * (r // 2)
    col = t // 4 + 8 * b
    perm = (TILE * TILE * j + TILE * row + col).reshape(-1)
    order = torch.tensor(INTERLEAVE[bits])
    return perm.view(-1, len(order))[:, order].reshape(-1).contiguous()


def repack_weight(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """int32 [K/16, N*16*bits/32]: codes [K, N] (K % 16 == 0, N % 64 == 0) in Marlin's tile layout, packed."""
    k, n = codes.shape
    if k % TILE or n % (CHUNK // TILE):
        raise ValueError(f"codes [{k}, {n}]: Marlin needs K % {TILE} == 0 and N % {CHUNK // TILE} == 0")
    tiles = codes.reshape(k // TILE, TILE, n // TILE, TILE).permute(0, 2, 1, 3).reshape(k // TILE, n * TILE)
    perm = weight_permutation(bits).to(codes.device)
    permuted = tiles.reshape(-1, CHUNK)[:, perm].reshape(k // TILE, n * TILE)
    return pack_last(permuted, bits)


@cache
def group_permutation() -> torch.Tensor:
    """int64 [64]: grouped scales (and every zero point) are read as 8x8 blocks transposed."""
    return torch.arange(64).view(8, 8).t().reshape(-1).contiguous()


@cache
def channel_permutation() -> torch.Tensor:
    """int64 [32]: per-channel scales and the bias, in the order of the output fragment (pairs of columns).

    Position ``8*i + m`` takes column ``2*i + m%2 + 8*(m//2)``.
    """
    i = torch.arange(4).view(4, 1)
    m = torch.arange(8).view(1, 8)
    return (2 * i + m % 2 + 8 * (m // 2)).reshape(-1).contiguous()


def _permute_runs(values: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    shape = values.shape
    return values.reshape(-1, perm.numel())[:, perm.to(values.device)].reshape(shape).contiguous()


def permute_scales(scales: torch.Tensor) -> torch.Tensor:
    """Scales [G, N] in Marlin order: with several groups each 64-column run is transposed as 8x8; a single group
    (per-channel) uses the output-fragment order instead, since it is applied once after the accumulation."""
    perm = group_permutation() if scales.shape[0] > 1 else channel_permutation()
    return _permute_runs(scales, perm)


def permute_bias(bias: torch.Tensor) -> torch.Tensor:
    """Bias [N] in Marlin order: added to the output fragment, so it follows the per-channel order."""
    return _permute_runs(bias, channel_permutation())


def pack_zero_points(zeros: torch.Tensor, bits: int) -> torch.Tensor:
    """int32 [G, N*bits/32]: zero points [G, N] permuted like grouped scales (they apply on every MMA, so never the
    per-channel order), interleaved like the codes of a word, then packed along N."""
    _check_bits(bits)
    permuted = _permute_runs(zeros, group_permutation())
    order = torch.tensor(INTERLEAVE[bits], device=zeros.device)
    interleaved = permuted.reshape(-1, order.numel())[:, order].reshape(zeros.shape)
    return pack_last(interleaved, bits)


def tile_candidates(n: int, k: int, group_size: int = -1) -> list[tuple[int, int]]:
    """The smallest (N, K) of each thread-tile family that keeps K a multiple of ``group_size``."""
    group = group_size if group_size > 0 else 1
    return [(-(-n // fn) * fn, -(-k // math.lcm(fk, group)) * math.lcm(fk, group)) for fn, fk in THREAD_TILE_FAMILIES]


def padded_nk(n: int, k: int, group_size: int = -1) -> tuple[int, int]:
    """The smallest (N, K) the thread tiles accept that keeps K a multiple of ``group_size``; of the two tile
    families (:func:`tile_candidates`) the one with the smaller padded area wins (then the smaller perimeter)."""
    return min(tile_candidates(n, k, group_size), key=lambda nk: (nk[0] * nk[1], nk[0] + nk[1]))
