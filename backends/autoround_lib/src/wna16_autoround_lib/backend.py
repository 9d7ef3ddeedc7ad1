"""The ``autoround-lib`` backend: auto-round-lib's weight-only GEMM (``auto_round_kernel.woqgemm``) on CPU.

What was measured with auto-round-lib 0.16.0 on torch 2.13 CPU (AMD Zen4, AVX512-BF16; the package README has the
probes) and what it implies here:

- Only **float32 activations with float32 scales** compute correctly on CPU. bf16/fp16 activations (any compute
  type) corrupt the heap or crash; bf16/fp16 scales give garbage. So every activation dtype enters as float32
  (exact), scales are stored in float32 (exact for fp16/bf16/fp32 checkpoints), the compute type is pinned to
  ``fp32`` (``auto`` could pick int8 activations elsewhere: W4A8, not W4A16) and the float32 output is rounded to the
  activation dtype once: ``param_dtype`` = ``accum_dtype`` = float32 for every activation dtype.
- Codes enter as signed int8 ``q - 2**(bits-1)`` with signed int8 zeros ``z - 2**(bits-1)``; ``(q - z) * scale``
  is what the kernel computes (2, 3, 4 and 8 bits; any N, any group size dividing K). The packed blob stores 2- and
  3-bit codes at their own width. Partial last groups and act order are regrouped with
  :func:`wna16.groups.regroup_rows` (zero activation columns in the padding).
- The kernel partitions its work for a thread count ``P`` fixed when the library first runs (OpenMP's initial
  count: ``OMP_NUM_THREADS``, else the CPUs of the affinity mask), and its first repack **sets torch's thread count
  to P**. With fewer threads than ``P`` at a later call (``torch.set_num_threads(1)``) it leaves whole output column
  blocks unwritten (zeros). Guarded here: every repack restores torch's thread count, and every call runs with at
  least ``P`` threads (:class:`ThreadGuard`).
- Its Python wrappers take ``tensor.contiguous().data_ptr()`` of temporaries (freed before the native call reads
  them): every tensor handed over is already contiguous and kept alive here.
"""

from __future__ import annotations

import functools
import importlib
import os
import threading
from collections.abc import Sequence
from importlib import metadata
from types import ModuleType
from typing import Any

import torch

from wna16.errors import UnsupportedError
from wna16.groups import regroup_rows
from wna16.ops import PreparedOp, register_kernel
from wna16.packing import unpack_rows
from wna16.protocol import (
    Availability,
    Backend,
    Capability,
    LayerSpec,
    PreparedLinear,
    describe_spec,
)
from wna16.weight import QuantizedWeight

MODULE = "auto_round_kernel"
DISTRIBUTION = "auto-round-lib"
COMPUTE = "fp32"
"""Pinned compute type: float32 activations and arithmetic (the only ones that compute correctly on CPU)."""
SCALE = "fp32"
DTYPES = frozenset({torch.bfloat16, torch.float16})
"""Activations served. float32 is not: the library's float32 result exceeds the float32 error bound by up to 1.16x
(conformance, ci profile: w3g32sym/w3g64sym/w8g128asym act order, M 235-259, activations up to 2**17, subnormal
fp16 scales); for bf16/fp16 the one rounding of the output dominates and every cell passes."""
KERNEL = "autoround-lib.woqgemm"
"""The name this backend's kernel has in ``wna16::linear`` (:mod:`wna16.ops`)."""
PRIORITY = 3
"""Below the ``cpu`` backend's int4 kernel rules (bf16 10 / fp16 6 on AVX-512, 8 / 4 on AVX2: faster than this
float32 kernel for 2/3/4-bit bf16/fp16 at every M measured), above its dequantize + GEMM rules (2: fp32 activations
and 8-bit, 3-7x slower than this kernel at M = 1) and the reference (0). Measured on AVX512-BF16 only (README)."""

MAX_ROWS = 128
"""Rows per library call. auto-round-lib 0.16.0's woqgemm never returns for some narrow layers at 200 < M < 300
(probed, one thread: M = 255, 256, 300 with N = 10 or 16, K = 256, 2-bit g32; found by the conformance suite, whose
workers hung); every shape probed with M <= 200 returned. Larger M is computed 128 rows at a time."""

CHUNK_COLUMNS = 1024
"""Output columns unpacked at a time at load: bounds the int32 codes to ``K * CHUNK_COLUMNS * 4`` bytes."""


