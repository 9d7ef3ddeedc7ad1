"""Filter files: the honest record of a backend's known gaps (skips with reasons) and tolerance multipliers.

A filter file is TOML::

    [[skip]]
    match = "numerics[w3g*"          # test-name pattern; only * and ? are wildcards, [ ] are literal
    reason = "3-bit packing not implemented yet (issue #12)"

    [[tolerance]]
    match = "*-bf16*"
    multiplier = 2.0                  # at most 4 (MAX_MULTIPLIER)
    reason = "bf16 dequantize rounds the zero term twice"
    backend = "rocm"                  # optional: only for this backend

Test names are ``check[key]``, e.g. ``numerics[w4g128asym-bf16]``, ``edges[large-k-w4g128asym-fp16]``,
``tensor_parallel[w4g64asym-fp16-actorder]``. A skip marks the test skipped (never passed); a multiplier widens the
bound of the tests it matches and is written into the report; an entry that matches no test is a warning.

A backend ships its file by declaring ``conformance_filter = "conformance-filter.toml"`` on its class (a path
relative to the directory of the module defining the class, or absolute); ``--wna16-filter=PATH`` adds more.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from wna16.protocol import Backend

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

MAX_MULTIPLIER = 4.0
"""The widest a filter may make the bound: beyond this a backend is wrong, not imprecise."""


class FilterError(ValueError):
    """A filter file is malformed; the message names the file, the entry and the key."""


@dataclass(frozen=True)
class FilterEntry:
    """One skip or tolerance entry of a filter file."""

    source: str
    index: int
    action: str  # "skip" or "tolerance"
    match: str
    reason: str
    multiplier: float = 1.0
    backend: str | None = None

    @property
    def id(self) -> str:
        """``file.toml:skip[0]``: how the report and warnings name the entry."""
        return f"{Path(self.source).name}:{self.action}[{self.index}]"

    def matches(self, backend: str, test_name: str) -> bool:
        """Whether the entry applies to ``test_name`` of ``backend``."""
        if self.backend is not None and self.backend != backend:
            return False
        return _compile(self.match).fullmatch(test_name) is not None

    def as_json(self) -> dict[str, object]:
        """The entry as the report shows it."""
        return {
            "id": self.id, "source": self.source, "action": self.action, "match": self.match, "reason": self.reason,
            "multiplier": self.multiplier, "backend": self.backend,
        }  # fmt: skip


def _compile(pattern: str) -> re.Pattern[str]:
    parts = (".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.compile("".join(parts))


def load(path: str | Path, backend: str | None = None) -> list[FilterEntry]:
    """Parse a filter file; ``backend`` restricts every entry to that backend (a backend's own file)."""
    source = str(path)
    try:
        data = tomllib.loads(Path(path).read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise FilterError(f"filter file {source}: {exc}") from exc
    unknown = set(data) - {"skip", "tolerance"}
    if unknown:
        raise FilterError(f"filter file {source}: unknown tables {sorted(unknown)}, expected [[skip]]/[[tolerance]]")
    out: list[FilterEntry] = []
    for action in ("skip", "tolerance"):
        for i, raw in enumerate(data.get(action, [])):
            out.append(_entry(source, action, i, raw, backend))
    return out


def _entry(source: str, action: str, index: int, raw: object, backend: str | None) -> FilterEntry:
    where = f"filter file {source}: {action}[{index}]"
    if not isinstance(raw, dict):
        raise FilterError(f"{where}: expected a table")
    allowed = {"match", "reason", "backend"} | ({"multiplier"} if action == "tolerance" else set())
    if set(raw) - allowed:
        raise FilterError(f"{where}: unknown keys {sorted(set(raw) - allowed)}, allowed {sorted(allowed)}")
    match, reason = raw.get("match"), raw.get("reason")
    if not isinstance(match, str) or not match:
        raise FilterError(f"{where}: 'match' must be a non-empty pattern string")
    if not isinstance(reason, str) or not reason.strip():
        raise FilterError(f"{where}: 'reason' must say why (non-empty string)")
    multiplier = 1.0
    if action == "tolerance":
        value = raw.get("multiplier")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 1.0 <= value <= MAX_MULTIPLIER:
            raise FilterError(f"{where}: 'multiplier' = {value!r}, expected a number in [1, {MAX_MULTIPLIER:g}]")
        multiplier = float(value)
    entry_backend = raw.get("backend", backend)
    if entry_backend is not None and not isinstance(entry_backend, str):
        raise FilterError(f"{where}: 'backend' must be a backend name")
    return FilterEntry(source, index, action, match, reason.strip(), multiplier, entry_backend)


def backend_filter_path(backend: Backend) -> Path | None:
    """The filter file a backend declares (:attr:`wna16.protocol.Backend.conformance_filter`), resolved next to its
    module."""
    declared = backend.conformance_filter
    if declared is None:
        return None
    path = Path(declared)
    if not path.is_absolute():
        module = sys.modules.get(type(backend).__module__)
        base = Path(getattr(module, "__file__", "") or ".").parent
        path = base / path
    if not path.is_file():
        raise FilterError(f"backend {backend.name!r} declares conformance_filter={declared!r}, but {path} is missing")
    return path


@dataclass(frozen=True)
class Decision:
    """What the filters say about one test."""

    skip: FilterEntry | None
    multiplier: float
    applied: tuple[FilterEntry, ...]


def decide(entries: Iterable[FilterEntry], backend: str, test_name: str) -> Decision:
    """Skip (first matching skip entry) and the largest matching multiplier of ``test_name``."""
    applied = tuple(e for e in entries if e.matches(backend, test_name))
    skip = next((e for e in applied if e.action == "skip"), None)
    multiplier = max((e.multiplier for e in applied if e.action == "tolerance"), default=1.0)
    return Decision(skip, multiplier, applied)
