"""``QuantLinear``: a ``torch.nn.Module`` serving one quantized linear layer through a backend from the registry;
``QuantExperts``: a mixture-of-experts block of quantized experts, served the same way.

The canonical weight is the source of truth that ``state_dict`` saves (in the checkpoint layout named by
``weight_format``, GPTQ v2 unless the layer came from another) and that a move to another device re-prepares from;
the device holds only the backend's layout. Given a ``source`` (a callable that re-reads the weight, as
:func:`wna16.patch_model` passes for a checkpoint), the module does not keep the canonical weight once the backend
has its own layout: one packed copy per layer stays resident, and ``state_dict`` / ``.to()`` read it again. Without
one, the module keeps it in host memory; backends whose layout *is* the canonical one (the reference backend on CPU)
share its storage, so no second copy exists. ``.to()``, ``.cuda()``, ``.half()`` ... re-prepare for the new device
and dtype, or raise :class:`UnsupportedError` and leave the module as it was; it never computes with a layout meant
for another device.

Edges behave as ``torch.nn.Linear``'s do: ``.to("meta")`` works (forward then computes shapes only, and a move back
re-prepares from the host weight); a non-tensor input is a ``TypeError`` (:class:`InputTypeError`), a 0-d input a
:class:`FormatError`; ``load_state_dict(strict=False)`` lists missing keys instead of raising, and ``strict=True``
raises on unexpected ones. A backend chosen by priority whose ``build`` raises is skipped (the registry logs its
traceback) and the next one serves; a backend named explicitly raises.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from wna16.errors import FormatError, InputTypeError, NoBackendError, UnsupportedError, Wna16Error, describe
from wna16.experts import PROJECTIONS, ExpertsSpec, ExpertWeights, PreparedExperts, prepare_experts
from wna16.formats import PackedFormat, PackingFormat, get_format
from wna16.protocol import Backend, LayerSpec, PreparedLinear
from wna16.registry import Registry, default_registry, select_experts
from wna16.weight import QuantizedWeight


class QuantLinear(torch.nn.Module):
    """``y = x @ W^T + b`` for a quantized ``W``; ``backend_name`` says which backend serves it."""

    def __init__(
        self,
        weight: QuantizedWeight,
        bias: torch.Tensor | None = None,
        *,
        dtype: torch.dtype = torch.float16,
        device: str | torch.device = "cpu",
        backend: str | Backend | None = None,
        registry: Registry | None = None,
        weight_format: PackedFormat | PackingFormat | str = PackingFormat.GPTQ_V2,
        source: Callable[[], QuantizedWeight] | None = None,
        name: str = "",
    ) -> None:
        super().__init__()
        self.name = name or ("" if weight.name == "weight" else weight.name)
        """The layer's name in messages (``patch_model`` passes the module's; default: the weight's own name)."""
        self.weight_format = get_format(weight_format) if isinstance(weight_format, str) else weight_format
        self.in_features: int = weight.in_features
        self.out_features: int = weight.out_features
        self.scheme = weight.scheme
        self._act_order = weight.act_order
        self._weight: QuantizedWeight | None = weight.to("cpu")
        self._source = source
        self._bias = None if bias is None else bias.detach().to("cpu")
        self._requested = backend
        self._registry = registry or default_registry()
        self.dtype, self.device = dtype, torch.device(device)
        self.backend, self._prepared, self.rejected = self._build(self.device, dtype)
        if source is not None:
            self._weight = None  # the backend holds its own layout; the source gives the canonical one back

    @property
    def backend_name(self) -> str:
        """Name of the backend serving this layer."""
        return self.backend.name

    @property
    def spec(self) -> LayerSpec:
        """The layer spec the serving backend was chosen for (device and dtype as they are now)."""
        return self._built_spec

    def canonical(self) -> QuantizedWeight:
        """The canonical weight on CPU: the one kept, or read again from the source."""
        if self._weight is not None:
            return self._weight
        assert self._source is not None
        weight = self._source().to("cpu")
        got = (weight.in_features, weight.out_features, weight.scheme, weight.act_order)
        want = (self.in_features, self.out_features, self.scheme, self._act_order)
        if got != want:
            raise FormatError(f"{weight.name}: the source now gives (K, N, scheme, act_order)={got}, expected {want}")
        return weight

    def _build(self, device: torch.device, dtype: torch.dtype) -> tuple[Backend, PreparedLinear, dict[str, Any]]:
        canonical = self.canonical()
        spec = LayerSpec.of(canonical, dtype, bias=self._bias is not None, device=device)
        try:
            failed: dict[str, str] = {}
            while True:
                selection = self._registry.select(spec, self._requested, exclude=failed)
                weight = canonical.to(device)
                bias = None if self._bias is None else self._bias.to(device)
                try:
                    prepared = selection.backend.prepare(weight, spec, bias)
                except Exception as exc:
                    if selection.explicit:
                        raise
                    failed[selection.backend.name] = self._registry.fault(selection.backend.name, "build", exc)
                    continue
                self._built_spec = spec
                return selection.backend, prepared, {**selection.rejected, **{k: (v,) for k, v in failed.items()}}
        except Wna16Error as exc:
            raise self._named(exc) from exc

    def _named(self, exc: Wna16Error) -> Wna16Error:
        """The same error, its message prefixed with the layer's name (a model has hundreds of layers)."""
        if not self.name or str(exc).startswith(f"{self.name}:"):
            return exc
        if isinstance(exc, NoBackendError):
            return type(exc)(f"{self.name}: {exc.subject}", exc.by_backend)
        if isinstance(exc, UnsupportedError):
            return type(exc)(f"{self.name}: {exc.subject}", exc.reasons)
        try:
            return type(exc)(f"{self.name}: {exc}")
        except TypeError:  # an error type with another constructor: keep it, add the name as a note
            exc.add_note(f"layer: {self.name}")
            return exc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Compute with the prepared backend; ``x`` must be in the layer's dtype and on its device."""
        if not isinstance(x, torch.Tensor):
            raise InputTypeError(f"input: got {type(x).__name__}, expected a torch.Tensor [..., {self.in_features}]")
        if x.dim() == 0 or x.dtype != self.dtype or x.device != self.device or x.shape[-1] != self.in_features:
            raise FormatError(
                f"{self.name or 'input'}: input is {describe(x)} on {x.device}, expected [..., {self.in_features}] "
                f"{str(self.dtype).removeprefix('torch.')} on {self.device}"
            )
        if self.device.type == "meta":
            return x.new_empty((*x.shape[:-1], self.out_features))
        return self._prepared(x)

    def _probe(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """What ``fn`` (``.to``, ``.cuda``, ``.half`` ...) does to a tensor of this layer's device and dtype. On meta,
        a function that leaves meta raises (nothing to copy): its target is then read from a host tensor."""
        if self.device.type != "meta":
            return fn(torch.empty(0, dtype=self.dtype, device=self.device))
        try:
            return fn(torch.empty(0, dtype=self.dtype, device="meta"))
        except NotImplementedError:
            return fn(torch.empty(0, dtype=self.dtype))

    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True) -> QuantLinear:
        probe = self._probe(fn)
        if probe.device.type == "meta":  # shapes only, as torch.nn.Linear on meta; the host weight stays
            self.device, self.dtype = probe.device, probe.dtype
        elif probe.device != self.device or probe.dtype != self.dtype:
            self.backend, self._prepared, self.rejected = self._build(probe.device, probe.dtype)
            self.device, self.dtype = probe.device, probe.dtype
        super()._apply(fn, recurse)  # type: ignore[no-untyped-call]
        return self

    def _save_to_state_dict(self, destination: dict[str, Any], prefix: str, keep_vars: bool) -> None:
        for key, tensor in self.weight_format.pack(self.canonical()).items():
            destination[prefix + key] = tensor
        if self._bias is not None:
            destination[prefix + "bias"] = self._bias

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        own = {k.removeprefix(prefix): v for k, v in state_dict.items() if k.startswith(prefix)}
        roles = set(self.weight_format.expected_shapes(self.scheme, self.in_features, self.out_features))
        required = sorted(roles - {"g_idx"}) + (["bias"] if self._bias is not None else [])
        missing = [prefix + key for key in required if key not in own]
        missing_keys.extend(missing)
        if strict:
            allowed = roles | ({"bias"} if self._bias is not None else set())
            unexpected_keys.extend(prefix + key for key in own if key.split(".", 1)[0] not in allowed)
        if missing:  # nothing to build a weight from: keep the current one, as the missing keys say
            return
        own = {k: v for k, v in own.items() if k in roles or (k == "bias" and self._bias is not None)}
        try:
            weight = self.weight_format.unpack(own, self.scheme, self.in_features, self.out_features, prefix)
        except FormatError as exc:
            error_msgs.append(str(exc))
            return
        bias = own.get("bias")
        old = self._weight, self._bias, self._source, self._act_order
        self._weight, self._bias = weight.to("cpu"), None if bias is None else bias.detach().to("cpu")
        self._source, self._act_order = None, weight.act_order  # the loaded weight is now the truth: keep it
        try:
            self.backend, self._prepared, self.rejected = self._build(self.device, self.dtype)
        except Exception:
            self._weight, self._bias, self._source, self._act_order = old
            raise

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, scheme={self.scheme}, "
            f"act_order={self._act_order}, bias={self._bias is not None}, backend={self.backend.name}"
        )


