"""Regular expressions that come from a checkpoint, matched with a time limit.

A checkpoint is untrusted input, and three of its keys are regexes matched against every module name: ``extra_config``
keys holding a regex character, GPTQ ``dynamic`` rules and ``modules_in_block_to_quantize`` entries. Python's ``re``
backtracks without limit, so a pattern such as ``(.*.*)*X`` hangs loading (and ``wna16 inspect``) forever on an
ordinary name. They are compiled with the ``regex`` package instead (the same syntax as ``re`` in its default version),
whose matcher takes a timeout: a match that runs past :data:`MATCH_SECONDS`, or a pattern whose matches together run
past :data:`TOTAL_SECONDS` (slow on every one of thousands of names), is a :class:`PatternTimeoutError` naming the key
and the module. A pattern that timed out once refuses at once afterwards. (The engine checks its clock periodically:
a limit of 0.5 s was seen to stop a match after 0.7 to 2.6 s.)
"""

from __future__ import annotations

import time

import regex  # type: ignore[import-untyped]  # (no stubs needed: only compile, search and match are used)

from wna16.errors import ConfigError, PatternTimeoutError

MATCH_SECONDS = 0.5
"""Time limit of one match. Real module-name patterns match in microseconds; this is a bound, not a budget."""

TOTAL_SECONDS = 5.0
"""Time limit of all matches of one pattern (one load or inspect)."""


class BoundedPattern:
    """A compiled pattern from a checkpoint whose ``search``/``match`` stop after :data:`MATCH_SECONDS`.

    ``where`` names the key for messages (``config.json: quantization_config: extra_config key``).
    """

    def __init__(self, pattern: str, where: str) -> None:
        if not isinstance(pattern, str):
            raise ConfigError(f"{where} {pattern!r}: expected a regular expression (a string)")
        try:
            self._compiled = regex.compile(pattern)
        except (regex.error, RecursionError, OverflowError, ValueError) as exc:
            raise ConfigError(f"{where} {pattern!r}: invalid regular expression ({exc})") from None
        self.pattern = pattern
        self.where = where
        self._timed_out: str | None = None
        self._spent = 0.0

    def _refuse(self, name: str) -> PatternTimeoutError:
        self._timed_out = self._timed_out or name
        return PatternTimeoutError(
            f"{self.where} {self.pattern!r}: matching module name {self._timed_out!r} ran past its time limit "
            f"({MATCH_SECONDS} s per name, {TOTAL_SECONDS} s in all): catastrophic backtracking; the checkpoint's "
            "pattern cannot be used: fix or remove it"
        )

    def _run(self, anchored: bool, name: str) -> regex.Match[str] | None:
        left = TOTAL_SECONDS - self._spent
        if self._timed_out is not None or left <= 0:
            raise self._refuse(name)
        started = time.perf_counter()
        try:
            if anchored:
                return self._compiled.match(name, timeout=min(MATCH_SECONDS, left))
            return self._compiled.search(name, timeout=min(MATCH_SECONDS, left))
        except TimeoutError:
            raise self._refuse(name) from None
        finally:
            self._spent += time.perf_counter() - started

    def search(self, name: str) -> regex.Match[str] | None:
        """``re.search`` semantics, bounded in time."""
        return self._run(False, name)

    def match(self, name: str) -> regex.Match[str] | None:
        """``re.match`` semantics, bounded in time."""
        return self._run(True, name)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, BoundedPattern) and other.pattern == self.pattern

    def __hash__(self) -> int:
        return hash(self.pattern)

    def __repr__(self) -> str:
        return f"BoundedPattern({self.pattern!r})"
