"""8-bit weights: ``aten._weight_int8pack_mm`` for per-channel symmetric ones in bf16 at small M, and a
dequantize-then-GEMM path for every 8-bit scheme (grouped, asymmetric, act order, any M and dtype).

The kernel computes ``(x @ Q^T) * scale[n]`` with ``Q`` int8 [N, K] and ``scale`` [N] in the activation dtype. It
is exact for exactly one canonical scheme: 8-bit, symmetric, one group over K (``w8channelsym``). AutoRound's
symmetric 8-bit is "full range" (zero point 128, codes 0..255), so ``code - 128`` spans [-128, 127] and fits int8
without clipping. The layer stores exactly those int8 codes (N*K bytes, the checkpoint's size) for every scheme; the
GEMM path dequantizes ``(Q - (z - 128)) * scale`` from them in float32, a bounded chunk of output rows at a time.

The kernel reads past the end of rows whose length K is not a multiple of 16 (it crashed the process in our probes
for K = 7, 33, 40, 136), so only layers with K % 16 == 0 call it; the others always take the GEMM path.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from wna16.errors import FormatError
from wna16.ops import PreparedOp, register_kernel
from wna16.packing import unpack_rows
from wna16.weight import QuantizedWeight

K_MULTIPLE = 16
"""``_weight_int8pack_mm`` is only memory-safe for K a multiple of 16."""

KERNEL_DTYPE = torch.bfloat16
"""The activation dtype with a vectorised int8 kernel; the others run a scalar loop, never called here."""

CHUNK_BYTES = 8 << 20
"""Upper bound on the float32 dequantized chunk of the GEMM path."""

CODE_OFFSET = 128
"""Codes are stored as ``q - 128`` in int8."""


KERNEL = "cpu.int8"
"""The name of this layer's kernel for ``wna16::linear`` (:mod:`wna16.ops`)."""


