"""The error model: how far a correct WnA16 kernel's output may lie from the exact product, per output element.

A fixed ``atol``/``rtol`` is either too loose to catch a zero point off by one at small K or too tight for a correct
bf16 kernel at large K. Instead every output element gets a bound derived from the precisions the backend declares
(:class:`wna16.protocol.Capability`: activation/output dtype, ``accum_dtype``, ``param_dtype``), measured against the
float64 product of ``x`` with the oracle's dequantized weight (the formula of :func:`wna16.reference.dequantize`,
evaluated in float64 so that it is exact for fp32 scales too)::

    bound = u_out * (|ref| + |x @ W^T|)                       rounding of the result (and of x @ W^T before a bias
                                                              add; the second term only for layers with a bias)
          + u_acc * sqrt(K) * sqrt(C2^2 x^2 @ W^2^T           accumulation in accum_dtype (a random walk ending
                               + (CD/3)^2 (x @ W^T)^2)        at x @ W^T, see below)
          + u_acc * |ref|                                     the bias add in accum_dtype (layers with a bias)
          + C3 * u_param * sqrt(sum_g (|P_g| + |Z_g|)^2       scales and zero terms rounded to param_dtype: one
                                 + x^2 @ Wmag^2^T)            shared relative error per group, plus per element
          + u_param * |b|                                     the bias, a parameter too, rounded to param_dtype
          + C3 * eta_param * sqrt(x^2 @ 1)                    subnormal parameters (absolute spacing)
          + eta_out                                           underflow of the output dtype

with ``P_g = sum_{k in g} x_k s_g (q_k - c)``, ``Z_g = s_g (c - z_g) sum_{k in g} x_k`` (the two halves of group g's
contribution), ``Wmag = |s| * (|q - c| + |c - z|)``, ``c = 2**(bits-1)``, ``u`` the unit roundoff (half the machine
epsilon) and ``eta`` the smallest subnormal of a dtype.

Why each term has its shape:

- *Parameters.* A kernel that rounds a group's scale (or its zero term ``(c - z) * s``) to ``param_dtype`` makes one
  relative error shared by every row of the group, so that group's contribution is off by up to ``u * |P_g|`` (and
  ``u * |Z_g|``), not by a sum of independent per-element errors; independent groups add like a random walk (a
  per-channel weight has one group: the term is then a worst case). Rounding each product ``s * (q - c)`` and the sum
  of the two terms is per element: the ``Wmag`` part.
- *Accumulation.* Summing K products ``p_k`` with one rounding per addition errs by ``sum_k delta_k s_k`` where
  ``s_k`` is the running sum and ``|delta_k| <= u``. For zero-mean random products (random codes times standard-normal
  ``x``, the data of every randomized conformance test) the running sums are a random walk from 0 to the result
  ``S = x @ W^T``, a bridge: ``s_k`` is about ``(k/K) S`` plus a deviation of variance ``k (K-k)/K^2 ||p||_2^2``, so
  ``sum_k s_k^2`` is about ``K/3 S^2 + K/6 ||p||_2^2``, whatever the summation order (blocked, pairwise and split-K
  sums only shorten the walks). The two parts differ in kind. The drift ``(k/K) S`` is fixed by the result: its
  errors are independent and bounded, a standard deviation of at most ``u sqrt(K) |S| / 3``, and the bound allows
  ``CD`` of them. The bridge's own excursion is random, so its error is a mixture with heavier tails than its mean
  width ``u sqrt(K/18) ||p||_2`` suggests (a correct fp32 sum reached 10 of those widths in the ``thorough``
  profile): ``C2 u sqrt(K) ||p||_2`` covers it, calibrated on every profile. Leaving the drift out failed a correct
  fp32 sum of K=176 products ending at 3.3 ``||p||_2`` (ratio 1.21). This is a
  statistical bound, tight to about one significant digit: an all-zero output or a bf16 partial sum is caught at
  K=4096 even for a kernel that declares bf16 accumulation, and one bf16 rounding after every addition passes. Tests
  whose data is not random rely on exactness instead (the large-K cancellation edge of the conformance suite is
  built so that every running sum is exact in fp32: a correct kernel returns 0).

The constants are calibrated once, here, for every backend (a backend may not change them): measured with torch's CPU
int4 kernel at K=4096, bf16, fp32 accumulation (see ``conformance/tests/test_tolerance.py`` for today's values), a
correct kernel stays well below 1 while a zero off by one, the last group's scale reused and one code flipped per
column exceed it.

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

C2: float = 3.0
"""Weight of the accumulation walk's width, in units of ``u_acc * sqrt(K) * ||x_k W_kn||_2`` over k (see above)."""

CD: float = 8.0
"""Standard deviations of the accumulation drift toward the result the bound allows (one deviation: ``u_acc *
sqrt(K) * |x @ W^T| / 3``); the largest of the ~10^10 output elements of a ``thorough`` run stays below 7."""

