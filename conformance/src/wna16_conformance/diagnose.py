"""What kind of wrong a failing case looks like, and where in the backend an exception came from.

A ratio says *how much* an output is wrong; a kernel author needs *what kind*: a missing or doubled bias, a
computation in a coarser dtype than the one declared, or an exception whose interesting frames are in the backend,
not in this suite. Each diagnosis is a guess that is only made when the evidence is unambiguous (the output is far
closer to the alternative explanation than to the reference); otherwise it says nothing.
"""

from __future__ import annotations

import sys
import traceback
from pathlib import Path

import torch

from wna16.tolerance import Precision, reference_output, unit_roundoff
from wna16.weight import QuantizedWeight

CLOSER = 0.05
"""An alternative explains the output when its largest deviation is below this fraction of the reference's."""

COARSER = (torch.bfloat16, torch.float16)
"""Dtypes a kernel may silently compute in; coarsest first."""


def _name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def kind_of_wrong(
    y: torch.Tensor,
    x: torch.Tensor,
    weight: QuantizedWeight,
    precision: Precision,
    bias: torch.Tensor | None,
    given_bias: torch.Tensor | None = None,
) -> str:
    """A short diagnosis of a failing output (``""`` when none is clear).

    ``bias`` is the bias the output must contain (None when the layer has none, or a K-slice that must not add it);
    ``given_bias`` the bias the backend was handed (to recognise one added where it must not be).
    """
    got = y.detach().cpu().to(torch.float64).reshape(-1, y.shape[-1])
    if not torch.isfinite(got).all():
        return "the output has NaN or inf values"
    ref = reference_output(x, weight, bias).reshape(-1, y.shape[-1])
    miss = float((got - ref).abs().max())
    if miss == 0.0:
        return ""
    alternatives: list[tuple[str, torch.Tensor]] = []
    if bias is not None:
        b = bias.detach().cpu().to(torch.float64)
        alternatives += [("output = reference minus the bias: the bias was not added", ref - b)]
        alternatives += [("output = reference plus the bias again: the bias was added twice", ref + b)]
    elif given_bias is not None:
        b = given_bias.detach().cpu().to(torch.float64)
        alternatives += [("output = reference plus the bias: the bias was added where adds_bias is False", ref + b)]
    alternatives += [("the output is all zeros", torch.zeros_like(ref))]
    for text, alt in alternatives:
        if float((got - alt).abs().max()) <= CLOSER * miss:
            return text
    return _coarser_dtype(got, ref, precision)


def _coarser_dtype(got: torch.Tensor, ref: torch.Tensor, precision: Precision) -> str:
    """A relative error spread evenly over the output at the unit roundoff of a dtype coarser than every declared
    one: the kernel rounds to that dtype somewhere (e.g. bf16 scales while declaring param_dtype float32)."""
    scale = ref.abs()
    big = scale > 1e-3 * float(scale.max())
    if int(big.sum()) < 8:
        return ""
    rel = ((got - ref).abs()[big] / scale[big]).float()
    typical = float(rel.median())
    declared = max(unit_roundoff(d) for d in (precision.out, precision.accum, precision.param))
    for dtype in COARSER:
        u = unit_roundoff(dtype)
        if u > 4 * declared and 0.1 * u <= typical <= 2 * u:
            return (
                f"relative error uniform around {typical:.2g}, the unit roundoff of {_name(dtype)} ({u:.2g}): "
                f"something is rounded to {_name(dtype)} although the declaration says output {_name(precision.out)}, "
                f"param {_name(precision.param)}, accum {_name(precision.accum)}"
            )
    return ""


def _package_root(obj: object) -> Path | None:
    module = sys.modules.get(type(obj).__module__)
    path = getattr(module, "__file__", None)
    if path is None:
        return None
    file = Path(path).resolve()
    return file.parent if file.name == "__init__.py" or "." in type(obj).__module__ else file


def backend_frames(exc: BaseException, backend: object, limit: int = 3) -> str:
    """The innermost ``limit`` traceback frames of ``exc`` that are in the backend's own package (``file:line in
    function``), innermost last; ``""`` when none is."""
    root = _package_root(backend)
    if root is None:
        return ""
    frames = [
        f"{Path(f.filename).name}:{f.lineno} in {f.name}" + (f" ({f.line.strip()})" if f.line else "")
        for f in traceback.extract_tb(exc.__traceback__)
        if Path(f.filename).resolve() == root or root in Path(f.filename).resolve().parents
    ]
    return " <- ".join(reversed(frames[-limit:]))