class Int8Linear(PreparedOp):
    """The prepared 8-bit layer: ``x @ W^T + b`` with ``W = (Q - z') * scale`` and ``Q = q - 128`` in int8, computed
    by :func:`int8_linear` through ``wna16::linear`` (state and options read from the named fields at each call).

    Per-channel symmetric weights in bf16 run ``aten._weight_int8pack_mm`` for ``M <= kernel_max_m`` (the measured
    crossover for this ISA, chosen by the backend); everything else dequantizes in float32 and calls BLAS with the
    scales as stored (rounded to the activation dtype: the kernel's parameters) and float32 accumulation.
    """

    def __init__(
        self,
        weight: QuantizedWeight,
        dtype: torch.dtype,
        bias: torch.Tensor | None,
        kernel_max_m: int,
        gemm_dtype: torch.dtype = torch.float32,
    ) -> None:
        s = weight.scheme
        if s.bits != 8:
            raise FormatError(f"{weight.name}: the 8-bit CPU layer takes 8-bit codes, got a {s} weight")
        super().__init__(KERNEL, weight.in_features, weight.out_features, dtype)
        self.qweight = torch.empty(self.out_features, self.in_features, dtype=torch.int8)
        rows = max(1, CHUNK_BYTES // (4 * self.in_features))
        for n0 in range(0, self.out_features, rows):  # int32 codes one chunk at a time
            codes = unpack_rows(weight.qweight[:, n0 : n0 + rows], 8, f"{weight.name}.qweight")
            self.qweight[n0 : n0 + rows] = (codes - CODE_OFFSET).t()
        per_channel = weight.num_groups == 1 and not weight.act_order
        self.scales = weight.scales.to(torch.float32).to(dtype).to(torch.float32)  # [G, N], rounded once
        self.zeros = None if s.sym else (weight.zeros - CODE_OFFSET).to(torch.int16)  # [G, N]
        self.group = None if per_channel else weight.group_index()
        rows_per_group = weight.scheme.group_rows(self.in_features)
        whole = not weight.act_order and self.in_features % rows_per_group == 0
        self.group_rows = rows_per_group if whole and not per_channel else 0  # groups as a view: no gather per call
        use_kernel = s.sym and per_channel and dtype == KERNEL_DTYPE and self.in_features % K_MULTIPLE == 0
        self.kernel_scales = self.scales[0].to(dtype) if use_kernel else None
        self.kernel_max_m = kernel_max_m if use_kernel else 0
        self.gemm_dtype = gemm_dtype if dtype == torch.bfloat16 else torch.float32
        if self.gemm_dtype != torch.float32:
            self.scales = self.scales.to(self.gemm_dtype)
        self.bias = None if bias is None else bias.to(torch.float32)

    @property
    def state(self) -> tuple[torch.Tensor | None, ...]:
        """``(Q int8 [N, K], scales [G, N], zeros [G, N] or None, row groups [K] or None, kernel scales [N] or None,
        float32 bias or None)``."""
        return (self.qweight, self.scales, self.zeros, self.group, self.kernel_scales, self.bias)

    @property
    def options(self) -> tuple[int, ...]:
        """``(rows per group when groups are a view, else 0; kernel_max_m)``."""
        return (self.group_rows, self.kernel_max_m)


@register_kernel(KERNEL, ["cpu"])
def int8_linear(x: torch.Tensor, state: Sequence[torch.Tensor | None], options: Sequence[int]) -> torch.Tensor:
    """``x`` [..., K] (any strides) -> [..., N] in ``x``'s dtype, from :attr:`Int8Linear.state` and ``options``."""
    qweight, scales, zeros, group, kernel_scales, bias = state
    assert qweight is not None and scales is not None
    group_rows, kernel_max_m = options
    x2 = x.reshape(-1, x.shape[-1])
    if not x2.is_contiguous() or x2.storage_offset():
        # _weight_int8pack_mm segfaults on a contiguous view with a storage offset (measured, torch 2.13 AVX512)
        x2 = x2.clone(memory_format=torch.contiguous_format)
    n = qweight.shape[0]
    if x2.shape[0] == 0:
        y = x2.new_empty(0, n)
    elif x2.shape[0] <= kernel_max_m:
        assert kernel_scales is not None
        y = torch.ops.aten._weight_int8pack_mm(x2, qweight, kernel_scales)
    else:
        y = dequantized_matmul(x2, qweight, scales, zeros, group, group_rows)
    if bias is not None:
        y = y.to(torch.float32) + bias
    return y.to(x.dtype).reshape(*x.shape[:-1], n)


def dequantized_matmul(
    x2: torch.Tensor,
    qweight: torch.Tensor,
    scales: torch.Tensor,
    zeros: torch.Tensor | None,
    group: torch.Tensor | None,
    group_rows: int,
) -> torch.Tensor:
    """[M, N] in the GEMM dtype (the dtype of ``scales``): ``x2 @ W^T`` with ``W = (Q - z') * scale`` dequantized at
    most ``CHUNK_BYTES`` (as float32) at a time. ``Q - z'`` is an integer of at most 9 bits, exact in bf16 and
    float32; the product with the scale is rounded once to the GEMM dtype (bf16 only for bf16 activations, where that
    is the declared parameter rounding), then a GEMM with float32 accumulation."""
    gemm = scales.dtype
    n, k = qweight.shape
    xg = x2.to(gemm)
    y = xg.new_empty(xg.shape[0], n)
    rows = max(1, CHUNK_BYTES // (4 * k))
    for n0 in range(0, n, rows):
        n1 = min(n0 + rows, n)
        w = qweight[n0:n1].to(gemm)
        if group is None:
            if zeros is not None:
                w.sub_(zeros[0, n0:n1, None].to(gemm))
            w.mul_(scales[0, n0:n1, None])
        elif group_rows:
            wg = w.view(n1 - n0, -1, group_rows)
            if zeros is not None:
                wg.sub_(zeros[:, n0:n1].t().unsqueeze(-1).to(gemm))
            wg.mul_(scales[:, n0:n1].t().unsqueeze(-1))
        else:
            if zeros is not None:
                w.sub_(zeros[:, n0:n1].t()[:, group].to(gemm))
            w.mul_(scales[:, n0:n1].t()[:, group])
        y[:, n0:n1] = xg @ w.t()
    return y
