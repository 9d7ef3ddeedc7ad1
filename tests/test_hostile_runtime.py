"""Hostile or unlucky inputs at run time (issue 23): patch_model all-or-nothing, the registry under threads and
misbehaving plugins, the CLI's exit codes, QuantLinear's edges. Each test fails without its fix."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from test_patch import Tiny, _write
from test_registry import GROUP, install_plugin

from wna16 import FormatError, LayerSpec, ModelMismatchError, NoBackendError, Registry, Scheme, quantize_rtn
from wna16.checkpoint.load import load_checkpoint
from wna16.checkpoint.remap import Remap
from wna16.cli import main
from wna16.errors import CheckpointError, InputTypeError
from wna16.nn import QuantLinear
from wna16.patch import patch_model
from wna16.registry import Registry as RegistryClass

# --- 7. patch_model is all-or-nothing ------------------------------------------------------------------------------


def _snapshot(model: torch.nn.Module) -> dict[str, tuple[int, torch.Tensor, str]]:
    """Every parameter and buffer (and module type) by name: identity, a copy of the values, the owner's type."""
    out = {}
    for name, tensor in [*model.named_parameters(remove_duplicate=False), *model.named_buffers(remove_duplicate=False)]:
        owner = model.get_submodule(name.rpartition(".")[0]) if "." in name else model
        out[name] = (id(tensor), tensor.detach().clone(), type(owner).__name__)
    return out


def _assert_unchanged(model: torch.nn.Module, before: dict[str, tuple[int, torch.Tensor, str]]) -> None:
    after = _snapshot(model)
    assert after.keys() == before.keys()
    for name, (ident, value, owner) in before.items():
        assert after[name][0] == ident, f"{name} was replaced"
        assert torch.equal(after[name][1], value), f"{name} changed"
        assert after[name][2] == owner, f"{name}'s module was replaced"
    assert not any(isinstance(m, QuantLinear) for m in model.modules())


@pytest.mark.parametrize("dtype", [torch.bool, torch.int64, torch.uint8])
def test_a_tensor_the_model_cannot_store_leaves_the_model_unchanged(tmp_path: Path, dtype: torch.dtype) -> None:
    _write(tmp_path)
    path = tmp_path / "model.safetensors"
    tensors = load_file(str(path))
    tensors["norm"] = torch.ones(tensors["norm"].shape, dtype=dtype)  # "embed.weight" is loaded before "norm"
    save_file(tensors, str(path))
    model = Tiny()
    before = _snapshot(model)
    with pytest.raises(ModelMismatchError, match=rf"norm: checkpoint stores {str(dtype)[6:]}, the model's tensor is "):
        patch_model(model, tmp_path)
    _assert_unchanged(model, before)


def test_a_file_changed_before_patching_leaves_the_model_unchanged(tmp_path: Path) -> None:
    _write(tmp_path)
    checkpoint = load_checkpoint(tmp_path, Remap.IDENTITY)
    path = tmp_path / "model.safetensors"
    with path.open("r+b") as handle:
        handle.truncate(path.stat().st_size - 8)
    model = Tiny()
    before = _snapshot(model)
    with pytest.raises(CheckpointError, match="changed since its header was read"):
        patch_model(model, checkpoint)
    _assert_unchanged(model, before)


# --- 8. the registry under concurrency and misbehaving plugins ----------------------------------------------------


def test_threads_building_layers_at_first_use_all_see_the_backends(monkeypatch: pytest.MonkeyPatch) -> None:
    load = RegistryClass._load
    gate = threading.Event()

    def slow(ep):  # type: ignore[no-untyped-def]
        gate.wait(0.05)  # discovery takes a while: the window in which other threads used to see an empty registry
        return load(ep)

    monkeypatch.setattr(RegistryClass, "_load", staticmethod(slow))
    monkeypatch.delenv("WNA16_BACKEND", raising=False)
    registry = Registry()
    weight = quantize_rtn(torch.randn(32, 64), Scheme(4, 32, True))
    errors: list[BaseException] = []
    served: list[str] = []

    def build() -> None:
        try:
            served.append(QuantLinear(weight, dtype=torch.float32, registry=registry).backend_name)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=build) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert len(served) == 8 and len(set(served)) == 1


MISBEHAVING = """
import sys
import torch
from wna16.protocol import Backend, Capability

RULE = (Capability(bits=frozenset({4}), dtypes=frozenset({torch.float32}), priority=90),)

class CheckRaises(Backend):
    name = "check_raises"
    capabilities = RULE
    def check(self, spec):
        raise ValueError("check exploded")
    def build(self, weight, spec, bias):
        raise AssertionError("unreachable")

class AvailableRaises(Backend):
    name = "available_raises"
    capabilities = RULE
    def available(self, device="cpu"):
        raise OSError("driver exploded")
    def build(self, weight, spec, bias):
        raise AssertionError("unreachable")

class BuildRaises(Backend):
    name = "build_raises"
    capabilities = RULE
    def build(self, weight, spec, bias):
        raise RuntimeError("kernel exploded")
"""


