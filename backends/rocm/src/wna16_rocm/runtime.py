"""Where the kernels run: a ROCm (or CUDA) device, or the Triton interpreter on CPU, and why not when neither.

The interpreter is opt-in, never on by accident: it runs only when ``WNA16_TRITON_INTERPRET=1`` or
``TRITON_INTERPRET=1`` is in the environment when the kernels are first imported. Triton decides at decoration time
(and reads some state at import) whether a ``@triton.jit`` function is compiled or interpreted, so the choice is
made once per process: :func:`kernels` sets ``TRITON_INTERPRET=1`` before importing triton when asked for, and a
process whose kernels were compiled never reports the CPU as available, nor one whose kernels are interpreted a GPU.
"""

from __future__ import annotations

import importlib
import os
import sys
from functools import cache
from types import ModuleType

import torch

ENV_INTERPRET = "WNA16_TRITON_INTERPRET"
"""Set to ``1`` to run this backend's kernels under the Triton interpreter on CPU tensors (tests, debugging)."""


def interpreter_requested() -> bool:
    """True when the environment asks for the Triton interpreter (either variable set to exactly ``1``)."""
    return os.environ.get(ENV_INTERPRET) == "1" or os.environ.get("TRITON_INTERPRET") == "1"


@cache
def _load() -> tuple[ModuleType | None, str]:
    if interpreter_requested():
        if "triton" in sys.modules and os.environ.get("TRITON_INTERPRET") != "1":
            return None, (
                f"{ENV_INTERPRET}=1 was set after triton was imported (triton.language is then compiled-mode): "
                "set it before anything imports triton"
            )
        os.environ["TRITON_INTERPRET"] = "1"
    try:
        module = importlib.import_module("wna16_rocm.kernels")
    except ImportError as exc:
        return None, f"triton does not import: {type(exc).__name__}: {exc}"
    return module, ""


def kernels() -> ModuleType:
    """The kernel module (imports triton on first call); raises ``ImportError`` with the reason when it cannot."""
    module, reason = _load()
    if module is None:
        raise ImportError(reason)
    return module


def interpreted() -> bool:
    """True when this process's kernels run under the interpreter (imports them)."""
    module, _ = _load()
    return module is not None and bool(module.INTERPRETED)


def unavailable_reason(device: torch.device) -> str:
    """Empty when the kernels can run on ``device`` here, else one line saying why not."""
    if device.type not in ("cuda", "cpu"):
        return f"device type {device.type!r} not served (ROCm/CUDA devices, or CPU under the Triton interpreter)"
    if device.type == "cpu" and not interpreter_requested():
        return (
            f"CPU runs only under the Triton interpreter (tests): set {ENV_INTERPRET}=1 before the first use; "
            "no ROCm or CUDA device was asked for"
        )
    module, reason = _load()
    if module is None:
        return reason
    if device.type == "cpu":
        if not module.INTERPRETED:
            return "the kernels of this process were compiled for a GPU (interpreter requested after first use)"
        return ""
    if module.INTERPRETED:
        return "the kernels of this process run under the Triton interpreter (TRITON_INTERPRET=1): CPU tensors only"
    if not torch.cuda.is_available():
        return "torch sees no ROCm or CUDA device (torch.cuda.is_available() is False)"
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index >= torch.cuda.device_count():
        return f"device {device} not present ({torch.cuda.device_count()} device(s))"
    return ""


def gpu_target(device: torch.device) -> str:
    """``"gfx942"``-style arch on ROCm, ``"sm90"``-style on CUDA, ``"interpreter"`` on CPU: keys the config tables."""
    if device.type != "cuda":
        return "interpreter"
    props = torch.cuda.get_device_properties(device)
    if torch.version.hip is not None:
        return str(getattr(props, "gcnArchName", "gfx")).split(":")[0]
    return f"sm{props.major}{props.minor}"
