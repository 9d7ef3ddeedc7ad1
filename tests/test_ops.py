"""The ``wna16::linear`` op contract (:mod:`wna16.ops`): the registry of kernels, the fake, the input check, and a
prepared layer that ``torch.compile(fullgraph=True)`` traces as one op."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from wna16 import FormatError, LayerSpec, Scheme, UnsupportedError, quantize_rtn
from wna16.ops import PreparedOp, kernel_for, register_kernel
from wna16_reference import ReferenceBackend


@register_kernel("test.scale", ["cpu"])
def _scale(x: torch.Tensor, state: Sequence[torch.Tensor | None], options: Sequence[int]) -> torch.Tensor:
    (w,) = state
    assert w is not None
    return x @ w.t() * options[0]


def test_unknown_kernel_and_device_are_typed_errors_naming_them() -> None:
    with pytest.raises(UnsupportedError, match="'test.nothing'.*not registered"):
        kernel_for("test.nothing", "cpu")
    with pytest.raises(UnsupportedError, match=r"'test.scale' on device type 'cuda'.*\['cpu'\]"):
        kernel_for("test.scale", "cuda")
    with pytest.raises(UnsupportedError, match="'test.nothing'"):
        PreparedOp("test.nothing", 4, 2, torch.float32)


def test_a_name_taken_by_another_function_is_refused() -> None:
    register_kernel("test.scale", ["cpu"])(_scale)  # the same function again: a reload, accepted

    def other(x: torch.Tensor, state: Sequence[torch.Tensor | None], options: Sequence[int]) -> torch.Tensor:
        return x

    with pytest.raises(ValueError, match="already .*_scale"):
        register_kernel("test.scale", ["cpu"])(other)


def test_call_checks_x_and_computes_through_the_op() -> None:
    w = torch.randn(2, 4)
    layer = PreparedOp("test.scale", 4, 2, torch.float32, state=(w,), options=(3,))
    x = torch.randn(5, 4)
    torch.testing.assert_close(layer(x), x @ w.t() * 3)
    with pytest.raises(FormatError, match=r"x: got float16\[5, 4\].*float32 \[\.\.\., 4\]"):
        layer(x.half())
    with pytest.raises(FormatError, match="expected float32"):
        layer(torch.randn(5, 3))
    torch.library.opcheck(torch.ops.wna16.linear.default, layer.args(x))


def test_fake_gives_the_output_without_computing() -> None:
    with FakeTensorMode():
        x = torch.empty(2, 7, 4)
        y = torch.ops.wna16.linear(x, [torch.empty(2, 4)], "test.never-registered", 2, [])
        assert (y.shape, y.dtype, y.device) == ((2, 7, 2), torch.float32, torch.device("cpu"))


def test_a_model_around_a_prepared_layer_compiles_fullgraph_as_one_op() -> None:
    weight = quantize_rtn(torch.randn(48, 128), Scheme(4, 32, False))
    layer = ReferenceBackend().prepare(weight, LayerSpec.of(weight, torch.bfloat16, bias=True), torch.randn(48))
    assert isinstance(layer, PreparedOp)

    class Model(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layer = layer

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.relu(self.layer(x))

    graphs: list[torch.fx.GraphModule] = []

    def backend(gm: torch.fx.GraphModule, example_inputs: list[torch.Tensor]) -> torch.fx.GraphModule:
        graphs.append(gm)
        return gm

    torch._dynamo.reset()
    model = torch.compile(Model(), backend=backend, fullgraph=True, dynamic=True)
    for rows in (2, 9):  # (a dimension of size 1 is specialised by dynamo: another graph)
        x = torch.randn(rows, 128).to(torch.bfloat16)
        assert torch.equal(model(x), torch.relu(layer(x)))
    assert len(graphs) == 1  # one graph for every row count
    targets = [node.target for node in graphs[0].graph.nodes if node.op == "call_function"]
    assert targets.count(torch.ops.wna16.linear) == 1, targets  # one node: the op, not its kernel traced
