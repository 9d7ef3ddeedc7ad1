"""Diffusion attention on CPU: vLLM-Omni's PyTorch-SDPA backend with a device-neutral ``forward``.

vLLM-Omni's ``AttentionImpl.forward`` picks ``forward_cuda``/``forward_hip``/``forward_npu``/... by platform and raises
for any other one. Its SDPA implementation computes with ``torch.nn.functional.scaled_dot_product_attention`` on any
device; this subclass calls that computation directly, with the mask handling its CUDA path uses.
"""

from __future__ import annotations

import torch
from vllm_omni.diffusion.attention.backends.sdpa import SDPABackend, SDPAImpl


class CpuSDPAImpl(SDPAImpl):
    """SDPA, dispatched for the CPU."""

    def forward(
        self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attn_metadata: object | None = None
    ) -> torch.Tensor:
        """``softmax(q k^T * scale) v`` by PyTorch SDPA (the mask broadcast over keys, as on CUDA)."""
        return self._forward_impl(query, key, value, attn_metadata, mask_mode="broadcast_k")  # type: ignore[arg-type]


class CpuSDPABackend(SDPABackend):
    """vLLM-Omni's SDPA backend whose implementation runs on CPU."""

    @staticmethod
    def get_impl_cls() -> type[CpuSDPAImpl]:
        """:class:`CpuSDPAImpl`."""
        return CpuSDPAImpl
