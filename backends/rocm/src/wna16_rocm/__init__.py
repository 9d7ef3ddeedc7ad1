"""wna16-rocm: a Triton WnA16 backend for AMD Instinct GPUs (CUDA as a fallback), testable on CPU.

The package imports without triton; triton is imported on first use (:mod:`wna16_rocm.runtime`), so that a missing
or broken triton makes the backend *unavailable with a reason* instead of breaking backend discovery.
"""

from wna16_rocm.backend import RocmBackend
from wna16_rocm.runtime import ENV_INTERPRET

__all__ = ["ENV_INTERPRET", "RocmBackend"]
