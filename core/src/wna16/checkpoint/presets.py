"""Built-in remaps for the vLLM-Omni runtimes, chosen from a checkpoint's ``config.json``.

Each preset mirrors, rule for rule, the ``hf_to_vllm_mapper`` (a vLLM ``WeightsMapper``) of the vLLM-Omni model
class that serves it, as ``OmniINCConfig.apply_vllm_mapper`` (``vllm_omni/quantization/inc_config.py``) applies it:
prefix rules with the stage prefix derived from their common dotted prefix (:meth:`Remap.from_mapper`). Where the
model class declares no mapper and renames in its ``load_weights`` instead (the diffusion transformers), the preset
carries that rename as a substring rule and says so. A model with several stages (thinker / talker) has one remap
per stage; the quantized stage is the default. Transformers and diffusers runtimes load the Hugging Face names as
written: their remap is the identity.

Keys are matched against ``architectures`` (``config.json``) and ``_class_name`` (a diffusers ``model_index.json``
or component ``config.json``). A user whose runtime differs passes their own :class:`Remap`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from wna16.checkpoint.remap import Remap
from wna16.errors import ConfigError

RUNTIMES: tuple[str, ...] = ("vllm-omni", "transformers", "diffusers")


@dataclass(frozen=True)
class Preset:
    """The remaps of one runtime model: ``stages`` by name, ``default_stage`` the one AutoRound quantizes,
    ``names`` the ``architectures`` / ``_class_name`` values that select it, ``mirrors`` the vLLM-Omni source."""

    runtime: str
    names: tuple[str, ...]
    stages: Mapping[str, Remap]
    default_stage: str
    mirrors: str

    def stage(self, name: str | None = None) -> Remap:
        """The remap of stage ``name`` (the quantized stage by default)."""
        key = self.default_stage if name is None else name
        try:
            return self.stages[key]
        except KeyError:
            raise ConfigError(f"preset {self.runtime!r}: no stage {key!r} (have {sorted(self.stages)})") from None


def _qwen_omni_thinker(label: str) -> Remap:
    # Same table in Qwen2_5OmniThinkerForConditionalGeneration and Qwen3OmniMoeThinkerForConditionalGeneration.
    return Remap.from_mapper(
        {
            "thinker.lm_head.": "language_model.lm_head.",
            "thinker.model.": "language_model.model.",
            "thinker.": "",
        },
        label=label,
    )


QWEN2_5_OMNI = Preset(
    runtime="Qwen2.5-Omni",
    names=("Qwen2_5OmniModel", "Qwen2_5OmniForConditionalGeneration"),
    stages={
        "thinker": _qwen_omni_thinker("Qwen2.5-Omni thinker"),
        "talker": Remap.from_mapper(
            {
                "talker.codec_head.": "language_model.lm_head.",
                "talker.model.": "language_model.model.",
                "talker.thinker_to_talker_proj.": "thinker_to_talker_proj.",
                "talker.": "",
            },
            label="Qwen2.5-Omni talker",
        ),
    },
    default_stage="thinker",
    mirrors=(
        "vllm_omni/model_executor/models/qwen2_5_omni/qwen2_5_omni_thinker.py "
        "(Qwen2_5OmniThinkerForConditionalGeneration.hf_to_vllm_mapper) and qwen2_5_omni_talker.py "
        "(Qwen2_5OmniTalkerForConditionalGeneration.hf_to_vllm_mapper)"
    ),
)
"""Qwen2.5-Omni: the thinker's language model is quantized; talker, vision and audio towers stay 16-bit."""