C3: float = 3.0
"""Weight of the parameter-rounding terms (in units of ``u_param`` times the root-sum-square of the shared per-group
and the per-element errors)."""


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
    """CPU views of a weight, [K, N] (the layout ``x @`` needs): ``W^T`` in float64 for the exact product; in float32
    (they only scale the bound; float32 is plenty and halves the cost) ``(W^2)^T``, ``(Wmag^2)^T``, and per group the
    two halves of ``W^T``: ``s (q - c)`` with its rows gathered group by group (``rows`` [G, R], padded with row K, a
    zero row) and ``s (c - z)`` [G, N]."""

    wt: torch.Tensor
    wt_sq: torch.Tensor
    mag_sq: torch.Tensor
    code_term: torch.Tensor
    zero_term: torch.Tensor
    rows: torch.Tensor

    @classmethod
    def of(cls, weight: QuantizedWeight) -> _Oracle:
        # The oracle's formula (wna16.reference.dequantize) in float64: equal to it for fp16/bf16 scales, and exact
        # for fp32 scales too, where float32 would round s * (q - z).
        group = weight.group_index().cpu()
        codes = weight.codes().cpu().to(torch.float64)
        zeros_g = weight.zeros.cpu().to(torch.float64)
        scales_g = weight.scales.cpu().to(torch.float64)
        zeros, scales = zeros_g[group], scales_g[group]
        c = float(weight.scheme.center)
        wt = scales * (codes - zeros)
        mag = scales.abs() * ((codes - c).abs() + (c - zeros).abs())
        k, groups = weight.in_features, scales_g.shape[0]
        counts = torch.bincount(group, minlength=groups)
        width = int(counts.max()) if k else 0
        order = torch.argsort(group, stable=True)
        starts = torch.cumsum(counts, 0) - counts
        slot = torch.arange(k) - starts[group[order]]
        rows = torch.full((groups, max(width, 1)), k, dtype=torch.int64)
        rows[group[order], slot] = order
        code_term = torch.cat([scales * (codes - c), torch.zeros(1, weight.out_features, dtype=torch.float64)])
        return cls(
            wt, wt.square().to(torch.float32), mag.square().to(torch.float32), code_term.to(torch.float32),
            (scales_g * (c - zeros_g)).to(torch.float32), rows,
        )  # fmt: skip

    def shared_sq(self, x32: torch.Tensor) -> torch.Tensor:
        """``sum_g (|P_g| + |Z_g|)^2`` [M, N]: each group's contribution split in its code and zero halves, the
        error of a rounded group scale (or zero term) being one relative error shared by the group."""
        xp = torch.cat([x32, torch.zeros(x32.shape[0], 1)], dim=1)[:, self.rows]  # [M, G, R]
        p = torch.bmm(xp.transpose(0, 1), self.code_term[self.rows])  # [G, M, N]
        z = xp.sum(dim=2).transpose(0, 1).unsqueeze(-1) * self.zero_term.unsqueeze(1)  # [G, M, N]
        return (p.abs() + z.abs()).square().sum(dim=0)


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
    x: torch.Tensor,
    weight: QuantizedWeight,
    precision: Precision | Capability,
    bias: torch.Tensor | None,
    oracle: _Oracle | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(ref, bound)``, both float64 [..., N] on CPU (``oracle``: the weight's, when the caller already has it)."""
    p = precision if isinstance(precision, Precision) else Precision.of(precision, x.dtype)
    oracle = oracle if oracle is not None else _Oracle.of(weight)
    x2 = _as_matrix(x)
    xw = x2 @ oracle.wt
    if bias is None:
        b = torch.zeros(weight.out_features, dtype=torch.float64)
        ref = xw
        out_term = unit_roundoff(p.out) * xw.abs()
        bias_add = torch.zeros_like(xw)
    else:
        b = bias.detach().cpu().to(torch.float64)
        ref = xw + b
        out_term = unit_roundoff(p.out) * (ref.abs() + xw.abs())
        bias_add = unit_roundoff(p.accum) * ref.abs()
    x32 = x2.to(torch.float32)
    k = weight.in_features
    walk = torch.sqrt(C2**2 * (x32.square() @ oracle.wt_sq).to(torch.float64) + (CD / 3) ** 2 * xw.square())
    acc_term = unit_roundoff(p.accum) * math.sqrt(k) * walk + bias_add
    per_element = (x32.square() @ oracle.mag_sq).to(torch.float64)
    shared = oracle.shared_sq(x32).to(torch.float64) if x32.shape[0] else torch.zeros_like(per_element)
    param_term = C3 * unit_roundoff(p.param) * torch.sqrt(shared + per_element) + unit_roundoff(p.param) * b.abs()
    eta_param = float(torch.finfo(p.param).smallest_normal) * float(torch.finfo(p.param).eps)
    subnormal_term = C3 * eta_param * torch.sqrt(x2.square().sum(dim=1, keepdim=True))
    eta = float(torch.finfo(p.out).smallest_normal) * float(torch.finfo(p.out).eps)  # smallest subnormal
    total = out_term + acc_term + param_term + subnormal_term + eta
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
    return _ratios(y, x, weight, precision, bias, None)


def _ratios(
    y: torch.Tensor,
    x: torch.Tensor,
    weight: QuantizedWeight,
    precision: Precision | Capability,
    bias: torch.Tensor | None,
    oracle: _Oracle | None,
) -> torch.Tensor:
    ref, limit = _model(x, weight, precision, bias, oracle)
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


def call_ratios(
    calls: list[tuple[torch.Tensor, torch.Tensor]],
    weight: QuantizedWeight,
    precision: Precision | Capability,
    bias: torch.Tensor | None = None,
) -> list[float]:
    """:func:`error_ratio` of several ``(y, x)`` calls of one layer, deriving the weight's oracle once."""
    oracle = _Oracle.of(weight)
    out = []
    for y, x in calls:
        ratios = _ratios(y, x, weight, precision, bias, oracle)
        out.append(float(ratios.max()) if ratios.numel() else 0.0)
    return out


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
