"""Suite failures say what kind of wrong they look like (a missing or stray bias, a coarser dtype than declared) and
show the backend's own traceback frames; an ordinary wrong output gets no invented diagnosis."""

from __future__ import annotations

import re
from pathlib import Path

import torch
from planted import BiasDropped, BiasTwiceOnKSlices, Linear, Planted, ZeroOffByOne, dequant, parts
from suite_run import run_suite

from wna16.partition import Shard, shard_weight
from wna16.protocol import LayerSpec, PreparedLinear
from wna16.weight import QuantizedWeight
from wna16_conformance import checks
from wna16_conformance.cells import Cell
from wna16_conformance.data import Case, Inputs, make_inputs

CELL = Cell(4, 128, False, "fp32", False)


class RoundsOutputToBf16(Planted):
    """Declares the reference's fp32 precisions but rounds its output through bf16."""

    name = "rounds-output-to-bf16"

    def build(self, weight: QuantizedWeight, spec: LayerSpec, bias: torch.Tensor | None) -> PreparedLinear:
        inner = Linear(self.wt(weight, spec), bias if spec.adds_bias else None, spec.device)
        return lambda x: inner(x).to(torch.bfloat16).to(x.dtype)


class RaisesInItsKernel(Planted):
    name = "raises-in-its-kernel"

    def build(self, weight: QuantizedWeight, spec: LayerSpec, bias: torch.Tensor | None) -> PreparedLinear:
        wt = dequant(*parts(weight))

        def kernel(x: torch.Tensor) -> torch.Tensor:
            return x @ wt[:-1]  # a tiling bug: drops the last row of W^T

        return kernel


def _compute(backend: Planted, bias: bool = False) -> str:
    case = Case(3, 256, 64, bias=bias, seed=5)
    inputs = make_inputs(CELL, case)
    spec = LayerSpec(256, 64, CELL.scheme, CELL.dtype, False, bias, "cpu")
    result, _ = checks.compute(backend, spec, inputs, case.key)
    assert result.outcome == checks.FAILED, result
    return result.message


def test_missing_bias_is_named() -> None:
    assert "looks like: output = reference minus the bias: the bias was not added" in _compute(BiasDropped(), True)


def test_a_bias_added_on_a_k_slice_that_must_not_add_it_is_named() -> None:
    full = make_inputs(CELL, Case(3, 256, 64, bias=True, seed=5))
    shard = Shard(256, 64, 128, 0, adds_bias=False)
    spec = LayerSpec(128, 64, CELL.scheme, CELL.dtype, False, True, "cpu", shard=shard)
    part = Inputs(shard_weight(full.weight, shard, 128, 64), full.x[..., 128:].contiguous(), full.bias)
    result, _ = checks.compute(BiasTwiceOnKSlices(), spec, part, "k-slice1")
    assert "the bias was added where adds_bias is False" in result.message


def test_a_coarser_dtype_than_declared_is_named() -> None:
    message = _compute(RoundsOutputToBf16())
    assert "the unit roundoff of bfloat16" in message
    assert "param float32, accum float32" in message


def test_an_ordinary_bug_gets_no_invented_diagnosis() -> None:
    assert "looks like" not in _compute(ZeroOffByOne())


def test_exceptions_show_the_backends_own_frames() -> None:
    message = _compute(RaisesInItsKernel())
    assert message.startswith("raised RuntimeError:")
    assert "[at test_diagnose.py:" in message and "in kernel (return x @ wt[:-1]" in message
    assert "checks.py" not in message  # not the suite's internals


def test_a_failing_k_slice_is_printed_with_its_own_spec(tmp_path: Path) -> None:
    run = run_suite(tmp_path, ["planted:BiasTwiceOnKSlices"], "-k", "tensor_parallel and w3g32asym-fp32]", workers=0)
    assert run.rc == 1, run.output[-3000:]
    (test,) = run.tests("bias-twice-on-k-slices").values()
    assert "|k-slice1" in run.output
    assert re.search(
        r"slice spec: 256 -> \d+ w3g32asym float32 cpu bias shard\(k=256, n=0, adds_bias=False\)",
        test["message"] + run.output,
    ), test["message"]