QWEN3_OMNI = Preset(
    runtime="Qwen3-Omni",
    names=("Qwen3OmniMoeForConditionalGeneration",),
    stages={
        "thinker": _qwen_omni_thinker("Qwen3-Omni thinker"),
        "talker": Remap.from_mapper(
            {
                "talker.model.": "language_model.model.",
                "talker.codec_head.": "codec_head.",
                "talker.code_predictor.": "code_predictor.",
                "talker.text_projection.": "text_projection.",
                "talker.hidden_projection.": "hidden_projection.",
                "talker.": "",
            },
            label="Qwen3-Omni talker",
        ),
    },
    default_stage="thinker",
    mirrors=(
        "vllm_omni/model_executor/models/qwen3_omni/qwen3_omni_moe_thinker.py "
        "(Qwen3OmniMoeThinkerForConditionalGeneration.hf_to_vllm_mapper) and qwen3_omni_moe_talker.py "
        "(Qwen3OmniMoeTalkerForConditionalGeneration.hf_to_vllm_mapper)"
    ),
)
"""Qwen3-Omni (MoE, per-expert linears): the thinker is quantized; talker, vision and audio stay 16-bit."""

QWEN3_TTS = Preset(
    runtime="Qwen3-TTS",
    names=("Qwen3TTSForConditionalGeneration",),
    stages={
        "talker": Remap.from_mapper(
            {
                "talker.model.layers.": "model.layers.",
                "talker.model.norm.": "model.norm.",
                "talker.model.codec_embedding.": "model.embed_tokens.",
                "talker.codec_head.": "lm_head.",
                "talker.model.text_embedding.": "text_embedding.",
                "talker.text_projection.": "text_projection.",
                "talker.code_predictor.": "code_predictor.",
                "speaker_encoder.": "speaker_encoder.",
            },
            label="Qwen3-TTS talker",
        ),
    },
    default_stage="talker",
    mirrors=(
        "vllm_omni/model_executor/models/qwen3_tts/qwen3_tts_talker.py "
        "(Qwen3TTSTalkerForConditionalGeneration.hf_to_vllm_mapper); the keys share no dotted prefix, so no stage"
    ),
)
"""Qwen3-TTS: the talker backbone loses its ``talker.`` prefix (no stage prefix: vLLM-Omni derives none)."""

GLM_IMAGE = Preset(
    runtime="GLM-Image",
    names=("GlmImageForConditionalGeneration",),
    stages={
        "ar": Remap.from_mapper(
            {
                "lm_head.": "lm_head.",
                "model.language_model.": "model.language_model.",
                "model.visual.": "model.visual.",
                "model.vqmodel.": "model.vqmodel.",
            },
            label="GLM-Image AR",
        ),
    },
    default_stage="ar",
    mirrors=(
        "vllm_omni/model_executor/models/glm_image/ (GlmImageForConditionalGeneration.hf_to_vllm_mapper): "
        "every rule maps a prefix to itself"
    ),
)
"""GLM-Image autoregressive stage: names are kept (the mapper's rules are all identities)."""

BAGEL = Preset(
    runtime="BAGEL",
    names=("BagelForConditionalGeneration", "OmniBagelForConditionalGeneration"),
    stages={
        "ar": Remap.from_mapper(
            {
                "language_model.": "language_model.",
                "vit_model.": "vit_model.",
                "connector.": "connector.",
                "vit_pos_embed.": "vit_pos_embed.",
            },
            label="BAGEL",
        ),
    },
    default_stage="ar",
    mirrors=(
        "vllm_omni/model_executor/models/bagel/bagel.py (OmniBagelForConditionalGeneration inherits "
        "vllm/model_executor/models/bagel.py BagelForConditionalGeneration.hf_to_vllm_mapper): identities"
    ),
)
"""BAGEL: names are kept (the inherited mapper's rules are all identities)."""

FLUX = Preset(
    runtime="FLUX.1-dev",
    names=("FluxPipeline", "FluxTransformer2DModel"),
    stages={"transformer": Remap(label="FLUX.1-dev transformer")},
    default_stage="transformer",
    mirrors=(
        "vllm_omni/diffusion/models/flux/flux_transformer.py: FluxTransformer2DModel declares no mapper and builds "
        "its layers under the Hugging Face names (attn.to_out.0 stays a ModuleList entry, the quantization prefix "
        "is '.to_out.0'); it stacks to_q/to_k/to_v -> to_qkv and add_q_proj/add_k_proj/add_v_proj -> add_kv_proj "
        "(fused modules, resolved by wna16.checkpoint.resolve)"
    ),
)
"""FLUX.1-dev transformer: names as written (q/k/v fused at runtime)."""

