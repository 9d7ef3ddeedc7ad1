"""The committed auto-round checkpoint (tests/checkpoints/embedded/, made by make_checkpoints.py --embedded) loads,
audits clean and inspects without auto-round installed: the README's main command runs on it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch

import wna16
from wna16.reference import dequantize

EMBEDDED = Path(__file__).parent / "checkpoints" / "embedded" / "tiny-llama-w4g128-auto_round"


def test_manifest_records_the_tools_that_made_it() -> None:
    manifest = json.loads((EMBEDDED.parent / "MANIFEST.json").read_text())
    assert manifest["versions"]["auto-round"].startswith("0.16.")
    assert manifest["cases"][EMBEDDED.name]["request"]["format"] == "auto_round"


def test_embedded_checkpoint_loads_clean() -> None:
    ckpt = wna16.load_checkpoint(EMBEDDED)
    assert ckpt.audit.ok
    assert ckpt.config.packed_format == "gptq" and len(ckpt.layers) == 14
    weight = ckpt.weight("model.layers.0.self_attn.q_proj")
    assert weight.scheme == wna16.Scheme(4, 128, True)
    assert torch.isfinite(dequantize(weight)).all()


def test_inspect_exits_zero_on_the_embedded_checkpoint() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "wna16.cli", "inspect", str(EMBEDDED)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "model.layers.1.mlp.down_proj" in result.stdout
