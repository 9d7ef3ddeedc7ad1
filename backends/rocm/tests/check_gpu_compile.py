"""The shipped (not interpreted) kernels compile ahead of time for MI300 (gfx942) and H100 (sm90) on a CPU-only
machine, and use the matrix cores. Each case runs in a subprocess (this test process has triton in interpreter mode).

Not named ``test_*``: each case imports torch and triton and compiles (5-15 s), too slow for the shared ``tests``
session; ``nox -s conformance-rocm-interpreter`` runs this file explicitly."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

_COMPILE = r"""
import json, sys
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
import wna16_rocm.kernels as k

assert not k.INTERPRETED
target = {"gfx942": GPUTarget("hip", "gfx942", 64), "sm90": GPUTarget("cuda", 90, 32)}[sys.argv[1]]
kernel, bits, mode, sym, dtype = sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5] == "sym", sys.argv[6]
ptr = "*" + dtype
sig = {"x_ptr": ptr, "perm_ptr": "*i32", "lo_ptr": "*i32", "hi_ptr": "*i32", "scales_ptr": "*fp32",
       "zeros_ptr": "*fp32", "row_group_ptr": "*i32", "bias_ptr": "*fp32", "out_ptr": ptr, "M": "i32", "N": "i32",
       "K": "i32", "stride_xm": "i32", "stride_xk": "i32", "K_PER_SPLIT": "i32"}
const = {"BITS": bits, "GROUP_MODE": mode, "GROUP_ROWS": 128 if mode == 1 else 1, "SYM": sym, "HAS_PERM": mode == 2,
         "HAS_BIAS": True, "SPLIT_K": 1, "BLOCK_N": 128, "BLOCK_K": 32}
if kernel == "wna16_gemm":
    const.update(BLOCK_M=64, DOT_FP32=dtype == "fp32", SPLIT_W=mode == 2 and dtype != "fp32")
sig.update({c: "constexpr" for c in const})
out = triton.compile(ASTSource(getattr(k, kernel), sig, const), target=target, options={"num_warps": 4})
asm = out.asm.get("amdgcn") or out.asm["ptx"]
print(json.dumps({"binary": "hsaco" in out.asm or "cubin" in out.asm, "mfma": "v_mfma" in asm,
                  "mma": "mma" in asm}))
"""


@pytest.mark.parametrize(
    ("target", "kernel", "bits", "mode", "sym", "dtype"),
    [
        ("gfx942", "wna16_gemm", 4, 1, "sym", "fp16"),
        ("gfx942", "wna16_gemm", 3, 2, "asym", "bf16"),  # act order: per-row groups, hi + lo dots
        ("gfx942", "wna16_gemv", 2, 0, "asym", "bf16"),
        ("sm90", "wna16_gemm", 8, 1, "asym", "bf16"),
    ],
)
def test_kernels_compile_for_gpus(target: str, kernel: str, bits: int, mode: int, sym: str, dtype: str) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("WNA16_TRITON_INTERPRET", "TRITON_INTERPRET")}
    env["TRITON_DEFAULT_FP_FUSION"] = "1"
    args = [sys.executable, "-c", _COMPILE, target, kernel, str(bits), str(mode), sym, dtype]
    result = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["binary"]
    if kernel == "wna16_gemm":  # tl.dot must lower to matrix-core instructions
        assert out["mfma"] if target == "gfx942" else out["mma"], out
