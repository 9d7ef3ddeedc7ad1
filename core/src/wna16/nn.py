"""``QuantLinear``: a ``torch.nn.Module`` serving one quantized linear layer through a backend from the registry.

The module keeps the canonical weight in host memory, as the source of truth that ``state_dict`` saves (in the
checkpoint layout named by ``weight_format``, GPTQ v2 unless the layer came from another) and that a move to another
device re-prepares from; the device holds only the backend's layout.
Backends whose layout *is* the canonical one (the reference backend on CPU) share its storage, so no second copy
exists. ``.to()``, ``.cuda()``, ``.half()`` ... re-prepare for the new device and dtype, or raise
:class:`UnsupportedError` and leave the module as it was; it never computes with a layout meant for another device.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from wna16.errors import FormatError, describe
from wna16.formats import PackedFormat, PackingFormat, get_format
from wna16.protocol import Backend, LayerSpec, PreparedLinear
from wna16.registry import Registry, default_registry
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
    ) -> None:
        super().__init__()
        self.weight_format = get_format(weight_format) if isinstance(weight_format, str) else weight_format
        self.in_features: int = weight.in_features
        self.out_features: int = weight.out_features
        self.scheme = weight.scheme
        self._weight = weight.to("cpu")
        self._bias = None if bias is None else bias.detach().to("cpu")
        self._requested = backend
        self._registry = registry or default_registry()
        self.dtype, self.device = dtype, torch.device(device)
        self.backend, self._prepared, self.rejected = self._build(self.device, dtype)

    @property
    def backend_name(self) -> str:
        """Name of the backend serving this layer."""
        return self.backend.name

    @property
    def spec(self) -> LayerSpec:
        """The layer spec the serving backend was chosen for (device and dtype as they are now)."""
        return LayerSpec.of(self._weight, self.dtype, bias=self._bias is not None, device=self.device)

    def _build(self, device: torch.device, dtype: torch.dtype) -> tuple[Backend, PreparedLinear, dict[str, Any]]:
        spec = LayerSpec.of(self._weight, dtype, bias=self._bias is not None, device=device)
        selection = self._registry.select(spec, self._requested)
        weight = self._weight.to(device)
        bias = None if self._bias is None else self._bias.to(device)
        return selection.backend, selection.backend.prepare(weight, spec, bias), selection.rejected

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Compute with the prepared backend; ``x`` must be in the layer's dtype and on its device."""
        if x.dtype != self.dtype or x.device != self.device or x.shape[-1] != self.in_features:
            raise FormatError(
                f"input: got {describe(x)} on {x.device}, expected [..., {self.in_features}] "
                f"{str(self.dtype).removeprefix('torch.')} on {self.device}"
            )
        return self._prepared(x)

    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True) -> QuantLinear:
        probe = fn(torch.empty(0, dtype=self.dtype, device=self.device))
        if probe.device != self.device or probe.dtype != self.dtype:
            self.backend, self._prepared, self.rejected = self._build(probe.device, probe.dtype)
            self.device, self.dtype = probe.device, probe.dtype
        super()._apply(fn, recurse)  # type: ignore[no-untyped-call]
        return self

    def _save_to_state_dict(self, destination: dict[str, Any], prefix: str, keep_vars: bool) -> None:
        for key, tensor in self.weight_format.pack(self._weight).items():
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
        own = {
            k.removeprefix(prefix): v
            for k, v in state_dict.items()
            if k.startswith(prefix) and "." not in k[len(prefix) :]
        }
        try:
            weight = self.weight_format.unpack(own, self.scheme, self.in_features, self.out_features, prefix)
        except FormatError as exc:
            error_msgs.append(str(exc))
            return
        bias = own.get("bias")
        if (bias is None) != (self._bias is None):
            error_msgs.append(
                f"{prefix}bias: layer has bias={self._bias is not None}, state_dict has {bias is not None}"
            )
            return
        old = self._weight, self._bias
        self._weight, self._bias = weight.to("cpu"), None if bias is None else bias.detach().to("cpu")
        try:
            self.backend, self._prepared, self.rejected = self._build(self.device, self.dtype)
        except Exception:
            self._weight, self._bias = old
            raise

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, scheme={self.scheme}, "
            f"act_order={self._weight.act_order}, bias={self._bias is not None}, backend={self.backend.name}"
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
