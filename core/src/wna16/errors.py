"""Every error wna16 raises, in one place.

Each message names the thing at fault (tensor, key, file, value), what it was and what was expected, so that a user
reading one line knows what to fix. All derive from :class:`Wna16Error`; callers that only want to know "wna16 said
no" catch that one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence


class Wna16Error(Exception):
    """Base class of every error raised by wna16."""


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
    """No installed backend can serve a layer spec; the reasons of each backend are listed."""


class BackendLoadError(Wna16Error):
    """A backend named explicitly (entry point or import path) could not be imported or is not a backend."""


class ConfigError(Wna16Error, ValueError):
    """A ``quantization_config`` (or a remap) is malformed or outside WnA16; the message names the key."""


class MoELayoutError(ConfigError):
    """A mixture-of-experts layout wna16 does not serve (fused-experts tensors); per-expert linears are served."""


class UnmatchedNamesError(ConfigError):
    """``block_name_to_quantize`` entries or ``extra_config`` keys name no module of the runtime model: those layers
    would stay silently unquantized and loading would fail later on a missing tensor. Carries each unmatched name
    with the closest runtime names (``unmatched``: name -> closest)."""

    def __init__(self, source: str, unmatched: Mapping[str, Sequence[str]]) -> None:
        self.source = source
        self.unmatched: dict[str, tuple[str, ...]] = {k: tuple(v) for k, v in unmatched.items()}
        described = "; ".join(
            f"{name!r} (closest runtime names: {', '.join(repr(c) for c in close) or 'none'})"
            for name, close in self.unmatched.items()
        )
        super().__init__(f"{source}: names that match no runtime module: {described}")


class CheckpointError(Wna16Error):
    """A checkpoint on disk is unsafe, corrupt or inconsistent; the message names the file and the tensor."""


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
