"""vLLM-Omni's AutoRound method served by wna16's backends (diffusion pipelines and their transformers).

A user picks wna16 for an AutoRound pipeline in one line::

    Omni(model=path, quantization_config=wna16.integrations.vllm_omni.quantization_config(path))

Left out, vLLM-Omni reads each transformer's ``quantization_config`` and serves it with its own ``OmniINCConfig``.

How it fits vLLM-Omni 0.30:

- The method stays the checkpoint's: AutoRound (vLLM-Omni's ``inc``). :class:`Wna16AutoRoundConfig` is an
  ``OmniINCConfig`` (a real subclass, built from the checkpoint's own fields) whose linear layers wna16 serves. So
  vLLM-Omni's checks that compare methods hold for it: ``safe_quant_config`` (only ``INCConfig`` instances reach
  FLUX's ``transformer_blocks`` and norm layers and Qwen-Image's modulation layers) and Wan2.2's
  ``resolve_quant_config_from_disk`` (the active method must equal the one ``config.json`` declares).
  ``OmniINCConfig.maybe_upgrade`` (LLM stages) returns an ``OmniINCConfig`` subclass unchanged.
- :func:`quantization_config` reads every quantized component of the pipeline folder (``transformer``,
  ``transformer_2``), translates its names to the prefixes the runtime passes to ``get_quant_method`` (the model's
  preset: Wan2.2 builds ``ffn.net_0`` and ``attn1.to_out``; FLUX and Qwen-Image keep ``attn.to_out.0``; vLLM-Omni
  applies no mapper to a diffusion config) and refuses names that match no module of the component
  (:func:`wna16.checkpoint.resolve.check_names`), before any engine work. Several components give vLLM-Omni's
  ``ComponentQuantizationConfig`` keyed by component name (Wan2.2 resolves each expert by its name).
- Checkpoints wna16 does not claim (not integer WnA16: AutoRound's ``mx_fp``, ``llm_compressor`` exports, other
  methods) get what vLLM-Omni builds without wna16 (its ``build_quant_config`` on the component's
  ``quantization_config``), with a log line saying why.
- LLM stages (``quantization="wna16"`` in a stage's engine arguments) use :class:`wna16.integrations.vllm.Wna16Config`
  through vLLM, which vLLM-Omni's ``maybe_upgrade`` leaves alone.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch
from vllm.model_executor.layers.quantization.base_config import QuantizationConfig
from vllm_omni.quantization import build_quant_config
from vllm_omni.quantization.component_config import ComponentQuantizationConfig
from vllm_omni.quantization.inc_config import OmniINCConfig

from wna16.checkpoint.config import QuantConfig, read_model_config, read_quant_config
from wna16.checkpoint.files import SafetensorsFolder
from wna16.checkpoint.presets import preset_for
from wna16.checkpoint.remap import Remap
from wna16.checkpoint.resolve import check_names, tensor_modules
from wna16.errors import ConfigError
from wna16.integrations.vllm import Wna16Config

logger = logging.getLogger("vllm_omni.plugins.wna16")

PACKING_FORMATS = frozenset({"auto_round:auto_gptq", "auto_round:auto_awq", "auto_round:gptqmodel", "auto_round"})
"""AutoRound ``packing_format`` values wna16 reads (besides vLLM-Omni's own list, which the INC fields must pass)."""


class Wna16AutoRoundConfig(OmniINCConfig):
    """vLLM-Omni's AutoRound (``inc``) method for one component, its linear layers served by wna16's backends.

    The INC fields (bits, group size, symmetry, packing, blocks, ``extra_config``) are the checkpoint's, so code of
    vLLM-Omni that reads them sees the truth; layer methods come from :class:`Wna16Config` on the checkpoint's config
    translated to runtime names.
    """

    SUPPORTED_FORMATS = OmniINCConfig.SUPPORTED_FORMATS | PACKING_FORMATS

    def __init__(self, quant: QuantConfig, raw: dict[str, Any]) -> None:
        """From the parsed, remapped config and the component's ``quantization_config`` as written."""
        super().__init__(
            weight_bits=quant.bits,
            group_size=quant.group_size,
            sym=quant.sym,
            packing_format=str(raw.get("packing_format", "auto_round:auto_gptq")),
            block_name_to_quantize=list(quant.block_prefixes) or None,
            extra_config={k: dict(raw.get("extra_config", {}).get(k, {})) for k in quant.extra_config} or None,
            data_type=str(raw.get("data_type", "int")),
        )
        self.wna16 = Wna16Config(quant)

    def __repr__(self) -> str:
        return f"Wna16AutoRoundConfig({self.wna16!r})"

    def get_quant_method(self, layer: torch.nn.Module, prefix: str) -> Any:
        """wna16's method for quantized linear layers, vLLM's unquantized one otherwise (see :class:`Wna16Config`)."""
        return self.wna16.get_quant_method(layer, prefix)

    def apply_vllm_mapper(self, hf_to_vllm_mapper: Any) -> None:
        """Translate names with the model's mapper, both the INC fields and wna16's config."""
        super().apply_vllm_mapper(hf_to_vllm_mapper)
        self.wna16.apply_vllm_mapper(hf_to_vllm_mapper)


def quantized_components(path: str | os.PathLike[str]) -> list[Path]:
    """The component folders of a diffusers pipeline whose ``config.json`` holds a ``quantization_config`` (or the
    folder itself when it is one model)."""
    root = Path(path)
    if (root / "model_index.json").is_file():
        return sorted(p.parent for p in root.glob("*/config.json") if "quantization_config" in _json(p))
    return [root]


def _json(path: Path) -> dict[str, Any]:
    import json

    data = json.loads(path.read_text(encoding="utf-8"))
    return data if isinstance(data, dict) else {}


def runtime_module_names(folder: Path, remap: Remap) -> set[str]:
    """The runtime names of every module holding a tensor of the component (from the safetensors headers only)."""
    return {remap.name(module) for module in tensor_modules(SafetensorsFolder(folder))}


def component_config(folder: str | os.PathLike[str], remap: Remap | None = None) -> QuantizationConfig | None:
    """The method of one component: :class:`Wna16AutoRoundConfig` when wna16 claims its checkpoint, else what
    vLLM-Omni builds from it without wna16; ``None`` for an unquantized component.

    Raises :class:`~wna16.errors.UnmatchedNamesError` when block names or ``extra_config`` keys match no module.
    """
    folder = Path(folder)
    raw = _json(folder / "config.json").get("quantization_config")
    if not isinstance(raw, dict):
        return None
    try:
        quant = read_quant_config(folder)
        if str(raw.get("data_type", "int")) != "int":
            raise ConfigError(f"{folder}: data_type={raw.get('data_type')!r} (wna16 serves integer weights)")
    except ConfigError as exc:
        logger.info("wna16 does not claim %s (%s); vLLM-Omni's own method serves it", folder, exc)
        own: QuantizationConfig | None = build_quant_config(dict(raw))
        return own
    remap = preset_for(read_model_config(folder)) if remap is None else remap
    runtime = quant.remapped(remap)
    check_names(runtime, runtime_module_names(folder, remap), where=f"{folder / 'config.json'} (runtime names)")
    return Wna16AutoRoundConfig(runtime, raw)


def quantization_config(path: str | os.PathLike[str]) -> QuantizationConfig | None:
    """``Omni(model=path, quantization_config=quantization_config(path))``: wna16 serves the pipeline's AutoRound
    components. One quantized component gives its config; several give a ``ComponentQuantizationConfig`` keyed by
    component folder name (``transformer``, ``transformer_2``); none gives ``None``."""
    components = {folder.name: component_config(folder) for folder in quantized_components(path)}
    if not components:
        return None
    if len(components) == 1:
        only: QuantizationConfig | None = next(iter(components.values()))
        return only
    combined: QuantizationConfig = ComponentQuantizationConfig(components)
    return combined
