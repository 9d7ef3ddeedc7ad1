"""An example out-of-tree backend: dequantize-and-matmul compiled once with ``torch.compile(dynamic=True)``.

What it shows a plugin author: a backend is a ``Capability`` declaration plus ``build``; the repack happens once in
``build`` (here: codes unpacked to int8 [N, G, group] so that the compiled function needs no bit twiddling and every
bit width shares one graph); the call is a small function that inductor fuses (the dequantization never materialises
in float32), registered as this backend's kernel of the ``wna16::linear`` op (:mod:`wna16.ops`), so that a model
compiled around the layer sees one op and the layer's own compiled function runs inside it. Shapes are dynamic, so
the compiled graph is reused across layers and batch sizes: recompiles are bounded by the activation dtype and the
presence of a bias (6 graphs at most), and ``RECOMPILE_LIMIT`` caps them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from wna16.ops import PreparedOp, register_kernel
from wna16.protocol import ACTIVATION_DTYPES, Backend, Capability, LayerSpec, PreparedLinear
from wna16.weight import QuantizedWeight

RECOMPILE_LIMIT = 8
"""At most this many graphs per compiled function (dtype x bias needs 6); beyond it dynamo raises, never loops."""


def _dequant_matmul(x: torch.Tensor, codes: torch.Tensor, zeros: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """``x @ W^T`` with ``W = (codes - zeros) * scales`` rounded once to the activation dtype, accumulated in fp32."""
    n, groups, rows = codes.shape
    w = ((codes.to(torch.float32) - zeros) * scales).reshape(n, groups * rows).to(x.dtype)
    return torch.nn.functional.linear(x, w)


def _dequant_matmul_bias(
    x: torch.Tensor, codes: torch.Tensor, zeros: torch.Tensor, scales: torch.Tensor, bias: torch.Tensor
) -> torch.Tensor:
    return _dequant_matmul(x, codes, zeros, scales) + bias


KERNEL = "example-compile.dequant"

_compiled: dict[bool, Callable[..., torch.Tensor]] = {}


def compiled(with_bias: bool) -> Callable[..., torch.Tensor]:
    """The compiled function for layers with or without a bias, made on first use (compiling costs seconds)."""
    if with_bias not in _compiled:
        torch._dynamo.config.recompile_limit = RECOMPILE_LIMIT
        fn = _dequant_matmul_bias if with_bias else _dequant_matmul
        _compiled[with_bias] = torch.compile(fn, dynamic=True)
    return _compiled[with_bias]


@register_kernel(KERNEL, ["cpu"])
def compiled_linear(x: torch.Tensor, state: Sequence[torch.Tensor | None], options: Sequence[int]) -> torch.Tensor:
    """``x`` [..., K] -> [..., N]: the compiled dequantize-and-matmul on the state ``build`` bound (codes, zeros,
    scales and the bias or None)."""
    codes, zeros, scales, bias = state
    assert codes is not None and zeros is not None and scales is not None
    n, k = codes.shape[0], codes.shape[1] * codes.shape[2]
    x2 = x.reshape(-1, k)
    fn = compiled(bias is not None)
    y = fn(x2, codes, zeros, scales) if bias is None else fn(x2, codes, zeros, scales, bias)
    return y.reshape(*x.shape[:-1], n)


class CompiledBackend(Backend):
    """CPU layers of any bit width whose K is a whole number of groups, without act order."""

    name = "example-compile"
    description = "torch.compile'd dequantize-and-matmul (example plugin)"
    capabilities = (
        Capability(
            bits=frozenset({2, 3, 4, 8}),
            dtypes=frozenset(ACTIVATION_DTYPES),
            group_sizes=None,
            partial_last_group=False,  # codes are reshaped to [N, G, group]: K must be whole groups
            sym=True,
            asym=True,
            devices=frozenset({"cpu"}),
            param_dtype=None,  # the dequantized weight is rounded to the activation dtype before the matmul
            accum_dtype=torch.float32,
            priority=5,
        ),
    )

    def build(self, weight: QuantizedWeight, spec: LayerSpec, bias: torch.Tensor | None) -> PreparedLinear:
        """Unpack codes once to int8 [N, G, rows]; zeros and scales to float32 [N, G, 1]."""
        k, n = weight.in_features, weight.out_features
        rows = weight.scheme.group_rows(k)
        groups = k // rows
        codes = weight.codes().t().reshape(n, groups, rows).to(torch.uint8).contiguous()
        zeros = weight.zeros.t().to(torch.float32).reshape(n, groups, 1).contiguous()
        scales = weight.scales.t().to(torch.float32).reshape(n, groups, 1).contiguous()
        b = bias.to(spec.dtype) if spec.adds_bias and bias is not None else None
        return PreparedOp(KERNEL, k, n, spec.dtype, state=(codes, zeros, scales, b))
