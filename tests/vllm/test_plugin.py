"""The plugin's contract with vLLM, without starting an engine: registration, when it takes over, versions,
platforms, per-layer methods, and the checkpoints vLLM's own INC path refuses on CPU (quoted from vLLM 0.32)."""

from __future__ import annotations

import json
import shutil
import socket
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest
import torch
from vllm_helpers import Made

import wna16.integrations.vllm as plugin
from wna16.checkpoint.resolve import FusedQuant, LayerQuant
from wna16.errors import ConfigError, UnmatchedNamesError, UnsupportedError

AUTO_ROUND = {"quant_method": "auto-round", "bits": 4, "group_size": 128, "sym": True, "data_type": "int",
              "packing_format": "auto_round:auto_gptq", "block_name_to_quantize": "model.layers"}  # fmt: skip
GPTQ = {"quant_method": "gptq", "bits": 4, "group_size": 128, "sym": True, "desc_act": False}
AWQ = {"quant_method": "awq", "bits": 4, "group_size": 64, "zero_point": True, "version": "gemm"}


def ct_config(
    bits: int = 4, group_size: int | None = 64, sym: bool = False, actorder: str | None = None
) -> dict[str, Any]:
    """A compressed-tensors pack-quantized config with one 'Linear' group (what llm-compressor writes)."""
    weights = {"num_bits": bits, "type": "int", "symmetric": sym, "group_size": group_size, "actorder": actorder,
               "strategy": "group" if group_size else "channel", "dynamic": False}  # fmt: skip
    return {"quant_method": "compressed-tensors", "format": "pack-quantized", "ignore": ["lm_head"],
            "quantization_status": "compressed", "config_groups": {"group_0": {"targets": ["Linear"],
            "weights": weights, "input_activations": None, "output_activations": None}}}  # fmt: skip


@pytest.fixture(scope="module")
def tp_group() -> Iterator[None]:
    """A one-process tensor-parallel group, so vLLM's linear layers can be built without an engine."""
    from vllm.config import VllmConfig, set_current_vllm_config
    from vllm.distributed import cleanup_dist_env_and_memory, init_distributed_environment, initialize_model_parallel

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with set_current_vllm_config(VllmConfig()):
        init_distributed_environment(1, 0, f"tcp://127.0.0.1:{port}", 0, backend="gloo")
        initialize_model_parallel(1)
        yield
        cleanup_dist_env_and_memory()


def test_entry_point_registers_the_method() -> None:
    from vllm.model_executor.layers.quantization import QUANTIZATION_METHODS, get_quantization_config
    from vllm.plugins import load_general_plugins

    points = {ep.name: ep.value for ep in metadata.entry_points(group="vllm.general_plugins")}
    assert points.get("wna16") == "wna16.integrations.vllm:register"
    load_general_plugins()
    assert get_quantization_config("wna16") is plugin.Wna16Config
    plugin.register()  # vLLM may call it again in the same process
    assert QUANTIZATION_METHODS.count("wna16") == 1


def test_platforms_that_list_methods_accept_wna16(monkeypatch: pytest.MonkeyPatch) -> None:
    from vllm.model_executor.layers.quantization import QUANTIZATION_METHODS
    from vllm.platforms import current_platform

    monkeypatch.setattr(type(current_platform), "supported_quantization", ["awq", "gptq"])
    monkeypatch.setattr("vllm.model_executor.layers.quantization.QUANTIZATION_METHODS",
                        [m for m in QUANTIZATION_METHODS if m != "wna16"])  # fmt: skip
    with pytest.raises(ValueError, match="wna16 quantization is currently not supported"):
        current_platform.verify_quantization("wna16")
    monkeypatch.setattr(plugin, "QUANTIZATION_METHODS", [m for m in QUANTIZATION_METHODS if m != "wna16"])
    plugin.register()
    current_platform.verify_quantization("wna16")
    assert "wna16" in current_platform.supported_quantization


