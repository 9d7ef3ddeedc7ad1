"""Let PyPI's torchvision import on a CPU-only torch (test environment of ``nox -s omni``; installed as a ``.pth``).

vLLM-Omni imports transformers' Qwen2-VL image processor, which imports torchvision. PyPI has no CPU torchvision:
its wheel is a CUDA build whose compiled ops cannot load here, after which torchvision's fake-tensor registrations
for ``torchvision::nms`` and ``torchvision::qnms`` fail on the undefined operators. Defining those two schemas before
torchvision's first import lets it import with its compiled ops off (vLLM-Omni's CPU path calls none of them). On a
machine with a CPU torchvision (PyTorch's own index) none of this is needed.

The hook costs nothing until something imports torchvision: a meta-path finder that defines the schemas then steps
aside.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import sys
from typing import Any

SCHEMAS = (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
)


class _DefineSchemas(importlib.abc.MetaPathFinder):
    def find_spec(self, name: str, path: Any = None, target: Any = None) -> None:
        if name != "torchvision":
            return None
        sys.meta_path.remove(self)
        import torch

        library = torch.library.Library("torchvision", "FRAGMENT")
        for schema in SCHEMAS:
            with contextlib.suppress(RuntimeError):  # already defined (a working torchvision build did)
                library.define(schema)
        _LIBRARIES.append(library)  # a Library must stay alive for its definitions to stay
        return None


_LIBRARIES: list[Any] = []


def install() -> None:
    """Put the finder first on ``sys.meta_path`` (once)."""
    if not any(isinstance(f, _DefineSchemas) for f in sys.meta_path):
        sys.meta_path.insert(0, _DefineSchemas())
