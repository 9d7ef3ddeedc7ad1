"""The backend protocol: what a layer needs (:class:`LayerSpec`), what a backend serves (:class:`Capability`, as data),
and the two calls every backend implements: ``check`` (pure data, runs anywhere) and ``prepare`` (repack once).

A backend subclasses :class:`Backend`, declares ``name`` and ``capabilities`` and implements :meth:`Backend.build`.
The base class does the rest: ``check`` evaluates the declaration and returns *every* reason at once; ``prepare``
refuses with :class:`UnsupportedError` before ``build`` is ever called, so a backend never computes on a spec it did
not claim. The conformance suite reads the same declaration to decide what each backend must compute and what it
must refuse.

Two escape hatches keep that contract where plain data is not enough:

- a refusal that is not capability data (a rule of the installed runtime, a shape a vendor library refuses after
  padding) is computed by :meth:`Backend.refusals`, which ``check`` evaluates: ``check`` stays the one place a spec
  is accepted or refused, and ``prepare`` never refuses a spec ``check`` accepted;
- capabilities that depend on the environment (what the installed vLLM's kernel serves, the CPU's ISA) are declared
  with :class:`LazyCapabilities`: resolved on first use and cached, so that discovering backends never imports a
  vendor runtime or probes a device the caller did not ask about.
"""

from __future__ import annotations

import abc
import difflib
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

import torch

from wna16.errors import FormatError, UnsupportedError, describe, layer_shape
from wna16.groups import has_partial_group
from wna16.partition import Shard
from wna16.scheme import Scheme
from wna16.weight import QuantizedWeight

if TYPE_CHECKING:  # wna16.experts builds on this module
    from wna16.experts import ExpertsCapability, ExpertsSpec, ExpertWeights, PreparedExperts

ACTIVATION_DTYPES: tuple[torch.dtype, ...] = (torch.float16, torch.bfloat16, torch.float32)

PreparedLinear = Callable[[torch.Tensor], torch.Tensor]
"""What ``prepare`` returns: called with ``x`` [..., in_features] it returns ``x @ W^T + b`` [..., out_features]."""


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


@dataclass(frozen=True)
class LayerSpec:
    """Everything a backend may need to know about a layer before seeing its tensors.

    ``in_features``/``out_features`` are the local sizes (of the slice, under tensor parallelism). ``dtype`` is the
    activation dtype (also the output dtype). ``device`` is a device string (``"cpu"``, ``"cuda:0"``); ``capability``
    the device's compute capability where it has one (CUDA), so that ``check`` stays pure data.
    """

    in_features: int
    out_features: int
    scheme: Scheme
    dtype: torch.dtype = torch.float16
    act_order: bool = False
    bias: bool = False
    device: str = "cpu"
    capability: tuple[int, int] | None = None
    shard: Shard | None = None

    @property
    def device_type(self) -> str:
        """``"cuda"`` for ``"cuda:0"``; parsed from the string so that device types torch only learns from a plugin
        (``"npu"`` before ``torch_npu`` is imported) still have a type."""
        return str(self.device).split(":", 1)[0]

    @property
    def is_k_slice(self) -> bool:
        """True when this layer is a row-parallel slice whose output is a partial sum."""
        return self.shard is not None and self.in_features != self.shard.full_in_features

    @property
    def adds_bias(self) -> bool:
        """Whether the backend must add the bias: the layer has one and, under K-slicing, this slice owns it."""
        return self.bias and (self.shard is None or self.shard.adds_bias)

    @classmethod
    def of(
        cls,
        weight: QuantizedWeight,
        dtype: torch.dtype = torch.float16,
        *,
        bias: bool = False,
        device: str | torch.device = "cpu",
        shard: Shard | None = None,
    ) -> LayerSpec:
        """The spec of a canonical weight (act order read from its ``g_idx``), with CUDA capability looked up."""
        dev = torch.device(device)
        capability = None
        if dev.type == "cuda" and torch.cuda.is_available():
            capability = torch.cuda.get_device_capability(dev)
        return cls(
            weight.in_features,
            weight.out_features,
            weight.scheme,
            dtype,
            weight.act_order,
            bias,
            str(dev),
            capability,
            shard,
        )

    def problems(self) -> list[str]:
        """Reasons the spec itself is invalid, whatever the backend."""
        out: list[str] = []
        if self.dtype not in ACTIVATION_DTYPES:
            out.append(f"activation dtype {_dtype_name(self.dtype)} is not one of fp16/bf16/fp32")
        if self.shard is not None:
            s = self.scheme
            out += self.shard.problems(self.in_features, self.out_features, s.group_size, s.bits, self.act_order)
        return out