@functools.cache
def import_kernel() -> ModuleType | str:
    """``auto_round_kernel`` with its CPU library, or why not (cached)."""
    try:
        version = metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return f"{DISTRIBUTION} is not installed (pip install {DISTRIBUTION}; it needs torch >= 2.13)"
    try:
        module = importlib.import_module(MODULE)
    except Exception as exc:  # a build for another torch or ABI raises many kinds
        return f"{MODULE} ({DISTRIBUTION} {version}) does not import: {type(exc).__name__}: {exc}"
    if getattr(module, "cpu_lib", None) is None:
        return f"{MODULE} ({DISTRIBUTION} {version}) has no CPU library on this machine"
    return module


def openmp_initial_threads() -> int:
    """OpenMP's initial thread count in this process: ``OMP_NUM_THREADS`` (its first value), else the CPUs this
    process may run on. auto-round-lib partitions its work for this count."""
    value = os.environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()
    if value.isdigit() and int(value) > 0:
        return int(value)
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


class ThreadGuard:
    """Keeps torch's thread count as the user set it, and gives each kernel call the threads it partitions for.

    ``pool`` is the largest count auto-round-lib was seen to set (its first repack sets torch's count to it) or
    OpenMP's initial count, whichever is larger: with at least that many threads every column block is computed.
    """

    def __init__(self) -> None:
        self.pool = openmp_initial_threads()
        self._lock = threading.Lock()

    def repack(self, fn: Any, *args: Any) -> Any:
        """``fn(*args)`` (a repack), then torch's thread count restored to what it was, noting what the library
        set it to."""
        before = torch.get_num_threads()
        try:
            return fn(*args)
        finally:
            after = torch.get_num_threads()
            if after != before:
                with self._lock:
                    self.pool = max(self.pool, after)
                torch.set_num_threads(before)

    def call(self, fn: Any, *args: Any) -> Any:
        """``fn(*args)`` (a GEMM) with at least :attr:`pool` threads, then torch's count as it was."""
        before = torch.get_num_threads()
        if before >= self.pool:
            return fn(*args)
        torch.set_num_threads(self.pool)
        try:
            return fn(*args)
        finally:
            torch.set_num_threads(before)


THREADS = ThreadGuard()


class AutoRoundLibLinear(PreparedOp):
    """The prepared layer: one packed blob (codes, float32 scales, int8 zeros), x in float32, one rounding out."""

    def __init__(self, kernel: ModuleType, weight: QuantizedWeight, dtype: torch.dtype, bias: torch.Tensor | None):
        s = weight.scheme
        k, n = weight.in_features, weight.out_features
        super().__init__(KERNEL, k, n, dtype)
        self.group = s.group_rows(k)
        rows = regroup_rows(weight.group_index(), weight.num_groups, multiple=self.group)
        self.kernel_rows = rows.kernel_rows
        self.dest = None if rows.identity else rows.dest
        blocks = rows.block_groups(self.group)  # the scheme group of each kernel group
        half = s.center
        codes = torch.zeros(self.kernel_rows, n, dtype=torch.int8)  # padding rows: 0 (their activations are 0)
        for n0 in range(0, n, CHUNK_COLUMNS):
            chunk = unpack_rows(weight.qweight[:, n0 : n0 + CHUNK_COLUMNS], s.bits, f"{weight.name}.qweight") - half
            codes[rows.dest, n0 : n0 + CHUNK_COLUMNS] = chunk.to(torch.int8)
            del chunk
        self.asym = not s.sym
        scales = weight.scales.to(torch.float32)[blocks].contiguous()
        zeros = weight.zeros[blocks]
        self.correction: torch.Tensor | None = None
        wrapped = zeros == (1 << s.bits)  # a GPTQ v1 wrap: the true zero 2**bits is one past the signed range
        if self.asym and bool(wrapped.any()):
            # W = (q - 2**bits) * s = (q - (2**bits - 1)) * s - s: the kernel gets 2**bits - 1, each call adds
            # -s times the group's activation sum (a [M, B] @ [B, N] product in float32).
            zeros = torch.where(wrapped, (1 << s.bits) - 1, zeros)
            self.correction = torch.where(wrapped, -scales, 0.0).contiguous()
        zeros = zeros - half
        zp = zeros.to(torch.int8).contiguous() if self.asym else torch.empty(0, dtype=torch.int8)
        self.bits = s.bits
        self.blob = THREADS.repack(
            kernel.repack_quantized_weight,
            codes,
            scales,
            zp,
            self.group,
            COMPUTE,
            f"int{s.bits}",
            SCALE,
            self.asym,
        )
        del codes, scales, zp
        self.bias = torch.empty(0, dtype=torch.float32) if bias is None else bias.to(torch.float32).contiguous().clone()

    @property
    def state(self) -> tuple[torch.Tensor | None, ...]:
        """``(blob, float32 bias (empty: none), kernel row destinations or None, wrapped-zero correction or None)``."""
        return (self.blob, self.bias, self.dest, self.correction)

    @property
    def options(self) -> tuple[int, ...]:
        """``(N, kernel rows, group rows, bits, asymmetric)``."""
        return (self.out_features, self.kernel_rows, self.group, self.bits, int(self.asym))