@pytest.mark.parametrize(
    "config", [AUTO_ROUND, GPTQ, AWQ, ct_config()], ids=["auto-round", "gptq", "awq", "compressed-tensors"]
)
def test_takes_over_only_when_asked(config: dict[str, Any]) -> None:
    override = plugin.Wna16Config.override_quantization_method
    assert override(config, "wna16") == "wna16"
    for user in (None, "inc", "gptq", "awq", "auto_gptq"):
        assert override(config, user) is None, user
    parsed = plugin.Wna16Config.from_config(config)
    assert parsed.quant.method == config["quant_method"] and parsed.get_name() == "wna16"


def test_refuses_what_is_not_wna16() -> None:
    assert plugin.Wna16Config.override_quantization_method({"quant_method": "fp8"}, "wna16") is None
    with pytest.raises(ConfigError, match="data_type='mx_fp'"):
        plugin.Wna16Config.from_config({**AUTO_ROUND, "data_type": "mx_fp", "bits": 8})


def test_names_the_supported_vllm_versions(monkeypatch: pytest.MonkeyPatch) -> None:
    for tested in ("0.30.0", "0.30.2+cpu", "0.32.0", "0.32.1+cpu"):
        plugin.check_vllm_version(tested)
    for other in ("0.29.9", "0.31.2", "0.33.0", "1.0.0"):
        with pytest.raises(UnsupportedError, match=rf"supports vLLM 0\.30\.x, 0\.32\.x; found vLLM {other}"):
            plugin.check_vllm_version(other)
    monkeypatch.setattr(plugin, "vllm_version", lambda: "0.33.0")
    with pytest.raises(UnsupportedError, match="install a supported vLLM series"):
        plugin.Wna16Config.from_config(AUTO_ROUND)
    plugin.register()  # never raises in vLLM's plugin loop, whatever the version
    monkeypatch.setenv("WNA16_VLLM_ANY_VERSION", "1")  # the former override is gone: still refused
    with pytest.raises(UnsupportedError):
        plugin.Wna16Config.from_config(AUTO_ROUND)


def test_mixed_bits_that_split_a_fused_module_resolve_to_runs() -> None:
    """make_checkpoints.py's mixed case gives q_proj 8 bits but k/v_proj 4: wna16 serves qkv_proj part-run by
    part-run (issue 28; vLLM's INC refuses it)."""
    config = plugin.Wna16Config.from_config(
        {**AUTO_ROUND, "extra_config": {"model.layers.1.self_attn.q_proj": {"bits": 8, "group_size": 32}}}
    )
    fused = config.resolve("model.layers.1.self_attn.qkv_proj")
    assert isinstance(fused, FusedQuant) and fused.runs() == ((0,), (1, 2))
    assert "model.layers.1.self_attn.q_proj: w8g32" in str(fused) and "k_proj: w4g128" in str(fused)
    assert isinstance(config.resolve("model.layers.0.self_attn.qkv_proj"), LayerQuant)


def test_per_layer_methods(tp_group: None) -> None:
    from vllm.model_executor.layers.linear import QKVParallelLinear, ReplicatedLinear, UnquantizedLinearMethod

    config = plugin.Wna16Config.from_config(
        {**AUTO_ROUND, "extra_config": {"model.layers.0.mlp.down_proj": {"bits": 16}}}
    )
    qkv = QKVParallelLinear(256, 64, 4, 2, bias=True, quant_config=config, prefix="model.layers.0.self_attn.qkv_proj")
    assert isinstance(qkv.quant_method, plugin.Wna16LinearMethod)
    assert qkv.quant_method.layer_quant.scheme.bits == 4
    # The checkpoint's tensors at the local sizes (N = 4*64 + 2*2*64 = 512), with the parameter classes that shard.
    shapes = {name: (tuple(p.shape), p.dtype) for name, p in qkv.named_parameters()}
    assert shapes == {
        "qweight": ((32, 512), torch.int32), "qzeros": ((2, 64), torch.int32),
        "scales": ((2, 512), torch.float32), "g_idx": ((256,), torch.int32), "bias": ((512,), torch.float32),
    }  # fmt: skip
    assert qkv.qweight.packed_dim == 0 and qkv.qzeros.packed_dim == 1
    down = ReplicatedLinear(512, 256, bias=False, quant_config=config, prefix="model.layers.0.mlp.down_proj")
    assert type(down.quant_method) is UnquantizedLinearMethod
    outside = ReplicatedLinear(256, 256, bias=False, quant_config=config, prefix="visual.proj")
    assert type(outside.quant_method) is UnquantizedLinearMethod


