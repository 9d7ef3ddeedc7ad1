"""compressed-tensors checkpoints against two oracles: auto-round's own weights and compressed-tensors' decompressor.

The checkpoints: auto-round 0.16.1's ``format="llm_compressor"`` export of tiny LLaMAs (written through the pinned
compressed-tensors' own compressor), each with a twin exported as ``auto_round`` from the same seeded model, and one
checkpoint written by wna16's writer (``wna16_ct_mixed``).

(a) Every layer wna16 dequantizes from the export equals, bit for bit, the weight auto-round's own inference module
computes on the twin (read through the identity matrix in float32): auto-round exported the same quantized weight in
two layouts and wna16 reads both the same.
(b) compressed-tensors' own decompressor (``PackedQuantizationCompressor.decompress``, with the scheme compressed-
tensors' own matcher assigns each module from the config) gives the same weights, for auto-round's exports and for
what wna16 writes; and transformers, which decompresses through compressed-tensors, computes the same logits as the
model patch_model serves.
"""

from __future__ import annotations

import json
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest
import torch
from compressed_tensors.compressors.pack_quantized.base import PackedQuantizationCompressor
from compressed_tensors.quantization import QuantizationConfig
from compressed_tensors.utils.match import match_targets
from conftest import MAKER
from hypothesis import given, settings
from hypothesis import strategies as st
from interop_helpers import autoround_weight, build_patched, final_output, load_autoround, model_inputs
from safetensors import safe_open
from transformers import AutoModelForCausalLM

import wna16
from wna16.checkpoint.load import Checkpoint
from wna16.checkpoint.remap import Remap
from wna16.reference import dequantize

LLMC = sorted(MAKER.LLMC_CASES)
ALL_CT = [*LLMC, MAKER.CT_WRITER]


@cache
def checkpoint(path: Path) -> Checkpoint:
    empty, _ = build_patched(path, None, torch.float32, None)
    linears = {n: (m.in_features, m.out_features) for n, m in empty.named_modules() if isinstance(m, torch.nn.Linear)}
    return wna16.load_checkpoint(path, Remap.IDENTITY, expected_modules=linears)


@cache
def autoround_model(path: Path) -> torch.nn.Module:
    return load_autoround(path, "auto")


def ct_decompressed(path: Path) -> dict[str, torch.Tensor]:
    """module name -> the weight compressed-tensors' decompressor computes, each module's scheme chosen by
    compressed-tensors' own matcher (exact names, regexes, then classes: every checkpoint module is a Linear)."""
    config = QuantizationConfig.model_validate(json.loads((path / "config.json").read_text())["quantization_config"])
    target_to_scheme = {t: scheme for scheme in config.config_groups.values() for t in scheme.targets}
    with safe_open(str(path / "model.safetensors"), framework="pt") as f:
        keys = list(f.keys())
        modules = sorted({k.rpartition(".")[0] for k in keys if k.endswith(".weight_packed")})
        out = {}
        for name in modules:
            ignored = match_targets(name, torch.nn.Linear(1, 1, device="meta"), config.ignore)
            matched = match_targets(name, torch.nn.Linear(1, 1, device="meta"), target_to_scheme)
            assert matched and not ignored, f"{path.name}: compressed-tensors assigns no scheme to {name}"
            state = {k.rpartition(".")[2]: f.get_tensor(k) for k in keys if k.rpartition(".")[0] == name}
            out[name] = PackedQuantizationCompressor.decompress(state, target_to_scheme[matched[0]])["weight"]
    return out


@pytest.mark.parametrize("case", LLMC)
def test_export_is_compressed_tensors_pack_quantized(checkpoints: Path, case: str) -> None:
    spec = MAKER.LLMC_CASES[case]
    config = json.loads((checkpoints / case / "config.json").read_text())["quantization_config"]
    assert (config["quant_method"], config["format"]) == ("compressed-tensors", "pack-quantized"), config
    ckpt = checkpoint(checkpoints / case)
    assert ckpt.config.method == "compressed-tensors"
    twin = checkpoint(checkpoints / f"{case}_ar")
    assert set(ckpt.layers) == set(twin.layers), "the export quantizes exactly the layers of the auto_round twin"
    for name, layer in ckpt.layers.items():
        assert layer.scheme == twin.layers[name].scheme, name
        assert layer.packed_format == "compressed-tensors"
    if spec.layer_config:
        assert len(config["config_groups"]) > 1, "mixed schemes: several groups"


@pytest.mark.parametrize("case", LLMC)
def test_dequantize_equals_autoround_weights(checkpoints: Path, case: str) -> None:
    """(a) bit-exact, every layer, against auto-round's own inference module on the twin."""
    ckpt = checkpoint(checkpoints / case)
    model = autoround_model(checkpoints / f"{case}_ar")
    worst = 0.0
    for name, layer in ckpt.layers.items():
        module = model.get_submodule(name)
        assert not isinstance(module, torch.nn.Linear), f"{case}: auto-round left {name} in 16 bits"
        theirs = autoround_weight(module, layer.in_features)
        ours = dequantize(ckpt.weight(name))
        worst = max(worst, float((ours - theirs).abs().max()))
        assert torch.equal(ours, theirs), f"{case}/{name}: max diff {(ours - theirs).abs().max()}"
    print(f"\n{case}: {len(ckpt.layers)} layers, max |wna16 - auto-round| = {worst}")


