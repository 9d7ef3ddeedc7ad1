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
- autoregressive (LLM) stages: none. vLLM-Omni's AR and generation workers are GPU workers
  (``vllm_omni/worker/gpu_ar_worker.py``: ``GPUARWorker.init_device`` raises for any device type but cuda/musa);
  asking for one raises with that reason. The platform is where a CPU worker would come from (vLLM-Omni asks it for
  ``get_omni_ar_worker_cls`` in ``engine/arg_utils.py`` and ``engine/stage_init_utils.py``), and the parts compose on
  paper: a runner ``class(GPUARModelRunner, CPUModelRunner)`` has a consistent MRO whose Omni overrides of
  ``CPUModelRunner`` (``load_model``, ``_to_list``) call ``super()``, and vLLM's CPU platform turns async scheduling
  off (the one path using ``torch.cuda`` streams, ``OmniAsyncGPUModelRunnerOutput``). Not built: vLLM's
  ``CPUWorker.init_device`` constructs ``CPUModelRunner`` by name, so the worker would re-implement it, and nothing
  short of running a thinker stage end to end would show the rest of ``GPUARModelRunner`` is CPU-safe.
"""

from __future__ import annotations

import psutil
import torch
from vllm.platforms.cpu import CpuPlatform
from vllm_omni.platforms.interface import OmniPlatform, OmniPlatformEnum

ATTENTION_BACKEND = "wna16_omni_cpu.attention.CpuSDPABackend"

NO_AR_WORKER = (
    "vLLM-Omni has no CPU worker for autoregressive or generation stages: vllm_omni/worker/gpu_ar_worker.py "
    "GPUARWorker.init_device raises for device types other than cuda and musa, and its runner subclasses vLLM's "
    "GPUModelRunner. The CPU platform serves diffusion stages only."
)


class CpuOmniPlatform(OmniPlatform, CpuPlatform):
    """vLLM-Omni on vLLM-CPU (diffusion stages)."""

    _omni_enum = OmniPlatformEnum.OOT

    @classmethod
    def get_omni_ar_worker_cls(cls) -> str:
        """No CPU AR worker exists (see :data:`NO_AR_WORKER`)."""
        raise NotImplementedError(NO_AR_WORKER)

    @classmethod
    def get_omni_generation_worker_cls(cls) -> str:
        """No CPU generation worker exists (see :data:`NO_AR_WORKER`)."""
        raise NotImplementedError(NO_AR_WORKER)

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
