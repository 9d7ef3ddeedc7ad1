"""What the CPU backend serves, at which priority, and the dispatch to the 4-bit or 8-bit kernel.

Priorities follow measured speed (``ci/bench/bench_cpu.py``; numbers in this package's README). In bf16 both
kernels have vectorised paths (AVX512-BF16/AMX for int4) that read the packed weight once per call: the int4 one
beats a dense bf16 matmul at small M, so bf16 rules rank above every portable backend (10). In fp16 and fp32 torch
runs scalar loops whose cost grows linearly with M; the layers use them only for a few rows and dequantize-then-
multiply above (:class:`~wna16_cpu.int4.Int4Linear`, :class:`~wna16_cpu.int8.Int8Linear`), which keeps them faster
than the reference backend at every M measured, so those rules rank just above the reference (1) and below any
backend with a real fp16 kernel.

Numerics, as declared to the conformance error model: scales and the float zero term ``(8 - z) * scale`` are rounded
to the activation dtype (``param_dtype=None``); both kernels dequantize and accumulate in float32 and round the
output once (measured: in bf16 at M=1 the output equals the float64 product with the rounded parameters, rounded
once, for every element of a 256x4096 layer). A bias is added in float32 to that rounded output and rounded again,
a second rounding the error model allows for layers with a bias.
"""

from __future__ import annotations

import torch

from wna16.protocol import Availability, Backend, Capability, LayerSpec, PreparedLinear
from wna16.weight import QuantizedWeight
from wna16_cpu.int4 import FAST_DTYPES, Int4Linear
from wna16_cpu.int8 import K_MULTIPLE, Int8Linear

FAST = frozenset(FAST_DTYPES)
SCALAR = frozenset({torch.float16, torch.float32})
FAST_PRIORITY = 10
SCALAR_PRIORITY = 1

KERNEL_OPS = ("_convert_weight_to_int4pack_for_cpu", "_weight_int4pack_mm_for_cpu", "_weight_int8pack_mm")


def _int4(dtypes: frozenset[torch.dtype], priority: int, label: str) -> Capability:
    return Capability(
        bits=frozenset({4}),
        dtypes=dtypes,
        group_sizes=frozenset({-1, 32, 64, 128, 256}),
        partial_last_group=True,  # padded to whole kernel blocks with zero-weight rows
        sym=True,
        asym=True,
        devices=frozenset({"cpu"}),
        param_dtype=None,  # scales and zero terms rounded to the activation dtype
        accum_dtype=torch.float32,
        n_multiple=16,
        act_order=True,  # rows sorted by group once at load, x's columns scattered per call
        k_slices=True,
        priority=priority,
        label=label,
    )


def _int8(dtypes: frozenset[torch.dtype], priority: int, label: str) -> Capability:
    return Capability(
        bits=frozenset({8}),
        dtypes=dtypes,
        group_sizes=frozenset({-1}),
        sym=True,
        asym=False,
        devices=frozenset({"cpu"}),
        param_dtype=None,
        accum_dtype=torch.float32,
        k_multiple=K_MULTIPLE,
        k_slices=True,
        priority=priority,
        label=label,
    )


class CpuBackend(Backend):
    """torch's CPU weight-only kernels: int4 (any 4-bit scheme with groups of 32..256 or -1) and int8 per-channel."""

    name = "cpu"
    description = "torch aten int4/int8 weight-only CPU kernels (fast in bf16: AVX512-BF16/AMX), repacked at load"
    capabilities = (
        _int4(FAST, FAST_PRIORITY, "int4-bf16"),
        _int4(SCALAR, SCALAR_PRIORITY, "int4-fp16/fp32"),
        _int8(FAST, FAST_PRIORITY, "int8-channel-bf16"),
        _int8(SCALAR, SCALAR_PRIORITY, "int8-channel-fp16/fp32"),
    )

    def available(self, device: str | torch.device = "cpu") -> Availability:
        """Available on CPU when this torch build has the three aten kernels (torch >= 2.6)."""
        missing = [op for op in KERNEL_OPS if not hasattr(torch.ops.aten, op)]
        if missing:
            return Availability(False, f"torch {torch.__version__} lacks aten.{', aten.'.join(missing)}")
        return super().available(device)

    def build(self, weight: QuantizedWeight, spec: LayerSpec, bias: torch.Tensor | None) -> PreparedLinear:
        """Repack on CPU into the kernel's layout (ISA-specific: rebuilt at every load, never saved)."""
        weight = weight.to("cpu")
        bias = bias.to("cpu") if spec.adds_bias and bias is not None else None
        if spec.scheme.bits == 8:
            return Int8Linear(weight, spec.dtype, bias)
        return Int4Linear(weight, spec.dtype, bias)
