"""What the CPU backend serves on this CPU, at which priority, and the dispatch to the 2/3/4-bit or 8-bit layer.

Every rule and crossover is keyed by the ISA torch dispatches its kernels with (:func:`wna16_cpu.isa.isa`), because
what is fast differs: torch's int4 kernel is vectorised with AVX-512 (and native bf16 dot products with AVX512-BF16
or AMX), slower with AVX2 and a scalar loop without either. The numbers behind :data:`TUNING` come from
``ci/bench/bench_cpu.py`` (this package's README has the tables, each naming its ISA).

Numerics, as declared to the conformance error model:

- bf16 (``int4-bf16``): the kernel rounds scales and the float zero term to bf16 (``param_dtype`` = the activation
  dtype), dequantizes and accumulates in float32 and rounds the output once; above the crossover the GEMM path uses
  the same rounded parameters in float32. Shifted 2/3-bit and symmetric 4-bit codes make the kernel exact up to that.
- bf16 and fp16 on the native kernel (``native-bf16``, ``native-fp16``; :mod:`wna16_cpu.native_linear`, only where
  it was built with its AVX512-BF16 path and the ISA's tuning ranks it): exact codes, float32 scales, ``x`` split
  into bf16 ``hi + lo`` (exact), float32 accumulation: parameters are exact, so the kernel's only rounding is the
  output's. Above the crossover, bf16 dequantizes to bf16 (declared: bf16 parameters, ``param_dtype`` None) and fp16
  to float32 (declared: ``param_dtype`` float32), then BLAS with float32 accumulation.
- fp16 (``int4-fp16``): the kernel only has a fast bf16 loop, so ``x`` is rounded to bf16 and the output comes back
  in bf16 before its fp16 rounding: declared as ``param_dtype = accum_dtype = bfloat16``, whose accumulation term
  (``sqrt(K) * u_bf16 * |x| @ |W|``) bounds both roundings. A layer that needs fp16 precision should not run here.
- fp32 (``int4-fp32``): the GEMM path only, fp32 parameters and accumulation.
- 8-bit (``int8``): float32 dequantization from int8 codes and BLAS, or, per channel in bf16 at small M, the int8
  kernel with bf16 scales; parameters rounded to the activation dtype, float32 accumulation.

A bias is added in float32 to the rounded product and rounded again, a second rounding the error model allows.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from wna16.protocol import Availability, Backend, Capability, LayerSpec, LazyCapabilities, PreparedLinear
from wna16.weight import QuantizedWeight
from wna16_cpu import isa, native
from wna16_cpu.int4 import Int4Linear
from wna16_cpu.int8 import Int8Linear
from wna16_cpu.native_linear import NativeLinear

KERNEL_OPS = ("_convert_weight_to_int4pack_for_cpu", "_weight_int4pack_mm_for_cpu", "_weight_int8pack_mm")


@dataclass(frozen=True)
class Tuning:
    """What one ISA makes fast: rule priorities, and the largest M each kernel serves before the dequantize-then-GEMM
    path overtakes it, with a bf16 GEMM (CPUs with native bf16) or a float32 one (measured at 4096x4096, group
    128, one thread, by CPU time; see the README)."""

    int4_priority: int
    int4_max_m: tuple[int, int]
    int8_max_m: tuple[int, int]
    note: str
    native_priority: int = 0
    """Priority of the native kernel's rules (0: no rule, the ISA has no measured native path)."""
    native_max_m: tuple[int, int] = (0, 0)
    """The native kernel's crossover to dequantize + GEMM, for bf16 and fp16 activations."""

    def max_m(self, pair: tuple[int, int]) -> int:
        """The crossover for the GEMM dtype this CPU uses."""
        return pair[0] if isa.native_bf16() else pair[1]


TUNING: dict[str, Tuning] = {
    "AMX": Tuning(10, (64, 128), (16, 48), "not measured: assumed like AVX512-BF16", 12, (64, 128)),
    "AVX512-BF16": Tuning(10, (64, 128), (16, 48), "measured on AMD Zen4", 12, (64, 128)),
    "AVX512": Tuning(10, (64, 128), (16, 48), "not measured: assumed like AVX512-BF16 with a float32 GEMM"),
    "AVX2": Tuning(8, (32, 96), (8, 32), "measured on AMD Zen4 with ATEN_CPU_CAPABILITY=avx2"),
}
FALLBACK = Tuning(2, (0, 0), (0, 0), "no vectorised kernel in torch for this ISA: dequantize + GEMM at every M")
"""Anything else (``DEFAULT``: scalar loops): the kernels are never faster than dequantize + BLAS."""

FP16_PRIORITY_DROP = 4
"""fp16 through the bf16 kernel ranks below bf16 by this much: it is fast but only bf16-precise."""

GEMM_PRIORITY = 2
"""fp32 and 8-bit rules: dequantize-then-BLAS, above the reference (0) and portable fallbacks, below real kernels."""

INT4_GROUPS = frozenset({-1, 32, 64, 128, 256})

NATIVE = "native-"
"""Label prefix of the native kernel's rules: :meth:`CpuBackend.build` builds the layer of the rule that matched."""

