"""On a GPU with vLLM's CUDA build: the torch repack equals vLLM's CUDA repack, and the backend computes the oracle.

Skips without CUDA + vLLM's Marlin; fails instead under WNA16_REQUIRE_CUDA=1 (the nox session `conformance-cuda`)."""

from __future__ import annotations

import pytest
import torch
from marlin_testlib import REQUIRE_CUDA, make_weight, require

from wna16 import Scheme
from wna16.protocol import LayerSpec
from wna16.reference import dequantize
from wna16_marlin import MarlinBackend, resolution
from wna16_marlin.layout import repack_weight


@pytest.fixture(scope="module")
def marlin():
    res = resolution()
    if res.marlin is None:
        require(REQUIRE_CUDA, f"vLLM's Marlin is not available here: {res.reason}")
    return res.marlin


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize(("n", "k"), [(64, 128), (256, 512), (4096, 1024)])
def test_torch_repack_equals_vllm_cuda_repack(marlin, bits, n, k):
    if marlin.repack is None or marlin.repack_call is None:
        pytest.fail(f"vLLM {marlin.version} registers no gptq_marlin_repack")
    weight = make_weight(n, k, Scheme(bits, 128, True)).to("cuda")
    empty = torch.empty(0, dtype=torch.int32, device="cuda")
    values = {"b_q_weight": weight.qweight, "perm": empty, "size_k": k, "size_n": n, "num_bits": bits,
              "is_a_8bit": False}  # fmt: skip
    expected = marlin.repack(*marlin.repack_call.arguments(values))
    assert torch.equal(repack_weight(weight.codes(), bits), expected)


@pytest.mark.parametrize(
    ("scheme", "act_order"),
    [(Scheme(4, 128, True), False), (Scheme(4, 128, True), True), (Scheme(8, -1, True), False),
     (Scheme(4, 64, False), False), (Scheme(4, 32, False), True)],
    ids=str,
)  # fmt: skip
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_backend_computes_the_oracle(marlin, scheme, act_order, dtype):
    n, k = 320, 768  # N needs padding to 384
    weight = make_weight(n, k, scheme, act_order=act_order, scale_dtype=dtype)
    bias = torch.randn(n, dtype=dtype)
    layer = MarlinBackend().prepare(weight, LayerSpec.of(weight, dtype, bias=True, device="cuda"), bias)
    x = torch.randn(7, k, dtype=dtype)
    y = layer(x.cuda()).float().cpu()
    expected = x.float() @ dequantize(weight).t() + bias.float()
    torch.testing.assert_close(y, expected, rtol=2e-2, atol=2e-2 * expected.abs().max().item())
