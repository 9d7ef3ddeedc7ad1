"""wna16 against auto-round's own inference modules, on checkpoints auto-round wrote (cases 1-6 of the interop issue).

For each checkpoint: (a) the oracle's dequantized weight of every layer equals the weight auto-round's module computes
(bit for bit, read through the identity matrix in float32), with each of auto-round's CPU backends that loads it;
(b) on inputs captured from auto-round's model, every layer wna16 serves is within the conformance bound
(:mod:`wna16.tolerance`) of the exact product, so is auto-round's output, the two agree within the sum of the bounds,
and the final outputs agree; (c) the coverage audit is clean and ``wna16 inspect`` exits 0.
"""

from __future__ import annotations

import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest
import torch
from conftest import MAKER
from interop_helpers import (
    AUTO_ROUND_BACKENDS,
    autoround_weight,
    build_patched,
    capture,
    cast_inputs,
    final_output,
    is_flux,
    load_autoround,
    model_folder,
    model_inputs,
)

import wna16
from wna16.checkpoint.load import Checkpoint
from wna16.checkpoint.remap import Remap
from wna16.protocol import LayerSpec
from wna16.reference import dequantize
from wna16.tolerance import Precision, bound, error_ratios, reference_output

AR_CASES = sorted(MAKER.CASES)
DTYPES = (torch.float32, torch.bfloat16)
LOGIT_RTOL = {torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 5e-2}
"""Final outputs: max |wna16 - auto-round| / max |auto-round|, by the coarser of the two activation dtypes (16-bit
activations round at every layer; auto-round runs its 3-bit modules in float16 even when asked for float32)."""
TORCH_BACKEND_ULP = 2.0**-11
"""auto-round's pure-torch modules dequantize in float16 for some formats: the exact weight rounded once."""


@cache
def checkpoint(path: Path) -> Checkpoint:
    """Loaded with the identity remap (a transformers / diffusers runtime), audited against the model's linears."""
    empty, _ = build_patched(path, None, torch.float32, None)
    linears = {n: (m.in_features, m.out_features) for n, m in empty.named_modules() if isinstance(m, torch.nn.Linear)}
    return wna16.load_checkpoint(model_folder(path), Remap.IDENTITY, expected_modules=linears)


@cache
def autoround_model(path: Path, backend: str) -> torch.nn.Module:
    return load_autoround(path, backend)


def loading_backends(path: Path) -> list[str]:
    """auto-round backends that load this checkpoint on CPU (``auto`` must; the pure-torch one has no asym v1 or
    awq path and diffusers passes ``auto`` only)."""
    found = []
    for backend in AUTO_ROUND_BACKENDS if not is_flux(path) else ("auto",):
        try:
            model = autoround_model(path, backend)
        except Exception:
            if backend == "auto":
                raise
            continue
        layer = next(iter(checkpoint(path).layers))
        if type(model.get_submodule(layer)).__module__.startswith("auto_round.experimental.qmodules.fake"):
            continue  # auto-round fell back to its fake-quant module, which does not run this format
        found.append(backend)
    return found


@pytest.mark.parametrize("case", AR_CASES)
def test_dequantize_equals_autoround_module(checkpoints: Path, case: str) -> None:
    """(a) bit-exact weights, every layer, every auto-round backend that loads the checkpoint."""
    path = checkpoints / case
    ckpt = checkpoint(path)
    assert ckpt.layers, f"{case}: no quantized layer found"
    backends = loading_backends(path)
    assert "auto" in backends
    for backend in backends:
        model = autoround_model(path, backend)
        for name, layer in ckpt.layers.items():
            module = model.get_submodule(name)
            assert not isinstance(module, torch.nn.Linear), f"{case}/{backend}: auto-round left {name} in 16 bits"
            theirs = autoround_weight(module, layer.in_features)
            ours = dequantize(ckpt.weight(name))
            if backend == "auto":
                assert torch.equal(ours, theirs), f"{case}/{backend}/{name}: max diff {(ours - theirs).abs().max()}"
            else:
                gap = (ours - theirs).abs()
                assert bool((gap <= TORCH_BACKEND_ULP * ours.abs()).all()), f"{case}/{backend}/{name}: {gap.max()}"


