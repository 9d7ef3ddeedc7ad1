"""Ascend NPU backend through ``torch_npu.npu_weight_quant_batchmatmul`` (a skeleton: layout and declaration are real
and tested on CPU; the kernel call runs only where torch_npu and an NPU are present).

The operator computes ``y = x @ ((w + antiquant_offset) * antiquant_scale) + bias`` with ``w`` *signed* codes stored
as int8 [K, N] (8-bit) or as int4 carried in int32 [K, N/8] (4-bit), and ``antiquant_scale`` /
``antiquant_offset`` of shape [G, N] in the activation dtype (per-group, ``antiquant_group_size``) or [1, N]
(per-channel). wna16's dequantization is ``s * (q - z)`` with unsigned codes ``q``; with ``w = q - c`` for the centre
``c = 2**(bits-1)`` and ``offset = c - z`` both agree exactly: ``(q - c + c - z) * s``. The offset is an integer in
[-c, c] and therefore exact in fp16 and bf16; only the scales are rounded to the activation dtype.
"""

from __future__ import annotations

import importlib.util

import torch

from wna16.packing import unpack_rows
from wna16.protocol import Availability, Backend, Capability, LayerSpec, PreparedLinear
from wna16.weight import QuantizedWeight

GROUP_SIZES = frozenset({-1, 32, 64, 128, 256})
"""Per-channel, or per-group with a group size that is a multiple of 32 (the operator's documented constraint)."""


def signed_codes(weight: QuantizedWeight) -> torch.Tensor:
    """int8 [K, N]: the codes shifted to the signed range the operator reads, ``q - 2**(bits-1)``."""
    return (weight.codes() - weight.scheme.center).to(torch.int8)


def antiquant_params(weight: QuantizedWeight, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """``(antiquant_scale, antiquant_offset)`` [G, N] in ``dtype``: the scale as stored, offset ``c - z``."""
    offset = (weight.scheme.center - weight.zeros).to(dtype)
    return weight.scales.to(dtype), offset


def pack_int4_in_int32(codes: torch.Tensor) -> torch.Tensor:
    """Signed int4 codes [K, N] -> int32 [K, N/8], eight codes per word along N, the first in the lowest nibble,
    the layout ``torch_npu.npu_convert_weight_to_int4pack`` produces for the operator's int4 input."""
    nibbles = (codes.to(torch.int32) & 0xF).reshape(codes.shape[0], -1, 8)
    shifts = torch.arange(0, 32, 4, dtype=torch.int32)
    return (nibbles << shifts).sum(dim=-1, dtype=torch.int64).to(torch.int32)


def unpack_int4_from_int32(packed: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`pack_int4_in_int32`: int32 [K, N/8] -> signed int8 codes [K, N]."""
    n = packed.shape[1] * 8
    nibbles = unpack_rows(packed.t().contiguous(), 4).t()  # [K, N] unsigned nibbles, LSB first along N
    return torch.where(nibbles >= 8, nibbles - 16, nibbles).to(torch.int8).reshape(packed.shape[0], n)


def npu_dequantize(weight_int: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
    """The operator's documented formula on CPU, float32 [N, K]: ``(w + offset) * scale`` with each row of ``w``
    using the scale/offset row of its group. Used to prove the layout; the NPU computes the same on device."""
    k = weight_int.shape[0]
    rows_per_group = -(-k // scale.shape[0])
    group = torch.arange(k) // rows_per_group
    w = weight_int.to(torch.float32)
    return ((w + offset.to(torch.float32)[group]) * scale.to(torch.float32)[group]).t()


class AscendBackend(Backend):
    """4- and 8-bit layers on Ascend NPUs (A2/A3 series) through ``npu_weight_quant_batchmatmul``."""

    compile_refusal = (
        "its prepared layer calls torch_npu from a Python closure, not yet a wna16::linear kernel (issue 22: no NPU "
        "here to verify one)"
    )
    name = "ascend"
    description = "torch_npu weight-quant batch matmul (Ascend A2/A3)"
    capabilities = (
        Capability(
            bits=frozenset({4, 8}),
            dtypes=frozenset({torch.float16, torch.bfloat16}),
            group_sizes=GROUP_SIZES,
            sym=True,
            asym=True,
            devices=frozenset({"npu"}),
            param_dtype=None,  # scales are passed in the activation dtype; offsets are exact integers
            accum_dtype=torch.float32,
            n_multiple=8,  # int4 is carried eight to an int32 along N
            priority=50,
        ),
    )

    def available(self, device: str | torch.device = "npu") -> Availability:
        """Needs ``torch_npu`` importable and an NPU device; another device type is refused before torch_npu is
        looked for (discovery and the selection of a CPU layer never import it)."""
        if str(device).split(":", 1)[0] not in (self.device_types() or ()):
            return super().available(device)
        if importlib.util.find_spec("torch_npu") is None:
            return Availability(False, "torch_npu is not installed (pip install torch_npu on an Ascend host)")
        import torch_npu  # noqa: F401  (registers the npu device with torch)

        npu = getattr(torch, "npu", None)
        if npu is None or not npu.is_available():
            return Availability(False, "torch_npu imports but no Ascend NPU is visible")
        return super().available(device)

    def build(self, weight: QuantizedWeight, spec: LayerSpec, bias: torch.Tensor | None) -> PreparedLinear:
        """Signed codes (int8, or int4 in int32), scale and offset in the activation dtype, moved to the NPU."""
        import torch_npu

        codes = signed_codes(weight)
        w = pack_int4_in_int32(codes) if weight.scheme.bits == 4 else codes
        scale, offset = antiquant_params(weight, spec.dtype)
        device = torch.device(spec.device)
        w, scale, offset = w.to(device), scale.to(device), offset.to(device)
        b = bias.to(device=device, dtype=spec.dtype) if spec.adds_bias and bias is not None else None
        group = 0 if weight.scheme.group_size == -1 else weight.scheme.group_size

        def forward(x: torch.Tensor) -> torch.Tensor:
            x2 = x.reshape(-1, x.shape[-1])
            y = torch_npu.npu_weight_quant_batchmatmul(x2, w, scale, offset, bias=b, antiquant_group_size=group)
            return y.reshape(*x.shape[:-1], weight.out_features)

        return forward
