"""The prepared layer: picks a launch configuration for each call's row count and launches the Triton kernel, as the
``wna16::linear`` kernel ``rocm.triton`` (:mod:`wna16.ops`): compiled engines see one op, not a Triton launch."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from types import ModuleType

import torch

from wna16.ops import PreparedOp, register_kernel
from wna16_rocm import runtime
from wna16_rocm.configs import LaunchConfig, Tuner
from wna16_rocm.repack import GroupMode, RepackedWeight

_TUNER = Tuner()

KERNEL = "rocm.triton"


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


class TritonLinear(PreparedOp):
    """``x @ W^T + b`` for activations of one dtype on one device, ``W`` in the layout of :mod:`wna16_rocm.repack`;
    the op's state and options are the repacked weight's tensors and constants (:func:`triton_linear` rebuilds it)."""

    def __init__(self, weight: RepackedWeight, bias: torch.Tensor | None, dtype: torch.dtype) -> None:
        super().__init__(KERNEL, weight.in_features, weight.out_features, dtype)
        self.weight = weight
        self.bias = None if bias is None else bias.to(device=weight.lo.device, dtype=torch.float32).contiguous()

    @property
    def state(self) -> tuple[torch.Tensor | None, ...]:
        """``(lo, hi, scales, zeros, perm, row_group, float32 bias)`` (absent ones None)."""
        w = self.weight
        return (w.lo, w.hi, w.scales, w.zeros, w.perm, w.row_group, self.bias)

    @property
    def options(self) -> tuple[int, ...]:
        """``(bits, group mode, group rows)``."""
        return (self.weight.bits, int(self.weight.group_mode), self.weight.group_rows)

    def _launch(self, x2: torch.Tensor, out: torch.Tensor, config: LaunchConfig) -> None:
        launch(self.weight, self.bias, x2, out, config, runtime.kernels())


@register_kernel(KERNEL, ["cuda", "cpu"])  # CPU: under the Triton interpreter
def triton_linear(x: torch.Tensor, state: Sequence[torch.Tensor | None], options: Sequence[int]) -> torch.Tensor:
    """``x`` [..., K] -> [..., N] in ``x``'s dtype: a configuration for this call's row count (tuned on a cache miss
    on a GPU), then one launch."""
    lo, hi, scales, zeros, perm, row_group, bias = state
    assert lo is not None and scales is not None
    bits, group_mode, group_rows = options
    k, n = x.shape[-1], scales.shape[1]
    w = RepackedWeight(bits, k, n, lo, hi, scales, zeros, perm, row_group, GroupMode(group_mode), group_rows)
    x2 = x.reshape(-1, k)
    m = x2.shape[0]
    out = torch.empty(m, n, dtype=x.dtype, device=x.device)
    if m:
        kernels, target = runtime.kernels(), runtime.gpu_target(x.device)
        bench = _bench(w, bias, x2, kernels) if target != "interpreter" else None
        launch(w, bias, x2, out, _TUNER.choose(target, w, m, bench), kernels)
    return out.reshape(*x.shape[:-1], n)


def _bench(
    w: RepackedWeight, bias: torch.Tensor | None, x2: torch.Tensor, kernels: ModuleType
) -> Callable[[LaunchConfig], float]:
    """A timing function for the tuner (called only on a cache miss): milliseconds of one launch of a
    configuration on this input."""
    from triton.testing import do_bench

    def run(config: LaunchConfig) -> float:
        scratch = torch.empty(x2.shape[0], w.out_features, dtype=x2.dtype, device=x2.device)
        return float(do_bench(lambda: launch(w, bias, x2, scratch, config, kernels), warmup=5, rep=20))

    return run


def launch(
    w: RepackedWeight,
    bias: torch.Tensor | None,
    x2: torch.Tensor,
    out: torch.Tensor,
    config: LaunchConfig,
    k: ModuleType,
) -> None:
    """One launch of ``config`` computing ``out = x2 @ W^T + b`` (split-K partials summed here)."""
    m, n, kk = x2.shape[0], w.out_features, w.in_features
    split = config.split_k
    k_per_split = _cdiv(_cdiv(kk, split), config.block_k) * config.block_k
    split = _cdiv(kk, k_per_split)  # no empty splits
    target = out if split == 1 else torch.empty(split, m, n, dtype=torch.float32, device=x2.device)
    d = torch.zeros(1, dtype=torch.int32, device=x2.device)  # stands in for absent optional tensors
    args = (
        x2, d if w.perm is None else w.perm, w.lo, d if w.hi is None else w.hi, w.scales,
        d if w.zeros is None else w.zeros, d if w.row_group is None else w.row_group,
        d if bias is None else bias, target, m, n, kk, x2.stride(0), x2.stride(1), k_per_split,
    )  # fmt: skip
    common = {
        "BITS": w.bits,
        "GROUP_MODE": int(w.group_mode),
        "GROUP_ROWS": w.group_rows if w.group_mode == GroupMode.UNIFORM else 1,  # no needless specialisation
        "SYM": w.zeros is None,
        "HAS_PERM": w.perm is not None,
        "HAS_BIAS": bias is not None,
        "SPLIT_K": split,
        "BLOCK_N": config.block_n,
        "BLOCK_K": config.block_k,
        **config.launch_options(),
    }
    if config.kernel == "gemv":
        k.wna16_gemv[(_cdiv(n, config.block_n), split, m)](*args, **common)
    else:
        dot_fp32 = bool(k.INTERPRETED) or x2.dtype == torch.float32
        grid = (_cdiv(m, config.block_m), _cdiv(n, config.block_n), split)
        split_w = w.group_mode == GroupMode.PER_ROW and x2.dtype != torch.float32
        k.wna16_gemm[grid](*args, DOT_FP32=dot_fp32, SPLIT_W=split_w, BLOCK_M=config.block_m, **common)
    if split > 1:
        total = target.sum(0)
        if bias is not None:
            total += bias
        out.copy_(total)
