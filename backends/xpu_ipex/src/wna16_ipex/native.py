"""The ``xpu-native`` backend: torch's own XPU int4 matmul, for Intel GPUs without IPEX.

``torch.ops.aten._weight_int4pack_mm_with_scales_and_zeros(x, mat2, group_size, qScale, qZeros)`` (XPU only; oneDNN
underneath) computes ``x @ W^T`` with ``W[n, k] = (q[n, k] - qZeros[k // g, n]) * qScale[k // g, n]``. Its
conventions, as read in PyTorch's ``aten/src/ATen/native/mkldnn/xpu/detail/WoQMatmul.cpp`` and the XPU ``Blas.cpp``
checks, and as vLLM-era users (GPTQModel's torch-fused linear, SGLang's XPU WNA16 scheme) call it:

- ``x``: [M, K] fp16/bf16, contiguous (the primitive cache path asserts fp16/bf16; fp32 is not declared here);
- ``mat2``: int32 [N, K/8], K contiguous, eight 4-bit codes per word LSB first (oneDNN reads it as u4 [K, N],
  format ``ba``): exactly the transpose of a GPTQ ``qweight``;
- ``qScale``: [K/g, N] in the activation dtype; ``qZeros``: **int8** [K/g, N], integer zero points (true zeros,
  no v1 offset; 16 fits);
- ``g``: a multiple of 32 greater than 1, ``K % g == 0`` (no partial last group), no ``g_idx`` input.

So group sizes that are not multiples of 32, partial last groups and act order are regrouped once at prepare
(:mod:`wna16_ipex.layout`); the kernel then sees ``K' = groups * g`` rows and ``x`` is gathered per call. The
conversion is pure torch and tested on CPU (against an emulation of the op and its meta kernel); only the call
itself needs an XPU.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from wna16.errors import UnsupportedError
from wna16.packing import pack_rows
from wna16.protocol import Availability, Backend, Capability, LayerSpec, PreparedLinear
from wna16.weight import QuantizedWeight
from wna16_ipex.layout import Regrouped, check_expansion, regroup

OP_NAME = "aten::_weight_int4pack_mm_with_scales_and_zeros"
GROUP_MULTIPLE = 32
"""The op requires ``qGroupSize % 32 == 0``."""

Int4Op = Callable[[torch.Tensor, torch.Tensor, int, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class XpuInt4Weight:
    """The op's operands for one layer (on any device), plus how to gather ``x`` into their row order."""

    mat2: torch.Tensor
    scales: torch.Tensor
    zeros: torch.Tensor
    group_size: int
    layout: Regrouped


def convert(weight: QuantizedWeight, dtype: torch.dtype) -> XpuInt4Weight:
    """The canonical 4-bit weight in the op's layout for activations of ``dtype`` (fp16/bf16), on CPU.

    Raises :class:`UnsupportedError` for other bits/dtypes and when regrouping an uneven act order would grow K
    more than :data:`~wna16_ipex.layout.MAX_EXPANSION` times.
    """
    if weight.scheme.bits != 4 or dtype not in (torch.float16, torch.bfloat16):
        reason = f"needs 4-bit codes and fp16/bf16 activations, got {weight.scheme} and {dtype}"
        raise UnsupportedError(f"backend 'xpu-native' cannot serve {weight.name}", [reason])
    rows = weight.scheme.group_rows(weight.in_features)
    partial = weight.in_features % rows != 0
    layout = regroup(weight, GROUP_MULTIPLE, power_of_two=False, force=partial)
    check_expansion(layout, weight, "xpu-native")
    mat2 = pack_rows(layout.codes, 4, "xpu int4 mat2").t().contiguous()  # [N, K'/8], K contiguous
    group_size = layout.rows if layout.groups > 1 else layout.kernel_in_features
    return XpuInt4Weight(
        mat2=mat2,
        scales=layout.scales.to(dtype).contiguous(),
        zeros=layout.zeros.to(torch.int8).contiguous(),
        group_size=group_size,
        layout=layout,
    )


def _rule() -> Capability:
    return Capability(
        bits=frozenset({4}),
        dtypes=frozenset({torch.float16, torch.bfloat16}),
        group_sizes=None,  # multiples of 32 natively, every other size through regrouping
        partial_last_group=True,
        sym=True,
        asym=True,
        devices=frozenset({"xpu"}),
        param_dtype=None,  # scales are cast to the activation dtype; oneDNN's fpmath mode dequantizes in it
        accum_dtype=torch.float32,
        act_order=True,
        k_slices=True,
        priority=40,  # below IPEX (50) on XPU: torch's op is the fallback when IPEX is absent
        label="xpu-native",
    )


def _op_has_xpu_kernel() -> bool:
    try:
        return bool(torch._C._dispatch_has_kernel_for_dispatch_key(OP_NAME, "XPU"))
    except RuntimeError:  # op not defined in this torch
        return False


class XpuNativeBackend(Backend):
    """torch's XPU int4 weight-only matmul (oneDNN), for torch builds with XPU support and no IPEX."""

    compile_refusal = (
        "its prepared layer calls torch's XPU int4 op from a Python callable, not yet a wna16::linear kernel "
        "(issue 22: no XPU here to verify one)"
    )
    name = "xpu-native"
    description = "torch.ops.aten._weight_int4pack_mm_with_scales_and_zeros (oneDNN int4 on Intel XPU)"
    capabilities = (_rule(),)

    def available(self, device: str | torch.device = "cpu") -> Availability:
        """The device must be an XPU and this torch must have the op's XPU kernel."""
        dev = torch.device(device)
        if dev.type != "xpu":
            return Availability(False, f"device type {dev.type!r} not served (serves ['xpu'])")
        if not _op_has_xpu_kernel():
            return Availability(False, f"this torch ({torch.__version__}) has no XPU kernel for {OP_NAME}")
        if not torch.xpu.is_available():
            return Availability(False, "torch.xpu.is_available() is False: no Intel GPU or driver")
        return Availability(True)

    def build(self, weight: QuantizedWeight, spec: LayerSpec, bias: torch.Tensor | None) -> PreparedLinear:
        """Convert on CPU, move the operands to ``spec.device`` once."""
        converted = convert(weight, spec.dtype)
        return XpuInt4Linear(converted, bias if spec.adds_bias else None, torch.device(spec.device))


class XpuInt4Linear:
    """The prepared layer. ``op`` is the kernel (torch's XPU op); tests pass an emulation to run it on CPU."""

    def __init__(
        self, weight: XpuInt4Weight, bias: torch.Tensor | None, device: torch.device, op: Int4Op | None = None
    ) -> None:
        self.mat2 = weight.mat2.to(device)
        self.scales = weight.scales.to(device)
        self.zeros = weight.zeros.to(device)
        self.group_size = weight.group_size
        self.order = weight.layout.row_order(device)
        self.out_features = int(weight.mat2.shape[0])
        self.bias = None if bias is None else bias.to(device=device, dtype=weight.scales.dtype)
        self.op: Int4Op = op if op is not None else torch.ops.aten._weight_int4pack_mm_with_scales_and_zeros

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x2 = self.order.gather_input(x.reshape(-1, x.shape[-1])).contiguous()
        y = self.op(x2, self.mat2, self.group_size, self.scales, self.zeros)[:, : self.out_features]
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*x.shape[:-1], self.out_features)
