"""The ``ipex`` backend: intel-extension-for-pytorch's weight-only-quantized linear, on Intel XPUs and on CPUs.

It feeds ``IPEXWeightOnlyQuantizedLinear.from_weight`` GPTQ tensors (``quant_method=GPTQ_GEMM``, ``dtype=INT4``).
What was measured with IPEX 2.8.0 on CPU (scripts in the package README) and what it implies here:

- zeros: IPEX reads GPTQ v1 ``qzeros`` as ``(stored + 1) mod 16``, so it takes every true zero in [0, 15] (0 is
  stored as 15) but not 16. A zero of 16 is served as 15 plus a per-group correction computed beside the kernel
  (:func:`split_zero_sixteen`; such layers then run in fp32). Symmetric weights pass ``zero_points=None`` (IPEX
  subtracts 8, the wna16 centre).
- ``from_weight`` transposes ``scales`` in place: it always gets a float32 copy (exact for every stored dtype).
- group sizes: -1 or a power of two; one group must be passed as -1 (a single explicit group raises IndexError);
  partial last groups work. Other sizes and act order are regrouped (:mod:`wna16_ipex.layout`): IPEX's own
  ``g_idx`` is right for groups of exactly ``group_size`` rows and corrupts the heap otherwise.
- ``out_features`` not a multiple of 32 gives silently wrong outputs: columns are padded to 32 and sliced off.
- lowp mode: pinned per activation dtype (fp32 -> NONE, bf16 -> BF16, fp16 -> FP16), never INT8 (which quantizes
  activations: W4A8). In all three the kernel dequantizes ``s * (q - z)`` in fp32, rounds each weight to the
  activation dtype and accumulates in fp32: ``param_dtype`` = activation dtype, ``accum_dtype`` = fp32.
"""

from __future__ import annotations

import functools
import importlib
import secrets
import weakref
from collections.abc import Sequence
from dataclasses import replace
from importlib import metadata
from types import ModuleType
from typing import Any

import torch

from wna16.errors import UnsupportedError
from wna16.ops import PreparedOp, register_kernel
from wna16.packing import pack_cols, pack_rows
from wna16.protocol import (
    ACTIVATION_DTYPES,
    Availability,
    Backend,
    Capability,
    LayerSpec,
    PreparedLinear,
    describe_spec,
)
from wna16.weight import QuantizedWeight
from wna16_ipex.layout import Regrouped, RowOrder, check_expansion, pad_columns, regroup

N_TILE = 32
"""IPEX 2.8 computes wrong outputs unless out_features is a multiple of this (measured on CPU)."""

DTYPES = frozenset(ACTIVATION_DTYPES)

CPU_DTYPES = DTYPES - {torch.bfloat16}
"""IPEX 2.8's CPU weight-only kernel returns inf for bf16 activations of magnitude 2**17 (a value bf16 holds; e.g. 1
row, K=8448 or K=256, found by the conformance suite's large-magnitude inputs): bf16 is not declared on CPU."""


def _rule(device: str, priority: int) -> Capability:
    return Capability(
        bits=frozenset({4}),
        dtypes=CPU_DTYPES if device == "cpu" else DTYPES,
        group_sizes=None,  # powers of two natively, every other size through regrouping
        partial_last_group=True,
        sym=True,
        asym=True,
        devices=frozenset({device}),
        param_dtype=None,  # each dequantized weight is rounded to the activation dtype (measured)
        accum_dtype=torch.float32,
        act_order=True,
        k_slices=True,
        priority=priority,
        label=f"ipex-{device}",
    )


@functools.cache
def _import_ipex() -> ModuleType | str:
    """The ``intel_extension_for_pytorch`` module, or why it cannot be imported (cached: the import is slow).

    IPEX only runs on the torch release it was built for, and on a mismatch its import prints an error and fails
    (IPEX 2.8 calls the nonexistent ``os.exit``): the versions are compared first, from the package metadata.
    """
    try:
        ipex_version = metadata.version("intel-extension-for-pytorch")
    except metadata.PackageNotFoundError:
        return "intel-extension-for-pytorch is not installed (pip install intel-extension-for-pytorch==2.8.0)"
    if _major_minor(ipex_version) != _major_minor(torch.__version__):
        wanted = _major_minor(ipex_version)
        return f"intel-extension-for-pytorch {ipex_version} needs torch {wanted}.*, not {torch.__version__}"
    try:
        return importlib.import_module("intel_extension_for_pytorch")
    except Exception as exc:  # an IPEX build for another device or ABI raises many kinds
        return f"intel_extension_for_pytorch does not import: {type(exc).__name__}: {exc}"