@pytest.fixture
def misbehaving(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Registry:
    entries = (
        f"[{GROUP}]\ncheck_raises = bad_plugin:CheckRaises\navailable_raises = bad_plugin:AvailableRaises\n"
        "build_raises = bad_plugin:BuildRaises\nreference = wna16_reference:ReferenceBackend\n"
    )
    install_plugin(tmp_path, monkeypatch, "bad_plugin", entries, MISBEHAVING)
    install_plugin(tmp_path, monkeypatch, "exit_plugin", f"[{GROUP}]\nexits = exit_plugin:X\n", "raise SystemExit(3)\n")
    monkeypatch.delenv("WNA16_BACKEND", raising=False)
    monkeypatch.delenv("WNA16_DISABLED_BACKENDS", raising=False)
    return Registry(GROUP)


def test_misbehaving_backends_are_reported_and_skipped(misbehaving: Registry, caplog: pytest.LogCaptureFixture) -> None:
    weight = quantize_rtn(torch.randn(32, 64), Scheme(4, 32, True))
    with caplog.at_level(logging.WARNING, logger="wna16.registry"):
        layer = QuantLinear(weight, dtype=torch.float32, registry=misbehaving)
        again = QuantLinear(weight, dtype=torch.float32, registry=misbehaving)
    assert layer.backend_name == again.backend_name == "reference"
    assert "SystemExit: 3" in (next(e for e in misbehaving.entries() if e.name == "exits").error or "")
    assert layer.rejected["check_raises"] == ("check() raised ValueError: check exploded (skipped; traceback logged)",)
    assert layer.rejected["available_raises"][0].startswith("available() raised OSError: driver exploded")
    assert layer.rejected["build_raises"][0].startswith("build() raised RuntimeError: kernel exploded")
    assert layer.rejected["exits"][0].startswith("failed to load: SystemExit: 3")
    logged = [r.getMessage() for r in caplog.records]
    assert len(logged) == 3, "each fault is logged once, with its traceback"
    assert all("Traceback" in m for m in logged)
    assert set(misbehaving.faults) == {"check_raises", "available_raises", "build_raises"}
    x = torch.randn(2, 64)
    torch.testing.assert_close(layer(x), QuantLinear(weight, dtype=torch.float32, backend="reference")(x))


def test_an_explicit_backend_whose_build_raises_is_not_replaced(
    misbehaving: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    weight = quantize_rtn(torch.randn(32, 64), Scheme(4, 32, True))
    with pytest.raises(RuntimeError, match="kernel exploded"):
        QuantLinear(weight, dtype=torch.float32, registry=misbehaving, backend="build_raises")
    selection = misbehaving.select(LayerSpec(64, 32, Scheme(4, 32, True), torch.float32))
    assert selection.backend.name == "build_raises" and not selection.explicit  # build is what fails, not check
    assert selection.rejected["check_raises"][0].startswith("check() raised ValueError")
    monkeypatch.setenv("WNA16_DISABLED_BACKENDS", "reference,build_raises")
    with pytest.raises(NoBackendError, match="check_raises: check.. raised ValueError: check exploded"):
        QuantLinear(weight, dtype=torch.float32, registry=misbehaving)


# --- 9. the CLI: exit codes, no traceback for bad input, a closed pipe -------------------------------------------


@pytest.fixture(scope="module")
def checkpoint_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("ckpt")
    _write(folder)
    return folder


def test_cli_exit_codes(
    checkpoint_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("WNA16_BACKEND", raising=False)
    assert main(["inspect", str(checkpoint_dir)]) == 0
    (tmp_path / "report.json").write_text(json.dumps({"schema": "x"}))
    (tmp_path / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    os.mkfifo(tmp_path / "fifo.json")
    cases = {
        "missing folder": (["inspect", str(tmp_path / "nope")], None, "not a checkpoint folder"),
        "folder without a checkpoint": (["inspect", str(tmp_path)], None, "no quantization config"),
        "unknown device": (["inspect", str(checkpoint_dir), "--device", "warp9"], None, "--device 'warp9'"),
        "unknown device, backends": (["backends", "--device", "cuda:x"], None, "--device 'cuda:x'"),
        "unknown backend": (["inspect", str(checkpoint_dir)], "nope", "WNA16_BACKEND='nope'"),
        "refusing backend": (["inspect", str(checkpoint_dir), "--device", "meta"], "cpu",
                             "UnsupportedError: backend 'cpu' (explicit) cannot serve"),
        "bad report": (["matrix", str(tmp_path / "report.json")], None, "report.json: 'schema' is not"),
        "nested report": (["matrix", str(tmp_path / "deep.json")], None, "deep.json: JSON nested too deeply"),
        "FIFO report": (["matrix", str(tmp_path / "fifo.json")], None, "fifo.json: is a FIFO"),
    }  # fmt: skip
    for what, (args, backend, message) in cases.items():
        if backend is None:
            monkeypatch.delenv("WNA16_BACKEND", raising=False)
        else:
            monkeypatch.setenv("WNA16_BACKEND", backend)
        status = main(args)
        err = capsys.readouterr().err
        assert status == 2, (what, status, err)
        assert message in err, (what, err)
        assert "Traceback" not in err, (what, err)
    monkeypatch.delenv("WNA16_BACKEND", raising=False)
    with pytest.raises(SystemExit) as usage:  # argparse: exit 2 with the usage line
        main(["inspect"])
    assert usage.value.code == 2 and "the following arguments are required" in capsys.readouterr().err


def test_cli_problems_exit_1(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("WNA16_BACKEND", raising=False)
    _write(tmp_path)
    path = tmp_path / "model.safetensors"
    tensors = load_file(str(path))
    tensors["layers.0.up.scales"][0, 0] = float("nan")
    save_file(tensors, str(path))
    assert main(["inspect", str(tmp_path)]) == 1
    assert "[values] model.safetensors: layers.0.up.scales: 1 non-finite value(s)" in capsys.readouterr().out


def test_cli_internal_error_shows_its_traceback(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import wna16.cli.backends as backends

    def broken(device: str) -> list[dict[str, object]]:
        raise KeyError("a bug")

    monkeypatch.setattr(backends, "rows", broken)
    assert main(["backends"]) == 3
    err = capsys.readouterr().err
    assert "Traceback" in err and "KeyError: 'a bug'" in err and "internal error" in err


def test_cli_closed_pipe_ends_quietly(checkpoint_dir: Path) -> None:
    wna16 = f"{sys.executable} -m wna16.cli inspect --json {checkpoint_dir}"
    command = f"{wna16} | head -c 0; exit ${{PIPESTATUS[0]}}"  # head is gone before the first write
    env = {k: v for k, v in os.environ.items() if k != "WNA16_BACKEND"}
    result = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 141, (result.returncode, result.stderr)
    assert result.stderr == "", result.stderr


# --- 10. QuantLinear edges behave like torch.nn.Linear --------------------------------------------------------------


@pytest.fixture
def pair() -> tuple[QuantLinear, torch.nn.Linear]:
    weight = quantize_rtn(torch.randn(32, 64), Scheme(4, 32, True))
    bias = torch.randn(32)
    layer = QuantLinear(weight, bias, dtype=torch.float32, backend="reference")
    return layer, torch.nn.Linear(64, 32)


def test_non_tensor_and_0d_inputs(pair: tuple[QuantLinear, torch.nn.Linear]) -> None:
    layer, linear = pair
    for bad in ([1.0] * 64, None, 3.0):
        with pytest.raises(TypeError):
            linear(bad)
        with pytest.raises(InputTypeError, match="input: got .*, expected a torch.Tensor"):
            layer(bad)
    with pytest.raises(RuntimeError):
        linear(torch.tensor(1.0))
    with pytest.raises(FormatError, match=r"input is float32\[\] on cpu, expected \[\.\.\., 64\]"):
        layer(torch.tensor(1.0))
    assert layer(torch.randn(64)).shape == linear(torch.randn(64)).shape == (32,)


def test_to_meta_and_back(pair: tuple[QuantLinear, torch.nn.Linear]) -> None:
    layer, linear = pair
    x = torch.randn(5, 64)
    expected = layer(x)
    assert layer.to("meta") is layer and linear.to("meta") is linear
    out, ref = layer(x.to("meta")), linear(x.to("meta"))
    assert out.device.type == ref.device.type == "meta" and out.shape == ref.shape == (5, 32)
    layer.to("cpu")
    torch.testing.assert_close(layer(x), expected, rtol=0, atol=0)


def test_load_state_dict_missing_and_unexpected_keys(pair: tuple[QuantLinear, torch.nn.Linear]) -> None:
    layer, linear = pair
    state = layer.state_dict()
    partial = {k: v for k, v in state.items() if k not in ("scales", "bias")}
    torch_result = linear.load_state_dict({"weight": linear.weight.detach()}, strict=False)
    ours = layer.load_state_dict(partial, strict=False)
    assert torch_result.missing_keys == ["bias"]
    assert sorted(ours.missing_keys) == ["bias", "scales"] and ours.unexpected_keys == []
    with pytest.raises(RuntimeError, match="Missing key"):
        layer.load_state_dict(partial, strict=True)
    extra = {**state, "extra": torch.zeros(1), "sub.x": torch.zeros(1)}
    with pytest.raises(RuntimeError, match=r'Unexpected key\(s\) in state_dict: "extra", "sub.x"'):
        layer.load_state_dict(extra, strict=True)
    with pytest.raises(RuntimeError, match="Unexpected key"):
        linear.load_state_dict({**linear.state_dict(), "extra": torch.zeros(1)}, strict=True)
    result = layer.load_state_dict(extra, strict=False)  # listed, not raised, as torch.nn.Linear does
    assert result.missing_keys == [] and result.unexpected_keys == ["extra", "sub.x"]
    torch_result = linear.load_state_dict({**linear.state_dict(), "extra": torch.zeros(1)}, strict=False)
    assert torch_result.unexpected_keys == ["extra"]
    x = torch.randn(2, 64)
    before = layer(x)
    layer.load_state_dict(state)
    torch.testing.assert_close(layer(x), before, rtol=0, atol=0)
