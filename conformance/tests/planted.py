"""Deliberately broken backends (and two correct ones) that prove the suite catches real bug classes.

Each broken backend wraps the reference backend: it declares what the reference declares (unless the bug is in the
declaration) and computes ``x @ W^T + b`` in float32 from a dequantized weight with exactly one bug planted. They are
loaded by the suite as ``planted:NAME`` with this folder on ``PYTHONPATH``.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence

import torch

from wna16.errors import UnsupportedError
from wna16.ops import PreparedOp, register_kernel
from wna16.protocol import Capability, LayerSpec, PreparedLinear
from wna16.weight import QuantizedWeight
from wna16_reference import ReferenceBackend

REF_RULE = ReferenceBackend.capabilities[0]
Parts = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def parts(weight: QuantizedWeight) -> Parts:
    """(codes [K, N], zeros [G, N], scales [G, N], group [K]) as float32/int64 CPU tensors."""
    w = weight.to("cpu")
    return w.codes().float(), w.zeros.float(), w.scales.float(), w.group_index()


def dequant(codes: torch.Tensor, zeros: torch.Tensor, scales: torch.Tensor, group: torch.Tensor) -> torch.Tensor:
    """W^T [K, N] = s[g(k)] * (q - z[g(k)])."""
    return scales[group] * (codes - zeros[group])


class Linear:
    """``x @ wt + b`` in float32, with hooks for bugs in the call itself."""

    def __init__(self, wt: torch.Tensor, bias: torch.Tensor | None, device: str) -> None:
        self.wt, self.device = wt.to(device), device
        self.bias = None if bias is None else bias.float().to(device)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        y = x.reshape(-1, x.shape[-1]).float() @ self.wt
        if self.bias is not None:
            y = y + self.bias
        return y.to(x.dtype).reshape(*x.shape[:-1], self.wt.shape[1])


class Planted(ReferenceBackend):
    """Base of the broken backends: ``wt`` builds the (buggy) W^T; ``adds_bias`` decides about the bias."""

    compile_refusal = "planted bugs of the numerics and hygiene checks are plain callables"

    def wt(self, weight: QuantizedWeight, spec: LayerSpec) -> torch.Tensor:
        return dequant(*parts(weight))

    def adds_bias(self, spec: LayerSpec) -> bool:
        return spec.adds_bias

    def build(self, weight: QuantizedWeight, spec: LayerSpec, bias: torch.Tensor | None) -> PreparedLinear:
        return Linear(self.wt(weight, spec), bias if self.adds_bias(spec) else None, spec.device)


class ZeroOffByOne(Planted):
    name = "zero-off-by-one"

    def wt(self, weight: QuantizedWeight, spec: LayerSpec) -> torch.Tensor:
        codes, zeros, scales, group = parts(weight)
        return dequant(codes, zeros + 1, scales, group)


class LastGroupScaleReused(Planted):
    """The last group is scaled with the previous group's scale (a loop bound off by one)."""

    name = "last-group-scale-reused"

    def wt(self, weight: QuantizedWeight, spec: LayerSpec) -> torch.Tensor:
        codes, zeros, scales, group = parts(weight)
        if scales.shape[0] > 1:
            scales = scales.clone()
            scales[-1] = scales[-2]
        return dequant(codes, zeros, scales, group)


class TileSpansGroups(Planted):
    """A BLOCK_K=128 tile looks up scale and zero once, for its first row, even when it spans several groups."""

    name = "tile-spans-groups"
    block_k = 128

    def wt(self, weight: QuantizedWeight, spec: LayerSpec) -> torch.Tensor:
        codes, zeros, scales, group = parts(weight)
        first_row = torch.arange(codes.shape[0]) // self.block_k * self.block_k
        return dequant(codes, zeros, scales, group[first_row])


class CodeFlippedAtLargeK(Planted):
    """At K >= 4096 one code per column has its top bit flipped (row n mod K of column n)."""

    name = "code-flipped-at-large-k"

    def wt(self, weight: QuantizedWeight, spec: LayerSpec) -> torch.Tensor:
        codes, zeros, scales, group = parts(weight)
        k, n = codes.shape
        if k >= 4096:
            rows, cols = torch.arange(n) % k, torch.arange(n)
            codes = codes.clone()
            codes[rows, cols] = (codes[rows, cols].long() ^ (1 << (weight.scheme.bits - 1))).float()
        return dequant(codes, zeros, scales, group)


