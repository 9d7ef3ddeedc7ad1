"""Discovery and selection of backends: one backend per layer and device, and for every other one, why not.

Backends are found through the entry-point group ``wna16.backends`` (loaded lazily, on first use) or named by import
path ``package.module:object``. A plugin that fails to import (even by calling ``sys.exit()``) is recorded with its
traceback and skipped; one whose ``available``, ``check`` or ``build`` raises is logged with its traceback (logger
``wna16.registry``, once per backend and method), recorded in :attr:`Registry.faults` and skipped for that layer:
the others still serve. Discovery runs once, under a lock: threads building layers at first use all see the full
registry. Selection order: an explicit choice (argument, else ``WNA16_BACKEND``), else the highest priority
among the available backends whose declaration accepts the spec (ties broken by name). ``check`` (pure data) is asked
of every backend first and ``available`` only of those that accept the spec, best first, until one is available:
selecting a layer never imports the runtime of a backend that cannot serve it or would lose to a better one.
``WNA16_DISABLED_BACKENDS`` (comma-separated names) removes backends from selection.
"""

from __future__ import annotations

import importlib
import logging
import os
import threading
import traceback
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import metadata

from wna16.errors import BackendLoadError, NoBackendError, UnsupportedError
from wna16.experts import ExpertsSpec, ExpertsSupport, check_experts, describe_experts
from wna16.protocol import Backend, LayerSpec, Support, describe_spec

ENTRY_POINT_GROUP = "wna16.backends"
ENV_FORCE = "WNA16_BACKEND"
ENV_DISABLED = "WNA16_DISABLED_BACKENDS"

_LOG = logging.getLogger(__name__)


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
    explicit: bool = False
    """Chosen by name (argument or ``WNA16_BACKEND``): its failures are the caller's to see, not to fall back from."""