class QuantExperts(torch.nn.Module):
    """A mixture-of-experts block of quantized experts: ``forward(x, top_k_index, top_k_weights)`` computes, per
    token, the routing-weighted sum of its chosen experts' gated MLPs (:mod:`wna16.experts`), the call signature of
    transformers' experts modules. ``backend_name`` says which backend serves it; ``fused`` whether through the
    backend's own experts kernel or the generic per-expert path."""

    def __init__(
        self,
        weights: ExpertWeights,
        top_k: int,
        *,
        dtype: torch.dtype = torch.bfloat16,
        device: str | torch.device = "cpu",
        backend: str | Backend | None = None,
        registry: Registry | None = None,
        weights_before_down: bool = False,
        weight_format: PackedFormat | PackingFormat | str = PackingFormat.GPTQ_V2,
    ) -> None:
        super().__init__()
        self.weight_format = get_format(weight_format) if isinstance(weight_format, str) else weight_format
        self.num_experts, self.top_k = weights.num_experts, top_k
        self.hidden_size, self.intermediate_size = weights.hidden_size, weights.intermediate_size
        self.weights_before_down = weights_before_down
        self._weights = weights.to("cpu")
        self._requested, self._registry = backend, registry
        self.dtype, self.device = dtype, torch.device(device)
        self.backend, self.fused, self._prepared, self.rejected = self._build(self.device, dtype)

    @property
    def backend_name(self) -> str:
        """Name of the backend serving the block."""
        return self.backend.name

    def spec(self, device: torch.device, dtype: torch.dtype) -> ExpertsSpec:
        """The block's spec on ``device`` with activations of ``dtype``."""
        return ExpertsSpec.of(
            self._weights, self.top_k, dtype, weights_before_down=self.weights_before_down, device=device
        )

    def _build(self, device: torch.device, dtype: torch.dtype) -> tuple[Backend, bool, PreparedExperts, Any]:
        spec = self.spec(device, dtype)
        backend, support, rejected = select_experts(spec, self._requested, self._registry)
        return backend, support.fused, prepare_experts(backend, self._weights.to(device), spec), rejected

    def forward(self, x: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor) -> torch.Tensor:
        """``x`` [..., H] in the block's dtype and device; ``top_k_index``/``top_k_weights`` [tokens, top_k]."""
        if x.dtype != self.dtype or x.device != self.device or x.shape[-1] != self.hidden_size:
            raise FormatError(
                f"input: got {describe(x)} on {x.device}, expected [..., {self.hidden_size}] "
                f"{str(self.dtype).removeprefix('torch.')} on {self.device}"
            )
        return self._prepared(x, top_k_index, top_k_weights.to(x.dtype))

    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True) -> QuantExperts:
        probe = fn(torch.empty(0, dtype=self.dtype, device=self.device))
        if probe.device != self.device or probe.dtype != self.dtype:
            self.backend, self.fused, self._prepared, self.rejected = self._build(probe.device, probe.dtype)
            self.device, self.dtype = probe.device, probe.dtype
        super()._apply(fn, recurse)  # type: ignore[no-untyped-call]
        return self

    def _save_to_state_dict(self, destination: dict[str, Any], prefix: str, keep_vars: bool) -> None:
        for e in range(self.num_experts):
            for proj, weight in zip(PROJECTIONS, self._weights.expert(e), strict=True):
                for key, tensor in self.weight_format.pack(weight).items():
                    destination[f"{prefix}{e}.{proj}.{key}"] = tensor

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        """The per-expert checkpoint tensors ``<e>.<proj>.<role>`` that ``state_dict`` writes, each unpacked at the
        expert's own scheme; missing and (``strict``) unexpected keys are listed as ``torch.nn.Linear`` lists them.
        All experts are replaced together, or none: a failed unpack or re-prepare keeps the current block."""
        own = {k.removeprefix(prefix): v for k, v in state_dict.items() if k.startswith(prefix)}
        current = [self._weights.expert(e) for e in range(self.num_experts)]
        roles = {
            f"{e}.{proj}": set(self.weight_format.expected_shapes(w.scheme, w.in_features, w.out_features))
            for e, ws in enumerate(current)
            for proj, w in zip(PROJECTIONS, ws, strict=True)
        }
        missing = [f"{prefix}{layer}.{role}" for layer, rs in roles.items() for role in sorted(rs - {"g_idx"})
                   if f"{layer}.{role}" not in own]  # fmt: skip
        missing_keys.extend(missing)
        if strict:
            unexpected_keys.extend(
                prefix + key for key in own if key.rpartition(".")[2] not in roles.get(key.rpartition(".")[0], ())
            )
        if missing:  # nothing to build the block from: keep the current one, as the missing keys say
            return
        unpacked: list[list[QuantizedWeight]] = [[], [], []]
        try:
            for layer, rs in roles.items():
                e = int(layer.split(".", 1)[0])
                p = PROJECTIONS.index(layer.split(".", 1)[1])
                w = current[e][p]
                tensors = {role: own[f"{layer}.{role}"] for role in rs if f"{layer}.{role}" in own}
                unpacked[p].append(
                    self.weight_format.unpack(tensors, w.scheme, w.in_features, w.out_features, f"{prefix}{layer}.")
                )
        except FormatError as exc:
            error_msgs.append(str(exc))
            return
        old = self._weights, self.backend, self.fused, self._prepared, self.rejected
        self._weights = ExpertWeights(*(tuple(w.to("cpu") for w in ws) for ws in unpacked))
        try:
            self.backend, self.fused, self._prepared, self.rejected = self._build(self.device, self.dtype)
        except Exception:
            self._weights, self.backend, self.fused, self._prepared, self.rejected = old
            raise

    def extra_repr(self) -> str:
        path = "fused" if self.fused else "per-expert"
        return (
            f"num_experts={self.num_experts}, top_k={self.top_k}, hidden_size={self.hidden_size}, "
            f"intermediate_size={self.intermediate_size}, backend={self.backend.name} ({path})"
        )


