"""The ``autoround-lib`` backend against the oracle under the wna16 error model, and its thread-count guard.

Needs auto-round-lib (the `conformance-autoround-lib` nox session installs it): without it these tests fail, they
are not skipped, unless they run where the backend is known to be absent (the availability test is separate).
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch

from wna16 import LayerSpec, QuantizedWeight, Registry, Scheme, Shard, quantize_rtn
from wna16.partition import shard_bias, shard_weight
from wna16.tolerance import Precision, error_ratio
from wna16_autoround_lib import AutoRoundLibBackend
from wna16_autoround_lib.backend import THREADS, AutoRoundLibLinear, import_kernel

DTYPES = (torch.bfloat16, torch.float16)


def make_weight(n: int, k: int, scheme: Scheme, *, act_order: bool = False, seed: int = 0) -> QuantizedWeight:
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=gen)
    g_idx = None
    if act_order:
        g_idx = (torch.randperm(k, generator=gen) % scheme.num_groups(k)).to(torch.int32)
    return quantize_rtn(w, scheme, g_idx=g_idx)


def ratio(weight: QuantizedWeight, dtype: torch.dtype, x: torch.Tensor, bias: torch.Tensor | None = None) -> float:
    backend = AutoRoundLibBackend()
    spec = LayerSpec.of(weight, dtype, bias=bias is not None)
    y = backend.prepare(weight, spec, bias)(x)
    assert y.dtype == dtype and y.shape == (*x.shape[:-1], weight.out_features)
    return error_ratio(y, x, weight, Precision.for_backend(backend, spec), bias)


def test_available() -> None:
    assert AutoRoundLibBackend().available("cpu"), AutoRoundLibBackend().available("cpu").reason
    assert not AutoRoundLibBackend().available("meta")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("sym", [True, False])
def test_matches_oracle(dtype: torch.dtype, bits: int, sym: bool) -> None:
    """Odd N, a partial last group, a bias, 3-D input."""
    weight = make_weight(40, 320, Scheme(bits, 128, sym), seed=bits)
    x = torch.randn(2, 3, 320).to(dtype)
    assert ratio(weight, dtype, x, torch.randn(40)) <= 1.0


@pytest.mark.parametrize(("group", "act_order"), [(-1, False), (16, False), (48, True), (64, True), (256, False)])
def test_groups_and_act_order(group: int, act_order: bool) -> None:
    weight = make_weight(17, 512, Scheme(4, group, False), act_order=act_order, seed=group)
    x = torch.randn(5, 512).to(torch.bfloat16)
    assert ratio(weight, torch.bfloat16, x) <= 1.0


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_wrapped_zero_points(bits: int) -> None:
    """True zeros 0 and 2**bits (a GPTQ v1 stored zero of 2**bits - 1): the latter is one past the kernel's signed
    zeros and goes through the per-group correction."""
    gen = torch.Generator().manual_seed(bits)
    k, n, group = 256, 24, 64
    codes = torch.randint(0, 1 << bits, (k, n), generator=gen)
    zeros = torch.where(torch.arange(4 * n).reshape(4, n) % 2 == 0, 0, 1 << bits)
    weight = QuantizedWeight.from_codes(Scheme(bits, group, False), codes, zeros, torch.rand(4, n, generator=gen) / 8)
    layer = AutoRoundLibBackend().prepare(weight, LayerSpec.of(weight, torch.bfloat16))
    assert isinstance(layer, AutoRoundLibLinear) and layer.correction is not None
    assert ratio(weight, torch.bfloat16, torch.randn(3, k).to(torch.bfloat16)) <= 1.0


def test_noncontiguous_input_and_empty_batch() -> None:
    weight = make_weight(24, 256, Scheme(8, 64, False), seed=5)
    x = torch.randn(256, 3, 2).to(torch.float16).permute(1, 2, 0)
    assert not x.is_contiguous()
    assert ratio(weight, torch.float16, x) <= 1.0
    layer = AutoRoundLibBackend().prepare(weight, LayerSpec.of(weight, torch.float16))
    assert layer(torch.empty(0, 256, dtype=torch.float16)).shape == (0, 24)


def test_k_slices_are_each_within_their_bound() -> None:
    """Row-parallel K-slices (act order, partial groups per slice): each slice is its own layer, within its bound
    (the bias only on the rank that adds it); bf16 outputs of the slices are then summed by the engine."""
    full = make_weight(32, 512, Scheme(3, 64, False), act_order=True, seed=7)
    bias = torch.randn(32)
    x = torch.randn(2, 512).to(torch.bfloat16)
    precision = Precision.of(AutoRoundLibBackend.capabilities[0], torch.bfloat16)
    for rank, k0 in enumerate((0, 256)):
        shard = Shard(512, 32, k_start=k0, adds_bias=rank == 0)
        part, part_bias = shard_weight(full, shard, 256, 32), shard_bias(bias, shard, 32)
        spec = LayerSpec.of(part, torch.bfloat16, bias=True, shard=shard)
        y = AutoRoundLibBackend().prepare(part, spec, part_bias)(x[:, k0 : k0 + 256])
        assert error_ratio(y, x[:, k0 : k0 + 256], part, precision, part_bias if rank == 0 else None) <= 1.0


def test_thread_count_is_kept_and_fewer_threads_stay_correct() -> None:
    """auto-round-lib's first repack sets torch's thread count to its own pool size, and with fewer threads than
    that its GEMM leaves output column blocks at zero. The guard restores the count after every repack and gives
    each call the pool's threads. Run in a fresh process (the library's first repack is what resets the count),
    with 1 thread set before anything, then 1 thread again after the build."""
    child = textwrap.dedent(
        """
        import torch
        torch.set_num_threads(1)
        from wna16 import LayerSpec, Scheme, quantize_rtn
        from wna16.reference import dequantize
        from wna16_autoround_lib import AutoRoundLibBackend
        from wna16_autoround_lib.backend import THREADS

        weight = quantize_rtn(torch.randn(512, 256), Scheme(4, 128, True))
        layer = AutoRoundLibBackend().prepare(weight, LayerSpec.of(weight, torch.bfloat16))
        assert torch.get_num_threads() == 1, torch.get_num_threads()
        x = torch.randn(3, 256).to(torch.bfloat16)
        ref = x.double() @ dequantize(weight).double().t()
        y = layer(x)
        assert torch.get_num_threads() == 1
        assert (y.double() - ref).abs().max() < 1e-2 * ref.abs().max(), "columns left unwritten"
        print("ok", THREADS.pool)
        """
    )
    env = {"PATH": "", "OMP_NUM_THREADS": "2"}
    done = subprocess.run(
        [sys.executable, "-c", child], capture_output=True, text=True, timeout=300, check=False, env=env
    )
    assert done.returncode == 0 and done.stdout.startswith("ok 2"), (done.returncode, done.stderr[-2000:])


def test_unguarded_call_leaves_columns_unwritten() -> None:
    """The guard is needed: the same call with the pool's threads withheld returns zeros in whole column blocks
    (when the pool has more than one thread), or is correct (one-thread pool). Keeps the fact checked."""
    weight = make_weight(256, 256, Scheme(4, 128, True), seed=1)
    layer = AutoRoundLibBackend().prepare(weight, LayerSpec.of(weight, torch.bfloat16))
    assert isinstance(layer, AutoRoundLibLinear)
    x = torch.randn(2, 256).to(torch.bfloat16)
    guarded = layer(x)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        kernel = import_kernel()
        assert not isinstance(kernel, str)
        raw = kernel.woqgemm(
            x.float(), layer.blob, layer.bias, 256, layer.kernel_rows, layer.group, "fp32", "int4", "fp32", False
        ).to(torch.bfloat16)
    finally:
        torch.set_num_threads(before)
    if THREADS.pool > 1:
        assert not torch.equal(raw, guarded) and bool((raw == 0).any())
    else:
        assert torch.equal(raw, guarded)


def test_registry_order_against_cpu() -> None:
    """Declared priority: below the cpu backend's int4 kernels (bf16, fp16), above its GEMM rules (8-bit) unless the
    cpu backend's native kernel (which serves 8-bit too, above both) is built here; float32 activations are not
    declared (the cpu backend serves them)."""
    from wna16_cpu import CpuBackend
    from wna16_cpu.backend import NATIVE

    registry = Registry(discover=False)
    registry.register(CpuBackend())
    registry.register(AutoRoundLibBackend())
    pick = lambda bits, dtype: registry.select(LayerSpec(256, 64, Scheme(bits, 128, True), dtype)).backend.name  # noqa: E731
    assert pick(4, torch.bfloat16) == "cpu"
    native = any(rule.label.startswith(NATIVE) for rule in CpuBackend.capabilities)
    assert pick(8, torch.bfloat16) == ("cpu" if native else "autoround-lib")
    assert pick(4, torch.float32) == "cpu"


@pytest.mark.parametrize("rows", [255, 256, 300, 600])
def test_narrow_layers_at_a_few_hundred_rows_return(rows: int) -> None:
    """auto-round-lib's woqgemm never returned for N = 10 at M = 255-300 (one thread): the layer calls it 128 rows at
    a time. In a child process with a timeout, so a regression fails instead of hanging the run."""
    child = textwrap.dedent(
        f"""
        import torch
        from wna16 import LayerSpec, Scheme, quantize_rtn
        from wna16.reference import dequantize
        from wna16_autoround_lib import AutoRoundLibBackend
        w = quantize_rtn(torch.randn(10, 256), Scheme(2, 32, False))
        x = torch.randn({rows}, 256).to(torch.bfloat16)
        y = AutoRoundLibBackend().prepare(w, LayerSpec.of(w, torch.bfloat16))(x)
        ref = x.double() @ dequantize(w).double().t()
        assert (y.double() - ref).abs().max() < 1e-2 * ref.abs().max()
        print("ok")
        """
    )
    env = {"PATH": "", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", child], capture_output=True, text=True, timeout=120, check=False, env=env
    )
    assert done.returncode == 0 and done.stdout.startswith("ok"), (done.returncode, done.stderr[-2000:])
