"""Prepared layers as one torch custom op, so that compiled engines (``torch.compile``, vLLM) trace them.

A bare Python callable is opaque to the compiler: dynamo inlines it, specialises on every Python branch it takes (a
backend's dispatch on the row count ``M``), and breaks the graph on what it cannot trace (a Triton launch, an IPEX
call). So every prepared layer is one call of a registered op::

    wna16::linear(Tensor x, Tensor?[] state, str kernel, SymInt out_features, int[] options) -> Tensor

``state`` holds the layer's tensors (packed codes, scales, bias, ...; ``None`` for absent ones), ``kernel`` names a
function a backend registered with :func:`register_kernel`, and ``options`` its integer settings. The op's one fake
implementation gives the output (``x``'s leading shape, ``out_features``, ``x``'s dtype and device) without
computing, so the compiler sees a single node whatever the kernel does inside; the real implementation looks up the
kernel registered under ``kernel`` for ``x``'s device type and calls it. Everything the op receives is tensors,
strings and integers: a compiled graph holds no reference to a Python object, so an engine may cache it on disk and
reload it in another process.

A backend's ``build`` returns a :class:`PreparedOp` (the op's arguments, bound); its kernel function gets ``x``
(any strides, ``[..., in_features]``), the state and the options, and returns a new tensor ``[..., out_features]``
in ``x``'s dtype. It must not write into ``x`` or the state, nor return a view of them: the op is declared
functional, and ``torch.library.opcheck`` (run by the conformance suite) verifies it.
"""

from __future__ import annotations

import secrets
import weakref
from collections.abc import Callable, Iterable, Sequence

import torch

from wna16.errors import FormatError, UnsupportedError, describe

KernelFn = Callable[[torch.Tensor, Sequence[torch.Tensor | None], Sequence[int]], torch.Tensor]
"""A registered kernel: ``(x, state, options) -> y``."""

EVERY_DEVICE = "*"
"""The device key of a kernel registered for every device type (pure torch code, like the reference backend's)."""

_KERNELS: dict[tuple[str, str], KernelFn] = {}


def register_kernel(name: str, device_types: Iterable[str] = (EVERY_DEVICE,)) -> Callable[[KernelFn], KernelFn]:
    """Decorator: serve ``wna16::linear`` calls naming ``name`` on ``device_types`` (``"cpu"``, ``"cuda"``, ...; by
    default every device) with the decorated function.

    Registering the same function again (a module reloaded) is a no-op; another function under a name and device
    already taken raises :class:`ValueError` (two plugins picked the same name: prefix it with the backend's).
    """

    def register(fn: KernelFn) -> KernelFn:
        for device in device_types:
            old = _KERNELS.get((name, device))
            if old is not None and _qualified(old) != _qualified(fn):
                taken = f"wna16 kernel {name!r} on {device!r} is already {_qualified(old)}"
                raise ValueError(f"{taken}, not {_qualified(fn)}")
            _KERNELS[name, device] = fn
        return fn

    return register


def _qualified(fn: KernelFn) -> str:
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"


def kernel_for(name: str, device_type: str) -> KernelFn:
    """The kernel registered under ``name`` for ``device_type`` (or for every device); raises
    :class:`UnsupportedError` naming what is registered when there is none."""
    fn = _KERNELS.get((name, device_type)) or _KERNELS.get((name, EVERY_DEVICE))
    if fn is None:
        served = sorted(d for n, d in _KERNELS if n == name)
        where = f"registered for {served}" if served else "not registered (is its backend imported?)"
        raise UnsupportedError(f"wna16 kernel {name!r} on device type {device_type!r}", [f"kernel {where}"])
    return fn


SCHEMA = "linear(Tensor x, Tensor?[] state, str kernel, SymInt out_features, int[] options) -> Tensor"

# Module-level for the life of the process: a dropped Library object unregisters what it defined.
_LIBRARY = torch.library.Library("wna16", "FRAGMENT")  # type: ignore[no-untyped-call]
_LIBRARY.define(SCHEMA)  # type: ignore[no-untyped-call]


def linear(
    x: torch.Tensor, state: list[torch.Tensor | None], kernel: str, out_features: int, options: list[int]
) -> torch.Tensor:
    """``x @ W^T + b`` by the kernel registered under ``kernel`` for ``x``'s device type.

    Registered through ``torch.library.Library`` (not the ``custom_op`` decorator): a call goes from the dispatcher
    straight to this function, without ``custom_op``'s autograd and dynamo-disabling wrappers, which cost Python time
    on every decode step and import ``torch._dynamo`` (and with it the Triton package) on the first eager call.
    """
    return kernel_for(kernel, x.device.type)(x, state, options)


def _linear_fake(
    x: torch.Tensor, state: list[torch.Tensor | None], kernel: str, out_features: int, options: list[int]
) -> torch.Tensor:
    """The output without computing: ``x``'s leading shape, ``out_features`` columns, ``x``'s dtype and device."""
    return x.new_empty((*x.shape[:-1], out_features))


