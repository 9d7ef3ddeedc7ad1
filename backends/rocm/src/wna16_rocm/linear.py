"""The prepared layer: picks a launch configuration for each call's row count and launches the Triton kernel."""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType

import torch

from wna16.errors import FormatError, describe
from wna16_rocm.configs import LaunchConfig, Tuner
from wna16_rocm.repack import GroupMode, RepackedWeight

_TUNER = Tuner()


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


class TritonLinear:
    """``x @ W^T + b`` for activations of one dtype on one device, ``W`` in the layout of :mod:`wna16_rocm.repack`."""

    def __init__(
        self,
        weight: RepackedWeight,
        bias: torch.Tensor | None,
        dtype: torch.dtype,
        device: torch.device,
        kernels: ModuleType,
        target: str,
    ) -> None:
        self.weight = weight
        self.bias = None if bias is None else bias.to(device=device, dtype=torch.float32).contiguous()
        self.dtype = dtype
        self.device = device
        self.kernels = kernels
        self.target = target
        self._dummy = torch.zeros(1, dtype=torch.int32, device=device)  # stands in for absent optional tensors

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        if x.dtype != self.dtype or x.shape[-1:] != (w.in_features,) or x.device != self.device:
            raise FormatError(
                f"x: got {describe(x)} on {x.device}, expected {str(self.dtype).removeprefix('torch.')}"
                f"[..., {w.in_features}] on {self.device}"
            )
        x2 = x.reshape(-1, w.in_features)
        m = x2.shape[0]
        out = torch.empty(m, w.out_features, dtype=self.dtype, device=self.device)
        if m:
            bench = self._bench(x2) if self.target != "interpreter" else None
            self._launch(x2, out, _TUNER.choose(self.target, w, m, bench))
        return out.reshape(*x.shape[:-1], w.out_features)

    def _bench(self, x2: torch.Tensor) -> Callable[[LaunchConfig], float]:
        """A timing function for the tuner (called only on a cache miss): milliseconds of one launch of a
        configuration on this input."""
        from triton.testing import do_bench

        def run(config: LaunchConfig) -> float:
            scratch = torch.empty(x2.shape[0], self.weight.out_features, dtype=self.dtype, device=self.device)
            return float(do_bench(lambda: self._launch(x2, scratch, config), warmup=5, rep=20))

        return run

    def _launch(self, x2: torch.Tensor, out: torch.Tensor, config: LaunchConfig) -> None:
        w, k = self.weight, self.kernels
        m, n, kk = x2.shape[0], w.out_features, w.in_features
        split = config.split_k
        k_per_split = _cdiv(_cdiv(kk, split), config.block_k) * config.block_k
        split = _cdiv(kk, k_per_split)  # no empty splits
        target = out if split == 1 else torch.empty(split, m, n, dtype=torch.float32, device=self.device)
        d = self._dummy
        args = (
            x2, d if w.perm is None else w.perm, w.lo, d if w.hi is None else w.hi, w.scales,
            d if w.zeros is None else w.zeros, d if w.row_group is None else w.row_group,
            d if self.bias is None else self.bias, target, m, n, kk, x2.stride(0), x2.stride(1), k_per_split,
        )  # fmt: skip
        common = {
            "BITS": w.bits,
            "GROUP_MODE": int(w.group_mode),
            "GROUP_ROWS": w.group_rows if w.group_mode == GroupMode.UNIFORM else 1,  # no needless specialisation
            "SYM": w.zeros is None,
            "HAS_PERM": w.perm is not None,
            "HAS_BIAS": self.bias is not None,
            "SPLIT_K": split,
            "BLOCK_N": config.block_n,
            "BLOCK_K": config.block_k,
            **config.launch_options(),
        }
        if config.kernel == "gemv":
            k.wna16_gemv[(_cdiv(n, config.block_n), split, m)](*args, **common)
        else:
            dot_fp32 = bool(k.INTERPRETED) or self.dtype == torch.float32
            grid = (_cdiv(m, config.block_m), _cdiv(n, config.block_n), split)
            split_w = w.group_mode == GroupMode.PER_ROW and self.dtype != torch.float32
            k.wna16_gemm[grid](*args, DOT_FP32=dot_fp32, SPLIT_W=split_w, BLOCK_M=config.block_m, **common)
        if split > 1:
            total = target.sum(0)
            if self.bias is not None:
                total += self.bias
            out.copy_(total)
