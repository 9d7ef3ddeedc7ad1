"""8-bit per-channel symmetric weights on ``aten._weight_int8pack_mm``.

The kernel computes ``(x @ Q^T) * scale[n]`` with ``Q`` int8 [N, K] and ``scale`` [N] in the activation dtype. It
is exact for exactly one canonical scheme: 8-bit, symmetric, one group over K (``w8channelsym``). AutoRound's
symmetric 8-bit is "full range" (zero point 128, codes 0..255), so ``code - 128`` spans [-128, 127] and fits int8
without clipping. Grouped or asymmetric 8-bit would need per-group scales or zero terms the kernel does not take.

The kernel reads past the end of rows whose length K is not a multiple of 16 (it crashed the process in our probes
for K = 7, 33, 40, 136), so the backend declares ``k_multiple=16`` and this module checks it again.
"""

from __future__ import annotations

import torch

from wna16.errors import FormatError, describe
from wna16.weight import QuantizedWeight

K_MULTIPLE = 16
"""``_weight_int8pack_mm`` is only memory-safe for K a multiple of 16."""

FAST_DTYPES: tuple[torch.dtype, ...] = (torch.bfloat16,)
"""Activation dtypes with a vectorised int8 kernel; the others run a scalar loop."""

SCALAR_MAX_M = 1
"""Rows of ``x`` up to which the scalar int8 kernel beats dequantize-then-matmul in fp16/fp32. Measured at
4096x4096, fp16, 2 threads (load average 3): the kernel costs about M x 6 ms, the dequantize path 8-10 ms for M up
to 16 (the reference backend 150-290 ms)."""

CHUNK_BYTES = 16 << 20
"""Upper bound on the float32 dequantized chunk of the fp16/fp32 large-M path."""


class Int8Linear:
    """The prepared 8-bit per-channel layer: ``x @ W^T + b`` through ``aten._weight_int8pack_mm``.

    In fp16/fp32 the kernel is a scalar loop whose cost grows linearly with M; above ``SCALAR_MAX_M`` rows the layer
    converts its int8 codes to float32 one bounded chunk of output columns at a time, multiplies with BLAS and
    scales the float32 result: the same rounded scales and float32 accumulation as the kernel.
    """

    def __init__(self, weight: QuantizedWeight, dtype: torch.dtype, bias: torch.Tensor | None) -> None:
        s = weight.scheme
        if s.bits != 8 or not s.sym or weight.num_groups != 1 or weight.in_features % K_MULTIPLE:
            raise FormatError(
                f"{weight.name}: the int8 CPU kernel takes 8-bit symmetric per-channel weights with K % {K_MULTIPLE}"
                f" == 0, got {s} with K={weight.in_features} and {weight.num_groups} groups"
            )
        self.in_features, self.out_features, self.dtype = weight.in_features, weight.out_features, dtype
        self.qweight = (weight.codes() - s.center).t().to(torch.int8).contiguous()  # [N, K]
        self.scales = weight.scales[0].to(torch.float32).to(dtype).contiguous()  # [N]
        self.bias = None if bias is None else bias.to(torch.float32)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` [..., K] in the layer's dtype, any strides; returns [..., N] in the same dtype."""
        if x.dtype != self.dtype or x.shape[-1] != self.in_features:
            raise FormatError(f"x: got {describe(x)}, expected {self.dtype} [..., {self.in_features}]")
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features).contiguous()
        if x2.shape[0] == 0:
            y = x2.new_empty(0, self.out_features)
        elif self.dtype not in FAST_DTYPES and x2.shape[0] > SCALAR_MAX_M:
            y = self.dequantized_matmul(x2)
        else:
            y = torch.ops.aten._weight_int8pack_mm(x2, self.qweight, self.scales)
        if self.bias is not None:
            y = y.to(torch.float32) + self.bias
        return y.to(self.dtype).reshape(*lead, self.out_features)

    def dequantized_matmul(self, x2: torch.Tensor) -> torch.Tensor:
        """float32 [M, N]: ``(x2 @ Q^T) * scale`` with ``Q`` converted to float32 at most ``CHUNK_BYTES`` at a time."""
        xf = x2.to(torch.float32)
        y = xf.new_empty(xf.shape[0], self.out_features)
        rows = max(1, CHUNK_BYTES // (4 * self.in_features))
        for n0 in range(0, self.out_features, rows):
            q = self.qweight[n0 : n0 + rows].to(torch.float32)
            y[:, n0 : n0 + rows] = (xf @ q.t()) * self.scales[n0 : n0 + rows].to(torch.float32)
        return y
