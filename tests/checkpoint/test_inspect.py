"""``wna16 inspect``: config summary, per-layer table with the serving backend, the audit, sizes, exit status."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from ckpt_factory import Layer, layer_tensors, quant_config, tiny_llama, write_checkpoint

from wna16 import LayerSpec, Scheme
from wna16.cli import main
from wna16.registry import default_registry, select


def _run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["inspect", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_table_audit_and_sizes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder, weights, _ = tiny_llama(tmp_path, scheme=Scheme(4, 32, True))
    code, out, err = _run(capsys, str(folder))
    assert code == 0, err
    assert "quant_method auto-round, packing gptq, default scheme w4g32sym" in out
    assert "blocks ['model.layers']" in out
    expected = select(LayerSpec(64, 128, Scheme(4, 32, True), torch.bfloat16, device="cpu")).backend.name
    row = next(line for line in out.splitlines() if line.startswith("model.layers.1.mlp.up_proj "))
    assert row.split() == [
        "model.layers.1.mlp.up_proj",
        "4",
        "32",
        "sym",
        "gptq",
        "no",
        "64",
        "->",
        "128",
        "no",
        expected,
    ]
    assert "bits  group size  zero point  packing  act order  in -> out" in out  # spelled out
    assert sum(1 for line in out.splitlines() if line.startswith("model.layers.")) == len(weights)
    assert "audit       OK" in out
    size = re.search(r"size +([\d.]+) kB on disk vs ([\d.]+) kB in bf16 \((\d+)% smaller\)", out)
    assert size is not None and float(size.group(1)) < float(size.group(2))
    assert "reading shard headers" not in err


def test_other_backends_are_explained(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # 3-bit with act order: at least the reference backend serves it; whichever does not says why.
    folder, _, _ = tiny_llama(tmp_path, packed_format="gptq_v2", scheme=Scheme(3, 32, False), act_order=True)
    code, out, _ = _run(capsys, str(folder), "--dtype", "float32")
    assert code == 0
    row = next(line for line in out.splitlines() if line.startswith("model.layers.0.mlp.down_proj "))
    assert row.split()[1:6] == ["3", "32", "asym", "gptq_v2", "yes"]
    spec = LayerSpec(128, 64, Scheme(3, 32, False), torch.float32, act_order=True, device="cpu")
    selection = select(spec)
    assert row.split()[-1] == selection.backend.name
    for backend, reasons in selection.rejected.items():
        # One short reason per rejected backend (the first), never every rule's reasons in one line.
        line = next(line for line in out.splitlines() if line.startswith(f"    {backend}: "))
        assert line.startswith(f"    {backend}: {reasons[0].removeprefix('unavailable: ')}")
        assert ";" not in line.removeprefix(f"    {backend}: {reasons[0].removeprefix('unavailable: ')}")
        assert line.endswith(f"(+{len(reasons) - 1} more)") == (len(reasons) > 1)


def test_a_layer_without_backend_warns_and_exits_non_zero(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    folder, _, _ = tiny_llama(tmp_path, scheme=Scheme(3, 32, False))
    # 3-bit on CPU: the reference serves it (and rocm's interpreter rule when a test enabled it): disable every one.
    names = [entry.name for entry in default_registry().entries()]
    monkeypatch.setenv("WNA16_DISABLED_BACKENDS", ",".join(names))
    code, out, err = _run(capsys, str(folder))
    assert code == 1
    assert "audit       OK" in out  # the audit passed: the exit status is the missing backend's
    assert re.search(r"warning: \d+ layer\(s\) have no backend on cpu \(bfloat16\): model\.layers\.", err), err
    row = next(line for line in out.splitlines() if line.startswith("model.layers.0.mlp.down_proj "))
    assert row.split()[-1] == "none"
    assert "    reference: disabled by WNA16_DISABLED_BACKENDS" in out


def test_failed_audit_exits_non_zero_listing_every_problem(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _, _, tensors = tiny_llama(tmp_path)
    del tensors["model.layers.0.mlp.up_proj.scales"]
    lm_head, _ = layer_tensors([Layer("lm_head", 64, 96)], "gptq")
    tensors.update(lm_head)
    del tensors["lm_head.weight"]
    write_checkpoint(tmp_path, tensors, quant_config())
    code, out, _ = _run(capsys, str(tmp_path))
    assert code == 1
    assert "audit       FAILED: 2 problem(s)" in out
    assert "[missing-tensor] model.safetensors: model.layers.0.mlp.up_proj.scales: quantized as w4g32sym" in out
    assert "[unexpected-quantized] model.safetensors: lm_head.qweight:" in out
    assert "model.layers.1.mlp.up_proj " in out  # the layers that are fine are still shown
    code, out, _ = _run(capsys, str(tmp_path), "--ignore", r"^lm_head\.", "--allow-unquantized", "nothing")
    assert code == 1 and "FAILED: 1 problem(s)" in out and "ignored by request: 4 tensor(s)" in out


def test_unreadable_checkpoint_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder, _, _ = tiny_llama(tmp_path)
    path = folder / "model.safetensors"
    path.write_bytes(path.read_bytes()[:-100])
    code, out, err = _run(capsys, str(folder))
    assert code == 2 and out == ""
    assert "CorruptFileError" in err and "model.safetensors: tensor" in err and "beyond the end of the file" in err


def test_progress_bar_for_many_shards(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder, _, _ = tiny_llama(tmp_path, shards=6)
    code, _, err = _run(capsys, str(folder))
    assert code == 0
    assert err.count("reading shard headers") == 6
    assert "6/6 model-00006-of-00006.safetensors" in err and err.endswith("\n")


def test_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder, weights, _ = tiny_llama(tmp_path)
    code, out, _ = _run(capsys, str(folder), "--json")
    data = json.loads(out)
    assert code == 0 and data["audit"] == {"ok": True, "problems": []}
    assert {row["name"] for row in data["layers"]} == set(weights)
    assert data["disk_bytes"] == (folder / "model.safetensors").stat().st_size
    assert data["quantized_bf16_bytes"] > data["quantized_disk_bytes"]
