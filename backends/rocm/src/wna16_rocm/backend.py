"""The ``rocm`` backend: what it serves (as data), where it runs, and how it prepares a layer."""

from __future__ import annotations

import torch

from wna16.errors import UnsupportedError
from wna16.protocol import ACTIVATION_DTYPES, Availability, Backend, Capability, LayerSpec, PreparedLinear
from wna16.weight import QuantizedWeight
from wna16_rocm import runtime
from wna16_rocm.linear import TritonLinear
from wna16_rocm.repack import repack

ALL_DTYPES = frozenset(ACTIVATION_DTYPES)
EXACT_GROUPS = frozenset({-1, 16, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 2048, 4096})
"""Group sizes that are multiples of 16: without act order their tiles lie in one group, and the kernels multiply
exact integer weights and apply the scale in float32 afterwards (``param_dtype`` fp32)."""


def _rule(label: str, device: str, exact: bool, priority: int) -> Capability:
    return Capability(
        bits=frozenset({2, 3, 4, 8}),
        dtypes=ALL_DTYPES,
        group_sizes=EXACT_GROUPS if exact else None,
        partial_last_group=True,
        sym=True,
        asym=True,
        devices=frozenset({device}),
        # exact: scales applied in fp32 after the dot. Otherwise a tile may mix groups (act order, odd group sizes):
        # the weight is rounded to hi + lo in the activation dtype, an error of u**2, declared as u (conservative).
        param_dtype=torch.float32 if exact else None,
        accum_dtype=torch.float32,
        act_order=not exact,
        k_slices=True,
        priority=priority,
        label=label,
    )


class RocmBackend(Backend):
    """Triton WnA16 kernels for ROCm (CUDA as a fallback); on CPU only under the Triton interpreter, for tests.

    Precision, declared per rule (see :mod:`wna16_rocm.kernels`): without act order and with group sizes that are
    multiples of 16 the weights are exact and scales applied in float32 (``param_dtype`` fp32); otherwise the
    declared parameter precision is the activation dtype. Accumulation is float32 (IEEE, no tf32), always. The CPU
    rules have a negative priority: the interpreter is a test vehicle, never an automatic choice.
    """

    name = "rocm"
    description = "Triton split-K GEMV/GEMM, 2/3/4/8-bit, any group, act order (ROCm first, CUDA fallback)"
    capabilities = (
        _rule("gpu", "cuda", exact=True, priority=10),
        _rule("gpu-act-order", "cuda", exact=False, priority=9),
        _rule("interpreter", "cpu", exact=True, priority=-10),
        _rule("interpreter-act-order", "cpu", exact=False, priority=-11),
    )

    def available(self, device: str | torch.device = "cpu") -> Availability:
        """True on a ROCm/CUDA device when triton imports, or on CPU when the interpreter was asked for."""
        kind = str(device).split(":", 1)[0]  # device types torch only learns from a plugin do not parse
        if kind not in ("cuda", "cpu"):
            return Availability(False, f"device type {kind!r} not served (ROCm/CUDA, or CPU under the interpreter)")
        reason = runtime.unavailable_reason(torch.device(device))
        return Availability(not reason, reason)

    def build(self, weight: QuantizedWeight, spec: LayerSpec, bias: torch.Tensor | None) -> PreparedLinear:
        """Repack into the kernel layout on ``spec.device`` (raises :class:`UnsupportedError` where it cannot run)."""
        device = torch.device(spec.device)
        if device.type == "cuda" and device.index is None and torch.cuda.is_available():
            device = torch.device("cuda", torch.cuda.current_device())
        reason = runtime.unavailable_reason(device)
        if reason:
            raise UnsupportedError(f"backend {self.name!r} cannot run on {spec.device}", [reason])
        return TritonLinear(repack(weight, device), bias if spec.adds_bias else None, spec.dtype)
