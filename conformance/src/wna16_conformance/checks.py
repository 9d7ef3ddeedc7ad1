"""The checks of one case, independent of pytest: compute within the bound, or refuse honestly; hygiene; the op
contract that compiled engines rely on.

Each function returns a :class:`CaseResult` (what the report counts) and never raises for a backend's fault: a
backend exception, a wrong dtype or a mutated input is a failed result with a message. The caller decides how to
fail the test.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch

from wna16.errors import UnsupportedError
from wna16.ops import PreparedOp
from wna16.protocol import Backend, LayerSpec, PreparedLinear, describe_spec
from wna16.tolerance import Precision, call_ratios, error_ratio
from wna16.weight import QuantizedWeight
from wna16_conformance.data import Inputs, laid_out
from wna16_conformance.diagnose import backend_frames, kind_of_wrong

PASSED, FAILED, REFUSED, SKIPPED = "passed", "failed", "refused", "skipped"


@dataclass(frozen=True)
class CaseResult:
    """The outcome of one case (or one part of it, e.g. one tensor-parallel slice)."""

    key: str
    outcome: str
    ratio: float | None = None
    message: str = ""


def private_copy(weight: QuantizedWeight) -> QuantizedWeight:
    """A copy of ``weight`` that shares no storage with it: the backend gets one, the error model another, so a
    ``prepare`` that writes into the weight it was given can neither hide it nor move the reference with it."""
    g = None if weight.g_idx is None else weight.g_idx.clone()
    return replace(
        weight, qweight=weight.qweight.clone(), zeros=weight.zeros.clone(), scales=weight.scales.clone(), g_idx=g
    )


def _same_weight(a: QuantizedWeight, b: QuantizedWeight) -> bool:
    pairs = [(a.qweight, b.qweight), (a.zeros, b.zeros), (a.scales, b.scales)]
    if a.g_idx is not None and b.g_idx is not None:
        pairs.append((a.g_idx, b.g_idx))
    return (a.g_idx is None) == (b.g_idx is None) and all(torch.equal(x.cpu(), y.cpu()) for x, y in pairs)


def _bitwise_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal including NaN in the same places (``torch.equal`` says NaN != NaN)."""
    return a.shape == b.shape and bool((a.eq(b) | (a.isnan() & b.isnan())).all())


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


def late_refusal(exc: UnsupportedError, spec: LayerSpec) -> str:
    """The failure message of a ``prepare`` that refused a spec ``check`` had accepted: callers (the registry, a
    model being loaded) trust ``check``, so a refusal ``check`` cannot express as data belongs in ``refusals``."""
    return (
        f"check accepted {describe_spec(spec)} but prepare refused it ({exc}): a refusal must come from check, "
        "through the declared capabilities or Backend.refusals()"
    )


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
    """A prepared layer with the device copies of its inputs (kept to check them for mutation) and a private CPU copy
    of the canonical weight taken before the backend saw anything (the reference is computed from it)."""

    fn: PreparedLinear
    weight: QuantizedWeight
    bias: torch.Tensor | None
    precision: Precision
    pristine: QuantizedWeight
    pristine_bias: torch.Tensor | None


def prepare(backend: Backend, spec: LayerSpec, inputs: Inputs) -> Prepared:
    """Snapshot the CPU inputs, move copies to the spec's device and prepare; exceptions propagate (the caller
    reports them)."""
    pristine = private_copy(inputs.weight)
    pristine_bias = None if inputs.bias is None else inputs.bias.clone()
    weight = private_copy(inputs.weight).to(spec.device)
    bias = None if inputs.bias is None else inputs.bias.to(spec.device, copy=True)
    fn = backend.prepare(weight, spec, bias)
    return Prepared(fn, weight, bias, Precision.for_backend(backend, spec), pristine, pristine_bias)


def _mutation(layer: Prepared) -> str:
    """What the backend changed of the weight or bias it was prepared from (``""``: nothing)."""
    if not _same_weight(layer.weight, layer.pristine):
        return "mutated the weight it was prepared from (prepare or a call wrote into the canonical tensors)"
    if (
        layer.bias is not None
        and layer.pristine_bias is not None
        and not torch.equal(layer.bias.cpu(), layer.pristine_bias)
    ):
        return "mutated the bias it was prepared from"
    return ""


