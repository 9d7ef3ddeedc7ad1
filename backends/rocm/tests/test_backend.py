"""The backend as data and as a plugin: declaration, refusals, availability (with and without the interpreter)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from wna16 import LayerSpec, Registry, Scheme, Shard, UnsupportedError, quantize_rtn
from wna16_rocm import RocmBackend

BACKEND = RocmBackend()


def _spec(bits: int = 4, group: int = 128, sym: bool = True, **kw: object) -> LayerSpec:
    fields: dict[str, object] = {"in_features": 512, "out_features": 256, "scheme": Scheme(bits, group, sym)}
    fields.update(kw)
    return LayerSpec(**fields)  # type: ignore[arg-type]


def test_entry_point_is_registered() -> None:
    backend = Registry().get("rocm")
    assert isinstance(backend, RocmBackend)


@pytest.mark.parametrize("device", ["cuda", "cuda:1", "cpu"])
@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("group", [-1, 32, 64, 128, 256])
def test_claims_the_scheme_space(device: str, bits: int, group: int) -> None:
    for sym in (True, False):
        for dtype in (torch.float16, torch.bfloat16, torch.float32):
            support = BACKEND.check(_spec(bits, group, sym, dtype=dtype, device=device))
            assert support, support.reasons
            assert support.rule is not None and support.rule.param_dtype == torch.float32  # exact weights
            assert support.rule.accum_dtype == torch.float32


def test_act_order_and_odd_groups_declare_activation_precision() -> None:
    for spec in (_spec(act_order=True, device="cuda"), _spec(group=8), _spec(group=40, in_features=520)):
        support = BACKEND.check(spec)
        assert support, support.reasons
        assert support.rule is not None and support.rule.param_dtype is None
    shard = Shard(1024, 256, k_start=512, adds_bias=False)
    assert BACKEND.check(_spec(act_order=True, shard=shard))


def test_priorities_keep_the_interpreter_out_of_automatic_selection() -> None:
    assert BACKEND.check(_spec(device="cuda")).priority > 0
    assert BACKEND.check(_spec(device="cpu")).priority < 0


@pytest.mark.parametrize("device", ["xpu", "mps", "npu:0"])
def test_refuses_other_devices(device: str) -> None:
    support = BACKEND.check(_spec(device=device))
    assert not support
    assert any("device type" in r for r in support.reasons)
    availability = BACKEND.available(device)
    assert not availability and "not served" in availability.reason


def test_refusal_lists_every_reason_and_prepare_raises() -> None:
    weight = quantize_rtn(torch.randn(64, 128), Scheme(4, 32, True))
    spec = LayerSpec.of(weight, torch.float16, device="xpu")
    with pytest.raises(UnsupportedError) as err:
        BACKEND.prepare(weight, spec)
    assert err.value.reasons and all("xpu" in r for r in err.value.reasons)


def test_invalid_activation_dtype_is_refused() -> None:
    support = BACKEND.check(_spec(dtype=torch.float64, device="cuda"))
    assert not support and "fp16/bf16/fp32" in " ".join(support.reasons)


_PROBE = """
import json, sys, torch
from wna16 import LayerSpec, Scheme, UnsupportedError, quantize_rtn
from wna16_rocm import RocmBackend
b = RocmBackend()
out = {d: [bool(b.available(d)), b.available(d).reason] for d in ("cpu", "cuda")}
w = quantize_rtn(torch.randn(16, 64), Scheme(4, 32, True))
try:
    b.prepare(w, LayerSpec.of(w, torch.float16))(torch.zeros(1, 64, dtype=torch.float16))
    out["prepare"] = "ran"
except UnsupportedError as exc:
    out["prepare"] = "refused: " + "; ".join(exc.reasons)
out["triton_imported"] = "triton" in sys.modules
print(json.dumps(out))
"""


def _probe(**env: str) -> dict[str, object]:
    clean = {k: v for k, v in os.environ.items() if k not in ("WNA16_TRITON_INTERPRET", "TRITON_INTERPRET")}
    result = subprocess.run(
        [sys.executable, "-c", _PROBE], env={**clean, **env}, capture_output=True, text=True, check=True, timeout=300
    )
    return json.loads(result.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def test_cpu_needs_the_interpreter_explicitly() -> None:
    out = _probe()
    assert out["cpu"] == [False, out["cpu"][1]] and "WNA16_TRITON_INTERPRET=1" in out["cpu"][1]  # type: ignore[index]
    assert out["prepare"].startswith("refused")  # type: ignore[union-attr]
    if not torch.cuda.is_available():
        assert out["cuda"][0] is False and "no ROCm or CUDA device" in out["cuda"][1]  # type: ignore[index]


@pytest.mark.parametrize("var", ["WNA16_TRITON_INTERPRET", "TRITON_INTERPRET"])
def test_interpreter_on_request(var: str) -> None:
    out = _probe(**{var: "1"})
    assert out["cpu"] == [True, ""]
    assert out["prepare"] == "ran"
    assert out["cuda"][0] is False and "interpreter" in out["cuda"][1]  # type: ignore[index]


def test_triton_imported_too_early_is_reported() -> None:
    code = "import triton, os; os.environ['WNA16_TRITON_INTERPRET'] = '1'\n" + _PROBE
    clean = {k: v for k, v in os.environ.items() if k not in ("WNA16_TRITON_INTERPRET", "TRITON_INTERPRET")}
    result = subprocess.run([sys.executable, "-c", code], env=clean, capture_output=True, text=True, check=True)
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["cpu"][0] is False and "after triton was imported" in out["cpu"][1]
