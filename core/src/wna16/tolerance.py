"""The error model: how far a correct WnA16 kernel's output may lie from the exact product, per output element.

A fixed ``atol``/``rtol`` is either too loose to catch a zero point off by one at small K or too tight for a correct
bf16 kernel at large K. Instead every output element gets a bound derived from the precisions the backend declares
(:class:`wna16.protocol.Capability`: activation/output dtype, ``accum_dtype``, ``param_dtype``), measured against the
float64 product of ``x`` with the oracle's dequantized weight (the formula of :func:`wna16.reference.dequantize`,
evaluated in float64 so that it is exact for fp32 scales too)::

    bound = u_out * (|ref| + |x @ W^T|)                  rounding of the result (and of x @ W^T before a bias add;
                                                         the second term only for layers with a bias)
          + C2 * sqrt(K) * u_acc * (|x| @ |W|^T + |b|)   accumulation in accum_dtype (probabilistic sqrt(K) growth)
          + C3 * u_param * sqrt(x^2 @ Wmag^2^T)          scales and zero terms rounded to param_dtype
          + eta_out                                      underflow of the output dtype

with ``Wmag = |s| * (|q - c| + |c - z|)``, ``c = 2**(bits-1)``: a kernel that computes ``s * (q - c) + (c - z) * s``
with both terms rounded to ``param_dtype`` perturbs each weight by at most ``u_param * Wmag``, and independent
roundings add up like a random walk, hence the root-sum-square. ``u`` is the unit roundoff (half the machine epsilon).

The constants are calibrated once, here, for every backend (a backend may not change them): measured with torch's CPU
int4 kernel at K=4096, bf16, fp32 accumulation, a correct kernel reaches 0.41 of the bound, while a zero off by one
reaches 13, the last group's scale reused 17 and one code flipped per column 4.8.

Usable without pytest: :func:`error_ratio` is what the conformance suite compares against 1.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from wna16.errors import UsageError
from wna16.experts import ExpertWeights
from wna16.protocol import Backend, Capability, LayerSpec
from wna16.weight import QuantizedWeight

C2: float = 1.0
"""Weight of the accumulation term (in units of ``sqrt(K) * u_acc * |x| @ |W|^T``)."""

C3: float = 3.0
"""Weight of the parameter-rounding term (in units of ``u_param * sqrt(x^2 @ Wmag^2^T)``)."""


def unit_roundoff(dtype: torch.dtype) -> float:
    """Half the machine epsilon of ``dtype``: the largest relative error of one round-to-nearest."""
    return float(torch.finfo(dtype).eps) / 2


@dataclass(frozen=True)
class Precision:
    """The three dtypes the error model needs: output (= activation), accumulation and parameter dtypes."""

    out: torch.dtype
    accum: torch.dtype
    param: torch.dtype

    @classmethod
    def of(cls, rule: Capability, dtype: torch.dtype) -> Precision:
        """The precisions a capability rule declares for activations of ``dtype`` (``param_dtype`` None = ``dtype``)."""
        return cls(dtype, rule.accum_dtype, rule.param_dtype if rule.param_dtype is not None else dtype)

    @classmethod
    def for_backend(cls, backend: Backend, spec: LayerSpec) -> Precision:
        """The precisions of the rule ``backend.check(spec)`` matched; raises :class:`UsageError` (a ``ValueError``)
        if none matches: asking for the precision of a spec the backend does not claim is a caller mistake."""
        support = backend.check(spec)
        if not support or support.rule is None:
            raise UsageError(f"backend {backend.name!r} does not claim the spec; reasons: {list(support.reasons)}")
        return cls.of(support.rule, spec.dtype)


@dataclass(frozen=True)
class _Oracle:
    """CPU views of a weight, [K, N] (the layout ``x @`` needs): ``W^T`` in float64 for the exact product, and the
    magnitudes ``|W|^T`` and ``(Wmag^2)^T`` in float32, which only scale the bound (float32 is plenty and halves the
    cost of the two magnitude products)."""

    wt: torch.Tensor
    wt_abs: torch.Tensor
    mag_sq: torch.Tensor

    @classmethod
    def of(cls, weight: QuantizedWeight) -> _Oracle:
        # The oracle's formula (wna16.reference.dequantize) in float64: equal to it for fp16/bf16 scales, and exact
        # for fp32 scales too, where float32 would round s * (q - z).
        group = weight.group_index().cpu()
        codes = weight.codes().cpu().to(torch.float64)
        zeros = weight.zeros.cpu().to(torch.float64)[group]
        scales = weight.scales.cpu().to(torch.float64)[group]
        c = float(weight.scheme.center)
        wt = scales * (codes - zeros)
        mag = scales.abs() * ((codes - c).abs() + (c - zeros).abs())
        return cls(wt, wt.abs().to(torch.float32), mag.square().to(torch.float32))


def _as_matrix(x: torch.Tensor) -> torch.Tensor:
    return x.detach().cpu().to(torch.float64).reshape(-1, x.shape[-1])


def reference_output(x: torch.Tensor, weight: QuantizedWeight, bias: torch.Tensor | None = None) -> torch.Tensor:
    """float64 [..., N] on CPU: the exact ``x @ W^T + b`` the bound is measured against (``bias`` only where the
    layer adds it, e.g. not on a K-slice without ``adds_bias``)."""
    y = _as_matrix(x) @ _Oracle.of(weight).wt
    if bias is not None:
        y = y + bias.detach().cpu().to(torch.float64)
    return y.reshape(*x.shape[:-1], weight.out_features)


def _model(
    x: torch.Tensor, weight: QuantizedWeight, precision: Precision | Capability, bias: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(ref, bound)``, both float64 [..., N] on CPU."""
    p = precision if isinstance(precision, Precision) else Precision.of(precision, x.dtype)
    oracle = _Oracle.of(weight)
    x2 = _as_matrix(x)
    xw = x2 @ oracle.wt
    if bias is None:
        b = torch.zeros(weight.out_features, dtype=torch.float64)
        ref = xw
        out_term = unit_roundoff(p.out) * xw.abs()
    else:
        b = bias.detach().cpu().to(torch.float64)
        ref = xw + b
        out_term = unit_roundoff(p.out) * (ref.abs() + xw.abs())
    x32 = x2.to(torch.float32)
    magnitude = (x32.abs() @ oracle.wt_abs).to(torch.float64) + b.abs()
    acc_term = C2 * math.sqrt(weight.in_features) * unit_roundoff(p.accum) * magnitude
    param_term = C3 * unit_roundoff(p.param) * torch.sqrt((x32.square() @ oracle.mag_sq).to(torch.float64))
    eta = float(torch.finfo(p.out).smallest_normal) * float(torch.finfo(p.out).eps)  # smallest subnormal
    total = out_term + acc_term + param_term + eta
    shape = (*x.shape[:-1], weight.out_features)
    return ref.reshape(shape), total.reshape(shape)