@dataclass(frozen=True)
class Capability:
    """One rule of what a backend serves. A backend's capabilities are the union of its rules.

    ``group_sizes`` of ``None`` means every group size (-1 and any positive size). ``param_dtype`` is the dtype the
    backend rounds scales and zero-terms to (``None``: the activation dtype) and ``accum_dtype`` the dtype it
    accumulates in; the conformance error model uses both, so declare them honestly. ``priority`` ranks backends that
    can all serve a spec (higher wins); a backend may give a slow rule a low priority.
    """

    bits: frozenset[int]
    dtypes: frozenset[torch.dtype]
    group_sizes: frozenset[int] | None = None
    partial_last_group: bool = False
    sym: bool = True
    asym: bool = False
    devices: frozenset[str] | None = frozenset({"cpu"})
    param_dtype: torch.dtype | None = None
    accum_dtype: torch.dtype = torch.float32
    k_multiple: int = 1
    n_multiple: int = 1
    act_order: bool = False
    k_slices: bool = False
    min_capability: tuple[int, int] | None = None
    noncontiguous_input: bool = True
    priority: int = 0
    label: str = ""

    def reasons(self, spec: LayerSpec) -> list[str]:
        """Every reason this rule does not cover ``spec`` (empty when it does)."""
        s, out = spec.scheme, []
        if s.bits not in self.bits:
            out.append(f"{s.bits}-bit not supported (supports {sorted(self.bits)})")
        if self.group_sizes is not None and s.group_size not in self.group_sizes:
            out.append(f"group size {s.group_size} not supported (supports {sorted(self.group_sizes)})")
        full_k = spec.shard.full_in_features if spec.shard is not None else spec.in_features
        if not self.partial_last_group and has_partial_group(s, spec.in_features, full_in_features=full_k):
            out.append(f"partial last group not supported (K={spec.in_features} is not a multiple of {s.group_size})")
        if s.sym and not self.sym:
            out.append("symmetric schemes not supported")
        if not s.sym and not self.asym:
            out.append("asymmetric schemes (zero points) not supported")
        if spec.dtype not in self.dtypes:
            names = sorted(_dtype_name(d) for d in self.dtypes)
            out.append(f"activation dtype {_dtype_name(spec.dtype)} not supported (supports {names})")
        if self.devices is not None and spec.device_type not in self.devices:
            out.append(f"device type {spec.device_type!r} not supported (supports {sorted(self.devices)})")
        if spec.in_features % self.k_multiple:
            out.append(f"in_features {spec.in_features} is not a multiple of {self.k_multiple}")
        if spec.out_features % self.n_multiple:
            out.append(f"out_features {spec.out_features} is not a multiple of {self.n_multiple}")
        if spec.act_order and not self.act_order:
            out.append("act order (non-trivial g_idx) not supported")
        if spec.is_k_slice and not self.k_slices:
            out.append("K-slices (row-parallel partial sums) not supported")
        needs = self.min_capability
        if needs is not None and spec.device_type == "cuda" and (spec.capability is None or spec.capability < needs):
            out.append(f"device capability {spec.capability} below the required {self.min_capability}")
        return out


@dataclass(frozen=True)
class Support:
    """The answer of ``check``: true when ``reasons`` is empty; ``rule`` is the capability that matched."""

    backend: str
    reasons: tuple[str, ...] = ()
    rule: Capability | None = field(default=None, compare=False)

    def __bool__(self) -> bool:
        return not self.reasons

    @property
    def priority(self) -> int:
        """Priority of the matching rule (only meaningful when supported)."""
        return self.rule.priority if self.rule is not None else 0


@dataclass(frozen=True)
class Availability:
    """Whether a backend can run here: its dependencies import and its device is present, else why not."""

    ok: bool
    reason: str = ""

    def __bool__(self) -> bool:
        return self.ok


