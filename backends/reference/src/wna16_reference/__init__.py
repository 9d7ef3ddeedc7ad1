"""The reference backend: pure torch, every scheme, clarity over speed. Copy this file to start a backend.

A backend is three things: a ``name``, its ``capabilities`` as data (what it serves), and ``build``, which turns a
canonical weight into the backend's layout once and returns the callable that computes ``x @ W^T + b``. The base
class checks every spec against the declaration before ``build`` is called, so ``build`` never sees a spec it did
not claim.
"""

from __future__ import annotations

import torch

from wna16.packing import run_length, unpack_rows
from wna16.protocol import ACTIVATION_DTYPES, Backend, Capability, LayerSpec, PreparedLinear
from wna16.weight import QuantizedWeight

CHUNK_BYTES = 32 << 20
"""Upper bound on the float32 temporaries of one dequantized chunk of rows."""


class ReferenceBackend(Backend):
    """Dequantize a chunk of input rows at a time in float32 and multiply; any device torch has."""

    name = "reference"
    description = "pure torch dequantize-and-matmul in float32, chunked over K"
    capabilities = (
        Capability(
            bits=frozenset({2, 3, 4, 8}),
            dtypes=frozenset(ACTIVATION_DTYPES),
            group_sizes=None,  # every group size, -1 included
            partial_last_group=True,
            sym=True,
            asym=True,
            devices=None,  # every device torch has
            param_dtype=torch.float32,
            accum_dtype=torch.float32,
            act_order=True,
            k_slices=True,
            priority=0,  # the fallback of last resort
        ),
    )

    def build(self, weight: QuantizedWeight, spec: LayerSpec, bias: torch.Tensor | None) -> PreparedLinear:
        """No repacking: the canonical layout is this backend's layout. Only move it to the device."""
        return ReferenceLinear(
            weight.to(spec.device), bias.to(spec.device) if spec.adds_bias and bias is not None else None
        )


class ReferenceLinear:
    """The prepared layer: ``x @ W^T + b`` with ``W`` dequantized one chunk of input rows at a time."""

    def __init__(self, weight: QuantizedWeight, bias: torch.Tensor | None) -> None:
        self.weight = weight
        self.bias = None if bias is None else bias.to(torch.float32)
        self.group = weight.group_index()  # [K]: the group of each input row
        codes_per_run, words_per_run = run_length(weight.scheme.bits)
        rows = CHUNK_BYTES // (4 * weight.out_features)
        self.chunk_rows = max(codes_per_run, rows // codes_per_run * codes_per_run)
        self.words_per_code = words_per_run / codes_per_run

    def dequantize_rows(self, start: int, stop: int) -> torch.Tensor:
        """float32 [stop - start, N]: rows ``start:stop`` of ``W^T``, i.e. ``scale * (code - zero)`` per element."""
        w = self.weight
        words = w.qweight[int(start * self.words_per_code) : int(stop * self.words_per_code)]
        codes = unpack_rows(words, w.scheme.bits).to(torch.float32)
        group = self.group[start:stop]
        zeros = w.zeros[group].to(torch.float32)
        scales = w.scales[group].to(torch.float32)
        return scales * (codes - zeros)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x2 = x.reshape(-1, x.shape[-1]).to(torch.float32)
        y = torch.zeros(x2.shape[0], self.weight.out_features, dtype=torch.float32, device=x.device)
        for start in range(0, self.weight.in_features, self.chunk_rows):
            stop = min(start + self.chunk_rows, self.weight.in_features)
            y += x2[:, start:stop] @ self.dequantize_rows(start, stop)
        if self.bias is not None:
            y += self.bias
        return y.to(x.dtype).reshape(*x.shape[:-1], self.weight.out_features)
