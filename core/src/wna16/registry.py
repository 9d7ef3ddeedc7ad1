"""Discovery and selection of backends: one backend per layer and device, and for every other one, why not.

Backends are found through the entry-point group ``wna16.backends`` (loaded lazily, on first use) or named by import
path ``package.module:object``. A plugin that fails to import is recorded with its traceback and skipped; it never
breaks the others. Selection order: an explicit choice (argument, else ``WNA16_BACKEND``), else the highest priority
among the available backends whose declaration accepts the spec (ties broken by name). ``WNA16_DISABLED_BACKENDS``
(comma-separated names) removes backends from selection.
"""

from __future__ import annotations

import importlib
import os
import traceback
from dataclasses import dataclass, field
from importlib import metadata

from wna16.errors import BackendLoadError, NoBackendError, UnsupportedError
from wna16.experts import ExpertsSpec, ExpertsSupport, describe_experts
from wna16.protocol import Backend, LayerSpec, Support, describe_spec

ENTRY_POINT_GROUP = "wna16.backends"
ENV_FORCE = "WNA16_BACKEND"
ENV_DISABLED = "WNA16_DISABLED_BACKENDS"


@dataclass
class BackendEntry:
    """One discovered backend: where it came from and either the loaded backend or why it failed to load."""

    name: str
    distribution: str
    version: str
    backend: Backend | None = None
    error: str | None = None


@dataclass(frozen=True)
class Selection:
    """The backend chosen for a spec, how it matched, and why every other backend was not chosen."""

    backend: Backend
    support: Support
    rejected: dict[str, tuple[str, ...]] = field(default_factory=dict)


def load_object(path: str) -> Backend:
    """Import ``package.module:object`` and return it as a backend instance (classes are instantiated)."""
    module_name, sep, attr = path.partition(":")
    if not sep or not module_name or not attr:
        raise BackendLoadError(f"backend path {path!r}: expected 'package.module:object'")
    try:
        obj: object = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except Exception as exc:
        raise BackendLoadError(f"backend path {path!r}: {type(exc).__name__}: {exc}") from exc
    return _as_backend(obj, path)


def _as_backend(obj: object, origin: str) -> Backend:
    if isinstance(obj, type) and issubclass(obj, Backend):
        obj = obj()
    if not isinstance(obj, Backend):
        raise BackendLoadError(f"{origin}: {obj!r} is not a wna16.protocol.Backend subclass or instance")
    return obj


def _disabled() -> set[str]:
    return {n.strip() for n in os.environ.get(ENV_DISABLED, "").split(",") if n.strip()}


