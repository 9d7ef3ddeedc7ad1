"""``patch_model``: serve a transformers or diffusers model from a quantized checkpoint through wna16's backends.

Every ``nn.Linear`` the checkpoint quantizes is replaced by a :class:`~wna16.nn.QuantLinear` fed from the checkpoint
(keeping the checkpoint's packed layout as ``weight_format``, so ``state_dict`` round-trips to the same files); every
experts module that keeps all experts in 3-D parameters (transformers 5: ``gate_up_proj`` [E, 2I, H], ``down_proj``
[E, H, I], SiLU), whose experts the checkpoint stores as per-expert linears ``<experts>.<e>.gate_proj/up_proj/
down_proj`` (as AutoRound writes them), is replaced by one :class:`~wna16.nn.QuantExperts`; every
16-bit tensor of the checkpoint is loaded into the parameter or buffer of the same name; everything else is left alone.

The model may be built without weights: under :func:`empty_weights` (parameters on ``meta``, buffers real, as
transformers' own loader does) or entirely on ``meta``. No full-precision copy of a quantized layer is ever made: the
``meta`` linear is dropped and the quantized module built from the packed tensors. Whatever is still on ``meta`` after
loading (a parameter the checkpoint lacks, a non-persistent buffer of a model built entirely on ``meta``) is a
:class:`~wna16.errors.ModelMismatchError` naming it, never a silent garbage output.

All mismatches (and every layer's backend preparation) are checked before the model is touched: a model is either
fully patched or left as it was.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from wna16.checkpoint.audit import CheckpointLayer
from wna16.checkpoint.load import Checkpoint, default_remap, load_checkpoint
from wna16.checkpoint.remap import Remap
from wna16.checkpoint.resolve import concat_out, fused_parts, part_runs
from wna16.errors import FusedModuleError, ModelMismatchError, layer_shape
from wna16.experts import PROJECTIONS, ExpertWeights
from wna16.formats import PackedFormat, PackingFormat
from wna16.nn import FusedLinear, QuantExperts, QuantLinear
from wna16.protocol import Backend
from wna16.registry import Registry
from wna16.weight import QuantizedWeight

FusedPart = tuple[str, QuantizedWeight | torch.Tensor, "torch.Tensor | None", PackedFormat | PackingFormat | str]
"""One part of a fused module: (name, its quantized weight or its 16-bit ``[N, K]`` weight, its bias, the layout it
was stored in)."""


def fused_linear(
    name: str,
    parts: list[FusedPart],
    runs: tuple[tuple[int, ...], ...],
    *,
    dtype: torch.dtype = torch.float16,
    device: str | torch.device = "cpu",
    backend: str | Backend | None = None,
    registry: Registry | None = None,
) -> FusedLinear:
    """Build the :class:`FusedLinear` ``name`` from its ``parts`` in fused order, grouped as ``runs`` (part indices).

    Raises :class:`~wna16.errors.FusedModuleError`, naming the module and every part, when the parts do not share
    ``in_features`` or a run's parts cannot be concatenated (:func:`wna16.checkpoint.resolve.concat_out`).
    """

    def k_of(w: QuantizedWeight | torch.Tensor) -> int:
        return w.in_features if isinstance(w, QuantizedWeight) else int(w.shape[-1])

    if sorted(i for run in runs for i in run) != list(range(len(parts))) or not parts:
        raise FusedModuleError(f"{name}: runs {runs} do not cover its {len(parts)} parts exactly once")
    if len({k_of(w) for _, w, _, _ in parts}) != 1:
        described = "; ".join(f"{n}: in_features {k_of(w)}" for n, w, _, _ in parts)
        raise FusedModuleError(f"{name}: parts cannot be concatenated along N (in_features differ): {described}")
    built: list[torch.nn.Module] = []
    for run in runs:
        members = [parts[i] for i in run]
        biases = [b for _, _, b, _ in members]
        if any(b is None for b in biases) and any(b is not None for b in biases):
            described = "; ".join(f"{n}: bias={b is not None}" for n, _, b, _ in members)
            raise FusedModuleError(f"{name}: parts disagree on having a bias: {described}")
        bias = None if biases[0] is None else torch.cat([b for b in biases if b is not None]).to(dtype)
        weights = [w for _, w, _, _ in members]
        if all(isinstance(w, QuantizedWeight) for w in weights):
            quantized = [(n, w) for n, w, _, _ in members if isinstance(w, QuantizedWeight)]
            weight = concat_out(quantized, f"{name}[{', '.join(n for n, _ in quantized)}]")
            layer: torch.nn.Module = QuantLinear(
                weight, bias, dtype=dtype, device=device, backend=backend, registry=registry,
                weight_format=members[0][3],
            )  # fmt: skip
        elif not any(isinstance(w, QuantizedWeight) for w in weights):
            dense = torch.cat([w for w in weights if isinstance(w, torch.Tensor)], dim=0)
            linear = torch.nn.Linear(dense.shape[1], dense.shape[0], bias=bias is not None, device="meta")
            linear.weight = torch.nn.Parameter(dense.to(device=device, dtype=dtype), requires_grad=False)
            if bias is not None:
                linear.bias = torch.nn.Parameter(bias.to(device), requires_grad=False)
            layer = linear
        else:
            raise FusedModuleError(f"{name}: run {[n for n, *_ in members]} mixes quantized and 16-bit parts")
        built.append(layer)
    return FusedLinear(name, built, [tuple(parts[i][0] for i in run) for run in runs])


@dataclass(frozen=True)
class PatchedLayer:
    """One replaced linear: its runtime name, scheme, on-disk layout and the backend that serves it."""

    name: str
    scheme: str
    packed_format: PackingFormat
    in_features: int
    out_features: int
    act_order: bool
    bias: bool
    backend: str


@dataclass(frozen=True)
class PatchReport:
    """What :func:`patch_model` did: the replaced layers, the 16-bit tensors loaded, the linears left in 16 bits."""

    layers: dict[str, PatchedLayer]
    tensors: tuple[str, ...]
    unquantized_linears: tuple[str, ...] = field(default=())
    fused: dict[str, tuple[tuple[str, ...], ...]] = field(default_factory=dict)
    """Fused modules served from separately stored parts: module -> its runs of parts (one layer per run)."""

    @property
    def backends(self) -> dict[str, int]:
        """How many layers each backend serves."""
        counts: dict[str, int] = {}
        for layer in self.layers.values():
            counts[layer.backend] = counts.get(layer.backend, 0) + 1
        return counts

    def __str__(self) -> str:
        served = ", ".join(f"{name}: {count}" for name, count in sorted(self.backends.items()))
        lines = [
            f"{len(self.layers)} linear layers quantized ({served}), {len(self.tensors)} 16-bit tensors loaded, "
            f"{len(self.unquantized_linears)} linear layers left in 16 bits"
        ]
        lines += [
            f"  {p.name}: {p.scheme} {p.packed_format}{' act-order' if p.act_order else ''} "
            f"[{p.in_features} -> {p.out_features}]{' +bias' if p.bias else ''} -> {p.backend}"
            for p in self.layers.values()
        ]
        lines += [f"  {name}: fused from runs {[list(r) for r in runs]}" for name, runs in self.fused.items()]
        return "\n".join(lines)


@contextmanager
def empty_weights() -> Iterator[None]:
    """Build a model with its parameters on ``meta`` and its buffers real (rotary tables, position ids): the state
    :func:`patch_model` expects for a model whose weights come from the checkpoint. Like ``accelerate``'s
    ``init_empty_weights``, without that dependency."""
    original = torch.nn.Module.register_parameter

    def register(module: torch.nn.Module, name: str, param: torch.nn.Parameter | None) -> None:
        original(module, name, param)
        if param is not None and not param.is_meta:  # a parameter already on meta is a tie (head = embedding)
            module._parameters[name] = type(param)(param.to("meta"), requires_grad=param.requires_grad)

    setattr(torch.nn.Module, "register_parameter", register)  # noqa: B010 (patching a method on purpose)
    try:
        yield
    finally:
        setattr(torch.nn.Module, "register_parameter", original)  # noqa: B010


def release_free_memory() -> None:
    """Hand the heap's free pages back to the OS (glibc ``malloc_trim``; a no-op elsewhere).

    Repacking frees its temporary buffers, but glibc keeps freed heap memory for reuse (and raises its mmap threshold
    after large frees, so later buffers land on the heap too): measured on a 340M-parameter model, the process grew
    by 3x the checkpoint while patching without this, and stayed at 1.14x after one trim at the end. Called after
    each layer :func:`patch_model` builds, so the peak stays near the final size."""
    name = ctypes.util.find_library("c")
    if name is None:
        return
    try:
        trim = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to trim
        return
    trim(0)


def _linears(model: torch.nn.Module) -> dict[str, tuple[int, int]]:
    return {
        name: (m.in_features, m.out_features) for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)
    }


def _experts_modules(model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """Experts modules holding every expert in 3-D parameters: ``gate_up_proj`` [E, 2I, H] (gate rows first) and
    ``down_proj`` [E, H, I], no biases, a SiLU gate (transformers 5's Qwen3-MoE, Qwen3-Omni-MoE, Mixtral...)."""
    out: dict[str, torch.nn.Module] = {}
    for name, module in model.named_modules():
        params = module._parameters
        gate_up, down = params.get("gate_up_proj"), params.get("down_proj")
        if gate_up is None or down is None or set(params) != {"gate_up_proj", "down_proj"}:
            continue
        act = getattr(module, "act_fn", None)
        silu = isinstance(act, torch.nn.SiLU) or type(act).__name__ == "SiLUActivation"
        e, two_i, h = gate_up.shape if gate_up.dim() == 3 else (0, 0, 0)
        if silu and e and two_i % 2 == 0 and tuple(down.shape) == (e, h, two_i // 2):
            out[name] = module
    return out


def _expert_linears(name: str, module: torch.nn.Module) -> dict[str, tuple[int, int]]:
    """The per-expert linears a checkpoint stores for the experts module ``name``: runtime name -> (in, out)."""
    e, two_i, h = module._parameters["gate_up_proj"].shape  # type: ignore[union-attr]
    i = two_i // 2
    return {f"{name}.{x}.{p}": (i, h) if p == "down_proj" else (h, i) for x in range(e) for p in PROJECTIONS}


def _top_k(model: torch.nn.Module, name: str) -> int | None:
    """How many experts a token picks in the block around experts module ``name``: the router's ``top_k``, else the
    config's ``num_experts_per_tok`` (of the model or its text config)."""
    parent = name.rpartition(".")[0]
    block = model.get_submodule(parent) if parent else model
    for module in block.modules():
        k = getattr(module, "top_k", None)
        if isinstance(k, int):
            return k
    config = getattr(model, "config", None)
    for cfg in (config, getattr(config, "text_config", None)):
        k = getattr(cfg, "num_experts_per_tok", None)
        if isinstance(k, int):
            return k
    return None


def _fused_modules(model: torch.nn.Module, checkpoint: Checkpoint) -> dict[str, tuple[str, ...]]:
    """The model's fused linears (``qkv_proj``, ``gate_up_proj``, ``to_qkv``) that the checkpoint stores as parts:
    module -> its parts in fused order. A part with neither quantized tensors nor a 16-bit weight is a
    :class:`FusedModuleError` naming the module and the parts."""
    found: dict[str, tuple[str, ...]] = {}
    for name in _linears(model):
        parts = fused_parts(name)
        if parts is None or name in checkpoint.layers or f"{name}.weight" in checkpoint.unquantized:
            continue
        present = [p in checkpoint.layers or f"{p}.weight" in checkpoint.unquantized for p in parts]
        if not any(present):
            continue
        if not all(present):
            missing = [p for p, ok in zip(parts, present, strict=True) if not ok]
            raise FusedModuleError(
                f"{checkpoint.path}: fused module {name} needs parts {list(parts)}; the checkpoint lacks {missing}"
            )
        found[name] = parts
    return found


def _fused_part(checkpoint: Checkpoint, part: str, dtype: torch.dtype) -> FusedPart:
    layer = checkpoint.layers.get(part)
    if layer is not None:
        bias = checkpoint.bias(part)
        return part, checkpoint.weight(part), None if bias is None else bias.to(dtype), layer.packed_format
    bias = checkpoint.tensor(f"{part}.bias") if f"{part}.bias" in checkpoint.unquantized else None
    return part, checkpoint.tensor(f"{part}.weight"), bias, PackingFormat.GPTQ_V2


def _patched(layer: CheckpointLayer, backend: str) -> PatchedLayer:
    return PatchedLayer(
        layer.name, str(layer.scheme), layer.packed_format, layer.in_features, layer.out_features, layer.act_order,
        layer.has_bias, backend,
    )  # fmt: skip


def _build_fused(
    model: torch.nn.Module,
    checkpoint: Checkpoint,
    name: str,
    parts: tuple[str, ...],
    dtype: torch.dtype,
    device: torch.device,
    backend: str | Backend | None,
    registry: Registry | None,
) -> FusedLinear:
    """The :class:`FusedLinear` replacing the model's fused linear ``name``, checked against its shape and bias."""
    members = [_fused_part(checkpoint, p, dtype) for p in parts]
    runs = part_runs([checkpoint.layers[p].layer_quant if p in checkpoint.layers else None for p in parts])
    module = fused_linear(name, members, runs, dtype=dtype, device=device, backend=backend, registry=registry)
    linear = model.get_submodule(name)
    assert isinstance(linear, torch.nn.Linear)  # _fused_modules found it among the model's linears
    have = (linear.in_features, linear.out_features, linear.bias is not None)
    bias = any(b is not None for _, _, b, _ in members)
    if have != (module.in_features, module.out_features, bias):
        raise FusedModuleError(
            f"{checkpoint.path}: fused module {name}: model has in={have[0]} out={have[1]} bias={have[2]}, its "
            f"parts {list(parts)} give in={module.in_features} out={module.out_features} bias={bias}"
        )
    return module


def _backend_of(built: dict[str, torch.nn.Module], part_of: dict[str, str], name: str) -> str:
    """The backend serving checkpoint layer ``name``: its own QuantLinear's, or that of its run in a fused module."""
    module = built[part_of.get(name, name)]
    if isinstance(module, FusedLinear):
        run = next(i for i, parts in enumerate(module.parts) if name in parts)
        return module.backend_names[run]
    assert isinstance(module, QuantLinear)
    return module.backend_name


def _check_layer(model: torch.nn.Module, layer: CheckpointLayer) -> str | None:
    try:
        module = model.get_submodule(layer.name)
    except AttributeError:
        return f"{layer.name}: the checkpoint quantizes it but the model has no such module"
    if not isinstance(module, torch.nn.Linear):
        return f"{layer.name}: expected torch.nn.Linear, the model has {type(module).__name__}"
    have = (module.in_features, module.out_features, module.bias is not None)
    want = (layer.in_features, layer.out_features, layer.has_bias)
    if have != want:
        return (
            f"{layer.name}: model has {layer_shape(have[0], have[1])}{' with bias' if have[2] else ''}, "
            f"checkpoint has {layer_shape(want[0], want[1])}{' with bias' if want[2] else ''}"
        )
    return None


def _owner(model: torch.nn.Module, name: str) -> tuple[torch.nn.Module, str] | None:
    module_name, _, attr = name.rpartition(".")
    try:
        module = model.get_submodule(module_name) if module_name else model
    except AttributeError:
        return None
    if attr in module._parameters or attr in module._buffers:
        return module, attr
    return None


def _aliases(model: torch.nn.Module) -> dict[int, list[str]]:
    """Tied parameters (an LM head sharing the embedding) appear once in a checkpoint: every name of each tensor."""
    names: dict[int, list[str]] = {}
    for name, tensor in [
        *model.named_parameters(remove_duplicate=False),
        *model.named_buffers(remove_duplicate=False),
    ]:
        names.setdefault(id(tensor), []).append(name)
    return names


def _as_stored(module: torch.nn.Module, attr: str, value: torch.Tensor) -> torch.Tensor:
    """``value`` as what ``module.attr`` is: a Parameter (keeping ``requires_grad``) or a plain buffer."""
    old = module._parameters.get(attr)
    if attr in module._parameters:
        return torch.nn.Parameter(value, requires_grad=bool(old is not None and old.requires_grad))
    return value


def _store_problem(have: torch.dtype, stored: torch.dtype) -> str | None:
    """Why a checkpoint tensor of dtype ``stored`` cannot be loaded into a model tensor of dtype ``have``, or None.

    Floating tensors load into floating ones (cast to the activation dtype); any other tensor must be of the model's
    dtype or of one that converts to it losslessly (int32 position ids into an int64 buffer).
    """
    if stored.is_floating_point == have.is_floating_point and (
        stored.is_floating_point or torch.promote_types(stored, have) == have
    ):
        return None
    names = (str(stored).removeprefix("torch."), str(have).removeprefix("torch."))
    return f"checkpoint stores {names[0]}, the model's tensor is {names[1]}: it cannot be loaded losslessly"


def _set_tensor(module: torch.nn.Module, attr: str, value: torch.Tensor) -> None:
    if attr in module._parameters:
        module._parameters[attr] = value  # type: ignore[assignment]
    else:
        module._buffers[attr] = value


def patch_model(
    model: torch.nn.Module,
    checkpoint: Checkpoint | str | os.PathLike[str],
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    backend: str | Backend | None = None,
    registry: Registry | None = None,
    remap: Remap | None = None,
) -> PatchReport:
    """Replace the checkpoint's quantized linears of ``model`` with :class:`QuantLinear` and load its 16-bit tensors.

    ``checkpoint``: a loaded :class:`Checkpoint`, or a folder, loaded with ``remap`` (default:
    :func:`~wna16.checkpoint.load.default_remap` for the ``"transformers"`` runtime, which is the identity: the
    checkpoint's names are the model's, as for transformers and diffusers models) and audited against the model's
    linear layers. ``dtype``: the activation dtype of the quantized layers and the dtype 16-bit float tensors are
    cast to (default: the dtype of the model's first floating parameter). ``backend``: a backend name or object to
    force, else the registry picks per layer. Raises :class:`ModelMismatchError` listing every mismatch, before any
    change to the model.
    """
    experts = _experts_modules(model)
    expected = _linears(model)
    for name, module in experts.items():
        expected.update(_expert_linears(name, module))
    if not isinstance(checkpoint, Checkpoint):
        checkpoint = load_checkpoint(
            checkpoint, remap or default_remap(checkpoint, "transformers"), expected_modules=expected
        )
    if dtype is None:
        dtype = next((p.dtype for p in model.parameters() if p.dtype.is_floating_point), torch.float32)
    target = torch.device(device)

    expert_layers = {n: m for m, module in experts.items() for n in _expert_linears(m, module)}
    served_experts = {m: module for m, module in experts.items() if any(n in checkpoint.layers for n in
                      _expert_linears(m, module))}  # fmt: skip
    fused = _fused_modules(model, checkpoint)
    part_of = {part: module for module, parts in fused.items() for part in parts}
    fused_tensors = {f"{p}.{attr}" for p in part_of for attr in ("weight", "bias")}
    problems = [
        p
        for layer in checkpoint.layers.values()
        if layer.name not in expert_layers
        and layer.name not in part_of
        and (p := _check_layer(model, layer)) is not None
    ]
    for m, module in served_experts.items():
        missing = [n for n in _expert_linears(m, module) if n not in checkpoint.layers]
        if missing:
            problems.append(f"{m}: experts module without quantized {', '.join(missing)} in the checkpoint")
        if _top_k(model, m) is None:
            problems.append(f"{m}: no router top_k or config num_experts_per_tok says how many experts a token picks")
    owners = {name: _owner(model, name) for name in checkpoint.unquantized if name not in fused_tensors}
    problems += [
        f"{name}: the checkpoint has this 16-bit tensor but the model has no such parameter or buffer"
        for name, owner in owners.items()
        if owner is None
    ]
    for name, owner in owners.items():
        if owner is not None:
            current = getattr(owner[0], owner[1])
            info = checkpoint.unquantized[name]
            if tuple(current.shape) != tuple(info.shape):
                problems.append(f"{name}: model has shape {list(current.shape)}, checkpoint has {list(info.shape)}")
            if (why := _store_problem(current.dtype, info.dtype)) is not None:
                problems.append(f"{name}: {why}")
    aliases = _aliases(model)
    covered = {f"{name}.{attr}" for name in [*checkpoint.layers, *fused] for attr in ("weight", "bias")}
    covered.update(f"{m}.{attr}" for m in served_experts for attr in ("gate_up_proj", "down_proj"))
    for name, owner in owners.items():
        if owner is not None:
            covered.update(aliases.get(id(getattr(owner[0], owner[1])), [name]))
    left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta and n not in covered]
    problems += [
        f"{n}: on meta and not in the checkpoint (build the model under wna16.patch.empty_weights() to keep buffers)"
        for n in left
    ]
    if problems:
        raise ModelMismatchError(f"{checkpoint.path}: {len(problems)} mismatch(es):\n  - " + "\n  - ".join(problems))

    built: dict[str, torch.nn.Module] = {}
    backend_of: dict[str, str] = {}
    for m, module in served_experts.items():  # build everything first: a backend error leaves the model intact
        names = list(_expert_linears(m, module))
        weights = [checkpoint.weight(n) for n in names]
        block = QuantExperts(
            ExpertWeights(tuple(weights[0::3]), tuple(weights[1::3]), tuple(weights[2::3])),
            _top_k(model, m) or 0,
            dtype=dtype,
            device=target,
            backend=backend,
            registry=registry,
            weight_format=checkpoint.layers[names[0]].packed_format,
        )
        built[m] = block
        backend_of.update((n, block.backend_name) for n in names)
    for name, parts in fused.items():
        built[name] = _build_fused(model, checkpoint, name, parts, dtype, target, backend, registry)
    for name, layer in checkpoint.layers.items():
        if name in expert_layers or name in part_of:
            continue
        bias = checkpoint.bias(name)
        quant = QuantLinear(
            checkpoint.weight(name),
            None if bias is None else bias.to(dtype),
            dtype=dtype,
            device=target,
            backend=backend,
            registry=registry,
            weight_format=layer.packed_format,
            name=name,
            source=functools.partial(checkpoint.weight, name),
        )
        built[name], backend_of[name] = quant, quant.backend_name
        release_free_memory()  # the repack's temporaries: else the heap keeps them and the peak grows per layer
    # Read and convert every tensor before the first assignment: a read error (a file changed on disk) or a failed
    # conversion leaves the model exactly as it was.
    values: dict[str, torch.Tensor] = {}
    for name, owner in owners.items():
        assert owner is not None
        current = getattr(owner[0], owner[1])
        stored = checkpoint.tensor(name)
        value = stored.to(device=target, dtype=dtype if stored.dtype.is_floating_point else current.dtype)
        values[name] = _as_stored(*owner, value)  # one object for every alias, so tied weights stay tied
    moved = {
        (id(module), key): buf.to(target)
        for module in model.modules()  # real buffers of a model built under empty_weights() follow it to the device
        for key, buf in module._buffers.items()
        if buf is not None and not buf.is_meta and buf.device != target
    }

    for name, owner in owners.items():
        assert owner is not None
        for alias in aliases.get(id(getattr(owner[0], owner[1])), [name]):
            alias_owner = _owner(model, alias)
            if alias_owner is not None:
                _set_tensor(*alias_owner, values[name])
    for name, served in built.items():
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, served)
    for module in model.modules():
        for key, buf in list(module._buffers.items()):
            if (id(module), key) in moved and buf is not None and not buf.is_meta and buf.device != target:
                module._buffers[key] = moved[id(module), key]
    loaded = list(owners)
    layers = {
        name: _patched(layer, backend_of[name] if name in backend_of else _backend_of(built, part_of, name))
        for name, layer in checkpoint.layers.items()
    }
    plain = tuple(n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear))
    fused_runs = {name: tuple(m.parts) for name, m in built.items() if isinstance(m, FusedLinear)}
    return PatchReport(layers, tuple(loaded), plain, fused_runs)
