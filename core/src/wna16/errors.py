"""Every error wna16 raises, in one place.

Each message names the thing at fault (tensor, key, file, value), what it was and what was expected, so that a user
reading one line knows what to fix. All derive from :class:`Wna16Error`; callers that only want to know "wna16 said
no" catch that one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


class Wna16Error(Exception):
    """Base class of every error raised by wna16."""


class UsageError(Wna16Error, ValueError):
    """The caller passed an argument wna16 cannot use (wrong value or combination of arguments to an API call), as
    opposed to bad data (a checkpoint, a tensor) or a layer no backend serves: the fix is in the calling code."""


class SchemeError(Wna16Error, ValueError):
    """A quantization scheme value (bits, group size, ...) is outside what wna16 defines."""


class FormatError(Wna16Error, ValueError):
    """A packed tensor does not have the dtype, shape or contents its on-disk layout requires."""


class UnsupportedError(Wna16Error):
    """A backend (or every backend) cannot serve a layer spec; carries every reason at once."""

    def __init__(self, subject: str, reasons: Sequence[str]) -> None:
        self.subject = subject
        self.reasons: tuple[str, ...] = tuple(reasons)
        joined = "; ".join(self.reasons) if self.reasons else "no reason given"
        super().__init__(f"{subject}: {joined}")


class NoBackendError(UnsupportedError):
    """No installed backend can serve a layer spec. ``by_backend`` maps each backend's name to its reasons (empty
    when no backend is installed); ``reasons`` holds the same as ``"name: reason; reason"`` lines."""

    def __init__(self, subject: str, by_backend: Mapping[str, Sequence[str]]) -> None:
        self.by_backend: dict[str, tuple[str, ...]] = {name: tuple(r) for name, r in by_backend.items()}
        lines = [f"{name}: {'; '.join(r)}" for name, r in self.by_backend.items()] or ["no backend is installed"]
        super().__init__(subject, lines)


class BackendLoadError(Wna16Error):
    """A backend named explicitly (entry point or import path) could not be imported or is not a backend."""


class ConfigError(Wna16Error, ValueError):
    """A ``quantization_config`` (or a remap) is malformed or outside WnA16; the message names the key."""


class MoELayoutError(ConfigError):
    """A mixture-of-experts layout wna16 does not serve (fused-experts tensors); per-expert linears are served."""


class UnmatchedNamesError(ConfigError):
    """``block_name_to_quantize`` entries or ``extra_config`` keys name no module of the runtime model: those layers
    would stay silently unquantized and loading would fail later on a missing tensor. Carries each unmatched name
    with the closest module names (``unmatched``: name -> closest). ``space`` says whose names were compared:
    ``runtime`` (the model's modules, the config remapped to them) or ``checkpoint`` (the modules holding the
    checkpoint's tensors, the config as written: what the engine path of vLLM checks before it builds the model)."""

    def __init__(self, source: str, unmatched: Mapping[str, Sequence[str]], space: str = "runtime") -> None:
        self.source = source
        self.space = space
        self.unmatched: dict[str, tuple[str, ...]] = {k: tuple(v) for k, v in unmatched.items()}
        described = "; ".join(
            f"{name!r} (closest {space} names: {', '.join(repr(c) for c in close) or 'none'})"
            for name, close in self.unmatched.items()
        )
        super().__init__(f"{source}: names that match no {space} module: {described}")


class CheckpointError(Wna16Error):
    """A checkpoint on disk is unsafe, corrupt or inconsistent; the message names the file and the tensor."""


class FusedModuleError(CheckpointError):
    """The parts of a fused module (``qkv_proj`` from q/k/v_proj, ``gate_up_proj``) cannot be served together: a part
    is missing, or their shapes cannot be concatenated along N; the message names the module and every part."""


class UnsafePathError(CheckpointError):
    """An index names a shard outside the checkpoint folder."""


class MissingShardError(CheckpointError):
    """An index names a shard that does not exist (or no weights file is present at all)."""


class CorruptFileError(CheckpointError):
    """A safetensors file's header is malformed or disagrees with the file (truncated data, lying offsets)."""


@dataclass(frozen=True)
class Problem:
    """One disagreement between checkpoint and config; ``str()`` is a self-contained message."""

    kind: str
    module: str
    message: str
    tensor: str | None = None
    file: Path | None = None

    def __str__(self) -> str:
        where = [str(self.file.name) if self.file is not None else None, self.tensor or self.module]
        return f"[{self.kind}] {': '.join(w for w in where if w)}: {self.message}"


class CheckpointAuditError(CheckpointError):
    """The coverage audit found problems; ``problems`` holds every one of them
    (:class:`Problem`)."""

    def __init__(self, folder: Path, problems: Sequence[Problem]) -> None:
        self.folder = folder
        self.problems: tuple[Problem, ...] = tuple(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"checkpoint {folder}: {len(self.problems)} problem(s) found by the coverage audit:\n{lines}")


class ModelMismatchError(Wna16Error):
    """A model's modules do not match a checkpoint (missing module, not a linear, other shape or bias, tensors left
    unloaded); the message lists every mismatch by module name with what was expected."""


def describe(tensor: object) -> str:
    """Short ``dtype[shape]`` text of a tensor for error messages (or the type name of a non-tensor)."""
    shape = getattr(tensor, "shape", None)
    dtype = getattr(tensor, "dtype", None)
    if shape is None or dtype is None:
        return type(tensor).__name__
    return f"{str(dtype).removeprefix('torch.')}{list(shape)}"


def expect_tensor(tensor: object, name: str, shape: tuple[int, ...], dtypes: tuple[torch.dtype, ...]) -> None:
    """Raise :class:`FormatError` unless ``tensor`` is a tensor of exactly ``shape`` with one of ``dtypes``; the
    message names the tensor and says what it is and what was expected (``scales: got int32[4, 8], expected
    float16/bfloat16/float32[2, 8]``)."""
    got_shape = getattr(tensor, "shape", None)
    if got_shape is None or tuple(got_shape) != shape or getattr(tensor, "dtype", None) not in dtypes:
        allowed = "/".join(str(d).removeprefix("torch.") for d in dtypes)
        raise FormatError(f"{name}: got {describe(tensor)}, expected {allowed}{list(shape)}")


def layer_shape(in_features: int, out_features: int) -> str:
    """A linear layer's shape as every message, table and report prints it: ``in -> out`` (``4096 -> 11008``), the
    direction data flows; tensors keep their own ``[rows, cols]`` shapes."""
    return f"{in_features} -> {out_features}"


class PatternTimeoutError(ConfigError):
    """A regular expression taken from a checkpoint (``extra_config`` key, GPTQ ``dynamic`` rule,
    ``modules_in_block_to_quantize``) ran past its time limit on a module name: catastrophic backtracking in untrusted
    input. The message names the key and the module name."""


class InputTypeError(Wna16Error, TypeError):
    """A layer was called with something that is not a tensor (``torch.nn.Linear`` raises ``TypeError`` too)."""
