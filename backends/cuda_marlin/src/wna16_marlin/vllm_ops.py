"""Finding vLLM's compiled Marlin ops and what the installed version claims for them.

vLLM's Marlin op signatures change between releases (``gptq_marlin_gemm`` with ``g_idx``/``perm``/``is_k_full``
became ``marlin_gemm`` without act order; the repack lost its ``perm``). Rather than pin one release, the ops are
called through their registered torch schema: each argument is recognised by name and given its value, and a schema
with an argument this module does not know is refused with that name in the reason. Constraints (group sizes,
quantization types, minimum compute capability) are read from the installed vLLM, never copied from one version.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

GEMM_OPS = ("marlin_gemm", "gptq_marlin_gemm")
"""Names the Marlin GEMM has had in ``torch.ops._C``, newest first."""

REPACK_OP = "gptq_marlin_repack"

MIN_CAPABILITY_FALLBACK = (8, 0)
"""Used when the installed vLLM does not say: Ampere, the oldest architecture every Marlin release supports."""

KERNEL_MODULES = (
    "vllm.model_executor.kernels.linear.mixed_precision.marlin",
    "vllm.model_executor.layers.quantization.kernels.mixed_precision.marlin",
)
"""Where vLLM releases keep ``MarlinLinearKernel`` (its ``get_min_capability`` is the authority)."""


class ResolutionError(RuntimeError):
    """The installed environment cannot run vLLM's Marlin; the message is the reason shown to users."""


def _role(name: str) -> str:
    return name.removesuffix("_or_none")


@dataclass(frozen=True)
class OpCall:
    """How to call one registered op: its argument names in order and, for each, the role that fills it."""

    name: str
    roles: tuple[str, ...]

    def arguments(self, values: Mapping[str, object]) -> list[object]:
        """Positional arguments for ``values`` keyed by role."""
        return [values[role] for role in self.roles]


GEMM_ROLES = frozenset(
    {
        "a", "c", "b_q_weight", "b_bias", "b_scales", "a_scales", "global_scale", "b_zeros", "g_idx", "perm",
        "workspace", "b_type_id", "b_q_type", "size_m", "size_n", "size_k", "is_k_full", "use_atomic_add",
        "use_fp32_reduce", "is_zp_float",
    }
)  # fmt: skip
REPACK_ROLES = frozenset({"b_q_weight", "perm", "size_k", "size_n", "num_bits", "is_a_8bit"})


def op_call(schema: torch._C.FunctionSchema, known: frozenset[str]) -> OpCall:
    """The :class:`OpCall` of ``schema``; raises :class:`ResolutionError` naming any argument it cannot fill."""
    roles, unknown = [], []
    for arg in schema.arguments:
        role = _role(arg.name)
        if role in ("b_type_id", "b_q_type") and str(arg.type) != "int":
            unknown.append(f"{arg.name}: {arg.type}")
        elif role not in known:
            unknown.append(arg.name)
        roles.append(role)
    if unknown:
        raise ResolutionError(f"op {schema.name} has arguments this backend does not know: {', '.join(unknown)}")
    return OpCall(schema.name, tuple(roles))


@dataclass(frozen=True)
class QuantType:
    """One Marlin weight type: ``bits``, whether it carries zero points, and vLLM's scalar-type id for the op."""

    bits: int
    zero_points: bool
    type_id: int
    name: str


@dataclass(frozen=True)
class VllmMarlin:
    """The resolved ops and constraints of the installed vLLM's Marlin."""

    version: str
    gemm: Callable[..., torch.Tensor]
    gemm_call: OpCall
    repack: Callable[..., torch.Tensor] | None
    repack_call: OpCall | None
    types: tuple[QuantType, ...]
    group_sizes: frozenset[int]
    min_capability: tuple[int, int]
    make_workspace: Callable[[torch.device], torch.Tensor]
    check_shape: Callable[..., tuple[bool, str | None]] | None = field(default=None, compare=False)

    @property
    def fused_bias(self) -> bool:
        """Whether the GEMM adds the (permuted) bias itself; older ones leave it to the caller."""
        return "b_bias" in self.gemm_call.roles

    def type_for(self, bits: int, zero_points: bool) -> QuantType | None:
        """The weight type for ``bits`` with or without zero points, if this vLLM's Marlin has it here."""
        return next((t for t in self.types if (t.bits, t.zero_points) == (bits, zero_points)), None)