QWEN_IMAGE = Preset(
    runtime="Qwen-Image",
    names=("QwenImagePipeline", "QwenImageEditPipeline", "QwenImageTransformer2DModel"),
    stages={"transformer": Remap({"transformer.": ""}, label="Qwen-Image transformer")},
    default_stage="transformer",
    mirrors=(
        "vllm_omni/diffusion/models/qwen_image/qwen_image_transformer.py: no mapper; load_weights "
        "(_normalize_qwen_image_weight_name) strips a leading 'transformer.'; attn.to_out is built with the "
        "quantization prefix '.to_out.0' (its tensors are renamed, its prefix is not); it stacks to_q/to_k/to_v -> "
        "to_qkv, add_q/k/v_proj -> add_kv_proj"
    ),
)
"""Qwen-Image transformer: a leading ``transformer.`` is dropped; q/k/v and added q/k/v are fused."""

WAN2_2 = Preset(
    runtime="Wan2.2",
    names=("WanPipeline", "WanImageToVideoPipeline", "WanTransformer3DModel"),
    stages={
        "transformer": Remap(
            substrings={".ffn.net.0.": ".ffn.net_0.", ".ffn.net.2": ".ffn.net_2", ".to_out.0": ".to_out"},
            label="Wan2.2 transformer",
        ),
    },
    default_stage="transformer",
    mirrors=(
        "vllm_omni/diffusion/models/wan2_2/wan2_2_transformer.py (WanTransformer3DModel.hf_to_vllm_mapper, "
        "orig_to_new_substr); the same remap serves transformer and transformer_2 (T2V / I2V A14B) and the "
        "single transformer of TI2V-5B, as each component is loaded with its own names"
    ),
)
"""Wan2.2 T2V / I2V / TI2V: FFN ``net.0``/``net.2`` become ``net_0``/``net_2``; ``to_out.0`` becomes ``to_out``."""

PRESETS: tuple[Preset, ...] = (QWEN2_5_OMNI, QWEN3_OMNI, QWEN3_TTS, GLM_IMAGE, BAGEL, FLUX, QWEN_IMAGE, WAN2_2)

_BY_NAME: Mapping[str, Preset] = {name: preset for preset in PRESETS for name in preset.names}


def find_preset(model_config: Mapping[str, Any]) -> Preset | None:
    """The vLLM-Omni preset named by ``architectures`` or ``_class_name``, or None."""
    names: list[Any] = []
    architectures = model_config.get("architectures")
    if isinstance(architectures, list | tuple):
        names.extend(architectures)
    names.append(model_config.get("_class_name"))
    for name in names:
        if isinstance(name, str) and name in _BY_NAME:
            return _BY_NAME[name]
    return None


def preset_for(model_config: Mapping[str, Any], runtime: str = "vllm-omni", stage: str | None = None) -> Remap:
    """The built-in remap for the model named by a ``config.json`` (``architectures``) or a diffusers config
    (``_class_name``) when served by ``runtime``: a vLLM-Omni preset (``stage`` picks thinker / talker, default the
    quantized one), :attr:`Remap.IDENTITY` for ``"transformers"`` / ``"diffusers"`` and for unknown models."""
    if runtime not in RUNTIMES:
        raise ConfigError(f"runtime={runtime!r}: expected one of {list(RUNTIMES)}")
    if not isinstance(model_config, Mapping):
        raise ConfigError(f"model config: expected a mapping, got {type(model_config).__name__}")
    preset = find_preset(model_config) if runtime == "vllm-omni" else None
    if preset is None:
        if stage is not None:
            raise ConfigError(f"stage={stage!r}: no vLLM-Omni preset matches this model config")
        return Remap.IDENTITY
    return preset.stage(stage)