def test_a_loaded_layer_computes_the_dequantized_product(tp_group: None) -> None:
    """Load a fused gate_up layer part by part through vLLM's loaders; compare with wna16's reference product."""
    from vllm.model_executor.layers.linear import MergedColumnParallelLinear

    from wna16.formats import GPTQ_V1
    from wna16.quantize import quantize_rtn
    from wna16.reference import dequantize
    from wna16.scheme import Scheme

    scheme = Scheme(4, 64, False)
    config = plugin.Wna16Config.from_config({**AUTO_ROUND, "group_size": 64, "sym": False})
    prefix = "model.layers.0.mlp.gate_up_proj"
    layer = MergedColumnParallelLinear(
        256, [128, 128], bias=False, quant_config=config, prefix=prefix, params_dtype=torch.float32
    )
    parts = [quantize_rtn(torch.randn(128, 256, generator=torch.Generator().manual_seed(i)), scheme) for i in (0, 1)]
    for shard_id, weight in enumerate(parts):
        for name, tensor in GPTQ_V1.pack(weight).items():
            getattr(layer, name).weight_loader(getattr(layer, name), tensor, shard_id)
    layer.quant_method.process_weights_after_loading(layer)
    assert not hasattr(layer, "qweight")  # the raw tensors are released once the backend holds its own
    x = torch.randn(5, 256, generator=torch.Generator().manual_seed(2))
    want = x @ torch.cat([dequantize(w) for w in parts]).T
    got = layer.quant_method.apply(layer, x)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    bias = torch.randn(256)
    torch.testing.assert_close(layer.quant_method.apply(layer, x, bias), want + bias, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    ("bits", "group_size", "sym", "actorder"),
    [(4, 64, False, None), (8, None, True, None), (4, 32, True, "group")],
    ids=["w4g64asym", "w8channelsym", "w4g32sym-actorder"],
)
def test_a_loaded_compressed_tensors_layer_computes_the_dequantized_product(
    tp_group: None, bits: int, group_size: int | None, sym: bool, actorder: str | None
) -> None:
    """compressed-tensors tensors loaded part by part into a fused gate_up layer through vLLM's own loaders."""
    from vllm.model_executor.layers.linear import MergedColumnParallelLinear

    from wna16.formats import COMPRESSED_TENSORS
    from wna16.quantize import quantize_rtn
    from wna16.reference import dequantize
    from wna16.scheme import Scheme

    scheme = Scheme(bits, group_size or -1, sym)
    config = plugin.Wna16Config.from_config(ct_config(bits, group_size, sym, actorder))
    prefix = "model.layers.0.mlp.gate_up_proj"
    layer = MergedColumnParallelLinear(
        256, [128, 128], bias=False, quant_config=config, prefix=prefix, params_dtype=torch.float32
    )
    groups = scheme.num_groups(256)
    shapes = {name: tuple(p.shape) for name, p in layer.named_parameters()}
    want_shapes = {"weight_packed": (256, 256 * bits // 32), "weight_scale": (256, groups), "weight_shape": (2,)}
    if not sym:
        want_shapes["weight_zero_point"] = (256 * bits // 32, groups)
    if actorder:
        want_shapes["weight_g_idx"] = (256,)
    assert shapes == want_shapes
    gen = torch.Generator().manual_seed(3)
    g_idx = (torch.randperm(256, generator=gen) % groups).to(torch.int32) if actorder else None
    parts = [
        quantize_rtn(torch.randn(128, 256, generator=torch.Generator().manual_seed(i)), scheme, g_idx=g_idx)
        for i in (0, 1)
    ]
    for shard_id, weight in enumerate(parts):
        for name, tensor in COMPRESSED_TENSORS.pack(weight).items():
            getattr(layer, name).weight_loader(getattr(layer, name), tensor, shard_id)
    layer.quant_method.process_weights_after_loading(layer)
    assert not hasattr(layer, "weight_packed")
    x = torch.randn(5, 256, generator=torch.Generator().manual_seed(2))
    want = x @ torch.cat([dequantize(w) for w in parts]).T
    torch.testing.assert_close(layer.quant_method.apply(layer, x), want, rtol=1e-4, atol=1e-4)


INC_REFUSALS = {
    "ar_w4g32_asym_gptq_zero0": ("model.layers.0.self_attn.o_proj", NotImplementedError,
                                 "INC on CPU: unsupported config INCLayerConfig(bits=4, group_size=32, sym=False"),
    "ar_mixed_fusable": ("model.layers.0.mlp.down_proj", NotImplementedError,
                         "INC on CPU: unsupported config INCLayerConfig(bits=8, group_size=128, sym=True"),
    "ar_w8g64_asym": ("model.layers.0.mlp.down_proj", ValueError, "Unsupported packing_format: auto_round,"),
}  # fmt: skip
"""What vLLM 0.32's INC path says on CPU for the checkpoints test_serve.py serves through wna16."""


@pytest.mark.parametrize("case", sorted(INC_REFUSALS))
def test_vllm_inc_refuses_these_checkpoints_on_cpu(case: str, made: Made, tp_group: None) -> None:
    from vllm.model_executor.layers.linear import ReplicatedLinear
    from vllm.model_executor.layers.quantization.inc import INCConfig

    prefix, error, message = INC_REFUSALS[case]
    quant = json.loads((made.path(case) / "config.json").read_text())["quantization_config"]
    k = 512 if prefix.endswith("down_proj") else 256
    layer = ReplicatedLinear(k, 256, bias=False, quant_config=None, prefix=prefix)
    with pytest.raises(error) as refused:
        INCConfig.from_config(quant).get_quant_method(layer, prefix)
    assert message in str(refused.value)
    print(f"{case}: vLLM INC on CPU: {type(refused.value).__name__}: {refused.value}")
    assert plugin.Wna16Config.from_config(quant).resolve(prefix) is not None


def test_a_mixed_gate_up_loaded_part_by_part_computes_the_dequantized_product(tp_group: None) -> None:
    """gate_proj 4-bit g64 and up_proj 8-bit g32 through vLLM's MergedColumnParallelLinear and its loaders."""
    from vllm.model_executor.layers.linear import MergedColumnParallelLinear

    from wna16.formats import GPTQ_V1
    from wna16.quantize import quantize_rtn
    from wna16.reference import dequantize
    from wna16.scheme import Scheme

    up = {"model.layers.0.mlp.up_proj": {"bits": 8, "group_size": 32}}
    quant = {**AUTO_ROUND, "group_size": 64, "block_name_to_quantize": "model.layers", "extra_config": up}
    config = plugin.Wna16Config.from_config(quant)
    layer = MergedColumnParallelLinear(
        256, [128, 128], bias=False, quant_config=config, prefix="model.layers.0.mlp.gate_up_proj",
        params_dtype=torch.float32,
    )  # fmt: skip
    assert isinstance(layer.quant_method, plugin.Wna16FusedMethod)
    schemes = (Scheme(4, 64, True), Scheme(8, 32, True))
    parts = [quantize_rtn(torch.randn(128, 256, generator=torch.Generator().manual_seed(i)), s)
             for i, s in enumerate(schemes)]  # fmt: skip
    for shard_id, weight in enumerate(parts):
        for name, tensor in GPTQ_V1.pack(weight).items():
            getattr(layer, name).weight_loader(getattr(layer, name), tensor, shard_id)
    layer.quant_method.process_weights_after_loading(layer)
    assert not hasattr(layer, "qweight")
    x = torch.randn(5, 256, generator=torch.Generator().manual_seed(2))
    want = x @ torch.cat([dequantize(w) for w in parts]).T
    torch.testing.assert_close(layer.quant_method.apply(layer, x), want, rtol=1e-4, atol=1e-4)


def test_a_part_never_loaded_is_a_typed_error_naming_module_and_parts(tp_group: None) -> None:
    from vllm.model_executor.layers.linear import MergedColumnParallelLinear

    from wna16.errors import FusedModuleError
    from wna16.formats import GPTQ_V1
    from wna16.quantize import quantize_rtn
    from wna16.scheme import Scheme

    quant = {**AUTO_ROUND, "group_size": 64, "extra_config": {"model.layers.0.mlp.up_proj": {"bits": 8}}}
    layer = MergedColumnParallelLinear(
        256, [128, 128], bias=False, quant_config=plugin.Wna16Config.from_config(quant),
        prefix="model.layers.0.mlp.gate_up_proj", params_dtype=torch.float32,
    )  # fmt: skip
    gate = quantize_rtn(torch.randn(128, 256), Scheme(4, 64, True))
    for name, tensor in GPTQ_V1.pack(gate).items():
        getattr(layer, name).weight_loader(getattr(layer, name), tensor, 0)
    with pytest.raises(FusedModuleError, match=r"gate_up_proj: part model\.layers\.0\.mlp\.up_proj was not loaded.*"
                       r"gate_proj: w4g64sym, .*up_proj: w8g64sym"):  # fmt: skip
        layer.quant_method.process_weights_after_loading(layer)
    wide = quantize_rtn(torch.randn(128, 512), Scheme(8, 64, True))  # K = 512: cannot join a K = 256 module
    with pytest.raises(FusedModuleError, match=r"gate_up_proj: part model\.layers\.0\.mlp\.up_proj does not fit"):
        for name, tensor in GPTQ_V1.pack(wide).items():
            getattr(layer, name).weight_loader(getattr(layer, name), tensor, 1)
        layer.quant_method.process_weights_after_loading(layer)


DOWN_8BIT = "model.layers.0.mlp.down_proj"
"""The layer the misnamed checkpoints store at 8 bits beside 4-bit g128 ones: under a misnamed key vLLM would build it
at 4 bits and die loading its 8-bit tensors."""


@pytest.fixture(scope="module")
def misnamed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny LLaMA written by wna16 (4-bit g128 on ``model.layers``, :data:`DOWN_8BIT` at 8 bits) as written
    (``good``), with its ``extra_config`` key misspelt (``extra``) and with its block name misspelt (``block``)."""
    from make_reference import maker

    from wna16.checkpoint.write import quantization_config, write_checkpoint

    root = tmp_path_factory.mktemp("misnamed")
    model = maker().tiny_llama()
    model.config.architectures = ["LlamaForCausalLM"]
    qc = quantization_config(bits=4, group_size=128, sym=True, packing_format="auto_round:auto_gptq",
                             block_name_to_quantize=("model.layers",),
                             extra_config={DOWN_8BIT: {"bits": 8}})  # fmt: skip
    write_checkpoint(root / "good", model.state_dict(), qc, model_config=model.config.to_dict())
    edits = {
        "extra": {"extra_config": {DOWN_8BIT + "j": {"bits": 8}}},
        "block": {"block_name_to_quantize": "model.layer"},
    }
    for case, edit in edits.items():
        shutil.copytree(root / "good", root / case)
        config = json.loads((root / case / "config.json").read_text())
        config["quantization_config"].update(edit)
        (root / case / "config.json").write_text(json.dumps(config))
    return {case: root / case for case in ("good", *edits)}


def test_checkpoint_names_are_checked_before_the_model_is_built(misnamed: dict[str, Path]) -> None:
    """The hook vLLM calls while building its config compares the config as written with the checkpoint's own module
    names (safetensors headers): the written checkpoint passes, a misspelt key or block is refused naming the file,
    the bad name and the closest checkpoint names. A key naming a fused module vLLM builds from the checkpoint's parts
    (``qkv_proj``) names a module."""

    from transformers import AutoConfig

    def hook(case: str, **edit: Any) -> None:
        path = misnamed[case]
        hf_config = AutoConfig.from_pretrained(path)  # what vLLM passes: it carries the quantization_config
        config = {**hf_config.quantization_config, **edit}
        plugin.Wna16Config.from_config(config).maybe_update_config(str(path), hf_config=hf_config, revision=None)

    hook("good")
    hook("good", extra_config={"model.layers.0.self_attn.qkv_proj": {"bits": 4}})
    with pytest.raises(UnmatchedNamesError) as raised:
        hook("extra")
    assert list(raised.value.unmatched) == [DOWN_8BIT + "j"] and raised.value.space == "checkpoint"
    assert raised.value.unmatched[DOWN_8BIT + "j"][0] == DOWN_8BIT
    assert str(raised.value).startswith(f"{misnamed['extra']}: config.json: quantization_config: ")
    # a model config without quantization_config: vLLM read one of the method's own files
    assert plugin.config_file(None) == "quantization_config.json or quantize_config.json or quant_config.json"
    with pytest.raises(UnmatchedNamesError) as raised:
        hook("block")
    assert (
        list(raised.value.unmatched) == ["model.layer"] and raised.value.unmatched["model.layer"][0] == "model.layers"
    )


@pytest.mark.parametrize(
    ("case", "bad", "close"), [("extra", DOWN_8BIT + "j", DOWN_8BIT), ("block", "model.layer", "model.layers")]
)
def test_a_misnamed_checkpoint_is_refused_before_any_engine_work(
    case: str, bad: str, close: str, misnamed: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``LLM(model=path, quantization="wna16")``, with the engine core in its own process (vLLM's default), is
    refused in the caller's process while vLLM builds its config, before the engine core starts: the message names
    ``config.json``, the misspelt name and the closest checkpoint name. vLLM builds its ``VllmConfig`` as a pydantic
    dataclass, which turns the ``ValueError`` raised there (:class:`UnmatchedNamesError` is a ``ConfigError``, a
    ``ValueError``) into a ``ValidationError`` carrying wna16's message; the typed error is its context. Without the
    check (vLLM 0.32, measured) the engine core starts, builds the model with the wrong scheme and dies loading the
    weights, and the caller gets ``RuntimeError: Engine core initialization failed`` naming nothing: the worker logs a
    bare ``AssertionError`` (the 8-bit ``down_proj`` into 4-bit parameters) or ``AttributeError:
    'MergedColumnParallelLinear' object has no attribute 'data'`` (the misspelt block: every layer unquantized)."""
    from pydantic import ValidationError
    from vllm import LLM

    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "1")
    path = misnamed[case]
    with pytest.raises(ValidationError) as raised:
        LLM(model=str(path), quantization="wna16", dtype="float32", skip_tokenizer_init=True, max_model_len=64)
    (detail,) = raised.value.errors()
    error = detail["ctx"]["error"]
    assert isinstance(error, UnmatchedNamesError) and list(error.unmatched) == [bad]
    assert str(error).startswith(f"{path}: config.json: quantization_config: names that match no checkpoint module: ")
    assert f"{bad!r} (closest checkpoint names: {close!r}" in str(raised.value)
