"""Without auto-round-lib the backend is unavailable and says why (runs in every environment)."""

from __future__ import annotations

import sys

import pytest
import torch

from wna16 import LayerSpec, Scheme, quantize_rtn
from wna16.errors import UnsupportedError
from wna16_autoround_lib import AutoRoundLibBackend
from wna16_autoround_lib import backend as module


def test_missing_package_is_unavailable_with_the_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    def not_installed(name: str) -> str:
        raise module.metadata.PackageNotFoundError(name)

    module.import_kernel.cache_clear()
    monkeypatch.setattr(module.metadata, "version", not_installed)
    try:
        availability = AutoRoundLibBackend().available("cpu")
        assert not availability and "auto-round-lib is not installed" in availability.reason
        weight = quantize_rtn(torch.randn(16, 64), Scheme(4, 32, True))
        with pytest.raises(UnsupportedError, match="not installed"):
            AutoRoundLibBackend().build(weight, LayerSpec.of(weight, torch.float32), None)
    finally:
        module.import_kernel.cache_clear()


def test_broken_module_is_unavailable_with_the_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    module.import_kernel.cache_clear()
    monkeypatch.setattr(module.metadata, "version", lambda name: "0.0-test")
    monkeypatch.setitem(sys.modules, module.MODULE, None)  # import raises ImportError
    try:
        availability = AutoRoundLibBackend().available("cpu")
        assert not availability and "does not import: ModuleNotFoundError" in availability.reason
    finally:
        module.import_kernel.cache_clear()
