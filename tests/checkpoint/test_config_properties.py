"""Property: any JSON-like quantization_config, any extra_config keys and any module names give a valid resolved
config or the typed ConfigError, never another exception."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from wna16 import ConfigError, Scheme
from wna16.checkpoint.config import QuantConfig
from wna16.checkpoint.remap import Remap
from wna16.checkpoint.resolve import LayerQuant
from wna16.formats import FORMATS

json_scalars = st.none() | st.booleans() | st.integers(-3, 40) | st.floats(allow_nan=False) | st.text(max_size=8)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)

# Names built from the characters that matter: dots, digits, regex characters, the words of real layers.
NAME_PARTS = [
    "model",
    "layers",
    "0",
    "1",
    "10",
    "mlp",
    "experts",
    "3",
    "q_proj",
    "k_proj",
    "v_proj",
    "qkv_proj",
    "gate_up_proj",
    "up_proj",
    "to_qkv",
    "lm_head",
    "thinker",
    "visual",
    "*",
    ".*",
    "(",
    ")",
    "[0-9]",
    "+",
    "?",
    "|",
    "\\",
    "^",
    "$",
    "{2}",
    "",
]
random_names = st.lists(st.sampled_from(NAME_PARTS), min_size=1, max_size=6).map(".".join)
layer_names = st.builds(
    lambda block, index, expert, leaf: ".".join(p for p in (block, str(index), expert, leaf) if p),
    st.sampled_from(["model.layers", "thinker.model.layers", "transformer_blocks", "blocks", "visual.blocks", ""]),
    st.integers(0, 12),
    st.sampled_from(["", "", "mlp.experts.3", "mlp.experts", "self_attn"]),
    st.sampled_from(["q_proj", "qkv_proj", "gate_up_proj", "down_proj", "to_qkv", "to_out.0", "ffn.net.0.proj"]),
)
names = random_names | layer_names


def maybe(good: list[Any], bad: list[Any] = []) -> st.SearchStrategy[Any]:  # noqa: B006
    """Mostly a plausible value, sometimes a wrong one or arbitrary JSON (so both outcomes are exercised)."""
    wrong = st.sampled_from(bad) | json_values if bad else json_values
    return st.integers(0, 9).flatmap(lambda i: wrong if i == 0 else st.sampled_from(good))


OVERRIDE_VALUES: dict[str, tuple[list[Any], list[Any]]] = {
    "bits": ([2, 3, 4, 8, 16], [5, 1, "8"]),
    "group_size": ([-1, 32, 64, 128], [0]),
    "sym": ([True, False], ["yes"]),
    "data_type": (["int"], ["mx_fp", "fp8"]),
    "act_bits": ([16], [8]),
    "desc_act": ([True, False], [1]),
}


@st.composite
def overrides(draw: st.DrawFn) -> Any:
    """An extra_config entry or dynamic rule: mostly well-formed fields, sometimes a wrong one or junk."""
    if draw(st.integers(0, 19)) == 0:
        return draw(json_values)
    keys = draw(st.lists(st.sampled_from(sorted(OVERRIDE_VALUES)), max_size=3, unique=True))
    return {key: draw(maybe(*OVERRIDE_VALUES[key])) for key in keys}


@st.composite
def quant_configs(draw: st.DrawFn) -> Any:
    if draw(st.integers(0, 9)) == 0:
        return draw(json_values)  # anything at all
    d: dict[str, Any] = {
        "quant_method": draw(maybe(["auto-round", "intel/auto-round", "gptq", "awq"], ["fp8", None])),
        "bits": draw(maybe([2, 3, 4, 8, 16, 4, 4], [5, 0, True])),
        "group_size": draw(maybe([-1, 32, 128], [0, -2])),
        "sym": draw(maybe([True, False])),
    }
    optional = {
        "packing_format": maybe(
            [
                "auto_round",
                "auto_round:auto_gptq",
                "auto_round:gptqmodel",
                "auto_round:auto_awq",
                "auto_round:gptq:exllamav2",
                "mlx",
                "auto",
            ]
        ),
        "backend": maybe(["auto_round:gptq", "auto_round:awq"]),
        "data_type": maybe(["int"], ["mx_fp", "float"]),
        "act_bits": maybe([16, 32], [8]),
        "block_name_to_quantize": maybe(["model.layers", "a,b", ["model.layers", "visual"]]) | names,
        "to_quant_block_names": maybe(["model.layers"]),
        "quant_block_list": maybe([[["model.layers.0", "model.layers.1"]]]),
        "extra_config": st.dictionaries(names, overrides(), max_size=4) | json_values,
        "modules_to_not_convert": st.lists(names, max_size=2) | json_values,
        "desc_act": maybe([True, False]),
        "checkpoint_format": maybe(["gptq", "gptq_v2"], ["marlin"]),
        "dynamic": st.dictionaries(
            st.sampled_from(["-:", "+:", ""]).flatmap(lambda p: names.map(lambda n: p + n)), overrides(), max_size=3
        )
        | json_values,
        "lm_head": maybe([True, False]),
        "modules_in_block_to_quantize": st.lists(st.lists(names, max_size=2), max_size=2) | json_values,
        "w_bit": maybe([4], [8]),
        "zero_point": maybe([True, False]),
        "version": maybe(["gemm"], ["gemv"]),
        "autoround_version": json_values,
    }
    for key in draw(st.lists(st.sampled_from(sorted(optional)), max_size=6, unique=True)):
        d[key] = draw(optional[key])
    return {k: v for k, v in d.items() if v is not None or draw(st.booleans())}


remaps = st.builds(
    lambda p, s, stage: Remap(p, s, stage),
    st.dictionaries(names.filter(bool), st.text(max_size=6), max_size=3),
    st.dictionaries(names.filter(bool), st.text(max_size=6), max_size=2),
    st.sampled_from(["", "thinker.", "talker."]),
)


def check_layer(layer: LayerQuant | None) -> None:
    if layer is not None:
        assert isinstance(layer.scheme, Scheme) and layer.packed_format in FORMATS
        assert isinstance(layer.act_order, bool) and layer.source


@settings(max_examples=120)  # many branches: the ci profile's 40 leave some untried
@given(quant_configs(), st.lists(names, max_size=6), remaps)
def test_any_config_gives_a_config_or_config_error(raw: Any, layer_names: list[str], remap: Remap) -> None:
    try:
        cfg = QuantConfig.from_dict(raw)
    except ConfigError:
        return
    assert cfg.method in ("auto-round", "gptq", "awq") and cfg.packed_format in FORMATS
    for config in (cfg, cfg.remapped(remap) if _remaps(cfg, remap) else cfg):
        for name in layer_names:
            try:
                check_layer(config.resolve(name))
                layer, reason = config.explain(name)
            except ConfigError:
                continue
            check_layer(layer)
            assert reason


def _remaps(cfg: QuantConfig, remap: Remap) -> bool:
    try:
        cfg.remapped(remap)
    except ConfigError:
        return False
    return True


@given(st.dictionaries(names, overrides(), max_size=6), st.lists(names, min_size=1, max_size=6))
def test_random_extra_config_keys(extra: dict[str, Any], layer_names: list[str]) -> None:
    base = {"quant_method": "auto-round", "bits": 4, "group_size": 128, "block_name_to_quantize": "model.layers"}
    try:
        cfg = QuantConfig.from_dict({**base, "extra_config": extra})
    except ConfigError as exc:
        assert "extra_config" in str(exc)  # the only thing that can be wrong is an entry: the message names it
        return
    for name in layer_names:
        try:
            layer, reason = cfg.explain(name)
        except ConfigError:
            continue
        check_layer(layer)
        if name in extra and not any(c in name for c in "*+?^$()[]{}|\\") and layer is not None:
            assert reason == f"extra_config exact key {name!r}"