class Registry:
    """The installed backends (entry points), plus any registered by hand. Thread-compatible, not thread-safe."""

    def __init__(self, group: str = ENTRY_POINT_GROUP, *, discover: bool = True) -> None:
        self._group = group
        self._discover = discover
        self._entries: dict[str, BackendEntry] | None = None
        self._extra: dict[str, BackendEntry] = {}

    def register(self, backend: Backend, distribution: str = "(registered)", version: str = "") -> None:
        """Add a backend by hand (tests, notebooks); it takes part in selection like an installed one."""
        self._extra[backend.name] = BackendEntry(backend.name, distribution, version, backend)

    def entries(self) -> list[BackendEntry]:
        """Every discovered backend, loaded or failed, sorted by name."""
        if self._entries is None:
            self._entries = {}
            if self._discover:
                for ep in metadata.entry_points(group=self._group):
                    self._entries[ep.name] = self._load(ep)
        merged = {**self._entries, **self._extra}
        return [merged[k] for k in sorted(merged)]

    @staticmethod
    def _load(ep: metadata.EntryPoint) -> BackendEntry:
        dist = ep.dist.name if ep.dist is not None else "?"
        version = ep.dist.version if ep.dist is not None else "?"
        try:
            backend = _as_backend(ep.load(), f"entry point {ep.name!r} ({ep.value})")
        except Exception:
            return BackendEntry(ep.name, dist, version, error=traceback.format_exc())
        return BackendEntry(ep.name, dist, version, backend)

    def backends(self) -> list[Backend]:
        """The backends that loaded."""
        return [e.backend for e in self.entries() if e.backend is not None]

    def get(self, name: str) -> Backend:
        """A backend by entry-point name or ``package.module:object`` path."""
        if ":" in name:
            return load_object(name)
        for entry in self.entries():
            if entry.name == name:
                if entry.backend is None:
                    raise BackendLoadError(f"backend {name!r} ({entry.distribution}) failed to load:\n{entry.error}")
                return entry.backend
        known = [e.name for e in self.entries()]
        raise BackendLoadError(f"backend {name!r}: not installed (installed: {known})")

    def select(self, spec: LayerSpec, backend: str | Backend | None = None) -> Selection:
        """Choose the backend for ``spec``; raises :class:`UnsupportedError` (explicit choice refused) or
        :class:`NoBackendError` listing every backend's reasons."""
        forced = backend if backend is not None else os.environ.get(ENV_FORCE) or None
        if forced is not None:
            chosen = self.get(forced) if isinstance(forced, str) else forced
            reasons = self._reasons(chosen, spec)
            if reasons:
                raise UnsupportedError(
                    f"backend {chosen.name!r} (explicit) cannot serve {describe_spec(spec)}", reasons
                )
            return Selection(chosen, chosen.check(spec))

        rejected: dict[str, tuple[str, ...]] = {}
        candidates: list[tuple[Support, Backend]] = []
        disabled = _disabled()
        for entry in self.entries():
            if entry.backend is None:
                rejected[entry.name] = (f"failed to load: {(entry.error or '').strip().splitlines()[-1]}",)
            elif entry.name in disabled:
                rejected[entry.name] = (f"disabled by {ENV_DISABLED}",)
            elif reasons := self._reasons(entry.backend, spec):
                rejected[entry.name] = tuple(reasons)
            else:
                candidates.append((entry.backend.check(spec), entry.backend))
        if not candidates:
            raise NoBackendError(f"no backend can serve {describe_spec(spec)}", rejected)
        candidates.sort(key=lambda c: (-c[0].priority, c[1].name))
        (support, best), others = candidates[0], candidates[1:]
        for other_support, other in others:
            rejected[other.name] = (f"lower priority ({other_support.priority} < {support.priority} of {best.name})",)
        return Selection(best, support, rejected)

    @staticmethod
    def _reasons(backend: Backend, spec: LayerSpec) -> list[str]:
        availability = backend.available(spec.device)
        if not availability:
            return [f"unavailable: {availability.reason}"]
        return list(backend.check(spec).reasons)


_DEFAULT: Registry | None = None


def default_registry() -> Registry:
    """The process-wide registry of installed backends."""
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = Registry()
    return _DEFAULT


def select(spec: LayerSpec, backend: str | Backend | None = None) -> Selection:
    """Select from the default registry; see :meth:`Registry.select`."""
    return default_registry().select(spec, backend)


def select_experts(
    spec: ExpertsSpec, backend: str | Backend | None = None, registry: Registry | None = None
) -> tuple[Backend, ExpertsSupport, dict[str, tuple[str, ...]]]:
    """Choose the backend for an experts block, like :meth:`Registry.select` for a layer: ``(backend, support,
    rejected)``. A backend's rank is its matching experts rule's priority (its fused path), else the lowest
    priority among the rules serving its per-expert layers (the generic path)."""
    reg = registry or default_registry()
    forced = backend if backend is not None else os.environ.get(ENV_FORCE) or None
    candidates = [reg.get(forced) if isinstance(forced, str) else forced] if forced is not None else None
    rejected: dict[str, tuple[str, ...]] = {}
    ranked: list[tuple[int, str, Backend, ExpertsSupport]] = []
    disabled = _disabled()
    for entry_backend in candidates or reg.backends():
        if candidates is None and entry_backend.name in disabled:
            rejected[entry_backend.name] = (f"disabled by {ENV_DISABLED}",)
            continue
        availability = entry_backend.available(spec.device)
        support = entry_backend.check_experts(spec) if availability else None
        if support is None or not support:
            rejected[entry_backend.name] = (
                (f"unavailable: {availability.reason}",) if support is None else support.reasons
            )
            continue
        if support.rule is not None:
            priority = support.rule.priority
        else:
            priority = min(entry_backend.check(layer).priority for layer in spec.distinct_layers())
        ranked.append((-priority, entry_backend.name, entry_backend, support))
    if not ranked:
        if candidates is not None:
            name = candidates[0].name
            raise UnsupportedError(f"backend {name!r} (explicit) cannot serve {describe_experts(spec)}", rejected[name])
        raise NoBackendError(f"no backend can serve {describe_experts(spec)}", rejected)
    ranked.sort(key=lambda r: (r[0], r[1]))
    _, _, best, support = ranked[0]
    for neg, name, _, _ in ranked[1:]:
        rejected[name] = (f"lower priority ({-neg} < {-ranked[0][0]} of {best.name})",)
    return best, support, rejected
