# mypy: disable-error-code="untyped-decorator,no-untyped-def"
"""The Triton kernels: a split-K GEMV for a few rows and a tiled split-K GEMM, sharing the code and group loaders.

Both read the layout of :mod:`wna16_rocm.repack` and compute ``y = x @ W^T (+ b)`` with float32 accumulation.

Where a K tile lies in one group (``SINGLE``/``UNIFORM`` group modes) the scale is applied *after* the tile's dot
product: ``acc += (x_tile @ (q - z)_tile) * s``. ``q - z`` is an integer in [-256, 255], exact in fp16 and bf16, so
the matrix cores multiply exact weights and nothing is rounded to the activation dtype: the only roundings are the
float32 ones (``param_dtype`` fp32). It also saves the per-element multiply by the scale.

In ``PER_ROW`` mode a tile's rows have different scales, so the weight is dequantized in float32 first. For fp16/bf16
activations it is split into ``hi = round(w)`` and ``lo = round(w - hi)`` in the activation dtype and multiplied
twice (``x @ hi + x @ lo``): the weight then carries a relative error of at most ``u**2`` (u = unit roundoff of the
activation dtype) instead of ``u``, at the price of a second dot that a memory-bound kernel barely notices.

``DOT_FP32`` is the only difference between the interpreted and the compiled kernel: the interpreter's ``tl.dot`` is
wrong on bf16 operands, so under the interpreter the (already rounded) operands are widened to float32 and
multiplied with ``input_precision="ieee"`` (the same branch serves fp32 activations, where the widening is a no-op
and "ieee" keeps NVIDIA from using tf32). Products of two fp16/bf16 numbers are exact in float32, so this computes
what the matrix cores compute, up to the order of the float32 additions.

With ``SPLIT_K > 1`` program ``pid_k`` covers rows ``[pid_k * K_PER_SPLIT, (pid_k + 1) * K_PER_SPLIT)`` and writes a
float32 partial sum to ``out[pid_k]``; the caller reduces them (deterministic, unlike atomics) and adds the bias.
"""

from __future__ import annotations

import os

if os.environ.get("WNA16_TRITON_INTERPRET") == "1":
    os.environ["TRITON_INTERPRET"] = "1"  # must precede the first import of triton

import triton
import triton.language as tl

INTERPRETED: bool = os.environ.get("TRITON_INTERPRET") == "1"
"""Whether the ``@triton.jit`` functions below were created as interpreted functions (decided at decoration)."""


@triton.jit
def _round(x, DTYPE: tl.constexpr):
    """float32 ``x`` rounded to nearest-even ``DTYPE``. bf16 is rounded by integer arithmetic so that the interpreter
    (whose float32 -> bf16 cast truncates) and the GPU (hardware RTNE) give the same, correct result."""
    if DTYPE == tl.bfloat16:  # noqa: SIM300 (DTYPE is a compile-time parameter, not a constant)
        bits = x.to(tl.uint32, bitcast=True)
        bits = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16) << 16
        return bits.to(tl.float32, bitcast=True).to(tl.bfloat16)  # exact: the low 16 bits are zero
    else:
        return x.to(DTYPE)