@pytest.mark.parametrize("case", ALL_CT)
def test_compressed_tensors_decompressor_agrees(checkpoints: Path, case: str) -> None:
    """(b) compressed-tensors' decompressor: the same layers, the same weights (it computes in the scale dtype, so
    wna16's exact float32 weight rounded once to that dtype must equal it bit for bit)."""
    ckpt = checkpoint(checkpoints / case)
    theirs = ct_decompressed(checkpoints / case)
    assert set(theirs) == set(ckpt.layers)
    worst = 0.0
    for name, weight in theirs.items():
        ours = dequantize(ckpt.weight(name))
        assert weight.shape == ours.shape, name
        assert torch.equal(ours.to(weight.dtype), weight), f"{case}/{name}: {(ours - weight.float()).abs().max()}"
        worst = max(worst, float((ours - weight.float()).abs().max() / ours.abs().max()))
    dtypes = {str(w.dtype) for w in theirs.values()}
    print(
        f"\n{case}: {len(theirs)} layers, compressed-tensors computes in {dtypes}; max rel |exact - theirs| {worst:.2e}"
    )


TRANSFORMERS_CANNOT_LOAD = {
    case: "transformers 5.23 + compressed-tensors 0.20.1 expect unpacked [N, G] zero points and refuse the packed "
    "[N*b/32, G] ones compressed-tensors itself writes (size mismatch); its decompressor reads them (test above)"
    for case in ("lc_w4g32_asym", MAKER.CT_WRITER)
}


@pytest.mark.parametrize(
    "case",
    [
        pytest.param(c, marks=pytest.mark.xfail(strict=True, raises=RuntimeError, reason=TRANSFORMERS_CANNOT_LOAD[c]))
        if c in TRANSFORMERS_CANNOT_LOAD
        else c
        for c in ALL_CT
    ],
)
def test_patched_model_matches_transformers_with_compressed_tensors(checkpoints: Path, case: str) -> None:
    """transformers loads the checkpoint through compressed-tensors (decompressed, float32): the logits of the model
    patch_model serves (reference backend, float32) agree with it."""
    path = checkpoints / case
    theirs = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, device_map="cpu").eval()
    ours, report = build_patched(path, checkpoint(path), torch.float32, "reference")
    assert report is not None and set(report.layers) == set(checkpoint(path).layers)
    inputs = model_inputs(path, torch.float32)
    want, got = final_output(theirs, inputs), final_output(ours, inputs)
    rel = float((got - want).abs().max() / want.abs().max())
    print(f"\n{case}: logits rel diff wna16 vs transformers+compressed-tensors {rel:.2e}")
    assert rel < 1e-2, rel  # their weights are rounded to the scale dtype; ours are exact


@pytest.mark.parametrize("case", ALL_CT)
def test_audit_clean_and_inspect(checkpoints: Path, case: str) -> None:
    path = checkpoints / case
    ckpt = checkpoint(path)
    assert ckpt.audit.ok, ckpt.audit.problems
    result = subprocess.run([sys.executable, "-m", "wna16.cli", "inspect", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "config      quant_method compressed-tensors, packing compressed-tensors" in result.stdout
    assert next(iter(ckpt.layers)) in result.stdout


NAMES = [f"model.layers.{i}.{m}" for i in (0, 1, 10) for m in ("self_attn.q_proj", "mlp.down_proj", "mlp.up_proj")]
TARGET_POOL = [*NAMES[:4], "Linear", "re:.*down_proj$", "re:model\\.layers\\.1\\..*", "re:.*proj", "re:mlp", "lm_head"]


@settings(max_examples=200, deadline=None, derandomize=True)
@given(
    st.lists(st.lists(st.sampled_from(TARGET_POOL), min_size=1, max_size=3, unique=True), min_size=1, max_size=4),
    st.lists(st.sampled_from([*TARGET_POOL[:4], "re:.*q_proj", "lm_head"]), max_size=2, unique=True),
)
def test_resolution_is_compressed_tensors_own(groups: list[list[str]], ignore: list[str]) -> None:
    """For any targets and ignore lists, the group wna16 resolves a layer to is the one compressed-tensors' own
    matcher assigns (``match_targets``: exact, regex, class; first wins; ``is_match`` with ``ignore``)."""
    from compressed_tensors.utils.match import is_match

    from wna16.checkpoint.config import QuantConfig
    from wna16.errors import ConfigError

    bits = [4, 8, 2, 3]
    config = {
        "quant_method": "compressed-tensors", "format": "pack-quantized", "ignore": ignore,
        "config_groups": {
            f"group_{i}": {"targets": targets, "weights": {"num_bits": bits[i], "type": "int", "symmetric": True,
                                                             "strategy": "channel", "group_size": None}}
            for i, targets in enumerate(groups)
        },
    }  # fmt: skip
    theirs = QuantizationConfig.model_validate(config)
    target_to_scheme = {t: scheme for scheme in theirs.config_groups.values() for t in scheme.targets}
    ours = QuantConfig.from_dict(config)
    linear = torch.nn.Linear(1, 1, device="meta")
    for name in NAMES:
        if not is_match(name, linear, list(target_to_scheme), theirs.ignore):
            assert ours.explain(name)[0] is None, name
            continue
        want = target_to_scheme[match_targets(name, linear, target_to_scheme)[0]].weights.num_bits
        try:
            layer = ours.explain(name)[0]
        except ConfigError as exc:
            assert "vLLM" in str(exc)  # the two runtimes' orders disagree: refused, never served one way
            continue
        assert layer is not None and layer.scheme.bits == want, (name, groups, ignore)