def quant_types(marlin_utils: Any, capability: int) -> tuple[QuantType, ...]:
    """The integer weight types vLLM's ``query_marlin_supported_quant_types`` lists for a CUDA device of
    ``capability`` (e.g. 80), mapped to (bits, zero points). Symmetric types must be biased by 2**(bits-1), which is
    wna16's symmetric zero; anything else is left out."""
    query = marlin_utils.query_marlin_supported_quant_types
    params = inspect.signature(query).parameters
    out: list[QuantType] = []
    for has_zp in (False, True):
        kwargs: dict[str, object] = {"has_zp": has_zp, "device_capability": capability}
        if "include_fp_type" in params:
            kwargs["include_fp_type"] = False
        for t in query(**kwargs):
            if not t.is_integer() or t.is_signed():
                continue
            bits = int(t.size_bits)
            if has_zp and not t.has_bias():
                out.append(QuantType(bits, True, int(t.id), str(t)))
            elif not has_zp and int(t.bias) == 1 << (bits - 1):
                out.append(QuantType(bits, False, int(t.id), str(t)))
    return tuple(out)


def min_capability() -> tuple[int, int]:
    """``MarlinLinearKernel.get_min_capability()`` of the installed vLLM as (major, minor)."""
    for module in KERNEL_MODULES:
        try:
            kernel = importlib.import_module(module).MarlinLinearKernel
        except (ImportError, AttributeError):
            continue
        value = int(kernel.get_min_capability())
        return value // 10, value % 10
    return MIN_CAPABILITY_FALLBACK


def _workspace_factory(marlin_utils: Any) -> Callable[[torch.device], torch.Tensor]:
    make = getattr(marlin_utils, "marlin_make_workspace_new", None)
    if make is None:
        raise ResolutionError("vLLM's marlin_utils has no marlin_make_workspace_new")
    blocks = int(getattr(marlin_utils, "MARLIN_MAX_BLOCKS_PER_SM", 1))
    return lambda device: make(device, blocks)


def resolve(device: torch.device) -> VllmMarlin:
    """Import vLLM and resolve its Marlin for CUDA ``device``; raises :class:`ResolutionError` with the reason."""
    if device.type != "cuda" or not torch.cuda.is_available():
        raise ResolutionError(f"no CUDA device ({device}); Marlin runs on NVIDIA GPUs only")
    try:
        vllm = importlib.import_module("vllm")
        importlib.import_module("vllm._custom_ops")  # loads the compiled extension that registers torch.ops._C.*
        marlin_utils = importlib.import_module("vllm.model_executor.layers.quantization.utils.marlin_utils")
    except Exception as exc:  # vLLM's import can fail in many ways (missing extension, wrong torch ABI)
        raise ResolutionError(f"vLLM with its CUDA extension does not import: {type(exc).__name__}: {exc}") from exc
    version = str(getattr(vllm, "__version__", "unknown"))
    namespace = torch.ops._C
    gemm_name = next((name for name in GEMM_OPS if hasattr(namespace, name)), None)
    if gemm_name is None:
        raise ResolutionError(f"vLLM {version} registers no Marlin GEMM ({' / '.join(GEMM_OPS)}): not a CUDA build?")
    gemm = getattr(namespace, gemm_name).default
    repack = getattr(namespace, REPACK_OP).default if hasattr(namespace, REPACK_OP) else None
    major, minor = torch.cuda.get_device_capability(device)
    return VllmMarlin(
        version=version,
        gemm=gemm,
        gemm_call=op_call(gemm._schema, GEMM_ROLES),
        repack=repack,
        repack_call=None if repack is None else op_call(repack._schema, REPACK_ROLES),
        types=quant_types(marlin_utils, major * 10 + minor),
        group_sizes=frozenset(int(g) for g in marlin_utils.MARLIN_SUPPORTED_GROUP_SIZES),
        min_capability=min_capability(),
        make_workspace=_workspace_factory(marlin_utils),
        check_shape=getattr(marlin_utils, "check_marlin_supports_shape", None),
    )
