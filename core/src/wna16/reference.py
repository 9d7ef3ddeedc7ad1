"""The oracle: the exact dequantized weight. Simple, obviously right, never optimised.

Everything wna16 checks (formats, backends, checkpoints) is measured against :func:`dequantize`. It unpacks every
code, looks up each row's group (honouring act order) and computes ``scale * (code - zero)`` in float32, which is
exact for every stored scale dtype (fp16/bf16/fp32 scales times small integers).
"""

from __future__ import annotations

import torch

from wna16.weight import QuantizedWeight


def dequantize(weight: QuantizedWeight) -> torch.Tensor:
    """float32 [out_features, in_features]: ``W[n, k] = scales[g(k), n] * (codes[k, n] - zeros[g(k), n])``."""
    codes = weight.codes().to(torch.float32)  # [K, N]
    group = weight.group_index()  # [K]
    zeros = weight.zeros.to(torch.float32)[group]  # [K, N]
    scales = weight.scales.to(torch.float32)[group]  # [K, N]
    return (scales * (codes - zeros)).t().contiguous()
