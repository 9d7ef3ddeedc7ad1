"""wna16's CUDA Marlin backend: vLLM's compiled Marlin kernels, fed by a prepare step written in plain torch.

The entry point ``marlin`` (group ``wna16.backends``) is :class:`MarlinBackend`. :func:`resolution` tells what was
found on this machine (the vLLM version, or why Marlin is unavailable); :func:`prepare_marlin` is the whole layout
conversion, runnable (and proven against vLLM's reference) on CPU.
"""

from wna16_marlin.backend import MarlinBackend, MarlinLinear, declared_capabilities, resolution
from wna16_marlin.prepare import MarlinTensors, plan_rows, prepare_marlin

__all__ = [
    "MarlinBackend",
    "MarlinLinear",
    "MarlinTensors",
    "declared_capabilities",
    "plan_rows",
    "prepare_marlin",
    "resolution",
]
