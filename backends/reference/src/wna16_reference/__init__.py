"""The reference backend: pure torch, every scheme, clarity over speed. Copy this file to start a backend.

A backend is four things: a ``name``, its ``capabilities`` as data (what it serves), ``build``, which turns a
canonical weight into the backend's layout once, and a *kernel* that computes ``x @ W^T + b`` from that layout. The
base class checks every spec against the declaration before ``build`` is called, so ``build`` never sees a spec it
did not claim. ``build`` returns a :class:`~wna16.ops.PreparedOp`: the layout's tensors and settings bound to the
registered kernel's name, so that a prepared layer is one call of the ``wna16::linear`` torch op, which
``torch.compile`` and vLLM trace without looking inside (see :mod:`wna16.ops`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from wna16.ops import PreparedOp, register_kernel
from wna16.packing import run_length, unpack_rows
from wna16.protocol import ACTIVATION_DTYPES, Backend, Capability, LayerSpec, PreparedLinear
from wna16.weight import QuantizedWeight

CHUNK_BYTES = 32 << 20
"""Upper bound on the float32 temporaries of one dequantized chunk of rows."""

KERNEL = "reference"
"""The name this backend's kernel is registered under (unique among installed backends: prefix it with yours)."""


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
        """No repacking: the canonical layout is this backend's layout. Only move it to the device; the bias is kept
        in float32, where the kernel adds it."""
        w = weight.to(spec.device)
        b = bias.to(spec.device, torch.float32) if spec.adds_bias and bias is not None else None
        state = (w.qweight, w.zeros, w.scales, w.group_index(), b)
        return PreparedOp(KERNEL, w.in_features, w.out_features, spec.dtype, state, options=(w.scheme.bits,))


@register_kernel(KERNEL)  # pure torch: every device type
def reference_linear(x: torch.Tensor, state: Sequence[torch.Tensor | None], options: Sequence[int]) -> torch.Tensor:
    """``x @ W^T + b`` with ``W^T`` dequantized one chunk of input rows at a time, ``scale * (code - zero)`` per
    element in float32. ``state`` is what :meth:`ReferenceBackend.build` bound: ``qweight`` (canonical, packed along
    K), ``zeros`` and ``scales`` [G, N], the group of each input row [K] and the float32 bias or None."""
    qweight, zeros, scales, group, bias = state
    assert qweight is not None and zeros is not None and scales is not None and group is not None
    (bits,) = options
    k, n = x.shape[-1], scales.shape[1]
    x2 = x.reshape(-1, k).to(torch.float32)
    y = torch.zeros(x2.shape[0], n, dtype=torch.float32, device=x.device)
    chunk = chunk_rows(bits, n)
    for start in range(0, k, chunk):
        stop = min(start + chunk, k)
        y += x2[:, start:stop] @ dequantize_rows(qweight, zeros, scales, group[start:stop], bits, start)
    if bias is not None:
        y += bias
    return y.to(x.dtype).reshape(*x.shape[:-1], n)


def dequantize_rows(
    qweight: torch.Tensor, zeros: torch.Tensor, scales: torch.Tensor, group: torch.Tensor, bits: int, start: int
) -> torch.Tensor:
    """float32 [R, N]: the ``R = len(group)`` rows of ``W^T`` from row ``start`` (a multiple of the packing run),
    ``scale * (code - zero)`` per element with each row's own group."""
    codes_per_run, words_per_run = run_length(bits)
    first, stop = start * words_per_run // codes_per_run, -(-(start + len(group)) * words_per_run // codes_per_run)
    codes = unpack_rows(qweight[first:stop], bits).to(torch.float32)[: len(group)]
    return scales[group].to(torch.float32) * (codes - zeros[group].to(torch.float32))


def chunk_rows(bits: int, out_features: int) -> int:
    """Input rows dequantized at a time: whole packing runs (so a chunk starts on a word), about ``CHUNK_BYTES`` of
    float32, at least one run."""
    codes_per_run, _ = run_length(bits)
    return max(codes_per_run, CHUNK_BYTES // (4 * out_features) // codes_per_run * codes_per_run)