class LazyCapabilities:
    """A ``capabilities`` declaration that depends on the environment, resolved on first read and cached.

    ``devices`` are the device types the rules can name, declared up front: :meth:`Backend.device_types` reads them
    without resolving, so that a backend asked about another device (a CPU layer, ``wna16 backends --device cpu``)
    refuses it without importing its runtime or probing its device. ``resolve`` runs once per class, under a lock,
    on the first read of ``capabilities`` (``check`` of a spec on one of ``devices``, the conformance suite, the CLI
    asked about that device); it may import the vendor runtime and query the device. From the caller's view ``check``
    is unchanged: pure data, the same answer every time.
    """

    def __init__(self, devices: Iterable[str], resolve: Callable[[], Iterable[Capability]]) -> None:
        self.devices = frozenset(devices)
        self._resolve = resolve
        self._rules: tuple[Capability, ...] | None = None
        self._lock = threading.Lock()
        self._owner = "?"

    def __set_name__(self, owner: type, name: str) -> None:
        self._owner = owner.__qualname__

    @property
    def resolved(self) -> bool:
        """Whether the rules were resolved already (reading them now costs nothing)."""
        return self._rules is not None

    def rules(self) -> tuple[Capability, ...]:
        """The rules, resolved now if this is the first read. A rule naming a device type outside ``devices`` (or
        every device) is a bug of the declaration, refused with the class named."""
        if self._rules is None:
            with self._lock:
                if self._rules is None:
                    rules = tuple(self._resolve())
                    stray = [
                        r.label or str(i) for i, r in enumerate(rules) if r.devices is None or r.devices - self.devices
                    ]
                    if stray:
                        raise TypeError(
                            f"{self._owner}.capabilities: rules {stray} name device types outside the declared "
                            f"{sorted(self.devices)}"
                        )
                    self._rules = rules
        return self._rules

    def __get__(self, instance: object, owner: type | None = None) -> tuple[Capability, ...]:
        return self.rules()


class Backend(abc.ABC):
    """Base class of every backend. Subclasses declare ``name``/``capabilities`` and implement :meth:`build`
    (optionally :meth:`refusals` and :meth:`available`)."""

    name: ClassVar[str]
    capabilities: ClassVar[tuple[Capability, ...]]
    description: ClassVar[str] = ""
    experts_capabilities: ClassVar[tuple[ExpertsCapability, ...]] = ()
    """Experts blocks this backend computes at once (see :mod:`wna16.experts`); empty: the generic per-expert path
    over this backend's own layers serves them."""
    compile_refusal: ClassVar[str] = ""
    """Why this backend's prepared layers are not :class:`wna16.ops.PreparedOp` calls that ``torch.compile`` traces
    (empty: they are, and the conformance suite's ``compile`` check verifies it; else it records that check as
    skipped with this reason)."""
    conformance_filter: ClassVar[str | None] = None
    """A TOML filter file of known gaps the conformance suite applies to this backend (a path relative to the
    directory of the module defining the class, or absolute): see conformance/README.md."""

    def __init_subclass__(cls, **kwargs: object) -> None:
        """Refuse a class attribute that misspells one of the declarations above (``conformance_filters``,
        ``capabilites``): a misspelt declaration would otherwise be silently ignored."""
        super().__init_subclass__(**kwargs)
        declared = (
            "name", "capabilities", "description", "conformance_filter", "experts_capabilities", "compile_refusal",
        )  # fmt: skip
        for attr, value in vars(cls).items():
            if attr in declared or callable(value) or isinstance(value, (property, staticmethod, classmethod)):
                continue
            close = difflib.get_close_matches(attr, declared, n=1, cutoff=0.8)
            if close:
                raise TypeError(f"{cls.__qualname__}.{attr}: not a Backend declaration; did you mean {close[0]!r}?")

    @classmethod
    def capability_declaration(cls) -> tuple[Capability, ...] | LazyCapabilities:
        """``capabilities`` as declared: the rules, or the :class:`LazyCapabilities` that resolves them (reading the
        declaration resolves nothing)."""
        declared: tuple[Capability, ...] | LazyCapabilities = next(
            (vars(k)["capabilities"] for k in cls.__mro__ if "capabilities" in vars(k)), ()
        )
        return declared

    @classmethod
    def device_types(cls) -> frozenset[str] | None:
        """The device types this backend's rules can serve (``None``: any), read without resolving a
        :class:`LazyCapabilities` declaration."""
        declared = cls.capability_declaration()
        if isinstance(declared, LazyCapabilities):
            return declared.devices
        if any(rule.devices is None for rule in declared):
            return None
        return frozenset().union(*(rule.devices or () for rule in declared))

    def available(self, device: str | torch.device = "cpu") -> Availability:
        """Whether the backend can run on ``device`` here. The default covers pure-torch backends: the device type
        is declared and torch can allocate on it. Backends with optional dependencies override this, asking about
        the device type first (:meth:`device_types`) so that another device never imports their runtime."""
        kind = str(device).split(":", 1)[0]
        declared = self.device_types()
        if declared is not None and kind not in declared:
            return Availability(False, f"device type {kind!r} not served (serves {sorted(declared)})")
        try:
            torch.empty(0, device=device)
        except (RuntimeError, AssertionError) as exc:
            return Availability(False, f"device {device} not present: {exc}")
        return Availability(True)

    def check(self, spec: LayerSpec) -> Support:
        """Pure data: can this backend serve ``spec``? Returns every reason when it cannot: those of the declared
        rules, then (for a spec a rule accepts) those :meth:`refusals` computes. A device type no rule can name is
        refused on its own, before the rules are read (they may be resolved lazily, for that device only)."""
        problems = spec.problems()
        if problems:
            return Support(self.name, tuple(f"invalid spec: {p}" for p in problems))
        devices = self.device_types()
        if devices is not None and spec.device_type not in devices:
            return Support(self.name, (f"device type {spec.device_type!r} not supported (supports {sorted(devices)})",))
        per_rule = [(rule, rule.reasons(spec)) for rule in self.capabilities]
        matching = [rule for rule, reasons in per_rule if not reasons]
        if matching:
            computed = self.refusals(spec)
            return Support(self.name, tuple(computed), None if computed else max(matching, key=lambda r: r.priority))
        if len(per_rule) == 1:
            return Support(self.name, tuple(per_rule[0][1]))
        labelled = [f"[{rule.label or i}] " + ", ".join(reasons) for i, (rule, reasons) in enumerate(per_rule)]
        return Support(self.name, tuple(labelled))

    def refusals(self, spec: LayerSpec) -> list[str]:
        """Reasons to refuse ``spec`` that the capability data cannot express (a rule of the installed vendor
        runtime, a padded shape its kernel refuses); empty by default.

        Called by :meth:`check` only for a valid spec one of the declared rules accepts, so it may assume that rule
        (device type, bits, dtype); it sees the spec, never the tensors, and must be as pure as ``check``: the same
        answer for the same spec. Everything that can make ``build`` refuse belongs here: the conformance suite
        fails a backend whose ``prepare`` raises :class:`UnsupportedError` for a spec ``check`` accepted.
        """
        return []

    def prepare(self, weight: QuantizedWeight, spec: LayerSpec, bias: torch.Tensor | None = None) -> PreparedLinear:
        """Repack ``weight`` for ``spec`` once and return the callable that computes ``x @ W^T + b``.

        Raises :class:`UnsupportedError` with every reason when ``check`` refuses the spec, and
        :class:`FormatError` when the tensors do not match the spec. Never mutates ``weight`` or ``bias``.
        """
        support = self.check(spec)
        if not support:
            raise UnsupportedError(f"backend {self.name!r} cannot serve {describe_spec(spec)}", support.reasons)
        _match(weight, spec, bias)
        return self.build(weight, spec, bias)

    @abc.abstractmethod
    def build(self, weight: QuantizedWeight, spec: LayerSpec, bias: torch.Tensor | None) -> PreparedLinear:
        """Repack into this backend's layout on ``spec.device``; called only for specs ``check`` accepted, which it
        must serve (a refusal belongs in the declaration or :meth:`refusals`). Add ``bias`` only where
        ``spec.adds_bias``."""

    def build_experts(self, weights: ExpertWeights, spec: ExpertsSpec) -> PreparedExperts:
        """Build this backend's experts kernel; called only for specs one of ``experts_capabilities`` accepted. A
        backend that declares experts rules overrides it."""
        raise UnsupportedError(
            f"backend {self.name!r} declares experts_capabilities but does not implement build_experts", [self.name]
        )