def compute(
    backend: Backend, spec: LayerSpec, inputs: Inputs, key: str, multiplier: float = 1.0
) -> tuple[CaseResult, torch.Tensor | None]:
    """Prepare once and call several times: ``x``, a second input of the same shape, and one of another row count
    (a kernel that caches by shape, replays a captured graph without copying its new input or hands back one output
    buffer for every call is caught). Every output must stay within ``multiplier * bound`` of its own reference,
    an earlier output must not change when a later call runs, and nothing the backend was given may change.
    Returns the first output (on CPU) for checks that combine several calls."""
    xs = [inputs.x, *inputs.later]
    outputs: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []  # (output, its copy, input as given)
    try:
        layer = prepare(backend, spec, inputs)
        for x_cpu in xs:
            x = laid_out(x_cpu, inputs.layout, spec.device)
            x_before = x.clone()
            y = layer.fn(x)
            problem = _validate_output(y, x, spec)
            if problem:
                return CaseResult(key, FAILED, None, problem), None
            if not _bitwise_equal(x, x_before):
                return CaseResult(key, FAILED, None, "mutated its input x"), None
            outputs.append((y, y.detach().clone(), x_cpu))
    except UnsupportedError as exc:  # check accepted this spec (compute is only called for those)
        return CaseResult(key, FAILED, None, late_refusal(exc, spec)), None
    except Exception as exc:
        where = backend_frames(exc, backend)
        message = f"raised {type(exc).__name__}: {exc}" + (f" [at {where}]" if where else "")
        return CaseResult(key, FAILED, None, message), None
    mutated = _mutation(layer)
    if mutated:
        return CaseResult(key, FAILED, None, mutated), None
    for i, (y, copy, _) in enumerate(outputs[:-1]):
        if not _bitwise_equal(y, copy):
            message = f"the output of call {i + 1} changed when a later call ran (an output buffer reused across calls)"
            return CaseResult(key, FAILED, None, message), None
    bias = layer.pristine_bias if spec.adds_bias else None
    ratios = call_ratios([(y, x_cpu) for y, _, x_cpu in outputs], layer.pristine, layer.precision, bias)
    worst = 0.0
    for i, ratio in enumerate(ratios):
        if not ratio <= multiplier:  # NaN-safe
            shown = "inf" if math.isinf(ratio) else f"{ratio:.3g}"
            limit = f" (x{multiplier:g} by the filter)" if multiplier != 1.0 else ""
            which = "" if i == 0 else f" on call {i + 1} of the prepared layer ({_later_call(outputs, i)})"
            y, _, x_cpu = outputs[i]
            kind = kind_of_wrong(y.detach().cpu(), x_cpu, layer.pristine, layer.precision, bias, layer.pristine_bias)
            message = f"error/bound ratio {shown} > {multiplier:g}{limit}{which}" + (
                f"; looks like: {kind}" if kind else ""
            )
            return CaseResult(key, FAILED, ratio, message), None
        worst = max(worst, ratio)
    return CaseResult(key, PASSED, worst), outputs[0][0].detach().cpu()