@triton.jit
def _load_codes(lo_ptr, hi_ptr, offs_k, offs_n, mask, N, BITS: tl.constexpr):
    """int32 [BLOCK_K, BLOCK_N]: the codes of kernel rows ``offs_k`` and columns ``offs_n`` (0 where masked)."""
    LO_BITS: tl.constexpr = 2 if BITS == 3 else BITS
    PER_WORD: tl.constexpr = 32 // LO_BITS
    words = tl.load(lo_ptr + (offs_k // PER_WORD)[:, None] * N + offs_n[None, :], mask=mask, other=0)
    q = (words >> ((offs_k % PER_WORD) * LO_BITS)[:, None]) & ((1 << LO_BITS) - 1)
    if BITS == 3:
        high = tl.load(hi_ptr + (offs_k // 32)[:, None] * N + offs_n[None, :], mask=mask, other=0)
        q = q | (((high >> (offs_k % 32)[:, None]) & 1) << 2)
    return q


@triton.jit
def _group_params(
    scales_ptr,
    zeros_ptr,
    row_group_ptr,
    offs_k,
    offs_n,
    k0,
    k_mask,
    n_mask,
    N,
    BITS: tl.constexpr,
    GROUP_MODE: tl.constexpr,
    GROUP_ROWS: tl.constexpr,
    SYM: tl.constexpr,
):
    """``(s, z)`` float32 of the tile: [1, BLOCK_N] when the tile lies in one group, else [BLOCK_K, BLOCK_N]."""
    if GROUP_MODE == 0:
        s = tl.load(scales_ptr + offs_n, mask=n_mask, other=0.0)[None, :]
        if not SYM:
            z = tl.load(zeros_ptr + offs_n, mask=n_mask, other=0.0)[None, :]
    elif GROUP_MODE == 1:
        g = k0 // GROUP_ROWS  # the whole tile lies in one group: BLOCK_K divides GROUP_ROWS
        s = tl.load(scales_ptr + g * N + offs_n, mask=n_mask, other=0.0)[None, :]
        if not SYM:
            z = tl.load(zeros_ptr + g * N + offs_n, mask=n_mask, other=0.0)[None, :]
    else:
        mask = k_mask[:, None] & n_mask[None, :]
        g = tl.load(row_group_ptr + offs_k, mask=k_mask, other=0)
        s = tl.load(scales_ptr + g[:, None] * N + offs_n[None, :], mask=mask, other=0.0)
        if not SYM:
            z = tl.load(zeros_ptr + g[:, None] * N + offs_n[None, :], mask=mask, other=0.0)
    if SYM:
        z = (1 << (BITS - 1)) * 1.0
    return s, z


@triton.jit
def wna16_gemm(
    x_ptr,
    perm_ptr,
    lo_ptr,
    hi_ptr,
    scales_ptr,
    zeros_ptr,
    row_group_ptr,
    bias_ptr,
    out_ptr,
    M,
    N,
    K,
    stride_xm,
    stride_xk,
    K_PER_SPLIT,
    BITS: tl.constexpr,
    GROUP_MODE: tl.constexpr,
    GROUP_ROWS: tl.constexpr,
    SYM: tl.constexpr,
    HAS_PERM: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    SPLIT_K: tl.constexpr,
    DOT_FP32: tl.constexpr,
    SPLIT_W: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """Tiled GEMM: program (m, n, k) computes a [BLOCK_M, BLOCK_N] tile over its K range."""
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    pid_k = tl.program_id(2)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_mask = offs_m < M
    n_mask = offs_n < N
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    k_begin = pid_k * K_PER_SPLIT
    k_end = tl.minimum(k_begin + K_PER_SPLIT, K)
    for k0 in range(k_begin, k_end, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        k_mask = offs_k < K
        if HAS_PERM:  # noqa: SIM108 (a constexpr branch: the if statement is resolved at compile time)
            src = tl.load(perm_ptr + offs_k, mask=k_mask, other=0)
        else:
            src = offs_k
        a = tl.load(
            x_ptr + offs_m[:, None] * stride_xm + src[None, :] * stride_xk,
            mask=m_mask[:, None] & k_mask[None, :],
            other=0.0,
        )
        tile_mask = k_mask[:, None] & n_mask[None, :]
        q = _load_codes(lo_ptr, hi_ptr, offs_k, offs_n, tile_mask, N, BITS)
        s, z = _group_params(
            scales_ptr, zeros_ptr, row_group_ptr, offs_k, offs_n, k0, k_mask, n_mask, N,
            BITS, GROUP_MODE, GROUP_ROWS, SYM,
        )  # fmt: skip
        if DOT_FP32:
            a = a.to(tl.float32)
        if GROUP_MODE == 2:
            w = (q.to(tl.float32) - z) * s
            hi = _round(w, x_ptr.dtype.element_ty)
            if DOT_FP32:  # noqa: SIM108 (constexpr branch)
                acc = tl.dot(a, hi.to(tl.float32), acc, input_precision="ieee")
            else:
                acc = tl.dot(a, hi, acc)
            if SPLIT_W:
                lo = _round(w - hi.to(tl.float32), x_ptr.dtype.element_ty)
                if DOT_FP32:  # noqa: SIM108 (constexpr branch)
                    acc = tl.dot(a, lo.to(tl.float32), acc, input_precision="ieee")
                else:
                    acc = tl.dot(a, lo, acc)
        else:
            qz = (q.to(tl.float32) - z).to(x_ptr.dtype.element_ty)  # exact: an integer in [-256, 255]
            if DOT_FP32:  # noqa: SIM108 (constexpr branch)
                part = tl.dot(a, qz.to(tl.float32), input_precision="ieee")
            else:
                part = tl.dot(a, qz)
            acc += part * s
    out_mask = m_mask[:, None] & n_mask[None, :]
    out_offs = offs_m[:, None] * N + offs_n[None, :]
    if SPLIT_K == 1:
        if HAS_BIAS:
            acc += tl.load(bias_ptr + offs_n, mask=n_mask, other=0.0)[None, :]
        tl.store(out_ptr + out_offs, _round(acc, out_ptr.dtype.element_ty), mask=out_mask)
    else:
        tl.store(out_ptr + pid_k * M * N + out_offs, acc, mask=out_mask)


@triton.jit
def wna16_gemv(
    x_ptr,
    perm_ptr,
    lo_ptr,
    hi_ptr,
    scales_ptr,
    zeros_ptr,
    row_group_ptr,
    bias_ptr,
    out_ptr,
    M,
    N,
    K,
    stride_xm,
    stride_xk,
    K_PER_SPLIT,
    BITS: tl.constexpr,
    GROUP_MODE: tl.constexpr,
    GROUP_ROWS: tl.constexpr,
    SYM: tl.constexpr,
    HAS_PERM: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    SPLIT_K: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """Split-K GEMV: program (n, k, m) reduces row m of ``x`` against a [K range, BLOCK_N] slab of ``W^T``."""
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    row = tl.program_id(2)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = offs_n < N
    acc = tl.zeros((BLOCK_N,), dtype=tl.float32)
    k_begin = pid_k * K_PER_SPLIT
    k_end = tl.minimum(k_begin + K_PER_SPLIT, K)
    for k0 in range(k_begin, k_end, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        k_mask = offs_k < K
        if HAS_PERM:  # noqa: SIM108 (a constexpr branch: the if statement is resolved at compile time)
            src = tl.load(perm_ptr + offs_k, mask=k_mask, other=0)
        else:
            src = offs_k
        a = tl.load(x_ptr + row * stride_xm + src * stride_xk, mask=k_mask, other=0.0).to(tl.float32)
        tile_mask = k_mask[:, None] & n_mask[None, :]
        q = _load_codes(lo_ptr, hi_ptr, offs_k, offs_n, tile_mask, N, BITS)
        s, z = _group_params(
            scales_ptr, zeros_ptr, row_group_ptr, offs_k, offs_n, k0, k_mask, n_mask, N,
            BITS, GROUP_MODE, GROUP_ROWS, SYM,
        )  # fmt: skip
        if GROUP_MODE == 2:
            acc += tl.sum(a[:, None] * ((q.to(tl.float32) - z) * s), axis=0)
        else:
            acc += tl.sum(a[:, None] * (q.to(tl.float32) - z), axis=0) * tl.reshape(s, (BLOCK_N,))
    if SPLIT_K == 1:
        if HAS_BIAS:
            acc += tl.load(bias_ptr + offs_n, mask=n_mask, other=0.0)
        tl.store(out_ptr + row * N + offs_n, _round(acc, out_ptr.dtype.element_ty), mask=n_mask)
    else:
        tl.store(out_ptr + (pid_k * M + row) * N + offs_n, acc, mask=n_mask)