class BiasDropped(Planted):
    name = "bias-dropped"

    def adds_bias(self, spec: LayerSpec) -> bool:
        return False


class BiasTwiceOnKSlices(Planted):
    """Every K-slice adds the bias, so the summed partials carry it once per slice."""

    name = "bias-twice-on-k-slices"

    def adds_bias(self, spec: LayerSpec) -> bool:
        return spec.bias


class Fp16Accumulation(Planted):
    """Declares fp32 accumulation but sums 256-row partial products in fp16: overflows at large K."""

    name = "fp16-accumulation"

    def build(self, weight: QuantizedWeight, spec: LayerSpec, bias: torch.Tensor | None) -> PreparedLinear:
        inner = Linear(self.wt(weight, spec), bias if spec.adds_bias else None, spec.device)

        def call(x: torch.Tensor) -> torch.Tensor:
            x2 = x.reshape(-1, x.shape[-1]).float()
            acc = torch.zeros(x2.shape[0], inner.wt.shape[1], dtype=torch.float16, device=x.device)
            for start in range(0, x2.shape[1], 256):
                acc += (x2[:, start : start + 256] @ inner.wt[start : start + 256]).half()
            y = acc.float() + (inner.bias if inner.bias is not None else 0)
            return y.to(x.dtype).reshape(*x.shape[:-1], inner.wt.shape[1])

        return call


class WrongForMultiRow(Planted):
    """The GEMM path (M > 1) reads the scales of the neighbouring column; the GEMV path (M == 1) is right."""

    name = "wrong-for-m-gt-1"

    def build(self, weight: QuantizedWeight, spec: LayerSpec, bias: torch.Tensor | None) -> PreparedLinear:
        codes, zeros, scales, group = parts(weight)
        gemv = Linear(dequant(codes, zeros, scales, group), bias if spec.adds_bias else None, spec.device)
        gemm = Linear(dequant(codes, zeros, scales.roll(1, dims=1), group), gemv.bias, spec.device)
        return lambda x: gemv(x) if x.reshape(-1, x.shape[-1]).shape[0] == 1 else gemm(x)


class WrongFor3Bit(Planted):
    """3-bit unpacking drops the bits of codes 10 and 21 that straddle a word boundary."""

    name = "wrong-for-3-bit"

    def wt(self, weight: QuantizedWeight, spec: LayerSpec) -> torch.Tensor:
        codes, zeros, scales, group = parts(weight)
        if weight.scheme.bits == 3:
            lane = torch.arange(codes.shape[0]) % 32
            c = codes.long()
            c[lane == 10] &= 0b011
            c[lane == 21] &= 0b001
            codes = c.float()
        return dequant(codes, zeros, scales, group)