def load_object(path: str) -> Backend:
    """Import ``package.module:object`` and return it as a backend instance (classes are instantiated)."""
    module_name, sep, attr = path.partition(":")
    if not sep or not module_name or not attr:
        raise BackendLoadError(f"backend path {path!r}: expected 'package.module:object'")
    try:
        obj: object = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (Exception, SystemExit) as exc:
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
    """The installed backends (entry points), plus any registered by hand. Safe to use from several threads."""

    def __init__(self, group: str = ENTRY_POINT_GROUP, *, discover: bool = True) -> None:
        self._group = group
        self._discover = discover
        self._entries: dict[str, BackendEntry] | None = None
        self._extra: dict[str, BackendEntry] = {}
        self._lock = threading.Lock()
        # Backend name -> traceback of the last exception its available/check/build raised (see fault()).
        self.faults: dict[str, str] = {}
        self._logged: set[tuple[str, str]] = set()

    def register(self, backend: Backend, distribution: str = "(registered)", version: str = "") -> None:
        """Add a backend by hand (tests, notebooks); it takes part in selection like an installed one."""
        with self._lock:
            self._extra = {**self._extra, backend.name: BackendEntry(backend.name, distribution, version, backend)}

    def entries(self) -> list[BackendEntry]:
        """Every discovered backend, loaded or failed, sorted by name."""
        entries = self._entries
        if entries is None:
            with self._lock:  # one discovery; other threads wait for it instead of seeing a half-filled registry
                if self._entries is None:
                    found: dict[str, BackendEntry] = {}
                    if self._discover:
                        for ep in metadata.entry_points(group=self._group):
                            found[ep.name] = self._load(ep)
                    self._entries = found
                entries = self._entries
        merged = {**entries, **self._extra}
        return [merged[k] for k in sorted(merged)]

    @staticmethod
    def _load(ep: metadata.EntryPoint) -> BackendEntry:
        dist = ep.dist.name if ep.dist is not None else "?"
        version = ep.dist.version if ep.dist is not None else "?"
        try:
            backend = _as_backend(ep.load(), f"entry point {ep.name!r} ({ep.value})")
        except (Exception, SystemExit):  # a plugin calling sys.exit() at import must not end the process
            return BackendEntry(ep.name, dist, version, error=traceback.format_exc())
        return BackendEntry(ep.name, dist, version, backend)

    def fault(self, name: str, method: str, exc: BaseException) -> str:
        """Record that backend ``name``'s ``method`` raised ``exc``: logged with its traceback (once per backend and
        method) and kept in :attr:`faults`; returns the one-line reason for selection reports."""
        text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        with self._lock:
            first = (name, method) not in self._logged
            self._logged.add((name, method))
            self.faults[name] = f"{method}() raised:\n{text}"
        if first:
            _LOG.warning("wna16 backend %r: %s() raised; skipped, other backends serve\n%s", name, method, text)
        return f"{method}() raised {type(exc).__name__}: {exc} (skipped; traceback logged)"

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

    def select(
        self, spec: LayerSpec, backend: str | Backend | None = None, *, exclude: Mapping[str, str] | None = None
    ) -> Selection:
        """Choose the backend for ``spec``; raises :class:`UnsupportedError` (explicit choice refused) or
        :class:`NoBackendError` listing every backend's reasons. ``exclude``: backend name -> why it is skipped (a
        caller whose ``build`` failed asks again without it)."""
        forced = backend if backend is not None else os.environ.get(ENV_FORCE) or None
        if forced is not None:
            chosen = self.get(forced) if isinstance(forced, str) else forced
            support, reasons = self._judge(chosen, spec)
            if support is None:
                raise UnsupportedError(
                    f"backend {chosen.name!r} (explicit) cannot serve {describe_spec(spec)}", reasons
                )
            return Selection(chosen, support, explicit=True)

        rejected: dict[str, tuple[str, ...]] = {}
        candidates: list[tuple[Support, Backend]] = []
        disabled = _disabled()
        for entry in self.entries():
            if entry.backend is None:
                rejected[entry.name] = (f"failed to load: {(entry.error or '').strip().splitlines()[-1]}",)
            elif entry.name in disabled:
                rejected[entry.name] = (f"disabled by {ENV_DISABLED}",)
            elif exclude and entry.name in exclude:
                rejected[entry.name] = (exclude[entry.name],)
            else:
                support, reasons = self._check(entry.backend, spec)
                if support is None:
                    rejected[entry.name] = tuple(reasons)
                else:
                    candidates.append((support, entry.backend))
        candidates.sort(key=lambda c: (-c[0].priority, c[1].name))
        for i, (support, best) in enumerate(candidates):
            unavailable = self._unavailable(best, spec)
            if unavailable:
                rejected[best.name] = (unavailable,)
                continue
            for other_support, other in candidates[i + 1 :]:  # not asked whether they are available: they lose
                rejected[other.name] = (
                    f"lower priority ({other_support.priority} < {support.priority} of {best.name})",
                )
            return Selection(best, support, rejected)
        raise NoBackendError(f"no backend can serve {describe_spec(spec)}", rejected)

    def _judge(self, backend: Backend, spec: LayerSpec) -> tuple[Support | None, list[str]]:
        """``(support, [])`` when ``backend`` serves ``spec`` here, else ``(None, reasons)``."""
        unavailable = self._unavailable(backend, spec)
        if unavailable:
            return None, [unavailable]
        return self._check(backend, spec)

    def _unavailable(self, backend: Backend, spec: LayerSpec) -> str:
        """Why ``backend`` cannot run on the spec's device here (``""``: it can); a backend whose ``available``
        raises is refused with the exception as its reason."""
        try:
            availability = backend.available(spec.device)
        except Exception as exc:
            return self.fault(backend.name, "available", exc)
        return "" if availability else f"unavailable: {availability.reason}"

    def _check(self, backend: Backend, spec: LayerSpec) -> tuple[Support | None, list[str]]:
        """``(support, [])`` when ``backend``'s declaration accepts ``spec``, else ``(None, reasons)``; a backend
        whose ``check`` raises is refused with the exception as its reason."""
        try:
            support = backend.check(spec)
        except Exception as exc:
            return None, [self.fault(backend.name, "check", exc)]
        return (support, []) if support else (None, list(support.reasons))


_DEFAULT: Registry | None = None


_DEFAULT_LOCK = threading.Lock()


def default_registry() -> Registry:
    """The process-wide registry of installed backends."""
    global _DEFAULT
    if _DEFAULT is None:
        with _DEFAULT_LOCK:
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
        support = check_experts(entry_backend, spec)  # pure data first: availability may import a runtime
        if not support:
            rejected[entry_backend.name] = support.reasons
            continue
        availability = entry_backend.available(spec.device)
        if not availability:
            rejected[entry_backend.name] = (f"unavailable: {availability.reason}",)
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
