r"""Checkpoint names -> runtime module names: the remap vLLM-Omni applies with each model's ``hf_to_vllm_mapper``.

A checkpoint written by auto-round names blocks and layers as the Hugging Face model does (``thinker.model.layers``);
the runtime may build them under other names (``thinker.language_model.model.layers``). If the quantization config
is not translated the same way the tensors are, layers match nothing and stay silently unquantized, and loading then
dies on a missing ``weight`` or an unexpected ``qweight``. A :class:`Remap` is applied to tensor names, to the
``block_name_to_quantize`` entries and to ``extra_config`` keys, so that all three agree.

Semantics (vLLM-Omni's ``OmniINCConfig.apply_vllm_mapper`` with the model's ``WeightsMapper``):

- ``substrings``: each rule, in order, replaces its first occurrence (``.ffn.net.0.`` -> ``.ffn.net_0.``).
- ``prefixes``: the longest matching prefix is replaced; when ``stage_prefix`` is set (a multi-stage model whose stage
  module lives under ``thinker.``/``talker.``), the stage prefix is prepended to a mapped name. A name that no prefix
  matches is left as is (no stage prefix either). vLLM-Omni derives the stage prefix from the common dotted prefix of
  the mapper's keys: :meth:`Remap.from_mapper` does the same.
- regex ``extra_config`` keys: the escaped form of a prefix (``thinker\.model\.``) is replaced by the escaped new
  prefix, once, and no stage prefix is added (``re.search`` matches anywhere).

Divergences from vLLM-Omni, each so that config names keep following the tensor names: (1) names get the substring
rules and the prefix rules in one pass, as vLLM's ``WeightsMapper`` maps tensors (vLLM-Omni applies only the prefix
rules to config keys when a model has both kinds); (2) regex keys also get the escaped substring rules; (3) a prefix
rule ``a.b.`` also maps the bare name ``a.b`` (a block or module named without its trailing dot).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from wna16.errors import ConfigError


def _escape_dots(text: str) -> str:
    return text.replace(".", r"\.")


@dataclass(frozen=True)
class Remap:
    """Prefix rules (longest match wins), substring rules (in order) and an optional stage prefix; ``label`` names
    the remap in messages (a preset names the runtime and the vLLM-Omni file it mirrors)."""

    prefixes: Mapping[str, str] = field(default_factory=dict)
    substrings: Mapping[str, str] = field(default_factory=dict)
    stage_prefix: str = ""
    label: str = field(default="custom", compare=False)
    _ordered: tuple[str, ...] = field(init=False, repr=False, compare=False)

    IDENTITY: ClassVar[Remap]

    def __post_init__(self) -> None:
        for kind, rules in (("prefix", self.prefixes), ("substring", self.substrings)):
            if not isinstance(rules, Mapping):
                raise ConfigError(f"remap {self.label!r}: {kind} rules: expected a mapping of str to str")
            for old, new in rules.items():
                if not isinstance(old, str) or not old or not isinstance(new, str):
                    raise ConfigError(
                        f"remap {self.label!r}: {kind} rule {old!r} -> {new!r}: expected non-empty str -> str"
                    )
        if not isinstance(self.stage_prefix, str) or (self.stage_prefix and not self.stage_prefix.endswith(".")):
            raise ConfigError(
                f"remap {self.label!r}: stage_prefix={self.stage_prefix!r}: expected '' or a name ending in '.'"
            )
        ordered = tuple(sorted(self.prefixes, key=len, reverse=True))
        object.__setattr__(self, "_ordered", ordered)

    @classmethod
    def from_mapper(
        cls, prefixes: Mapping[str, str], substrings: Mapping[str, str] = {}, label: str = "custom"
    ) -> Remap:
        """A remap from a vLLM ``WeightsMapper``'s ``orig_to_new_prefix`` / ``orig_to_new_substr``, with the stage
        prefix derived as vLLM-Omni derives it: the common prefix of the prefix keys, cut after its last dot."""
        common = os.path.commonprefix(list(prefixes)) if prefixes else ""  # noqa: RUF071 (as vLLM-Omni)
        stage = common[: common.rfind(".") + 1]
        return cls(dict(prefixes), dict(substrings), stage, label)

    @classmethod
    def from_weights_mapper(cls, mapper: object, label: str = "custom") -> Remap:
        """:meth:`from_mapper` on a live vLLM ``WeightsMapper`` (duck-typed: ``orig_to_new_prefix`` and
        ``orig_to_new_substr``), so a preset can be compared with the runtime's own mapper. A ``None`` target (vLLM:
        "drop this tensor") becomes ``""`` as ``OmniINCConfig`` treats it; regex or suffix rules cannot be expressed
        and are refused."""
        for kind in ("orig_to_new_regex", "orig_to_new_suffix"):
            if getattr(mapper, kind, None):
                raise ConfigError(f"remap {label!r}: {kind} rules are not supported (only prefix and substring rules)")
        rules = [dict(getattr(mapper, kind, None) or {}) for kind in ("orig_to_new_prefix", "orig_to_new_substr")]
        prefixes, substrings = ({str(k): "" if v is None else str(v) for k, v in r.items()} for r in rules)
        return cls.from_mapper(prefixes, substrings, label)

    @property
    def is_identity(self) -> bool:
        """Whether this remap changes no name."""
        return not self.prefixes and not self.substrings

    def name(self, checkpoint_name: str) -> str:
        """The runtime name of a checkpoint tensor, module, block prefix or plain ``extra_config`` key."""
        # Substring rules see the name with a closing dot, so that ".to_out.0." also maps a name ending in ".to_out.0".
        name = checkpoint_name + "."
        for old, new in self.substrings.items():
            if old in name:
                name = name.replace(old, new, 1)
        name = name[:-1] if name.endswith(".") else name
        for old in self._ordered:
            new = self.prefixes[old]
            if name.startswith(old):
                return self.stage_prefix + new + name[len(old) :]
            if old.endswith(".") and name == old[:-1] and (self.stage_prefix + new).rstrip("."):
                return (self.stage_prefix + new).rstrip(".")
        return name

    def regex_key(self, key: str) -> str:
        """The runtime form of a regex ``extra_config`` key: escaped substring rules, then the longest escaped prefix
        found anywhere in the key replaced once; no stage prefix."""
        for old, new in self.substrings.items():
            escaped = _escape_dots(old)
            if escaped in key:
                key = key.replace(escaped, _escape_dots(new), 1)
        for old in self._ordered:
            escaped = _escape_dots(old)
            if escaped in key:
                return key.replace(escaped, _escape_dots(self.prefixes[old]), 1)
        return key

    def describe(self) -> dict[str, Any]:
        """The rules as plain data (for reports and for comparing against vLLM-Omni's mappers)."""
        return {
            "label": self.label,
            "prefixes": dict(self.prefixes),
            "substrings": dict(self.substrings),
            "stage_prefix": self.stage_prefix,
        }


Remap.IDENTITY = Remap(label="identity")