def describe_spec(spec: LayerSpec) -> str:
    """One-line description of a spec for messages and reports."""
    parts = [layer_shape(spec.in_features, spec.out_features), str(spec.scheme), _dtype_name(spec.dtype), spec.device]
    if spec.act_order:
        parts.append("act-order")
    if spec.bias:
        parts.append("bias")
    if spec.shard is not None:
        parts.append(f"shard(k={spec.shard.k_start}, n={spec.shard.n_start}, adds_bias={spec.shard.adds_bias})")
    return " ".join(parts)


def _match(weight: QuantizedWeight, spec: LayerSpec, bias: torch.Tensor | None) -> None:
    """Raise :class:`FormatError` unless the weight and bias are the ones ``spec`` describes."""
    got = (weight.in_features, weight.out_features, weight.scheme, weight.act_order)
    want = (spec.in_features, spec.out_features, spec.scheme, spec.act_order)
    if got != want:
        raise FormatError(f"{weight.name}: weight is (K, N, scheme, act_order)={got}, spec expects {want}")
    if spec.bias != (bias is not None):
        raise FormatError(f"bias: spec says bias={spec.bias}, got {describe(bias) if bias is not None else None}")
    if bias is not None and (bias.dim() != 1 or bias.shape[0] != spec.out_features or not bias.is_floating_point()):
        raise FormatError(f"bias: got {describe(bias)}, expected a float [{spec.out_features}] tensor")