class FusedLinear(torch.nn.Module):
    """A fused linear (``qkv_proj``, ``gate_up_proj``, ``to_qkv``) whose parts were stored in different schemes.

    Each run of consecutive agreeing parts (:func:`wna16.checkpoint.resolve.part_runs`) is one layer: a
    :class:`QuantLinear` over the run's weights concatenated along N (one kernel call, the backend the registry picks
    for that run) or a 16-bit ``torch.nn.Linear``; the outputs are concatenated along N in the fused order, so the
    module computes exactly what the fused layer of the agreeing case computes. ``parts`` names each run's parts;
    :func:`wna16.patch.fused_linear` builds it.
    """

    def __init__(self, name: str, runs: list[torch.nn.Module], parts: list[tuple[str, ...]]) -> None:
        super().__init__()
        self.name = name
        self.runs = torch.nn.ModuleList(runs)
        self.parts = parts
        self.in_features: int = int(getattr(runs[0], "in_features"))  # noqa: B009 (Linear and QuantLinear have it)
        self.out_features: int = sum(int(getattr(r, "out_features")) for r in runs)  # noqa: B009

    @property
    def backend_names(self) -> list[str]:
        """Per run, the backend serving it (``torch`` for a 16-bit run)."""
        return [r.backend_name if isinstance(r, QuantLinear) else "torch" for r in self.runs]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The runs' outputs, concatenated along N in the fused order."""
        return torch.cat([run(x) for run in self.runs], dim=-1)

    def extra_repr(self) -> str:
        return f"name={self.name}, runs={[list(p) for p in self.parts]}"
