"""Which vector ISA torch's CPU kernels run with here, and what that makes fast.

torch dispatches its CPU kernels (the int4 weight-only kernel included) by the capability it reports,
``torch.backends.cpu.get_cpu_capability()``: ``AVX512``, ``AVX2`` or ``DEFAULT`` (scalar) on x86, overridable with
``ATEN_CPU_CAPABILITY``. Whether bf16 arithmetic is native (AVX512-BF16, AMX) is a second fact, read from the CPU.
The backend's priorities and large-M crossovers are keyed by :func:`isa` so that a path measured fast on one machine
is not chosen on another where it is slow.
"""

from __future__ import annotations

import functools
import platform
from pathlib import Path

import torch


@functools.cache
def isa() -> str:
    """``AVX512-BF16``, ``AMX``, ``AVX512``, ``AVX2`` or ``DEFAULT`` (anything else torch reports, e.g. ``ZVECTOR``,
    passes through): torch's dispatch capability, refined by native bf16 support where torch uses AVX-512."""
    capability = torch.backends.cpu.get_cpu_capability()
    if capability != "AVX512":
        return capability
    if torch.cpu._is_amx_tile_supported():
        return "AMX"
    if torch.cpu._is_avx512_bf16_supported():
        return "AVX512-BF16"
    return "AVX512"


def describe() -> str:
    """One line for ``wna16 backends`` and benchmark reports: the ISA and where it comes from."""
    return f"ISA {isa()} (torch capability {torch.backends.cpu.get_cpu_capability()})"


@functools.cache
def native_bf16() -> bool:
    """Whether this CPU multiplies bf16 natively (AVX512-BF16 or AMX), which oneDNN's bf16 GEMM uses whatever
    ``ATEN_CPU_CAPABILITY`` says; without it a bf16 GEMM is emulated and slower than a float32 one."""
    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def gemm_dtype() -> torch.dtype:
    """The dtype the dequantize-then-GEMM paths multiply in when the activations are bf16 (float32 otherwise)."""
    return torch.bfloat16 if native_bf16() else torch.float32


@functools.cache
def cpu_identity() -> str:
    """The CPU's model name and feature flags (``/proc/cpuinfo``; the platform's processor string elsewhere): what
    code compiled with ``-march=native`` depends on, so a build cache shared between machines (a network home)
    keys on it and never loads another CPU's build."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return f"{platform.machine()} {platform.processor()}"
    keep = ("model name", "flags", "Features")
    return "\n".join(dict.fromkeys(line for line in lines if line.split(":")[0].strip() in keep))
