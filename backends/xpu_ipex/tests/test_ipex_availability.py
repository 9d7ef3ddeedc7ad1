"""How the ``ipex`` backend reports itself where it cannot run; pure data and metadata, no IPEX needed."""

from __future__ import annotations

import sys
from importlib import metadata

import pytest
import torch

from wna16 import LayerSpec, Scheme
from wna16_ipex import ipex as ipex_module
from wna16_ipex.ipex import IpexBackend


@pytest.fixture
def fresh_import_cache():
    ipex_module._import_ipex.cache_clear()
    yield
    ipex_module._import_ipex.cache_clear()


def test_version_mismatch_is_reported_without_importing(monkeypatch, fresh_import_cache):
    monkeypatch.setattr(metadata, "version", lambda name: "2.8.0+cpu")
    monkeypatch.setattr(torch, "__version__", "2.13.0+cpu")
    before = "intel_extension_for_pytorch" in sys.modules
    availability = IpexBackend().available("cpu")
    assert not availability
    assert "needs torch 2.8.*, not 2.13.0+cpu" in availability.reason
    assert ("intel_extension_for_pytorch" in sys.modules) == before


def test_missing_package_is_reported(monkeypatch, fresh_import_cache):
    def missing(name: str) -> str:
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "version", missing)
    availability = IpexBackend().available("cpu")
    assert not availability and "not installed" in availability.reason


def test_unserved_device_is_reported_before_any_import():
    availability = IpexBackend().available("cuda")
    assert not availability and "not served" in availability.reason


def test_declaration_pins_the_error_model_inputs():
    """What the conformance error model reads: 4-bit, fp32 accumulation, param rounding in the activation dtype."""
    backend = IpexBackend()
    for device, dtype in (("cpu", torch.float16), ("xpu", torch.bfloat16)):  # bf16 is refused on CPU
        spec = LayerSpec(512, 64, Scheme(4, 128, False), dtype, act_order=True, device=device)
        support = backend.check(spec)
        assert support and support.rule is not None
        assert support.rule.param_dtype is None and support.rule.accum_dtype == torch.float32
    assert (
        backend.check(LayerSpec(512, 64, Scheme(4, 128, False), torch.float16, device="xpu")).priority
        > backend.check(LayerSpec(512, 64, Scheme(4, 128, False), torch.float16, device="cpu")).priority
    )
