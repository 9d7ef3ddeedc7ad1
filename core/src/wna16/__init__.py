"""wna16: one hardware-abstraction layer for weight-only quantized linear layers (WnA16).

Read top-down: :mod:`~wna16.scheme` -> :mod:`~wna16.packing` -> :mod:`~wna16.weight` -> :mod:`~wna16.formats` ->
:mod:`~wna16.reference` (the oracle) -> :mod:`~wna16.quantize` -> :mod:`~wna16.partition` -> :mod:`~wna16.protocol`
-> :mod:`~wna16.registry` -> :mod:`~wna16.nn`.
"""

from wna16.checkpoint.config import QuantConfig, read_quant_config
from wna16.checkpoint.load import Checkpoint, load_checkpoint
from wna16.checkpoint.remap import Remap, preset_for
from wna16.checkpoint.resolve import LayerQuant
from wna16.errors import (
    BackendLoadError,
    CheckpointError,
    ConfigError,
    FormatError,
    ModelMismatchError,
    MoELayoutError,
    NoBackendError,
    SchemeError,
    UnsupportedError,
    Wna16Error,
)
from wna16.formats import AWQ, COMPRESSED_TENSORS, FORMATS, GPTQ_V1, GPTQ_V2, get_format
from wna16.partition import Shard, shard_bias, shard_weight
from wna16.patch import PatchReport, empty_weights, patch_model
from wna16.protocol import Availability, Backend, Capability, LayerSpec, Support
from wna16.quantize import quantize_rtn
from wna16.registry import Registry, default_registry, select
from wna16.scheme import Scheme
from wna16.weight import QuantizedWeight

__version__ = "0.1.0"

__all__ = [
    "AWQ",
    "COMPRESSED_TENSORS",
    "FORMATS",
    "GPTQ_V1",
    "GPTQ_V2",
    "Availability",
    "Backend",
    "BackendLoadError",
    "Capability",
    "Checkpoint",
    "CheckpointError",
    "ConfigError",
    "FormatError",
    "LayerQuant",
    "LayerSpec",
    "ModelMismatchError",
    "MoELayoutError",
    "NoBackendError",
    "PatchReport",
    "QuantConfig",
    "QuantizedWeight",
    "Registry",
    "Remap",
    "Scheme",
    "SchemeError",
    "Shard",
    "Support",
    "UnsupportedError",
    "Wna16Error",
    "default_registry",
    "empty_weights",
    "get_format",
    "load_checkpoint",
    "patch_model",
    "preset_for",
    "quantize_rtn",
    "read_quant_config",
    "select",
    "shard_bias",
    "shard_weight",
]