def _later_call(outputs: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]], i: int) -> str:
    """Which later call failed, and whether it returned an earlier call's result (a cache keyed by shape, a stale
    graph replay)."""
    y, _, x = outputs[i]
    for j, (_, earlier, x_earlier) in enumerate(outputs[:i]):
        if earlier.shape == y.shape and not torch.equal(x_earlier, x) and _bitwise_equal(earlier, y.detach()):
            return f"a new input of the same shape returned call {j + 1}'s output: cached by shape or a stale replay"
    rows = x.reshape(-1, x.shape[-1]).shape[0]
    return "same shape, new values" if x.shape == outputs[0][2].shape else f"{rows} rows"


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
    x = laid_out(inputs.x, inputs.layout, spec.device)
    a = layer.fn(x).detach().clone()
    b = layer.fn(x)
    same = torch.equal(a, b) and torch.equal(a.cpu(), y1) if y1 is not None else False
    out.append(
        CaseResult(
            f"{key}|repeat", PASSED if same else FAILED, None, "" if same else "same input twice gave different outputs"
        )
    )
    rule = support.rule
    bias = layer.pristine_bias if spec.adds_bias else None
    if rule is not None and rule.noncontiguous_input:
        xs = laid_out(inputs.x, "stride", spec.device)  # equal to x, stride 2 along K
        try:
            y = layer.fn(xs)
            problem = _validate_output(y, xs, spec)
            ratio = None if problem else error_ratio(y, inputs.x, layer.pristine, layer.precision, bias)
        except Exception as exc:
            problem, ratio = f"non-contiguous x raised {type(exc).__name__}: {exc}", None
        if not problem and not (ratio is not None and ratio <= multiplier):
            problem = f"non-contiguous x: error/bound ratio {ratio:.3g} > {multiplier:g}"
        out.append(CaseResult(f"{key}|noncontiguous", FAILED if problem else PASSED, ratio, problem))
    else:
        out.append(CaseResult(f"{key}|noncontiguous", SKIPPED, None, "backend declares noncontiguous_input=False"))
    return out


class _Calls(torch.nn.Module):
    """The smallest model around a prepared layer: what ``torch.compile`` sees in an engine."""

    def __init__(self, layer: PreparedOp) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


def compiled(backend: Backend, spec: LayerSpec, inputs: Inputs, key: str) -> list[CaseResult]:
    """The ``wna16::linear`` contract (:mod:`wna16.ops`): the prepared layer is a :class:`PreparedOp`;
    ``torch.library.opcheck`` passes on its op call with the real prepared state (schema: nothing the op is given is
    mutated, no output aliases an input; the fake agrees with the kernel in shape, dtype, device and strides where
    the kernel promises them; the op traces under AOT autograd with dynamic shapes); and ``torch.compile(
    fullgraph=True, dynamic=True)`` of a module calling the layer, with no graph break, gives bitwise the eager
    output at two row counts (every kernel is deterministic: :func:`hygiene` requires it).

    A backend that declares ``compile_refusal`` is recorded as skipped with its reason, never passed."""
    support = backend.check(spec)
    if not support:
        return [refusal(backend, spec, inputs, key)]
    if backend.compile_refusal:
        return [CaseResult(key, SKIPPED, None, f"backend declares compile_refusal: {backend.compile_refusal}")]
    layer = prepare(backend, spec, inputs)
    if not isinstance(layer.fn, PreparedOp):
        message = (
            f"prepared layer is a {type(layer.fn).__name__}, not a wna16.ops.PreparedOp: compiled engines cannot "
            "trace it as one op (return a PreparedOp, backends/README.md, or declare compile_refusal)"
        )
        return [CaseResult(key, FAILED, None, message)]
    xs = [laid_out(x, inputs.layout, spec.device) for x in (inputs.x, inputs.later[-1])]
    try:
        torch.library.opcheck(torch.ops.wna16.linear.default, layer.fn.args(xs[0]))
    except Exception as exc:
        return [CaseResult(f"{key}|opcheck", FAILED, None, f"opcheck: {type(exc).__name__}: {exc}")]
    out = [CaseResult(f"{key}|opcheck", PASSED)]
    # A fresh cache for this wrapper only (one compile per test, never the recompile limit of earlier tests); a global
    # reset would also drop what the backend itself compiled (example-compile's kernel) and make it compile again.
    torch._dynamo.reset_code(_Calls.forward.__code__)
    model = torch.compile(_Calls(layer.fn), fullgraph=True, dynamic=True)
    for i, x in enumerate(xs):
        try:
            got = model(x)
        except Exception as exc:
            message = f"torch.compile(fullgraph=True) raised {type(exc).__name__}: {str(exc)[:400]}"
            return [*out, CaseResult(f"{key}|compiled", FAILED, None, message)]
        want = layer.fn(x)
        if not (got.dtype == want.dtype and _bitwise_equal(got, want)):
            message = f"compiled output differs from eager on call {i + 1} ({x.reshape(-1, x.shape[-1]).shape[0]} rows)"
            return [*out, CaseResult(f"{key}|compiled", FAILED, None, message)]
    return [*out, CaseResult(f"{key}|compiled", PASSED)]