def bound(
    x: torch.Tensor, weight: QuantizedWeight, precision: Precision | Capability, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """float64 [..., N] on CPU: the largest error a correct kernel may make on each output element.

    ``precision`` is a :class:`Precision` or the :class:`Capability` rule that serves the layer (its dtypes are read
    with ``x.dtype`` as the activation dtype).
    """
    return _model(x, weight, precision, bias)[1]


def error_ratios(
    y: torch.Tensor,
    x: torch.Tensor,
    weight: QuantizedWeight,
    precision: Precision | Capability,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """float64 [..., N] on CPU: ``|y - ref| / bound`` per element; non-finite outputs give ``inf``."""
    ref, limit = _model(x, weight, precision, bias)
    if tuple(y.shape) != tuple(ref.shape):
        raise ValueError(f"output: got shape {list(y.shape)}, expected {list(ref.shape)}")
    got = y.detach().cpu().to(torch.float64)
    err = (got - ref).abs()
    err = torch.where(torch.isfinite(err), err, torch.full_like(err, math.inf))
    return err / limit


def error_ratio(
    y: torch.Tensor,
    x: torch.Tensor,
    weight: QuantizedWeight,
    precision: Precision | Capability,
    bias: torch.Tensor | None = None,
) -> float:
    """The worst ``|y - ref| / bound`` over every output element: a correct kernel stays at or below 1."""
    ratios = error_ratios(y, x, weight, precision, bias)
    return float(ratios.max()) if ratios.numel() else 0.0


SILU_SLOPE: float = 1.1
"""An upper bound of ``|silu'(g)|`` (its maximum is 1.0998), which carries an error of the gate into ``silu(gate)``."""


def experts_model(
    x: torch.Tensor,
    topk_ids: torch.Tensor,
    topk_weights: torch.Tensor,
    weights: ExpertWeights,
    precision: Callable[[int, int], Precision],
    *,
    weights_before_down: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(ref, bound)``, float64 [..., H] on CPU, for an experts block (:mod:`wna16.experts`) computed in ``x.dtype``.

    ``ref`` is the exact block: per token, the sum over its top-k choices of ``w * down(silu(gate x) * up x)`` with
    the oracle's weights. The bound composes the linear model above, contribution by contribution, and sums the k
    contributions: gate and up within their bounds ``Bg``, ``Bu``; ``silu(g)`` within ``1.1 Bg`` plus its rounding;
    the product ``h`` within ``|s| Bu + |u| ds + ds Bu`` plus its rounding; down's own bound at its exact input plus
    the input's error carried through ``|W_down|``; the routing weight's product rounded once, and the sum rounded
    once in the output dtype (and accumulated in float32). ``precision(e, p)`` gives the precisions that serve
    projection ``p`` of expert ``e`` (:data:`wna16.experts.PROJECTIONS` order).
    """
    out_dtype = x.dtype
    u = unit_roundoff(out_dtype)
    x2 = _as_matrix(x)
    ids = topk_ids.detach().cpu().reshape(x2.shape[0], -1).to(torch.int64)
    rw = topk_weights.detach().cpu().to(out_dtype).to(torch.float64).reshape(ids.shape)
    ref = torch.zeros(x2.shape[0], weights.hidden_size, dtype=torch.float64)
    total = torch.zeros_like(ref)
    magnitude = torch.zeros_like(ref)
    for e in sorted(set(ids.flatten().tolist())):
        token, slot = (ids == e).nonzero(as_tuple=True)
        xe, we = x2[token], rw[token, slot][:, None]
        gate, up, down = weights.expert(e)
        g, bg = _model(xe, gate, precision(e, 0), None)
        v, bv = _model(xe, up, precision(e, 1), None)
        s = torch.nn.functional.silu(g)
        ds = SILU_SLOPE * bg + 2 * u * s.abs()
        h = s * v
        dh = s.abs() * bv + v.abs() * ds + ds * bv + u * h.abs()
        d_abs = _Oracle.of(down).wt.abs()
        if weights_before_down:
            h_in, dh_in = we * h, we.abs() * dh + u * (we * h).abs()
            y, by = _model(h_in, down, precision(e, 2), None)
            contribution, err = y, by + dh_in @ d_abs
        else:
            y, by = _model(h, down, precision(e, 2), None)
            contribution = we * y
            err = we.abs() * (by + dh @ d_abs) + u * contribution.abs()
        ref.index_add_(0, token, contribution)
        total.index_add_(0, token, err)
        magnitude.index_add_(0, token, contribution.abs())
    eta = float(torch.finfo(out_dtype).smallest_normal) * float(torch.finfo(out_dtype).eps)
    total += u * ref.abs() + ids.shape[1] * unit_roundoff(torch.float32) * magnitude + eta
    return ref.reshape(x.shape), total.reshape(x.shape)


def experts_error_ratio(
    y: torch.Tensor,
    x: torch.Tensor,
    topk_ids: torch.Tensor,
    topk_weights: torch.Tensor,
    weights: ExpertWeights,
    precision: Callable[[int, int], Precision],
    *,
    weights_before_down: bool = False,
) -> float:
    """The worst ``|y - ref| / bound`` of an experts block (see :func:`experts_model`); a correct one stays <= 1."""
    ref, limit = experts_model(x, topk_ids, topk_weights, weights, precision, weights_before_down=weights_before_down)
    if tuple(y.shape) != tuple(ref.shape):
        raise ValueError(f"output: got shape {list(y.shape)}, expected {list(ref.shape)}")
    err = (y.detach().cpu().to(torch.float64) - ref).abs()
    err = torch.where(torch.isfinite(err), err, torch.full_like(err, math.inf))
    ratios = err / limit
    return float(ratios.max()) if ratios.numel() else 0.0