NATIVE_DTYPES = (torch.bfloat16, torch.float16)
"""Activation dtypes the native kernel serves (fp32 is not exactly two bf16 halves: it keeps the torch paths)."""


def tuning() -> Tuning:
    """The tuning of the ISA torch runs with here."""
    return TUNING.get(isa.isa(), FALLBACK)


ALL_DTYPES = frozenset({torch.float16, torch.bfloat16, torch.float32})


def _rule(
    bits: frozenset[int],
    dtypes: frozenset[torch.dtype],
    group_sizes: frozenset[int] | None,
    priority: int,
    label: str,
    precision: torch.dtype | None,
    accum: torch.dtype = torch.float32,
) -> Capability:
    """One rule of this backend: every rule serves sym and asym, partial last groups (padded to whole kernel blocks
    with zero-weight rows), act order (rows sorted by group once at load, x's columns scattered per call) and K-slices
    on the CPU; they differ in bits, dtypes, groups, declared precision, priority and label."""
    return Capability(
        bits=bits,
        dtypes=dtypes,
        group_sizes=group_sizes,
        partial_last_group=True,
        sym=True,
        asym=True,
        devices=frozenset({"cpu"}),
        param_dtype=precision,
        accum_dtype=accum,
        act_order=True,
        k_slices=True,
        priority=priority,
        label=label,
    )


def _int4(dtype: torch.dtype, priority: int, label: str, precision: torch.dtype | None) -> Capability:
    return _rule(frozenset({2, 3, 4}), frozenset({dtype}), INT4_GROUPS, priority, label, precision,
                 precision or torch.float32)  # fmt: skip


def uses_native(t: Tuning, dtype: torch.dtype) -> bool:
    """Whether the native kernel's rule serves ``dtype`` here: ranked by this ISA's tuning and built with its
    AVX512-BF16 path (:func:`wna16_cpu.native.availability`)."""
    return dtype in NATIVE_DTYPES and t.native_priority > 0 and native.availability()[0]


def _native(t: Tuning, dtype: torch.dtype, label: str, precision: torch.dtype | None) -> Capability:
    # Groups -1/32..256 only: others would be padded to a multiple of 32 rows, up to 2x the codes.
    return _rule(frozenset({2, 3, 4, 8}), frozenset({dtype}), INT4_GROUPS, t.native_priority, label, precision)


def _capabilities(t: Tuning) -> tuple[Capability, ...]:
    where, m4, m8 = isa.isa(), t.max_m(t.int4_max_m), t.max_m(t.int8_max_m)
    gemm = str(isa.gemm_dtype()).removeprefix("torch.")
    fp16 = max(GEMM_PRIORITY, t.int4_priority - FP16_PRIORITY_DROP)
    native_rules: tuple[Capability, ...] = ()
    if uses_native(t, torch.bfloat16):
        mb, mh = t.native_max_m
        native_rules = (
            _native(t, torch.bfloat16, f"{NATIVE}bf16 {where}: kernel to M={mb}, then {gemm} GEMM", None),
            _native(
                t,
                torch.float16,
                f"{NATIVE}fp16 {where}: x = bf16 hi + lo, kernel to M={mh}, then fp32 GEMM",
                torch.float32,
            ),
        )
    return (
        *native_rules,
        _int4(torch.bfloat16, t.int4_priority, f"int4-bf16 {where}: kernel to M={m4}, then {gemm} GEMM", None),
        _int4(torch.float16, fp16, f"int4-fp16 {where}: via bf16, kernel to M={m4}", torch.bfloat16),
        _int4(torch.float32, GEMM_PRIORITY, "int4-fp32: float32 GEMM", None),
        _rule(
            frozenset({8}),
            ALL_DTYPES,
            None,
            GEMM_PRIORITY,
            f"int8 {where}: bf16 per-channel kernel to M={m8}, else {gemm}/fp32 GEMM",
            None,
        ),
    )


class CpuBackend(Backend):
    """torch's CPU weight-only kernels and float32 BLAS: every 2/3/4/8-bit scheme, tuned for the ISA torch uses."""

    name = "cpu"
    capabilities = LazyCapabilities({"cpu"}, lambda: _capabilities(tuning()))  # the ISA is read on first use

    @property
    def description(self) -> str:  # type: ignore[override]  # read on use, like the rules: importing probes nothing
        """What the backend runs, with the ISA it is tuned for here."""
        return (
            "native small-M kernel, torch aten int4/int8 CPU kernels + GEMM from one packed copy; "
            f"{isa.describe()}; {tuning().note}; {native.availability()[1]}"
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
        t, gemm = tuning(), isa.gemm_dtype()
        rule = self.check(spec).rule
        if rule is not None and rule.label.startswith(NATIVE):
            return NativeLinear(weight, spec.dtype, bias, t.native_max_m[spec.dtype == torch.float16], gemm)
        if spec.scheme.bits == 8:
            return Int8Linear(weight, spec.dtype, bias, t.max_m(t.int8_max_m), gemm)
        return Int4Linear(weight, spec.dtype, bias, t.max_m(t.int4_max_m), gemm)
