"""The error module: every class wna16 raises lives in ``wna16.errors`` and is exported by ``wna16``."""

from __future__ import annotations

import inspect

import pytest
import torch

import wna16
from wna16 import errors
from wna16.errors import FormatError, UsageError, Wna16Error, expect_tensor
from wna16.protocol import LayerSpec
from wna16.scheme import Scheme
from wna16.tolerance import Precision
from wna16_reference import ReferenceBackend


def test_every_error_class_is_defined_in_errors_and_exported() -> None:
    classes = {n for n, c in vars(errors).items() if inspect.isclass(c) and issubclass(c, Wna16Error)}
    assert {"UsageError", "CheckpointAuditError", "UnsafePathError", "MissingShardError", "CorruptFileError"} <= classes
    for name in classes:
        assert getattr(wna16, name) is getattr(errors, name), name
        assert name in wna16.__all__, name
    for module in ("wna16.checkpoint.files", "wna16.checkpoint.audit", "wna16.registry", "wna16.weight"):
        mod = __import__(module, fromlist=["_"])
        local = [n for n, c in vars(mod).items() if inspect.isclass(c) and issubclass(c, Exception)]
        assert all(getattr(mod, n).__module__ == "wna16.errors" for n in local), (module, local)


def test_expect_tensor_names_what_was_expected() -> None:
    expect_tensor(torch.zeros(2, 3, dtype=torch.int32), "q", (2, 3), (torch.int32,))
    with pytest.raises(FormatError, match=r"q: got int32\[3, 2\], expected int32\[2, 3\]"):
        expect_tensor(torch.zeros(3, 2, dtype=torch.int32), "q", (2, 3), (torch.int32,))
    with pytest.raises(FormatError, match=r"s: got float64\[2\], expected float16/bfloat16\[2\]"):
        expect_tensor(torch.zeros(2, dtype=torch.float64), "s", (2,), (torch.float16, torch.bfloat16))
    with pytest.raises(FormatError, match=r"x: got list, expected int32\[1\]"):
        expect_tensor([1], "x", (1,), (torch.int32,))


def test_caller_mistake_is_a_usage_error() -> None:
    spec = LayerSpec(64, 32, Scheme(4, 32), torch.float64)  # no backend claims float64 activations
    with pytest.raises(UsageError, match="does not claim the spec") as info:
        Precision.for_backend(ReferenceBackend(), spec)
    assert isinstance(info.value, ValueError)  # callers catching ValueError keep working
