"""wna16: one hardware-abstraction layer for weight-only quantized linear layers (WnA16).

What users call is exported here: the layer (:class:`QuantLinear`), the checkpoint side (:func:`load_checkpoint`,
:func:`patch_model`, :func:`write_checkpoint`, :class:`Remap` and :func:`preset_for`), the canonical weight
(:class:`QuantizedWeight`, :class:`Scheme`, :func:`quantize_rtn`, :func:`dequantize`), what a backend author
implements (:class:`Backend`, :class:`Capability`, :class:`LayerSpec`, :class:`Shard`) and every error. Internals
(packed layouts, config resolution, the registry's selection) stay in their modules.

Read top-down: :mod:`~wna16.scheme` -> :mod:`~wna16.packing` -> :mod:`~wna16.groups` -> :mod:`~wna16.weight` ->
:mod:`~wna16.formats` -> :mod:`~wna16.reference` (the oracle) -> :mod:`~wna16.quantize` -> :mod:`~wna16.partition`
-> :mod:`~wna16.protocol` -> :mod:`~wna16.ops` -> :mod:`~wna16.registry` -> :mod:`~wna16.nn` ->
:mod:`~wna16.checkpoint` -> :mod:`~wna16.integrations`.
"""

from importlib.metadata import PackageNotFoundError, version

from wna16.checkpoint.load import Checkpoint, load_checkpoint
from wna16.checkpoint.presets import preset_for
from wna16.checkpoint.remap import Remap
from wna16.checkpoint.write import write_checkpoint
from wna16.errors import (
    BackendLoadError,
    CheckpointAuditError,
    CheckpointError,
    ConfigError,
    CorruptFileError,
    FormatError,
    FusedModuleError,
    InputTypeError,
    MissingShardError,
    ModelMismatchError,
    MoELayoutError,
    NoBackendError,
    PatternTimeoutError,
    SchemeError,
    UnmatchedNamesError,
    UnsafePathError,
    UnsupportedError,
    UsageError,
    Wna16Error,
)
from wna16.nn import QuantLinear
from wna16.partition import Shard
from wna16.patch import PatchReport, empty_weights, patch_model
from wna16.protocol import Availability, Backend, Capability, LayerSpec, LazyCapabilities, PreparedLinear, Support
from wna16.quantize import quantize_rtn
from wna16.reference import dequantize
from wna16.registry import Registry
from wna16.scheme import Scheme
from wna16.weight import QuantizedWeight

try:
    __version__ = version("wna16")
except PackageNotFoundError:  # a source tree on sys.path without an installed distribution
    __version__ = "0+unknown"

__all__ = [
    "Availability",
    "Backend",
    "BackendLoadError",
    "Capability",
    "Checkpoint",
    "CheckpointAuditError",
    "CheckpointError",
    "ConfigError",
    "CorruptFileError",
    "FormatError",
    "FusedModuleError",
    "InputTypeError",
    "LayerSpec",
    "LazyCapabilities",
    "MissingShardError",
    "ModelMismatchError",
    "MoELayoutError",
    "NoBackendError",
    "PatternTimeoutError",
    "PatchReport",
    "PreparedLinear",
    "QuantLinear",
    "QuantizedWeight",
    "Registry",
    "Remap",
    "Scheme",
    "SchemeError",
    "Shard",
    "Support",
    "UnmatchedNamesError",
    "UnsafePathError",
    "UnsupportedError",
    "UsageError",
    "Wna16Error",
    "dequantize",
    "empty_weights",
    "load_checkpoint",
    "patch_model",
    "preset_for",
    "quantize_rtn",
    "write_checkpoint",
]