_LIBRARY.impl("linear", linear, "CompositeExplicitAutograd")  # type: ignore[no-untyped-call]
torch.library.register_fake("wna16::linear", _linear_fake, lib=_LIBRARY)


class PreparedOp:
    """A prepared layer: the arguments of ``wna16::linear`` for one layer, bound. Calling it with ``x``
    ``[..., in_features]`` in ``dtype`` returns ``x @ W^T + b`` ``[..., out_features]``.

    Construct it with the layout's ``state`` and ``options``, or subclass it and override the two properties to
    read them from the subclass's attributes (a backend whose prepared layer keeps named fields for its tests and
    benchmarks). The input check lives here, before the op, so that every backend gets it and compiled graphs keep
    it as guards.
    """

    def __init__(
        self,
        kernel: str,
        in_features: int,
        out_features: int,
        dtype: torch.dtype,
        state: Sequence[torch.Tensor | None] = (),
        options: Sequence[int] = (),
    ) -> None:
        if not any(n == kernel for n, _ in _KERNELS):
            raise UnsupportedError(f"wna16 kernel {kernel!r}", ["not registered (is its backend imported?)"])
        self.kernel, self.in_features, self.out_features, self.dtype = kernel, in_features, out_features, dtype
        self._state, self._options = tuple(state), tuple(options)

    @property
    def state(self) -> tuple[torch.Tensor | None, ...]:
        """The layer's tensors, as the kernel receives them."""
        return self._state

    @property
    def options(self) -> tuple[int, ...]:
        """The kernel's integer settings."""
        return self._options

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        state = self.state
        device = x.device  # the first tensor of the state's device (a plain loop: torch 2.8's dynamo has no next())
        for t in state:
            if t is not None:
                device = t.device
                break
        if x.dtype != self.dtype or x.dim() == 0 or x.shape[-1] != self.in_features or x.device != device:
            want = f"{str(self.dtype).removeprefix('torch.')} [..., {self.in_features}] on {device}"
            raise FormatError(f"x: got {describe(x)} on {x.device}, expected {want} (kernel {self.kernel!r})")
        y: torch.Tensor = torch.ops.wna16.linear(x, list(state), self.kernel, self.out_features, list(self.options))
        return y

    def args(self, x: torch.Tensor) -> tuple[object, ...]:
        """The op's arguments for input ``x`` (what ``torch.library.opcheck`` takes)."""
        return (x, list(self.state), self.kernel, self.out_features, list(self.options))


EXPERTS_SCHEMA = "experts(Tensor x, Tensor topk_ids, Tensor topk_weights, int block) -> Tensor"
_LIBRARY.define(EXPERTS_SCHEMA)  # type: ignore[no-untyped-call]

ExpertsFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
"""A prepared experts block (:data:`wna16.experts.PreparedExperts`): ``(x, topk_ids, topk_weights) -> y``."""

_BLOCKS: dict[int, ExpertsFn] = {}


def experts(x: torch.Tensor, topk_ids: torch.Tensor, topk_weights: torch.Tensor, block: int) -> torch.Tensor:
    """The experts block registered under ``block`` (:class:`ExpertsOp`) applied to ``x`` with its routing."""
    fn = _BLOCKS.get(block)
    if fn is None:
        reason = f"no experts block under handle {block} in this process (a graph compiled in another process?)"
        raise UnsupportedError("wna16::experts", [reason])
    return fn(x, topk_ids, topk_weights)


def _experts_fake(x: torch.Tensor, topk_ids: torch.Tensor, topk_weights: torch.Tensor, block: int) -> torch.Tensor:
    """The block's output without computing: an experts block maps the hidden size to itself."""
    return x.new_empty(x.shape)


_LIBRARY.impl("experts", experts, "CompositeExplicitAutograd")  # type: ignore[no-untyped-call]
torch.library.register_fake("wna16::experts", _experts_fake, lib=_LIBRARY)


class ExpertsOp:
    """A prepared experts block behind the ``wna16::experts`` op, for compiled engines.

    Routing is data-dependent (which experts got tokens, how many): traced by a compiler, it specialises on values
    or fails (vLLM traces its MoE layers with ``fullgraph=True``). The op keeps the block opaque. Its state is a
    Python object (per-expert layers of any backend), so the op carries a handle to it: a random 62-bit integer,
    never reused and dropped with this object; a graph reloaded in another process gets a typed error, never
    another block.
    """

    def __init__(self, block: ExpertsFn) -> None:
        self.block = block
        self.handle = secrets.randbits(62)
        _BLOCKS[self.handle] = block
        weakref.finalize(self, _BLOCKS.pop, self.handle, None)

    def __call__(self, x: torch.Tensor, topk_ids: torch.Tensor, topk_weights: torch.Tensor) -> torch.Tensor:
        y: torch.Tensor = torch.ops.wna16.experts(x, topk_ids, topk_weights, self.handle)
        return y