@register_kernel(KERNEL, ["cpu"])
def woqgemm_linear(x: torch.Tensor, state: Sequence[torch.Tensor | None], options: Sequence[int]) -> torch.Tensor:
    """``x`` [..., K] (any strides) -> [..., N] in ``x``'s dtype: x in float32 (regrouped rows where ``dest``),
    the library's GEMM under the thread guard, the wrapped-zero correction, one rounding out."""
    blob, bias, dest, correction = state
    n, kernel_rows, group, bits, asym = options
    assert blob is not None and bias is not None
    kernel = import_kernel()
    assert not isinstance(kernel, str), kernel  # the backend was available when it built this layer
    x2 = x.reshape(-1, x.shape[-1])
    m = x2.shape[0]
    if m == 0:
        return x.new_empty(*x.shape[:-1], n)
    if dest is not None:
        xf = x2.new_zeros(m, kernel_rows, dtype=torch.float32).index_copy_(1, dest, x2.float())
    else:
        xf = x2.to(torch.float32).contiguous()
    pieces = [
        THREADS.call(kernel.woqgemm, xf[r : r + MAX_ROWS], blob, bias, n, kernel_rows, group, COMPUTE, f"int{bits}",
                     SCALE, bool(asym))
        for r in range(0, m, MAX_ROWS)
    ]  # fmt: skip
    y = pieces[0] if len(pieces) == 1 else torch.cat(pieces)
    if correction is not None:
        y += xf.view(m, -1, group).sum(-1) @ correction
    return y.to(x.dtype).reshape(*x.shape[:-1], n)


class AutoRoundLibBackend(Backend):
    """auto-round-lib's CPU weight-only GEMM: 2/3/4/8-bit, every group and zero scheme, float32 arithmetic."""

    name = "autoround-lib"
    description = "auto-round-lib (auto_round_kernel) woqgemm on CPU: fp32 activations and scales, 2/3/4/8-bit"
    capabilities = (
        Capability(
            bits=frozenset({2, 3, 4, 8}),
            dtypes=DTYPES,
            group_sizes=None,  # any group dividing the regrouped K (probed: 16, 32, 40, 64, 128, 200, 256, K)
            partial_last_group=True,  # regrouped: the last group padded with rows whose activations are 0
            sym=True,
            asym=True,
            devices=frozenset({"cpu"}),
            param_dtype=torch.float32,
            accum_dtype=torch.float32,
            act_order=True,
            k_slices=True,
            priority=PRIORITY,
            label="woqgemm-fp32",
        ),
    )

    def available(self, device: str | torch.device = "cpu") -> Availability:
        """auto-round-lib must import with its CPU library (and the device be the CPU)."""
        base = super().available(device)
        if not base:
            return base
        kernel = import_kernel()
        if isinstance(kernel, str):
            return Availability(False, kernel)
        return Availability(True)

    def build(self, weight: QuantizedWeight, spec: LayerSpec, bias: torch.Tensor | None) -> PreparedLinear:
        """Unpack to signed int8 codes (a bounded chunk at a time), regroup, and let the library pack its blob."""
        kernel = import_kernel()
        if isinstance(kernel, str):
            raise UnsupportedError(f"backend {self.name!r} cannot serve {describe_spec(spec)}", [kernel])
        weight = weight.to("cpu")
        return AutoRoundLibLinear(
            kernel, weight, spec.dtype, bias.to("cpu") if spec.adds_bias and bias is not None else None
        )
