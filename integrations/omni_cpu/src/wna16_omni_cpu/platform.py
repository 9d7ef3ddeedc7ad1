"""The CPU platform of vLLM-Omni: vLLM's ``CpuPlatform`` plus the Omni interface, for the diffusion path.

What vLLM-Omni asks of a platform beyond vLLM's, and the CPU answers:

- devices: one, ``cpu``; selecting it (``set_device``) is a no-op, as are ``synchronize`` (CPU kernels return when
  done), ``empty_cache`` and ``reset_peak_memory_stats``; ``max_memory_allocated`` / ``max_memory_reserved`` are 0
  (no caching allocator). vLLM's ``Platform.__getattr__`` forwards other names to ``torch.cpu``, which has none of
  these, and would hand back ``None``.
- memory: the machine's available and total RAM (``psutil``).
- diffusion attention: :class:`~wna16_omni_cpu.attention.CpuSDPABackend` (PyTorch SDPA). vLLM-Omni's SDPA backend
  computes on any device, but its ``forward`` dispatches only to the five platforms vLLM-Omni knows.
- torch inductor: off (vLLM-Omni then runs the diffusion model eagerly).
- autoregressive (LLM) stages: :class:`~wna16_omni_cpu.worker.CpuARWorker`, vLLM-Omni's AR runner over vLLM's CPU
  runner (vLLM-Omni's own ``GPUARWorker.init_device`` raises for device types other than cuda/musa). Shown on a
  plain vLLM engine and through vLLM-Omni's stage pipeline (the Qwen2.5-Omni and Qwen3-Omni-MoE thinkers:
  tests/omni/test_thinker_stage.py). Generation (code-to-audio) stages: none; asking for their worker raises.
"""

from __future__ import annotations

import psutil
import torch
from vllm.platforms.cpu import CpuPlatform
from vllm_omni.platforms.interface import OmniPlatform, OmniPlatformEnum

ATTENTION_BACKEND = "wna16_omni_cpu.attention.CpuSDPABackend"

AR_WORKER = "wna16_omni_cpu.worker.CpuARWorker"

NO_GENERATION_WORKER = (
    "vLLM-Omni has no CPU worker for generation stages: vllm_omni/worker/gpu_generation_worker.py is a GPU worker "
    "(its runner subclasses vLLM's GPUModelRunner). The CPU platform serves diffusion and AR stages."
)


class CpuOmniPlatform(OmniPlatform, CpuPlatform):
    """vLLM-Omni on vLLM-CPU (diffusion and AR stages)."""

    _omni_enum = OmniPlatformEnum.OOT

    @classmethod
    def get_omni_ar_worker_cls(cls) -> str:
        """vLLM-Omni's AR runner on vLLM's CPU worker (:class:`~wna16_omni_cpu.worker.CpuARWorker`)."""
        return AR_WORKER

    @classmethod
    def get_omni_generation_worker_cls(cls) -> str:
        """No CPU generation worker exists (see :data:`NO_GENERATION_WORKER`)."""
        raise NotImplementedError(NO_GENERATION_WORKER)

    @classmethod
    def get_default_stage_config_path(cls) -> str:
        """vLLM-Omni's generic stage configs (the CPU adds none of its own)."""
        return "vllm_omni/model_executor/stage_configs"

    @classmethod
    def get_diffusion_attn_backend_cls(
        cls, selected_backend: str | None, head_size: int, allow_trtllm_default: bool = False
    ) -> str:
        """PyTorch SDPA, the one diffusion attention backend that computes on CPU; any other choice is refused."""
        if selected_backend is not None and selected_backend.upper() not in ("TORCH_SDPA", "SDPA"):
            raise ValueError(
                f"diffusion attention backend {selected_backend!r} does not run on CPU; use TORCH_SDPA (the default)"
            )
        return ATTENTION_BACKEND

    @classmethod
    def supports_torch_inductor(cls) -> bool:
        """Off: the diffusion models run eagerly on CPU."""
        return False

    @classmethod
    def get_torch_device(cls, local_rank: int | None = None) -> torch.device:
        """The one CPU device (ranks share it)."""
        return torch.device("cpu")

    @classmethod
    def get_device_count(cls) -> int:
        """One device: the CPU."""
        return 1

    @classmethod
    def get_device_version(cls) -> str | None:
        """The CPU has no device version."""
        return None

    @classmethod
    def set_device(cls, device: torch.device) -> None:
        """Nothing to select on CPU."""

    @classmethod
    def synchronize(cls) -> None:
        """CPU kernels have finished when they return."""

    @classmethod
    def empty_cache(cls) -> None:
        """No caching allocator on CPU."""

    @classmethod
    def reset_peak_memory_stats(cls, device: torch.device | None = None) -> None:
        """No allocator statistics on CPU."""

    @classmethod
    def max_memory_allocated(cls, device: torch.device | None = None) -> int:
        """No allocator statistics on CPU: 0 (vLLM-Omni reports it as the peak)."""
        return 0

    @classmethod
    def max_memory_reserved(cls, device: torch.device | None = None) -> int:
        """No allocator statistics on CPU: 0."""
        return 0

    @classmethod
    def get_free_memory(cls, device: torch.device | None = None) -> int:
        """Available RAM in bytes."""
        return int(psutil.virtual_memory().available)

    @classmethod
    def get_device_memory(cls, device: torch.device | None = None) -> tuple[int, int]:
        """(available, total) RAM in bytes."""
        memory = psutil.virtual_memory()
        return int(memory.available), int(memory.total)
