"""Mixture-of-experts blocks as one operation: E experts, each a gated MLP of three quantized linears, and a router's
choice of ``top_k`` experts (with weights) per token.

A model's experts block computes, for every token ``t`` and each of its ``top_k`` choices ``(e, w)``::

    h = silu(x_t @ gate_e^T) * (x_t @ up_e^T)
    y_t += w * (h @ down_e^T)            (or down_e applied to w * h: "weights before down", as some models do)

A backend serves this in one of two ways. It may declare, as data, that it serves all E experts at once
(:class:`ExpertsCapability` in ``Backend.experts_capabilities``: one ``build_experts`` for every expert, one call
with ``x``, the top-k expert ids and weights). Every other backend is served by the generic path
(:class:`GroupedExperts`): its own per-expert prepared layers, called once per expert that has tokens, with the
tokens grouped by expert, so that a decode step touches only the chosen experts' weights.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from wna16.errors import FormatError, UnsupportedError, UsageError, describe
from wna16.protocol import Backend, Capability, LayerSpec, PreparedLinear, Support
from wna16.scheme import Scheme
from wna16.weight import QuantizedWeight

PROJECTIONS: tuple[str, ...] = ("gate_proj", "up_proj", "down_proj")
"""The three linears of an expert, in the order :class:`ExpertWeights` keeps them (AutoRound's module names)."""

ACTIVATIONS: tuple[str, ...] = ("silu",)
"""Gate activations served (Qwen3-MoE, Qwen3-Omni-MoE, Mixtral, DeepSeek: SiLU)."""

PreparedExperts = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
"""What ``prepare_experts`` returns: called with ``x`` [..., H], ``topk_ids`` [T, top_k] (integer expert ids) and
``topk_weights`` [T, top_k] (T = the number of tokens in ``x``) it returns the block's output [..., H]."""


@dataclass(frozen=True)
class ExpertWeights:
    """The canonical weights of E experts: ``gate[e]``/``up[e]`` are [I, H] linears (K=H, N=I), ``down[e]`` [H, I]."""

    gate: tuple[QuantizedWeight, ...]
    up: tuple[QuantizedWeight, ...]
    down: tuple[QuantizedWeight, ...]

    def __post_init__(self) -> None:
        if not self.gate or not (len(self.gate) == len(self.up) == len(self.down)):
            raise FormatError(
                f"experts: got {len(self.gate)} gate, {len(self.up)} up and {len(self.down)} down weights, "
                "expected the same number (at least one) of each"
            )
        h, i = self.gate[0].in_features, self.gate[0].out_features
        want = {"gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}
        for e in range(self.num_experts):
            for proj, w in zip(PROJECTIONS, self.expert(e), strict=True):
                if (w.in_features, w.out_features) != want[proj]:
                    raise FormatError(
                        f"experts.{e}.{proj}: (in_features, out_features)=({w.in_features}, {w.out_features}), "
                        f"expected {want[proj]} like experts.0"
                    )

    @property
    def num_experts(self) -> int:
        """E."""
        return len(self.gate)

    @property
    def hidden_size(self) -> int:
        """H: the input and output size of the block."""
        return self.gate[0].in_features

    @property
    def intermediate_size(self) -> int:
        """I: the output size of gate/up, the input size of down."""
        return self.gate[0].out_features

    def expert(self, e: int) -> tuple[QuantizedWeight, QuantizedWeight, QuantizedWeight]:
        """(gate, up, down) of expert ``e``."""
        return self.gate[e], self.up[e], self.down[e]

    def to(self, device: str | torch.device) -> ExpertWeights:
        """The same experts on ``device``."""
        return ExpertWeights(*(tuple(w.to(device) for w in ws) for ws in (self.gate, self.up, self.down)))


@dataclass(frozen=True)
class ExpertsSpec:
    """Everything a backend may need to know about an experts block before seeing its tensors.

    ``schemes`` holds one scheme per (expert, projection) in the order ``e * 3 + p`` (:data:`PROJECTIONS`);
    ``act_orders`` likewise. ``weights_before_down`` says where the model applies the routing weights (it changes
    the rounding, not the mathematics).
    """

    num_experts: int
    top_k: int
    hidden_size: int
    intermediate_size: int
    schemes: tuple[Scheme, ...]
    dtype: torch.dtype = torch.bfloat16
    act_orders: tuple[bool, ...] = ()
    weights_before_down: bool = False
    activation: str = "silu"
    device: str = "cpu"
    capability: tuple[int, int] | None = None
    layers: tuple[LayerSpec, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        acts = self.act_orders or (False,) * len(self.schemes)
        object.__setattr__(self, "act_orders", acts)
        layers = []
        for i, (scheme, act) in enumerate(zip(self.schemes, acts, strict=False)):
            k, n = (
                (self.intermediate_size, self.hidden_size) if i % 3 == 2 else (self.hidden_size, self.intermediate_size)
            )
            layers.append(LayerSpec(k, n, scheme, self.dtype, act, False, self.device, self.capability))
        object.__setattr__(self, "layers", tuple(layers))

    @classmethod
    def of(
        cls,
        weights: ExpertWeights,
        top_k: int,
        dtype: torch.dtype = torch.bfloat16,
        *,
        weights_before_down: bool = False,
        device: str | torch.device = "cpu",
    ) -> ExpertsSpec:
        """The spec of canonical experts weights (schemes and act order read from them)."""
        every = [w for e in range(weights.num_experts) for w in weights.expert(e)]
        probe = LayerSpec.of(every[0], dtype, device=device)
        return cls(
            weights.num_experts,
            top_k,
            weights.hidden_size,
            weights.intermediate_size,
            tuple(w.scheme for w in every),
            dtype,
            tuple(w.act_order for w in every),
            weights_before_down,
            "silu",
            probe.device,
            probe.capability,
        )

    @property
    def scheme(self) -> Scheme | None:
        """The experts' shared scheme, or ``None`` when the experts (or their projections) differ."""
        return self.schemes[0] if len(set(self.schemes)) == 1 else None

    def layer(self, expert: int, projection: int) -> LayerSpec:
        """The spec of one expert's linear (``projection`` indexes :data:`PROJECTIONS`)."""
        return self.layers[expert * 3 + projection]

    def distinct_layers(self) -> list[LayerSpec]:
        """The different per-expert layer specs, in first-seen order (what a per-layer ``check`` must cover)."""
        return list(dict.fromkeys(self.layers))

    def problems(self) -> list[str]:
        """Reasons the spec itself is invalid, whatever the backend."""
        out: list[str] = []
        if self.num_experts < 1:
            out.append(f"num_experts {self.num_experts} < 1")
        if not 1 <= self.top_k <= max(self.num_experts, 1):
            out.append(f"top_k {self.top_k} not in [1, num_experts={self.num_experts}]")
        if len(self.schemes) != 3 * self.num_experts or len(self.act_orders) != len(self.schemes):
            out.append(f"{len(self.schemes)} schemes for {self.num_experts} experts, expected 3 per expert")
        if self.activation not in ACTIVATIONS:
            out.append(f"activation {self.activation!r} not served (serves {list(ACTIVATIONS)})")
        out += list(dict.fromkeys(p for layer in self.distinct_layers() for p in layer.problems()))
        return out


def describe_experts(spec: ExpertsSpec) -> str:
    """One-line description of an experts spec for messages."""
    scheme = (
        str(spec.scheme) if spec.scheme is not None else "mixed(" + ",".join(sorted(set(map(str, spec.schemes)))) + ")"
    )
    where = "before" if spec.weights_before_down else "after"
    dtype = str(spec.dtype).removeprefix("torch.")
    return (
        f"experts E={spec.num_experts} top_k={spec.top_k} H={spec.hidden_size} I={spec.intermediate_size} {scheme} "
        f"{dtype} {spec.device} weights {where} down"
    )


@dataclass(frozen=True)
class ExpertsCapability:
    """One rule of what a backend serves as a whole experts block (a fused path).

    ``linear`` says which per-expert linears the kernel covers (bits, groups, sym/asym, dtypes, devices, the
    precisions the error model reads). ``num_experts``/``top_k`` of ``None`` mean any. ``mixed_schemes`` is whether
    the experts may carry different schemes (a kernel reading one scheme for all experts must say ``False``);
    ``weights_before_down``/``weights_after_down`` which routing-weight placements it computes.
    """

    linear: Capability
    num_experts: frozenset[int] | None = None
    max_num_experts: int | None = None
    top_k: frozenset[int] | None = None
    mixed_schemes: bool = False
    weights_before_down: bool = True
    weights_after_down: bool = True
    priority: int = 0
    label: str = ""

    def reasons(self, spec: ExpertsSpec) -> list[str]:
        """Every reason this rule does not cover ``spec`` (empty when it does)."""
        out: list[str] = []
        if self.num_experts is not None and spec.num_experts not in self.num_experts:
            out.append(f"{spec.num_experts} experts not supported (supports {sorted(self.num_experts)})")
        if self.max_num_experts is not None and spec.num_experts > self.max_num_experts:
            out.append(f"{spec.num_experts} experts exceed the maximum {self.max_num_experts}")
        if self.top_k is not None and spec.top_k not in self.top_k:
            out.append(f"top_k {spec.top_k} not supported (supports {sorted(self.top_k)})")
        if not self.mixed_schemes and (spec.scheme is None or len(set(spec.act_orders)) > 1):
            out.append("experts with different schemes not supported (one scheme for every expert and projection)")
        if spec.weights_before_down and not self.weights_before_down:
            out.append("routing weights applied before the down projection not supported")
        if not spec.weights_before_down and not self.weights_after_down:
            out.append("routing weights applied after the down projection not supported")
        out += list(dict.fromkeys(r for layer in spec.distinct_layers() for r in self.linear.reasons(layer)))
        return out


@dataclass(frozen=True)
class ExpertsSupport:
    """The answer of ``check_experts``: true when ``reasons`` is empty. ``rule`` is the fused rule that matched, or
    ``None`` when the generic per-expert path serves the block (then each linear's own rule applies)."""

    backend: str
    reasons: tuple[str, ...] = ()
    rule: ExpertsCapability | None = field(default=None, compare=False)

    def __bool__(self) -> bool:
        return not self.reasons

    @property
    def fused(self) -> bool:
        """Whether the backend's own experts kernel serves the block (else the generic path)."""
        return bool(self) and self.rule is not None

    def linear_rule(self, backend: Backend, layer: LayerSpec) -> Capability:
        """The capability whose precisions apply to ``layer`` (one expert's linear) in this block."""
        if self.rule is not None:
            return self.rule.linear
        support: Support = backend.check(layer)
        if support.rule is None:
            raise UsageError(f"backend {backend.name!r} does not claim {layer}: {list(support.reasons)}")
        return support.rule


def check_experts(backend: Backend, spec: ExpertsSpec) -> ExpertsSupport:
    """Pure data: can ``backend`` serve ``spec``? Its declared experts rules first (the fused path); a backend that
    declares none is checked per linear (the generic path). Every reason at once when it cannot."""
    problems = spec.problems()
    if problems:
        return ExpertsSupport(backend.name, tuple(f"invalid spec: {p}" for p in problems))
    rules = backend.experts_capabilities
    if rules:
        per_rule = [(rule, rule.reasons(spec)) for rule in rules]
        matching = [rule for rule, reasons in per_rule if not reasons]
        if matching:
            return ExpertsSupport(backend.name, (), max(matching, key=lambda r: r.priority))
        if len(per_rule) == 1:
            return ExpertsSupport(backend.name, tuple(per_rule[0][1]))
        labelled = [f"[{rule.label or i}] " + ", ".join(reasons) for i, (rule, reasons) in enumerate(per_rule)]
        return ExpertsSupport(backend.name, tuple(labelled))
    reasons = [f"{layer.out_features}x{layer.in_features} {layer.scheme}: {r}"
               for layer in spec.distinct_layers() for r in backend.check(layer).reasons]  # fmt: skip
    return ExpertsSupport(backend.name, tuple(dict.fromkeys(reasons)))


def prepare_experts(backend: Backend, weights: ExpertWeights, spec: ExpertsSpec) -> PreparedExperts:
    """Prepare every expert once and return the callable that computes the block.

    Raises :class:`UnsupportedError` with every reason when :func:`check_experts` refuses, :class:`FormatError`
    when the weights are not the ones ``spec`` describes. A backend with a matching experts rule builds its own
    kernel (``build_experts``); any other is served by :class:`GroupedExperts` over its per-expert layers.
    """
    support = check_experts(backend, spec)
    if not support:
        raise UnsupportedError(f"backend {backend.name!r} cannot serve {describe_experts(spec)}", support.reasons)
    if ExpertsSpec.of(weights, spec.top_k, spec.dtype, weights_before_down=spec.weights_before_down,
                      device=spec.device) != spec:  # fmt: skip
        raise FormatError(f"experts: the weights describe {describe_experts(ExpertsSpec.of(weights, spec.top_k))} "
                          f"with schemes {[str(s) for s in ExpertsSpec.of(weights, 1).schemes]}, "
                          f"the spec {describe_experts(spec)} with {[str(s) for s in spec.schemes]}")  # fmt: skip
    if support.fused:
        return backend.build_experts(weights, spec)
    prepared = [
        [backend.prepare(w, spec.layer(e, p)) for p, w in enumerate(weights.expert(e))] for e in range(spec.num_experts)
    ]
    return GroupedExperts(prepared, spec)


@dataclass(frozen=True)
class Routing:
    """A router's decision grouped by expert: ``tokens[starts[e]:starts[e+1]]`` are the rows of ``x`` routed to
    expert ``e`` and ``weights`` (same order) their routing weights; ``active`` the experts with at least one token."""

    tokens: torch.Tensor
    weights: torch.Tensor
    starts: list[int]
    active: list[int]

    @classmethod
    def of(cls, topk_ids: torch.Tensor, topk_weights: torch.Tensor, num_tokens: int, spec: ExpertsSpec) -> Routing:
        """Validate and group; raises :class:`FormatError` naming ``topk_ids``/``topk_weights``."""
        shape = (num_tokens, spec.top_k)
        if tuple(topk_ids.shape) != shape or topk_ids.dtype.is_floating_point or topk_ids.dtype == torch.bool:
            raise FormatError(f"topk_ids: got {describe(topk_ids)}, expected an integer {list(shape)} tensor")
        if tuple(topk_weights.shape) != shape or not topk_weights.is_floating_point():
            raise FormatError(f"topk_weights: got {describe(topk_weights)}, expected a float {list(shape)} tensor")
        flat = topk_ids.reshape(-1).to(torch.int64)
        counts = torch.bincount(flat.clamp(0, spec.num_experts), minlength=spec.num_experts + 1).tolist()
        if flat.numel() and (counts[spec.num_experts] or int(flat.min()) < 0):
            raise FormatError(f"topk_ids: values outside [0, {spec.num_experts}) (the experts of this block)")
        order = torch.argsort(flat, stable=True)
        starts = [0]
        for c in counts[: spec.num_experts]:
            starts.append(starts[-1] + c)
        active = [e for e in range(spec.num_experts) if counts[e]]
        return cls(order // spec.top_k, topk_weights.reshape(-1)[order], starts, active)


class GroupedExperts:
    """The generic path: the tokens of each chosen expert go through that expert's three prepared layers together.

    The contributions are weighted in the activation dtype (as a model does) and summed in float32.
    """

    def __init__(self, layers: Sequence[Sequence[PreparedLinear]], spec: ExpertsSpec) -> None:
        self.layers = [tuple(expert) for expert in layers]
        self.spec = spec

    def __call__(self, x: torch.Tensor, topk_ids: torch.Tensor, topk_weights: torch.Tensor) -> torch.Tensor:
        spec = self.spec
        x2 = x.reshape(-1, spec.hidden_size)
        routing = Routing.of(topk_ids, topk_weights, x2.shape[0], spec)
        out = torch.zeros(x2.shape[0], spec.hidden_size, dtype=torch.float32, device=x.device)
        for e in routing.active:
            rows = routing.tokens[routing.starts[e] : routing.starts[e + 1]]
            weight = routing.weights[routing.starts[e] : routing.starts[e + 1], None].to(x.dtype)
            gate, up, down = self.layers[e]
            xe = x2[rows]
            h = torch.nn.functional.silu(gate(xe)) * up(xe)
            y = down(h * weight) if spec.weights_before_down else down(h) * weight
            out.index_add_(0, rows, y.to(torch.float32))
        return out.to(x.dtype).reshape(x.shape)
