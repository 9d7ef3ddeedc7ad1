"""The checks of one case, independent of pytest: compute within the bound, or refuse honestly; hygiene.

Each function returns a :class:`CaseResult` (what the report counts) and never raises for a backend's fault: a
backend exception, a wrong dtype or a mutated input is a failed result with a message. The caller decides how to
fail the test.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from wna16.errors import UnsupportedError
from wna16.protocol import Backend, LayerSpec, PreparedLinear, describe_spec
from wna16.tolerance import Precision, error_ratio
from wna16.weight import QuantizedWeight
from wna16_conformance.data import Inputs
from wna16_conformance.diagnose import backend_frames, kind_of_wrong

PASSED, FAILED, REFUSED, SKIPPED = "passed", "failed", "refused", "skipped"


@dataclass(frozen=True)
class CaseResult:
    """The outcome of one case (or one part of it, e.g. one tensor-parallel slice)."""

    key: str
    outcome: str
    ratio: float | None = None
    message: str = ""


def _snapshot(weight: QuantizedWeight) -> list[torch.Tensor]:
    return [t.clone() for t in (weight.qweight, weight.zeros, weight.scales, weight.g_idx) if t is not None]


def _unchanged(before: list[torch.Tensor], weight: QuantizedWeight) -> bool:
    after = [t for t in (weight.qweight, weight.zeros, weight.scales, weight.g_idx) if t is not None]
    return all(torch.equal(a, b) for a, b in zip(before, after, strict=True))


def refusal(backend: Backend, spec: LayerSpec, inputs: Inputs, key: str) -> CaseResult:
    """A spec ``check`` refused: it must give at least one reason and ``prepare`` must raise UnsupportedError."""
    support = backend.check(spec)
    if not support.reasons or not all(isinstance(r, str) and r.strip() for r in support.reasons):
        return CaseResult(key, FAILED, None, f"check refused {describe_spec(spec)} without a reason")
    try:
        backend.prepare(inputs.weight, spec, inputs.bias)
    except UnsupportedError as exc:
        if not exc.reasons:
            return CaseResult(key, FAILED, None, "prepare raised UnsupportedError without reasons")
        return CaseResult(key, REFUSED, None, "; ".join(support.reasons))
    except Exception as exc:
        return CaseResult(key, FAILED, None, f"prepare raised {type(exc).__name__}: {exc} instead of UnsupportedError")
    return CaseResult(key, FAILED, None, f"check refused ({'; '.join(support.reasons)}) but prepare accepted the spec")


def _validate_output(y: object, x: torch.Tensor, spec: LayerSpec) -> str:
    """Why ``y`` is not the tensor promised (dtype, shape, device), or ``""``."""
    if not isinstance(y, torch.Tensor):
        return f"returned {type(y).__name__}, expected a tensor"
    want = (*x.shape[:-1], spec.out_features)
    if tuple(y.shape) != want or y.dtype != spec.dtype or y.device != x.device:
        return (
            f"returned {str(y.dtype).removeprefix('torch.')}{list(y.shape)} on {y.device}, expected "
            f"{str(spec.dtype).removeprefix('torch.')}{list(want)} on {x.device}"
        )
    return ""


@dataclass
class Prepared:
    """A prepared layer with the device copies of its inputs (kept to check them for mutation)."""

    fn: PreparedLinear
    weight: QuantizedWeight
    bias: torch.Tensor | None
    precision: Precision


def prepare(backend: Backend, spec: LayerSpec, inputs: Inputs) -> Prepared:
    """Move the CPU inputs to the spec's device and prepare; exceptions propagate (the caller reports them)."""
    weight = inputs.weight.to(spec.device)
    bias = None if inputs.bias is None else inputs.bias.to(spec.device)
    return Prepared(backend.prepare(weight, spec, bias), weight, bias, Precision.for_backend(backend, spec))


