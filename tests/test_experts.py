"""Experts blocks: the generic per-expert path against a direct float64 computation, routing validation, the
declaration (check_experts) of fused and generic paths, selection, and the QuantExperts module."""

import pytest
import torch
from torch.fx.experimental.symbolic_shapes import GuardOnDataDependentSymNode

from wna16 import FormatError, NoBackendError, Registry, Scheme, UnsupportedError, quantize_rtn
from wna16.experts import (
    ExpertsCapability,
    ExpertsSpec,
    ExpertWeights,
    GroupedExperts,
    Routing,
    check_experts,
    prepare_experts,
)
from wna16.nn import QuantExperts
from wna16.ops import ExpertsOp
from wna16.protocol import Backend
from wna16.reference import dequantize
from wna16.registry import select_experts
from wna16.tolerance import Precision, experts_error_ratio
from wna16_cpu import CpuBackend
from wna16_reference import ReferenceBackend

E, H, INTER = 4, 128, 64


def experts(scheme: Scheme = Scheme(4, 32, False), seed: int = 0, last: Scheme | None = None) -> ExpertWeights:
    gen = torch.Generator().manual_seed(seed)
    out: list[list[object]] = [[], [], []]
    for e in range(E):
        s = last if last is not None and e == E - 1 else scheme
        for p, (n, k) in enumerate(((INTER, H), (INTER, H), (H, INTER))):
            out[p].append(quantize_rtn(torch.randn(n, k, generator=gen) / k**0.5, s))
    return ExpertWeights(*(tuple(ws) for ws in out))  # type: ignore[arg-type]


def exact(x: torch.Tensor, ids: torch.Tensor, w: torch.Tensor, ew: ExpertWeights) -> torch.Tensor:
    """Token by token, choice by choice, in float64: what the block means."""
    out = torch.zeros(x.shape[0], H, dtype=torch.float64)
    for t in range(x.shape[0]):
        for j in range(ids.shape[1]):
            g, u, d = (dequantize(m).double() for m in ew.expert(int(ids[t, j])))
            xt = x[t].double()
            out[t] += float(w[t, j]) * (d @ (torch.nn.functional.silu(g @ xt) * (u @ xt)))
    return out


