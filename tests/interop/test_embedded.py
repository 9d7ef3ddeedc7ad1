"""The committed checkpoint (tests/checkpoints/embedded/) is what auto-round makes today, and auto-round's own module
computes the weights wna16 reads from it."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from conftest import MAKER
from interop_helpers import autoround_weight, load_autoround

import wna16
from wna16.checkpoint.remap import Remap
from wna16.reference import dequantize

EMBEDDED = MAKER.EMBEDDED_DIR / MAKER.EMBEDDED.name


def test_embedded_checkpoint_is_reproducible(tmp_path: Path) -> None:
    committed = json.loads((MAKER.EMBEDDED_DIR / "MANIFEST.json").read_text())["cases"][MAKER.EMBEDDED.name]
    MAKER.make_case(MAKER.EMBEDDED, tmp_path / "again")
    again = MAKER._sha256(tmp_path / "again" / "model.safetensors")
    assert again == committed["files"]["model.safetensors"], "auto-round now writes other bytes: remake and review"


def test_embedded_checkpoint_matches_autoround_module() -> None:
    ckpt = wna16.load_checkpoint(EMBEDDED, Remap.IDENTITY)
    model = load_autoround(EMBEDDED, "auto")
    assert len(ckpt.layers) == 14
    for name, layer in ckpt.layers.items():
        theirs = autoround_weight(model.get_submodule(name), layer.in_features)
        assert torch.equal(dequantize(ckpt.weight(name)), theirs), name
