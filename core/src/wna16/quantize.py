"""Round-to-nearest quantization of a float weight, used to make test weights and small checkpoints.

Symmetric schemes follow AutoRound's "full range" convention: the value of largest magnitude in a group, with its
sign, maps to code 0 (``scale = v / -2**(bits-1)``, so scales can be negative) and the zero is the centre
``2**(bits-1)``. Asymmetric schemes use min/max over the group with 0 included in the range (GPTQ's convention), so a
zero point always lies within the codes. Scales are rounded to ``scale_dtype`` *before* codes are computed, so the
codes are the nearest ones for the scales actually stored.
"""

from __future__ import annotations

import torch

from wna16.errors import FormatError, describe
from wna16.groups import trivial_g_idx
from wna16.scheme import Scheme
from wna16.weight import QuantizedWeight


def quantize_rtn(
    weight: torch.Tensor,
    scheme: Scheme,
    *,
    scale_dtype: torch.dtype = torch.float16,
    g_idx: torch.Tensor | None = None,
    name: str = "weight",
) -> QuantizedWeight:
    """Quantize a float ``weight`` [N, K] under ``scheme``; ``g_idx`` [K] (optional) assigns rows to groups."""
    if weight.dim() != 2 or not weight.dtype.is_floating_point:
        raise FormatError(f"{name}: got {describe(weight)}, expected a floating [out_features, in_features] tensor")
    n, k = weight.shape
    groups = scheme.num_groups(k)
    group = (trivial_g_idx(k, scheme) if g_idx is None else g_idx).to(torch.int64).cpu()
    w = weight.detach().to(torch.float32).cpu().t()  # [K, N]

    scales = torch.empty(groups, n, dtype=torch.float32)
    zeros = torch.empty(groups, n, dtype=torch.int32)
    for g in range(groups):
        rows = w[group == g]
        if rows.numel() == 0:  # act order may leave a group unused
            scales[g], zeros[g] = 1.0, scheme.center if scheme.sym else 0
            continue
        if scheme.sym:
            pick = rows.abs().argmax(dim=0, keepdim=True)
            peak = rows.gather(0, pick)[0]
            scale = peak / -scheme.center
            scales[g] = torch.where(peak == 0, torch.ones_like(scale), scale)
            zeros[g] = scheme.center
        else:
            lo = rows.min(dim=0).values.clamp(max=0)
            hi = rows.max(dim=0).values.clamp(min=0)
            scale = (hi - lo) / scheme.max_code
            scale = torch.where(scale == 0, torch.ones_like(scale), scale)
            scale = scale.to(scale_dtype).to(torch.float32)
            scales[g] = scale
            zeros[g] = torch.round(-lo / scale).clamp(0, scheme.max_code).to(torch.int32)

    stored_scales = scales.to(scale_dtype)
    stored_scales = torch.where(stored_scales == 0, torch.ones_like(stored_scales), stored_scales)  # underflow
    s = stored_scales.to(torch.float32)[group]
    codes = torch.round(w / s + zeros[group]).clamp(0, scheme.max_code).to(torch.int32)
    return QuantizedWeight.from_codes(scheme, codes, zeros, stored_scales, g_idx, name)