@pytest.mark.parametrize("case", AR_CASES)
def test_unquantized_layers_equal(checkpoints: Path, case: str) -> None:
    """Layers the config leaves in 16 bits (lm_head, a bits-16 extra_config entry) are plain tensors in both."""
    path = checkpoints / case
    ckpt = checkpoint(path)
    model = autoround_model(path, "auto")
    linears = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    assert linears, f"{case}: expected some 16-bit linear (lm_head / proj_out)"
    for name in linears:
        assert name not in ckpt.layers
        theirs = model.get_submodule(name).weight  # auto-round casts its 3-bit models to float16
        assert torch.equal(ckpt.tensor(f"{name}.weight").to(theirs.dtype), theirs), name


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("forced", [None, "reference"], ids=["selected", "reference"])
@pytest.mark.parametrize("case", AR_CASES)
def test_layer_outputs_within_bound(checkpoints: Path, case: str, forced: str | None, dtype: torch.dtype) -> None:
    """(b) per layer on auto-round's captured inputs, then the final output, for the backend wna16 selects and for
    the reference backend; the measured worst ratios are printed (``-s``)."""
    path = checkpoints / case
    ckpt = checkpoint(path)
    theirs_model = autoround_model(path, "auto")
    inputs = model_inputs(path, torch.float32)
    with capture(theirs_model, list(ckpt.layers)) as seen:
        theirs_out = final_output(theirs_model, inputs)
    theirs_dtype = next(iter(seen.values()))[0].dtype
    ours_model, report = build_patched(path, ckpt, dtype, forced)
    assert report is not None
    assert set(report.layers) == set(ckpt.layers)
    if forced:
        assert set(report.backends) == {forced}
    worst_ours = worst_theirs = 0.0
    for name, xs in seen.items():
        assert xs, f"{case}: {name} was never called"
        ours_layer = ours_model.get_submodule(name)
        assert isinstance(ours_layer, wna16.nn.QuantLinear)
        weight, bias = ckpt.weight(name), ckpt.bias(name)
        bias_ours = None if bias is None else bias.to(dtype)
        spec = LayerSpec.of(weight, dtype, bias=bias is not None, device="cpu")
        precision = Precision.for_backend(ours_layer.backend, spec)
        theirs_layer = theirs_model.get_submodule(name)
        for x in xs:
            x_ours = x.to(dtype)
            x_same = x_ours.float()  # both get the same values: auto-round's module runs in float32
            with torch.no_grad():
                y_ours = ours_layer(x_ours)
                y_theirs = theirs_layer(x_same)
            ratio = float(error_ratios(y_ours, x_ours, weight, precision, bias_ours).max())
            assert ratio <= 1.0, f"{case}/{name}/{ours_layer.backend_name}/{dtype}: error/bound {ratio:.3f}"
            fp32 = Precision(torch.float32, torch.float32, torch.float32)
            theirs_bound = bound(x_same, weight, fp32, bias)
            theirs_err = (y_theirs.double() - reference_output(x_same, weight, bias)).abs()
            ratio_theirs = float((theirs_err / theirs_bound).max())
            assert ratio_theirs <= 1.0, f"{case}/{name}: auto-round's module error/bound {ratio_theirs:.3f}"
            gap = (y_ours.double() - y_theirs.double()).abs()
            assert bool((gap <= bound(x_ours, weight, precision, bias_ours) + theirs_bound).all())
            worst_ours, worst_theirs = max(worst_ours, ratio), max(worst_theirs, ratio_theirs)
    with torch.no_grad():
        ours_out = final_output(ours_model, cast_inputs(inputs, dtype))
    rel = float((ours_out - theirs_out).abs().max() / theirs_out.abs().max())
    rtol = max(LOGIT_RTOL[dtype], LOGIT_RTOL[theirs_dtype])
    assert rel <= rtol, f"{case}/{dtype} vs {theirs_dtype}: final outputs differ by {rel:.2e} of their range"
    print(
        f"\n{case} {dtype} (auto-round {theirs_dtype}) backends={report.backends}: worst error/bound "
        f"wna16 {worst_ours:.3f}, auto-round {worst_theirs:.3f}; final output rel diff {rel:.2e}"
    )


INSPECT_KNOWN_FAILURES: dict[str, str] = {}


@pytest.mark.parametrize(
    "case",
    [
        pytest.param(c, marks=pytest.mark.xfail(strict=True, reason=INSPECT_KNOWN_FAILURES[c]))
        if c in INSPECT_KNOWN_FAILURES
        else c
        for c in AR_CASES
    ],
)
def test_audit_clean_and_inspect(checkpoints: Path, case: str) -> None:
    """(c) the audit (against the model's own linears) is clean and ``wna16 inspect`` exits 0."""
    path = checkpoints / case
    ckpt = checkpoint(path)
    assert ckpt.audit.ok, ckpt.audit.problems
    assert not ckpt.audit.ignored and not ckpt.audit.allowed_unquantized
    result = subprocess.run(
        [sys.executable, "-m", "wna16.cli", "inspect", str(model_folder(path))], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert next(iter(ckpt.layers)) in result.stdout
