"""wna16 CPU backend: torch's own weight-only CPU kernels behind the wna16 protocol.

4-bit weights go through ``aten._weight_int4pack_mm_for_cpu`` (:mod:`wna16_cpu.int4`), 8-bit per-channel symmetric
weights through ``aten._weight_int8pack_mm`` (:mod:`wna16_cpu.int8`); :mod:`wna16_cpu.backend` declares what the
two serve and at which priority.
"""

from wna16_cpu.backend import CpuBackend

__all__ = ["CpuBackend"]