class ClaimsG32ComputesG64(Planted):
    """Claims group size 32 only, but computes with groups of 64 rows."""

    name = "claims-g32-computes-g64"
    capabilities = (dataclasses.replace(REF_RULE, group_sizes=frozenset({32}), act_order=False),)

    def wt(self, weight: QuantizedWeight, spec: LayerSpec) -> torch.Tensor:
        codes, zeros, scales, _ = parts(weight)
        return dequant(codes, zeros, scales, torch.arange(codes.shape[0]) // 64)


class ClaimsEverythingReturnsZeros(Planted):
    """Claims every spec, computes only 4-bit and returns zeros where it cannot."""

    name = "claims-everything-returns-zeros"

    def wt(self, weight: QuantizedWeight, spec: LayerSpec) -> torch.Tensor:
        if weight.scheme.bits != 4:
            return torch.zeros(weight.in_features, weight.out_features)
        return dequant(*parts(weight))


class MutatesInput(Planted):
    """Computes the right answer, then scales ``x`` in place (a fused pre-scaling kernel writing to its input)."""

    name = "mutates-input"

    def build(self, weight: QuantizedWeight, spec: LayerSpec, bias: torch.Tensor | None) -> PreparedLinear:
        inner = super().build(weight, spec, bias)

        def call(x: torch.Tensor) -> torch.Tensor:
            y = inner(x)
            x.mul_(0.5)
            return y

        return call


class PrepareIgnoresCheck(Planted):
    """Declares 4-bit only, but its ``prepare`` computes whatever it is given (refusal honesty)."""

    name = "prepare-ignores-check"
    capabilities = (dataclasses.replace(REF_RULE, bits=frozenset({4})),)

    def prepare(self, weight: QuantizedWeight, spec: LayerSpec, bias: torch.Tensor | None = None) -> PreparedLinear:
        return self.build(weight, spec, bias)


class RefusesAfterCheck(Planted):
    """Claims 3-bit like the reference, but its ``build`` refuses it (a vendor rule checked too late: Marlin's shape
    rule once was): callers trusted ``check``, so this is a failure, not a refusal."""

    name = "refuses-after-check"

    def build(self, weight: QuantizedWeight, spec: LayerSpec, bias: torch.Tensor | None) -> PreparedLinear:
        if spec.scheme.bits == 3:
            raise UnsupportedError(f"backend {self.name!r}", ["the vendor library has no 3-bit kernel"])
        return super().build(weight, spec, bias)


class CrashesInOneCell(Planted):
    """Kills the process (``os.abort``) when prepared for 2-bit g32 symmetric fp16, as a segfaulting kernel would."""

    name = "crashes-in-one-cell"

    def build(self, weight: QuantizedWeight, spec: LayerSpec, bias: torch.Tensor | None) -> PreparedLinear:
        s = spec.scheme
        if (s.bits, s.group_size, s.sym, spec.dtype, spec.act_order) == (2, 32, True, torch.float16, False):
            os.abort()
        return super().build(weight, spec, bias)


class RestrictedParamRounding(Planted):
    """A *correct* narrow backend: 4/8-bit, groups 32-128, fp16/bf16, K % 64, N % 32, no act order, no K-slices;
    it rounds scales and zero terms to the activation dtype (declared: ``param_dtype=None``). Must pass, with every
    spec outside the declaration refused."""

    name = "restricted-param-rounding"
    capabilities = (
        Capability(
            bits=frozenset({4, 8}), dtypes=frozenset({torch.float16, torch.bfloat16}),
            group_sizes=frozenset({32, 64, 128}), sym=True, asym=True, devices=frozenset({"cpu"}), param_dtype=None,
            k_multiple=64, n_multiple=32,
        ),
    )  # fmt: skip

    def build(self, weight: QuantizedWeight, spec: LayerSpec, bias: torch.Tensor | None) -> PreparedLinear:
        codes, zeros, scales, group = parts(weight)
        c, dt = float(weight.scheme.center), spec.dtype
        s = scales.to(dt)[group]  # scales rounded to the activation dtype
        zero_term = (((c - zeros) * scales).to(dt))[group]  # (c - z) * s rounded to the activation dtype
        wt = (s.float() * (codes - c)).to(dt).float() + zero_term.float()
        return Linear(wt, bias if spec.adds_bias else None, spec.device)


def rows_of(x: torch.Tensor) -> int:
    """Rows the kernel sees (``x`` flattened to 2-D)."""
    return x.reshape(-1, x.shape[-1]).shape[0]


class SplitKDropsTail(Planted):
    """Above K=2048 the kernel splits K into 2048-row blocks and forgets a partial last block."""

    name = "split-k-drops-tail"

    def wt(self, weight: QuantizedWeight, spec: LayerSpec) -> torch.Tensor:
        wt = dequant(*parts(weight))
        k = wt.shape[0]
        if k > 2048 and k % 2048:
            wt[k // 2048 * 2048 :] = 0
        return wt


class WrongAboveK8192(Planted):
    """Rows past 8192 read the codes of row k - 8192 (a 13-bit row index wraps)."""

    name = "wrong-above-k-8192"

    def wt(self, weight: QuantizedWeight, spec: LayerSpec) -> torch.Tensor:
        codes, zeros, scales, group = parts(weight)
        return dequant(codes[torch.arange(codes.shape[0]) % 8192], zeros, scales, group)


class NTileTail(Planted):
    """When N is not a multiple of the 128-column tile, the tail tile reads the scales of the tile before it."""

    name = "n-tile-tail"

    def wt(self, weight: QuantizedWeight, spec: LayerSpec) -> torch.Tensor:
        codes, zeros, scales, group = parts(weight)
        n = codes.shape[1]
        if n > 128 and n % 128:
            tail = n // 128 * 128
            scales = scales.clone()
            scales[:, tail:] = scales[:, tail - 128 : n - 128]
        return dequant(codes, zeros, scales, group)


class ScaleTable64(Planted):
    """A shared-memory table of 64 groups: group g reads the scales and zeros of group g mod 64."""

    name = "scale-table-64"

    def wt(self, weight: QuantizedWeight, spec: LayerSpec) -> torch.Tensor:
        codes, zeros, scales, group = parts(weight)
        return dequant(codes, zeros, scales, group % 64)


class SquareScalesTransposed(Planted):
    """Guesses the scales' layout from their shape: when G == N it reads them transposed."""

    name = "square-scales-transposed"

    def wt(self, weight: QuantizedWeight, spec: LayerSpec) -> torch.Tensor:
        codes, zeros, scales, group = parts(weight)
        if scales.shape[0] == scales.shape[1] > 1:
            scales, zeros = scales.t().contiguous(), zeros.t().contiguous()
        return dequant(codes, zeros, scales, group)


class RowRegimeBug(Planted):
    """Correct except in one row regime, where the kernel takes another path with a zero point off by one."""

    lo, hi = 0, 0

    def build(self, weight: QuantizedWeight, spec: LayerSpec, bias: torch.Tensor | None) -> PreparedLinear:
        codes, zeros, scales, group = parts(weight)
        b = bias if spec.adds_bias else None
        good = Linear(dequant(codes, zeros, scales, group), b, spec.device)
        bad = Linear(dequant(codes, zeros + 1, scales, group), b, spec.device)
        return lambda x: bad(x) if self.lo <= rows_of(x) <= self.hi else good(x)


class WrongFor17To64Rows(RowRegimeBug):
    name = "wrong-for-17-64-rows"
    lo, hi = 17, 64


class WrongFor256Rows(RowRegimeBug):
    name = "wrong-for-256-rows"
    lo, hi = 256, 1 << 30


class RaisesOnZeroRows(Planted):
    """Launches a grid of zero blocks, which the runtime rejects."""

    name = "raises-on-zero-rows"

    def build(self, weight: QuantizedWeight, spec: LayerSpec, bias: torch.Tensor | None) -> PreparedLinear:
        inner = super().build(weight, spec, bias)

        def call(x: torch.Tensor) -> torch.Tensor:
            if rows_of(x) == 0:
                raise RuntimeError("invalid grid: 0 blocks")
            return inner(x)

        return call


class AssumesDenseRows(Planted):
    """Reads ``x`` as if its rows were ``K`` apart (right for contiguous and offset inputs, wrong for ``qkv[..., :K]``
    and for a stride along K)."""

    name = "assumes-dense-rows"

    def build(self, weight: QuantizedWeight, spec: LayerSpec, bias: torch.Tensor | None) -> PreparedLinear:
        inner = super().build(weight, spec, bias)

        def call(x: torch.Tensor) -> torch.Tensor:
            k = x.shape[-1]
            dense = torch.as_strided(x, (rows_of(x), k), (k, 1), x.storage_offset())
            return inner(dense).reshape(*x.shape[:-1], -1)

        return call


class IgnoresStorageOffset(Planted):
    """Reads ``x`` from the start of its storage, ignoring its offset."""

    name = "ignores-storage-offset"

    def build(self, weight: QuantizedWeight, spec: LayerSpec, bias: torch.Tensor | None) -> PreparedLinear:
        inner = super().build(weight, spec, bias)
        return lambda x: inner(torch.as_strided(x, x.shape, x.stride(), 0))


class ActivationsThroughFp16(Planted):
    """Converts every activation to fp16 for its kernel (overflows for bf16/fp32 inputs beyond 65504)."""

    name = "activations-through-fp16"

    def build(self, weight: QuantizedWeight, spec: LayerSpec, bias: torch.Tensor | None) -> PreparedLinear:
        inner = super().build(weight, spec, bias)
        return lambda x: inner(x.half()).to(x.dtype)


class BiasBytesAsActivationDtype(Planted):
    """Reads the bias buffer as if it had the activation dtype (right only when it has)."""

    name = "bias-bytes-as-activation-dtype"

    def build(self, weight: QuantizedWeight, spec: LayerSpec, bias: torch.Tensor | None) -> PreparedLinear:
        wt = dequant(*parts(weight))
        if bias is None or not spec.adds_bias:
            return Linear(wt, None, spec.device)
        raw = bias.view(torch.uint8).view(spec.dtype)
        read = torch.cat([raw, torch.zeros(max(0, bias.shape[0] - raw.shape[0]), dtype=spec.dtype)])[: bias.shape[0]]
        return Linear(wt, read, spec.device)


class ReusesOutputBuffer(Planted):
    """Writes every call's result into one preallocated output per shape and returns it (the previous result is
    overwritten)."""

    name = "reuses-output-buffer"

    def build(self, weight: QuantizedWeight, spec: LayerSpec, bias: torch.Tensor | None) -> PreparedLinear:
        inner = super().build(weight, spec, bias)
        buffers: dict[tuple[int, ...], torch.Tensor] = {}

        def call(x: torch.Tensor) -> torch.Tensor:
            y = inner(x)
            out = buffers.setdefault(tuple(y.shape), torch.empty_like(y))
            return out.copy_(y)

        return call


class CachesByShape(Planted):
    """Memoizes its result by input shape (a plan cache that caches too much)."""

    name = "caches-by-shape"

    def build(self, weight: QuantizedWeight, spec: LayerSpec, bias: torch.Tensor | None) -> PreparedLinear:
        inner = super().build(weight, spec, bias)
        cache: dict[tuple[int, ...], torch.Tensor] = {}

        def call(x: torch.Tensor) -> torch.Tensor:
            key = tuple(x.shape)
            if key not in cache:
                cache[key] = inner(x)
            return cache[key].clone()

        return call


class StaleGraphReplay(Planted):
    """Captures a graph on the first call of each shape with a static input buffer, then replays it without copying
    the new input into that buffer."""

    name = "stale-graph-replay"

    def build(self, weight: QuantizedWeight, spec: LayerSpec, bias: torch.Tensor | None) -> PreparedLinear:
        inner = super().build(weight, spec, bias)
        static: dict[tuple[int, ...], torch.Tensor] = {}

        def call(x: torch.Tensor) -> torch.Tensor:
            key = tuple(x.shape)
            if key not in static:
                static[key] = x.clone()  # captured with this input
            return inner(static[key])  # replay: the new input never reaches the graph

        return call


class RoundsScalesInPlace(Planted):
    """Rounds the scales it is given to the activation dtype *in place* and computes with them (declaring fp32
    parameters): right for the weight it leaves behind, wrong for the weight it was given."""

    name = "rounds-scales-in-place"

    def build(self, weight: QuantizedWeight, spec: LayerSpec, bias: torch.Tensor | None) -> PreparedLinear:
        weight.scales.copy_(weight.scales.to(spec.dtype).to(weight.scales.dtype))
        return super().build(weight, spec, bias)


class Bf16AccumReturnsZerosAtLargeK(Planted):
    """Declares bf16 accumulation, and returns zeros from K=4096 (an allowance that large once let it pass)."""

    name = "bf16-accum-returns-zeros-at-large-k"
    capabilities = (dataclasses.replace(REF_RULE, accum_dtype=torch.bfloat16),)

    def wt(self, weight: QuantizedWeight, spec: LayerSpec) -> torch.Tensor:
        wt = dequant(*parts(weight))
        return wt * 0 if wt.shape[0] >= 4096 else wt

    def adds_bias(self, spec: LayerSpec) -> bool:
        return spec.adds_bias and spec.in_features < 4096


class Fp32BiasRoundedToBf16(Planted):
    """Stores the bias in bf16 whatever the activation dtype (fp32 layers lose 16 bits of it)."""

    name = "fp32-bias-rounded-to-bf16"

    def build(self, weight: QuantizedWeight, spec: LayerSpec, bias: torch.Tensor | None) -> PreparedLinear:
        rounded = None if bias is None else bias.to(torch.bfloat16).float()
        return Linear(self.wt(weight, spec), rounded if spec.adds_bias else None, spec.device)


class FlushesSubnormalScales(Planted):
    """Flushes subnormal fp16 scales (below 2**-14) to zero, as a kernel running with FTZ/DAZ does."""

    name = "flushes-subnormal-scales"

    def wt(self, weight: QuantizedWeight, spec: LayerSpec) -> torch.Tensor:
        codes, zeros, scales, group = parts(weight)
        if weight.scales.dtype == torch.float16:
            scales = torch.where(scales.abs() < 2.0**-14, torch.zeros_like(scales), scales)
        return dequant(codes, zeros, scales, group)


# The op contract (issue 22): bugs only the compile check sees, since eager outputs are right.

OP_KERNEL = "planted.linear"
WRITES_STATE = 1


@register_kernel(OP_KERNEL)
def planted_linear(x: torch.Tensor, state: Sequence[torch.Tensor | None], options: Sequence[int]) -> torch.Tensor:
    """``x @ wt + b`` in float32; with the ``WRITES_STATE`` option it also writes the column sums of its output into
    a workspace tensor of its state, although the op is declared functional."""
    wt, bias, workspace = state
    assert wt is not None
    y = x.reshape(-1, x.shape[-1]).float() @ wt
    if bias is not None:
        y = y + bias
    if options[0] == WRITES_STATE and workspace is not None:
        workspace.copy_(y.sum(0))
    return y.to(x.dtype).reshape(*x.shape[:-1], wt.shape[1])


class OpPlanted(Planted):
    """A correct layer through ``wna16::linear``; subclasses plant one contract bug."""

    compile_refusal = ""
    option = 0

    def out_features(self, spec: LayerSpec) -> int:
        return spec.out_features

    def build(self, weight: QuantizedWeight, spec: LayerSpec, bias: torch.Tensor | None) -> PreparedLinear:
        wt = self.wt(weight, spec).to(spec.device)
        b = bias.float().to(spec.device) if spec.adds_bias and bias is not None else None
        workspace = torch.zeros(spec.out_features, device=spec.device)
        state = (wt, b, workspace)
        return PreparedOp(OP_KERNEL, spec.in_features, self.out_features(spec), spec.dtype, state, (self.option,))


class KernelWritesState(OpPlanted):
    """Its kernel writes a workspace tensor of its state: a compiled graph may reorder or drop the write."""

    name = "kernel-writes-state"
    option = WRITES_STATE


class FakeDisagrees(OpPlanted):
    """Binds ``out_features`` padded to its 32-column tile; the kernel returns the N columns, the fake N padded: a
    compiled model then plans for a tensor of another shape."""

    name = "fake-disagrees"

    def out_features(self, spec: LayerSpec) -> int:
        return -(-(spec.out_features + 1) // 32) * 32


class BareCallable(Planted):
    """Right in eager, but returns a Python closure: dynamo inlines it instead of tracing one op."""

    name = "bare-callable"
    compile_refusal = ""


BROKEN: dict[str, Callable[[], Planted]] = {
    cls.__name__: cls
    for cls in (
        ZeroOffByOne, LastGroupScaleReused, TileSpansGroups, CodeFlippedAtLargeK, BiasDropped, BiasTwiceOnKSlices,
        Fp16Accumulation, WrongForMultiRow, WrongFor3Bit, ClaimsG32ComputesG64, ClaimsEverythingReturnsZeros,
        MutatesInput, PrepareIgnoresCheck, RefusesAfterCheck,
        # issue 24: one per class the suite was blind to
        SplitKDropsTail, WrongAboveK8192, NTileTail, ScaleTable64, SquareScalesTransposed, WrongFor17To64Rows,
        WrongFor256Rows, RaisesOnZeroRows, AssumesDenseRows, IgnoresStorageOffset, ActivationsThroughFp16,
        BiasBytesAsActivationDtype, ReusesOutputBuffer, CachesByShape, StaleGraphReplay, RoundsScalesInPlace,
        Bf16AccumReturnsZerosAtLargeK, Fp32BiasRoundedToBf16, FlushesSubnormalScales,
        # issue 22: the op contract of compiled engines
        KernelWritesState, FakeDisagrees, BareCallable,
    )
}  # fmt: skip
"""Every broken backend the suite must catch (the crashing one is tested on its own, under xdist)."""


class WrongFor3BitFiltered(WrongFor3Bit):
    """The 3-bit bug, recorded in the filter file the backend ships: its 3-bit tests must show as skipped."""

    name = "wrong-for-3-bit-filtered"
    conformance_filter = "filters/skip-3bit.toml"