def compute(
    backend: Backend, spec: LayerSpec, inputs: Inputs, key: str, multiplier: float = 1.0
) -> tuple[CaseResult, torch.Tensor | None]:
    """Prepare and call once; the result passes when ``|y - ref| <= multiplier * bound`` everywhere and nothing it
    was given changed. Returns the output (on CPU) for checks that combine several calls."""
    try:
        layer = prepare(backend, spec, inputs)
        weight_before, bias_before = _snapshot(layer.weight), None if layer.bias is None else layer.bias.clone()
        x = inputs.x.to(spec.device)
        x_before = x.clone()
        y = layer.fn(x)
    except Exception as exc:
        where = backend_frames(exc, backend)
        return CaseResult(
            key, FAILED, None, f"raised {type(exc).__name__}: {exc}" + (f" [at {where}]" if where else "")
        ), None
    problem = _validate_output(y, x, spec)
    if problem:
        return CaseResult(key, FAILED, None, problem), None
    if not torch.equal(x, x_before):
        return CaseResult(key, FAILED, None, "mutated its input x"), None
    if not _unchanged(weight_before, layer.weight) or (
        bias_before is not None and layer.bias is not None and not torch.equal(bias_before, layer.bias)
    ):
        return CaseResult(key, FAILED, None, "mutated the weight or bias it was prepared from"), None
    bias = inputs.bias if spec.adds_bias else None
    ratio = error_ratio(y, inputs.x, inputs.weight, layer.precision, bias)
    result = y.detach().cpu()
    if not ratio <= multiplier:  # NaN-safe
        shown = "inf" if math.isinf(ratio) else f"{ratio:.3g}"
        limit = f" (x{multiplier:g} by the filter)" if multiplier != 1.0 else ""
        kind = kind_of_wrong(result, inputs.x, inputs.weight, layer.precision, bias, inputs.bias)
        message = f"error/bound ratio {shown} > {multiplier:g}{limit}" + (f"; looks like: {kind}" if kind else "")
        return CaseResult(key, FAILED, ratio, message), result
    return CaseResult(key, PASSED, ratio), result


def case(backend: Backend, spec: LayerSpec, inputs: Inputs, key: str, multiplier: float = 1.0) -> CaseResult:
    """Compute when ``check`` claims the spec, else verify the refusal."""
    if not backend.check(spec):
        return refusal(backend, spec, inputs, key)
    return compute(backend, spec, inputs, key, multiplier)[0]


def hygiene(backend: Backend, spec: LayerSpec, inputs: Inputs, key: str, multiplier: float = 1.0) -> list[CaseResult]:
    """Inputs untouched, deterministic output, promised dtype/shape/device, and non-contiguous ``x`` served (or
    declared unsupported with ``noncontiguous_input=False``)."""
    support = backend.check(spec)
    if not support:
        return [refusal(backend, spec, inputs, key)]
    first, y1 = compute(backend, spec, inputs, f"{key}|once", multiplier)
    if first.outcome != PASSED:
        return [first]
    out = [first]
    layer = prepare(backend, spec, inputs)
    x = inputs.x.to(spec.device)
    a, b = layer.fn(x), layer.fn(x)
    same = torch.equal(a, b) and torch.equal(a.cpu(), y1) if y1 is not None else False
    out.append(
        CaseResult(
            f"{key}|repeat", PASSED if same else FAILED, None, "" if same else "same input twice gave different outputs"
        )
    )
    rule = support.rule
    if rule is not None and rule.noncontiguous_input:
        xs = torch.stack([x, x], dim=-1).flatten(-2)[..., ::2]  # equal to x, stride 2 along K
        try:
            y = layer.fn(xs)
            problem = _validate_output(y, xs, spec)
            ratio = (
                None
                if problem
                else error_ratio(y, inputs.x, inputs.weight, layer.precision, inputs.bias if spec.adds_bias else None)
            )
        except Exception as exc:
            problem, ratio = f"non-contiguous x raised {type(exc).__name__}: {exc}", None
        if not problem and not (ratio is not None and ratio <= multiplier):
            problem = f"non-contiguous x: error/bound ratio {ratio:.3g} > {multiplier:g}"
        out.append(CaseResult(f"{key}|noncontiguous", FAILED if problem else PASSED, ratio, problem))
    else:
        out.append(CaseResult(f"{key}|noncontiguous", SKIPPED, None, "backend declares noncontiguous_input=False"))
    return out
