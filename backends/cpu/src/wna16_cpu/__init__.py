"""wna16 CPU backend: a native small-M kernel and torch's own weight-only CPU kernels behind the wna16 protocol.

Where the native kernel is built with AVX512-BF16 (:mod:`wna16_cpu.native`), bf16 and fp16 layers of every bit
width run on it (:mod:`wna16_cpu.native_linear`). Otherwise, and for fp32, 4-bit weights go through
``aten._weight_int4pack_mm_for_cpu`` (:mod:`wna16_cpu.int4`), 8-bit per-channel symmetric weights through
``aten._weight_int8pack_mm`` (:mod:`wna16_cpu.int8`); :mod:`wna16_cpu.backend` declares what each serves and at
which priority.
"""

from wna16_cpu.backend import CpuBackend

__all__ = ["CpuBackend"]