def _major_minor(version: str) -> str:
    return ".".join(version.split("+")[0].split(".")[:2])


def lowp_mode_name(dtype: torch.dtype) -> str:
    """The IPEX ``WoqLowpMode`` pinned for an activation dtype: the one that keeps activations in that dtype."""
    return {torch.float32: "NONE", torch.bfloat16: "BF16", torch.float16: "FP16"}[dtype]


class IpexBackend(Backend):
    """IPEX weight-only linear (4-bit, GPTQ tensors), XPU first, CPU as a correct but slow fallback."""

    name = "ipex"
    description = "intel-extension-for-pytorch IPEXWeightOnlyQuantizedLinear (GPTQ int4), XPU and CPU"
    # On CPUs without AVX512-FP16 IPEX dequantizes the whole weight per call: rank it just above the reference.
    capabilities = (_rule("xpu", 50), _rule("cpu", 1))

    def available(self, device: str | torch.device = "cpu") -> Availability:
        """IPEX must import (it pins torch 2.8) and, for ``xpu``, be the XPU build with an XPU present."""
        base = super().available(device)
        if not base:
            return base
        ipex = _import_ipex()
        if isinstance(ipex, str):
            return Availability(False, ipex)
        dev = torch.device(device).type
        woq = importlib.import_module("intel_extension_for_pytorch.llm.quantization")
        mapping = getattr(woq.IPEXWeightOnlyQuantizedLinear, "module_mapping", {})
        if dev not in mapping:
            return Availability(False, f"this IPEX build ({ipex.__version__}) has no {dev!r} weight-only linear")
        return Availability(True)

    def build(self, weight: QuantizedWeight, spec: LayerSpec, bias: torch.Tensor | None) -> PreparedLinear:
        """Regroup if needed, pad N to 32, write GPTQ v1 tensors and let IPEX prepack them on ``spec.device``."""
        ipex = _import_ipex()
        if isinstance(ipex, str):
            raise UnsupportedError(f"backend {self.name!r} cannot serve {describe_spec(spec)}", [ipex])
        layout = regroup(weight, None, power_of_two=True)
        check_expansion(layout, weight, self.name)
        layout, correction = split_zero_sixteen(layout)
        # With a correction the kernel's partial result must not be rounded before it is added: compute in fp32.
        compute = spec.dtype if correction is None else torch.float32
        tensors = gptq_tensors(layout, weight.scheme.sym)
        dev = torch.device(spec.device)
        module = _from_weight(tensors, compute, dev, bias if spec.adds_bias else None)
        correction = None if correction is None else correction.to(dev)
        order = layout.row_order(dev)
        return IpexLinear(module, order, weight.in_features, weight.out_features, spec.dtype, compute, correction)


def split_zero_sixteen(layout: Regrouped) -> tuple[Regrouped, torch.Tensor | None]:
    """IPEX takes zeros in [0, 15]; a true zero of 16 (GPTQ v1 stored 15) is served as zero 15 plus a correction.

    ``s * (q - 16) = s * (q - 15) - s``: the kernel gets zero 15 and the caller subtracts ``s`` times the sum of the
    group's inputs. Returns the layout with zeros clamped and the correction [groups, N] float32 (``-s`` where the
    zero was 16, else 0), or the layout unchanged and None when no zero is 16.
    """
    over = layout.zeros > 15
    if not bool(over.any()):
        return layout, None
    correction = torch.where(over, -layout.scales.to(torch.float32), 0.0)
    return replace(layout, zeros=layout.zeros.clamp(max=15)), correction


def gptq_tensors(layout: Regrouped, sym: bool) -> dict[str, Any]:
    """The ``from_weight`` arguments for a regrouped weight: fresh tensors (IPEX mutates what it is given).

    ``qweight`` int32 [K'/8, N32] packed along K; ``scales`` float32 [G, N32] (padded columns: scale 0);
    ``qzeros`` int32 [G, N32/8] holding ``(zero - 1) mod 16`` (None for symmetric); ``group_size`` -1 for one group.
    """
    codes = pad_columns(layout.codes, N_TILE, 8)
    scales = pad_columns(layout.scales.to(torch.float32), N_TILE, 0.0).clone()
    qzeros = None
    if not sym:
        stored = (pad_columns(layout.zeros, N_TILE, 8) - 1) & 0xF
        qzeros = pack_cols(stored, 4, "ipex qzeros")
    return {
        "qweight": pack_rows(codes, 4, "ipex qweight").contiguous(),
        "scales": scales,
        "zero_points": qzeros,
        "in_features": layout.kernel_in_features,
        "out_features": int(codes.shape[1]),
        "group_size": -1 if layout.groups == 1 else layout.rows,
    }