def routing(m: int, k: int, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    ids = torch.stack([torch.randperm(E, generator=gen)[:k] for _ in range(m)])
    return ids, torch.softmax(torch.randn(m, k, generator=gen), -1)


@pytest.mark.parametrize("before", [False, True])
def test_generic_path_equals_the_exact_block(before: bool) -> None:
    ew = experts()
    x = torch.randn(5, H)
    ids, w = routing(5, 2)
    spec = ExpertsSpec.of(ew, 2, torch.float32, weights_before_down=before)
    block = prepare_experts(ReferenceBackend(), ew, spec)
    assert isinstance(block, GroupedExperts)
    y = block(x, ids, w)
    assert y.dtype == torch.float32 and y.shape == x.shape
    torch.testing.assert_close(y.double(), exact(x, ids, w, ew), rtol=1e-5, atol=1e-5)
    rule = ReferenceBackend.capabilities[0]
    ratio = experts_error_ratio(y, x, ids, w, ew, lambda e, p: Precision.of(rule, torch.float32),
                                weights_before_down=before)  # fmt: skip
    assert ratio <= 1


def test_decode_touches_only_the_chosen_experts() -> None:
    calls: list[int] = []

    def layer(e: int) -> object:
        def call(x: torch.Tensor) -> torch.Tensor:
            calls.append(e)
            return torch.zeros(*x.shape[:-1], H if len(calls) % 3 == 0 else INTER)

        return call

    spec = ExpertsSpec.of(experts(), 2, torch.float32)
    block = GroupedExperts([[layer(e)] * 3 for e in range(E)], spec)  # type: ignore[list-item]
    block(torch.randn(1, H), torch.tensor([[3, 1]]), torch.tensor([[0.5, 0.5]]))
    assert sorted(set(calls)) == [1, 3] and len(calls) == 6


def test_routing_groups_tokens_by_expert_and_empty_experts_get_none() -> None:
    spec = ExpertsSpec.of(experts(), 2, torch.float32)
    r = Routing.of(torch.tensor([[2, 0], [0, 2], [2, 3]]), torch.rand(3, 2), 3, spec)
    assert r.active == [0, 2, 3] and r.starts == [0, 2, 2, 5, 6]
    assert r.tokens[0:2].tolist() == [0, 1] and r.tokens[2:5].tolist() == [0, 1, 2]


@pytest.mark.parametrize(
    ("ids", "w", "name"),
    [
        (torch.tensor([[0, 4]]), torch.rand(1, 2), "topk_ids"),
        (torch.tensor([[0, -1]]), torch.rand(1, 2), "topk_ids"),
        (torch.tensor([[0.0, 1.0]]), torch.rand(1, 2), "topk_ids"),
        (torch.tensor([[0, 1, 2]]), torch.rand(1, 3), "topk_ids"),
        (torch.tensor([[0, 1]]), torch.tensor([[1, 0]]), "topk_weights"),
    ],
)
def test_bad_routing_is_a_format_error_naming_the_tensor(ids: torch.Tensor, w: torch.Tensor, name: str) -> None:
    ew = experts()
    block = prepare_experts(ReferenceBackend(), ew, ExpertsSpec.of(ew, 2, torch.float32))
    with pytest.raises(FormatError, match=name):
        block(torch.randn(1, H), ids, w)


def test_mismatched_expert_shapes_are_refused() -> None:
    ew = experts()
    with pytest.raises(FormatError, match=r"experts\.1\.down_proj"):
        ExpertWeights(ew.gate, ew.up, (ew.down[0], ew.gate[1], *ew.down[2:]))


class FusedOnly(ReferenceBackend):
    name = "fused-only"
    experts_capabilities = (ExpertsCapability(ReferenceBackend.capabilities[0], top_k=frozenset({2}), priority=5),)

    def build_experts(self, weights, spec):  # type: ignore[no-untyped-def]
        return prepare_experts(ReferenceBackend(), weights, spec)  # a stand-in kernel


def test_declared_rule_is_data_and_gives_every_reason() -> None:
    mixed = experts(last=Scheme(8, 32, False))
    spec = ExpertsSpec.of(mixed, 3, torch.float32)
    support = check_experts(FusedOnly(), spec)
    assert not support and support.rule is None
    assert any("top_k 3" in r for r in support.reasons)
    assert any("different schemes" in r for r in support.reasons)
    with pytest.raises(UnsupportedError):
        prepare_experts(FusedOnly(), mixed, spec)
    assert check_experts(ReferenceBackend(), spec)  # the generic path serves mixed schemes
    ok = ExpertsSpec.of(experts(), 2, torch.float32)
    assert check_experts(FusedOnly(), ok).fused and not check_experts(ReferenceBackend(), ok).fused


def test_generic_path_refuses_with_the_layer_reasons() -> None:
    spec = ExpertsSpec.of(experts(Scheme(4, 16, False)), 2, torch.bfloat16)  # the int4 kernel has no group 16
    support = check_experts(CpuBackend(), spec)
    assert not support and any("group size 16 not supported" in r for r in support.reasons)


def test_spec_must_match_the_weights() -> None:
    ew = experts()
    spec = ExpertsSpec.of(experts(Scheme(4, 64, False)), 2, torch.float32)
    with pytest.raises(FormatError, match="experts"):
        prepare_experts(ReferenceBackend(), ew, spec)


def test_selection_prefers_the_fused_rule_and_lists_the_others() -> None:
    reg = Registry(discover=False)
    for b in (ReferenceBackend(), FusedOnly()):
        reg.register(b)
    spec = ExpertsSpec.of(experts(), 2, torch.float32)
    backend, support, rejected = select_experts(spec, registry=reg)
    assert backend.name == "fused-only" and support.fused and "reference" in rejected
    with pytest.raises(NoBackendError):
        select_experts(ExpertsSpec.of(experts(), 3, torch.float32), registry=Registry(discover=False))
    with pytest.raises(UnsupportedError):
        select_experts(ExpertsSpec.of(experts(), 3, torch.float32), FusedOnly(), reg)


def test_quant_experts_module_serves_the_cpu_backend_in_bf16() -> None:
    ew = experts(Scheme(4, 32, True))
    reg = Registry(discover=False)
    for b in (ReferenceBackend(), CpuBackend()):
        reg.register(b)
    m = QuantExperts(ew, 2, dtype=torch.bfloat16, registry=reg)
    assert m.backend_name == "cpu" and not m.fused and "per-expert" in repr(m)
    x = torch.randn(3, H).bfloat16()
    ids, w = routing(3, 2)
    y = m(x, ids, w)
    assert y.dtype == torch.bfloat16

    def precision(e: int, p: int) -> Precision:
        return Precision.for_backend(CpuBackend(), ExpertsSpec.of(ew, 2, torch.bfloat16).layer(e, p))

    assert experts_error_ratio(y, x, ids, w.bfloat16(), ew, precision) <= 1
    sd = m.state_dict()
    assert {"0.gate_proj.qweight", "3.down_proj.scales"} <= set(sd)
    with pytest.raises(FormatError, match="input"):
        m(x.float(), ids, w)
    m.float()
    assert m.dtype == torch.float32 and m(x.float(), ids, w).dtype == torch.float32


def test_backend_without_build_experts_is_a_clear_error() -> None:
    class Declares(ReferenceBackend):
        name = "declares"
        experts_capabilities = (ExpertsCapability(ReferenceBackend.capabilities[0]),)

    ew = experts()
    with pytest.raises(UnsupportedError, match="build_experts"):
        prepare_experts(Declares(), ew, ExpertsSpec.of(ew, 2, torch.float32))
    assert isinstance(Declares(), Backend)


def test_quant_experts_load_state_dict_round_trips_like_nn_module() -> None:
    """state_dict -> load_state_dict gives the other block's experts (each at its own scheme, the last expert at
    8 bits); missing keys and (strict) unexpected keys are listed or raised as ``torch.nn.Module`` does; an
    incomplete or malformed state keeps the block as it was."""
    reg = Registry(discover=False)
    reg.register(ReferenceBackend())
    source = QuantExperts(experts(seed=1, last=Scheme(8, 32, False)), 2, dtype=torch.float32, registry=reg)
    target = QuantExperts(experts(seed=2, last=Scheme(8, 32, False)), 2, dtype=torch.float32, registry=reg)
    x = torch.randn(6, H)
    ids, w = routing(6, 2)
    before, want = target(x, ids, w), source(x, ids, w)
    assert not torch.equal(before, want)
    state = source.state_dict()

    partial = {k: v for k, v in state.items() if k != "2.up_proj.scales"}
    result = target.load_state_dict({**partial, "9.gate_proj.qweight": torch.zeros(1), "extra": torch.zeros(1)},
                                    strict=False)  # fmt: skip
    assert result.missing_keys == ["2.up_proj.scales"]
    assert result.unexpected_keys == ["9.gate_proj.qweight", "extra"]  # listed, not raised, as nn.Linear does
    torch.testing.assert_close(target(x, ids, w), before, rtol=0, atol=0)
    with pytest.raises(RuntimeError, match=r'Missing key\(s\) in state_dict: "2.up_proj.scales"'):
        target.load_state_dict(partial)
    bad = {**state, "1.down_proj.qweight": state["1.down_proj.qweight"][:-1]}
    with pytest.raises(RuntimeError, match=r"1\.down_proj\.qweight"):
        target.load_state_dict(bad)
    torch.testing.assert_close(target(x, ids, w), before, rtol=0, atol=0)
    # Complete but with extra keys: loaded, then refused, as torch.nn.Linear loads its weight before raising.
    with pytest.raises(RuntimeError, match=r'Unexpected key\(s\) in state_dict: "9.gate_proj.qweight", "extra"'):
        target.load_state_dict({**state, "9.gate_proj.qweight": torch.zeros(1), "extra": torch.zeros(1)})
    torch.testing.assert_close(target(x, ids, w), want, rtol=0, atol=0)

    target = QuantExperts(experts(seed=2, last=Scheme(8, 32, False)), 2, dtype=torch.float32, registry=reg)
    target.load_state_dict({k: v.clone() for k, v in state.items()})
    torch.testing.assert_close(target(x, ids, w), want, rtol=0, atol=0)
    assert all(torch.equal(v, state[k]) for k, v in target.state_dict().items())
    assert target._weights.expert(E - 1)[0].scheme == Scheme(8, 32, False)


def test_experts_op_keeps_the_data_dependent_routing_out_of_a_fullgraph_compile() -> None:
    """vLLM traces its MoE layers with ``fullgraph=True``: the generic path's grouping by expert (``.tolist()`` of the
    routing) cannot be traced, so the vLLM method calls the block through ``wna16::experts``: one opaque node, the
    eager result bitwise, and a typed error for a handle this process does not hold."""
    ew = experts()
    spec = ExpertsSpec.of(ew, 2, torch.float32)
    block = prepare_experts(ReferenceBackend(), ew, spec)
    op = ExpertsOp(block)
    graphs: list[torch.fx.GraphModule] = []

    def backend(gm: torch.fx.GraphModule, example_inputs: list[torch.Tensor]) -> torch.fx.GraphModule:
        graphs.append(gm)
        return gm

    torch._dynamo.reset()
    compiled = torch.compile(lambda x, i, w: op(x, i, w) * 2, backend=backend, fullgraph=True, dynamic=True)
    for m in (3, 7):
        x = torch.randn(m, H)
        ids, w = routing(m, 2, seed=m)
        assert torch.equal(compiled(x, ids, w), block(x, ids, w) * 2)
    targets = [n.target for g in graphs for n in g.graph.nodes if n.op == "call_function"]
    assert len(graphs) == 1 and targets.count(torch.ops.wna16.experts) == 1, targets
    with pytest.raises(UnsupportedError, match="handle"):
        torch.ops.wna16.experts(torch.randn(1, H), *routing(1, 2), -1)
    torch._dynamo.reset()
    bare = torch.compile(lambda x, i, w: block(x, i, w), fullgraph=True, dynamic=True)
    with pytest.raises(GuardOnDataDependentSymNode):  # what the op avoids: the routing traced with fullgraph
        bare(torch.randn(3, H), *routing(3, 2))
