"""The GPTQ v1 zero-point policy of :mod:`wna16.formats`, judged by auto-round's own module (case 2 of the issue).

v1 (``auto_round:auto_gptq``, ``auto_gptq``) stores ``zero - 1``. Two facts are checked against auto-round 0.16:
its exporter cannot write a true zero of 0 and clamps the stored value to 0 (the layer is then read, by everyone,
with zero 1); and a stored ``2**bits - 1`` (what older AutoGPTQ wrote for a true zero of 0, wrapping) is read by
auto-round's kernel module as a zero of ``2**bits`` (no wrap), which is wna16's policy. Reading v1 as v2 must fail
check (a): that is what makes check (a) able to tell the two conventions apart.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from conftest import MAKER
from interop_helpers import autoround_weight, load_autoround
from safetensors.torch import load_file, save_file

import wna16
from wna16.checkpoint.remap import Remap
from wna16.formats import GPTQ_V1, GPTQ_V2
from wna16.reference import dequantize

ZERO0 = "ar_w4g32_asym_gptq_zero0"


def _layer_tensors(path: Path, layer: str) -> dict[str, torch.Tensor]:
    tensors = load_file(str(path / "model.safetensors"))
    return {k.removeprefix(f"{layer}."): v for k, v in tensors.items() if k.startswith(f"{layer}.")}


def test_v1_read_as_v2_fails_the_identity_check(checkpoints: Path) -> None:
    path = checkpoints / "ar_w4g128_sym"
    name = "model.layers.0.self_attn.q_proj"
    theirs = autoround_weight(load_autoround(path, "auto").get_submodule(name), 256)
    raw = _layer_tensors(path, name)
    scheme = wna16.Scheme(4, 128, True)
    assert torch.equal(dequantize(GPTQ_V1.unpack(raw, scheme, 256, 256)), theirs)
    misread = GPTQ_V2.unpack(raw, wna16.Scheme(4, 128, False), 256, 256)  # zeros 7 instead of 8
    error = (dequantize(misread) - theirs).abs()
    scales = misread.scales.float().abs().t().repeat_interleave(128, dim=1)
    assert torch.equal(error, scales), "a v1/v2 mix-up shifts every weight by exactly one scale"


def test_autoround_export_clamps_a_true_zero_of_zero(checkpoints: Path) -> None:
    """The float group made all positive has RTN zero 0; auto-round stores 0 (= zero 1) and every reader agrees."""
    path = checkpoints / ZERO0
    layer, row, cols = MAKER.ZERO_OF_ZERO
    ours = wna16.load_checkpoint(path, Remap.IDENTITY).weight(layer)
    group = cols.start // 32
    assert int(ours.zeros[group, row]) == 1, "auto-round's v1 export writes max(zero - 1, 0)"
    model = load_autoround(path, "auto")
    assert torch.equal(dequantize(ours), autoround_weight(model.get_submodule(layer), 256))


def test_stored_max_zero_reads_as_two_to_the_bits(checkpoints: Path, tmp_path: Path) -> None:
    """Write a stored zero of 15 into a real v1 checkpoint: auto-round's module computes with 16, as wna16 does."""
    path = tmp_path / "patched"
    shutil.copytree(checkpoints / ZERO0, path)
    layer = "model.layers.1.self_attn.k_proj"
    tensors = load_file(str(path / "model.safetensors"))
    qzeros = tensors[f"{layer}.qzeros"].clone()
    qzeros[2, 0] = (qzeros[2, 0] & ~0xF) | 0xF  # group 2, column 0: stored 15
    tensors[f"{layer}.qzeros"] = qzeros
    save_file(tensors, str(path / "model.safetensors"), metadata={"format": "pt"})

    ours = wna16.load_checkpoint(path, Remap.IDENTITY).weight(layer)
    assert int(ours.zeros[2, 0]) == 16
    theirs = autoround_weight(load_autoround(path, "auto").get_submodule(layer), 256)
    assert torch.equal(dequantize(ours), theirs)
    wrapped = wna16.QuantizedWeight(ours.scheme, 256, 128, ours.qweight, ours.zeros % 16, ours.scales)
    assert not torch.equal(dequantize(wrapped), theirs), "a reader wrapping 16 to 0 would disagree with auto-round"