def _from_weight(
    tensors: dict[str, Any], compute: torch.dtype, device: torch.device, bias: torch.Tensor | None
) -> torch.nn.Module:
    """IPEX's module for ``tensors`` with the lowp mode pinned for activations of dtype ``compute``."""
    quant = importlib.import_module("intel_extension_for_pytorch.llm.quantization")
    q = importlib.import_module("intel_extension_for_pytorch.quantization")
    qconfig = q.get_weight_only_quant_qconfig_mapping(
        weight_dtype=q.WoqWeightDtype.INT4,
        lowp_mode=getattr(q.WoqLowpMode, lowp_mode_name(compute)),
        act_quant_mode=q.WoqActQuantMode.NONE,  # no activation quantization (only used by lowp INT8)
        group_size=tensors["group_size"],
    )
    moved = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in tensors.items()}
    padded_bias = None
    if bias is not None:
        padded_bias = pad_columns(bias.to(torch.float32).reshape(1, -1), N_TILE, 0.0).reshape(-1).to(device).clone()
    module: torch.nn.Module = quant.IPEXWeightOnlyQuantizedLinear.from_weight(
        qconfig=qconfig,
        bias=padded_bias,
        quant_method=quant.QuantMethod.GPTQ_GEMM,
        dtype=quant.QuantDtype.INT4,
        **moved,
    )
    return module


KERNEL = "ipex.woq"
"""The name of this backend's kernel in ``wna16::linear`` (:mod:`wna16.ops`)."""

_MODULES: dict[int, torch.nn.Module] = {}
"""IPEX's prepacked modules by handle. IPEX keeps its prepacked weight in a module (a ScriptObject context, not
tensors), so the op carries a handle to it: a random 62-bit integer, never reused, dropped with its layer. A compiled
graph reloaded in another process finds no module under its handle and gets a typed error, never another layer."""


class IpexLinear(PreparedOp):
    """The prepared layer: gather ``x`` into kernel row order if regrouped, run IPEX, drop the padded columns, and
    add the zero-16 correction (in float32, before the single rounding to the activation dtype) where there is one."""

    def __init__(
        self,
        module: torch.nn.Module,
        order: RowOrder,
        in_features: int,
        out_features: int,
        dtype: torch.dtype,
        compute: torch.dtype,
        correction: torch.Tensor | None = None,
    ) -> None:
        super().__init__(KERNEL, in_features, out_features, dtype)
        self.module = module
        self.order = order
        self.compute = compute
        self.correction = correction
        self.handle = secrets.randbits(62)
        _MODULES[self.handle] = module
        weakref.finalize(self, _MODULES.pop, self.handle, None)

    @property
    def state(self) -> tuple[torch.Tensor | None, ...]:
        """``(row gather or None, zero-16 correction or None)``."""
        return (self.order.gather, self.correction)

    @property
    def options(self) -> tuple[int, ...]:
        """``(module handle, N, compute dtype index in ACTIVATION_DTYPES, rows per group, groups, kernel K)``."""
        order = self.order
        compute = ACTIVATION_DTYPES.index(self.compute)
        return (self.handle, self.out_features, compute, order.rows, order.groups, order.kernel_in_features)


@register_kernel(KERNEL, ["cpu", "xpu"])
def ipex_linear(x: torch.Tensor, state: Sequence[torch.Tensor | None], options: Sequence[int]) -> torch.Tensor:
    """``x`` [..., K] -> [..., N] in ``x``'s dtype through the IPEX module under the handle in ``options``."""
    gather, correction = state
    handle, out_features, compute, rows, groups, kernel_in_features = options
    module = _MODULES.get(handle)
    if module is None:
        raise UnsupportedError(
            f"wna16 kernel {KERNEL!r}", [f"no IPEX module under handle {handle} in this process (a graph compiled "
                                        "in another process, or a layer already freed)"]
        )  # fmt: skip
    order = RowOrder(gather, rows, groups, kernel_in_features)
    x2 = order.gather_input(x.reshape(-1, x.shape[-1])).to(ACTIVATION_DTYPES[compute]).contiguous()
    y: torch.Tensor = module(x2)[:, :out_features]
    if correction is not None:
        sums = torch.zeros(x2.shape[0], groups, dtype=torch.float32, device=x2.device)
        row_group = torch.arange(kernel_in_features, device=x2.device) // rows
        sums.index_add_(1, row_group, x2.to(torch.float32))
        y = y + sums @ correction
    return y.to(x.dtype).reshape(*x.shape[:-1], out_features)
