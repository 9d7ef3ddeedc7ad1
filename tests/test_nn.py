"""QuantLinear: backend selection, state_dict round trip in checkpoint format, no second copy, .to() re-prepares."""

import pytest
import torch

from wna16 import Capability, FormatError, LayerSpec, Registry, Scheme, UnsupportedError, quantize_rtn
from wna16.formats import GPTQ_V1
from wna16.nn import QuantLinear
from wna16.ops import PreparedOp
from wna16.protocol import Backend, PreparedLinear
from wna16.reference import dequantize
from wna16.weight import QuantizedWeight
from wna16_reference import ReferenceBackend


def registry(*backends: Backend) -> Registry:
    reg = Registry(discover=False)
    for b in backends:
        reg.register(b)
    return reg


def layer(**kwargs: object) -> QuantLinear:
    weight = quantize_rtn(torch.randn(32, 128, generator=torch.Generator().manual_seed(1)), Scheme(4, 64, False))
    return QuantLinear(weight, torch.randn(32), dtype=torch.float32, registry=registry(ReferenceBackend()), **kwargs)


def test_forward_and_backend_name() -> None:
    m = layer()
    assert m.backend_name == "reference"
    x = torch.randn(2, 5, 128)
    expected = x.double() @ dequantize(m._weight).double().t() + m._bias.double()
    assert torch.allclose(m(x).double(), expected, atol=1e-4)
    assert "backend=reference" in repr(m)


def test_state_dict_holds_checkpoint_tensors_and_round_trips() -> None:
    m = layer()
    sd = m.state_dict()
    assert set(sd) == {"qweight", "qzeros", "scales", "g_idx", "bias"}
    assert sd["qzeros"].dtype == torch.int32 and sd["qzeros"].shape == (2, 4)
    other = layer()
    other.load_state_dict({k: v.clone() for k, v in sd.items()})
    x = torch.randn(3, 128)
    assert torch.equal(other(x), m(x))
    missing = dict(sd)
    del missing["scales"]
    with pytest.raises(RuntimeError, match=r'Missing key\(s\) in state_dict: "scales"'):
        other.load_state_dict(missing)


def test_v1_layers_save_v1() -> None:
    m = layer(weight_format="gptq")
    assert m.weight_format is GPTQ_V1
    zeros = m._weight.zeros
    if int(zeros.min()) == 0:  # v1 cannot hold a true zero of 0: saving says so
        with pytest.raises(FormatError, match="cannot be written as gptq"):
            m.state_dict()


def test_reference_on_cpu_keeps_no_second_copy() -> None:
    m = layer()
    prepared = m._prepared
    assert isinstance(prepared, PreparedOp)
    assert prepared.state[0].data_ptr() == m._weight.qweight.data_ptr()  # qweight, as the reference binds it


def test_to_dtype_reprepares_and_refusal_leaves_module_intact() -> None:
    class Fp32Only(ReferenceBackend):
        name = "fp32only"
        capabilities = (
            Capability(
                bits=frozenset({4}), dtypes=frozenset({torch.float32}), asym=True, group_sizes=None, priority=10
            ),
        )

    weight = quantize_rtn(torch.randn(16, 64), Scheme(4, 32, False))
    m = QuantLinear(weight, dtype=torch.float32, registry=registry(Fp32Only()), backend="fp32only")
    x = torch.randn(2, 64)
    y = m(x)
    with pytest.raises(UnsupportedError, match="activation dtype bfloat16 not supported"):
        m.to(torch.bfloat16)
    assert m.dtype == torch.float32 and torch.equal(m(x), y)  # unchanged after the refusal
    both = QuantLinear(weight, dtype=torch.float32, registry=registry(Fp32Only(), ReferenceBackend()))
    assert both.backend_name == "fp32only"
    both.to(torch.bfloat16)
    assert both.backend_name == "reference" and both.dtype == torch.bfloat16
    assert both(x.bfloat16()).dtype == torch.bfloat16
    with pytest.raises(FormatError, match="expected \\[..., 64\\] bfloat16 on cpu"):
        both(x)


def test_to_unavailable_device_is_refused() -> None:
    class CpuOnly(Backend):
        name = "cpuonly"
        capabilities = (Capability(bits=frozenset({4}), dtypes=frozenset({torch.float32}), asym=True),)

        def build(self, weight: QuantizedWeight, spec: LayerSpec, bias: torch.Tensor | None) -> PreparedLinear:
            return ReferenceBackend().build(weight, spec, bias)

    weight = quantize_rtn(torch.randn(16, 64), Scheme(4, 32, False))
    m = QuantLinear(weight, dtype=torch.float32, registry=registry(CpuOnly()))
    with pytest.raises(UnsupportedError, match="float16"):  # (meta is served without a backend: shapes only)
        m.half()
    assert m.device == torch.device("cpu") and m.dtype == torch.float32
    named = QuantLinear(weight, dtype=torch.float32, registry=registry(CpuOnly()), name="model.layers.3.mlp.up_proj")
    with pytest.raises(UnsupportedError, match=r"^model\.layers\.3\.mlp\.up_proj: no backend can serve 64 -> 16 "):
        named.half()
    with pytest.raises(FormatError, match=r"^model\.layers\.3\.mlp\.up_proj: input is float32\[2, 32\]"):
        named(torch.randn(2, 32))


def test_source_replaces_the_kept_canonical_weight() -> None:
    """With a source, the module keeps only the backend's layout; state_dict and .to() read the weight again."""
    weight = quantize_rtn(torch.randn(32, 128, generator=torch.Generator().manual_seed(1)), Scheme(4, 64, False))
    reads: list[int] = []

    def source() -> QuantizedWeight:
        reads.append(1)
        return weight

    kept = layer()
    m = QuantLinear(weight, kept._bias, dtype=torch.float32, registry=registry(ReferenceBackend()), source=source)
    assert m._weight is None and reads == []
    saved = m.state_dict()
    assert len(reads) == 1
    for key, tensor in kept.state_dict().items():
        assert torch.equal(saved[key], tensor), key
    x = torch.randn(3, 128)
    m.to(torch.bfloat16)
    assert m._weight is None and m.spec.dtype == torch.bfloat16 and len(reads) == 2
    assert torch.equal(m(x.bfloat16()), kept.to(torch.bfloat16)(x.bfloat16()))

    other = quantize_rtn(torch.randn(32, 64), Scheme(4, 64, False))
    stale = QuantLinear(
        weight, kept._bias, dtype=torch.float32, registry=registry(ReferenceBackend()), source=lambda: other
    )
    with pytest.raises(FormatError, match="the source now gives"):
        stale.state_dict()
    stale.load_state_dict(kept.state_dict(), strict=False)  # a loaded state_dict becomes the kept truth
    assert stale._weight is not None and stale._source is None
