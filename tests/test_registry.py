"""Backend discovery (entry points), broken plugins, overrides, and the 'no backend' error."""

import sys
import textwrap
from pathlib import Path
from typing import ClassVar

import pytest
import torch

from wna16 import BackendLoadError, Capability, LayerSpec, NoBackendError, Registry, Scheme, UnsupportedError
from wna16.protocol import Backend, LazyCapabilities, PreparedLinear
from wna16.registry import load_object
from wna16.weight import QuantizedWeight
from wna16_reference import ReferenceBackend

GROUP = "wna16.test_backends"

PLUGIN = '''
import torch
from wna16.protocol import Backend, Capability

class FourBitOnly(Backend):
    """A plugin backend that serves only 4-bit layers, at a high priority."""
    name = "fourbit"
    capabilities = (Capability(bits=frozenset({4}), dtypes=frozenset({torch.float32}), priority=50),)

    def build(self, weight, spec, bias):
        from wna16_reference import ReferenceBackend
        return ReferenceBackend().build(weight, spec, bias)
'''


def install_plugin(root: Path, monkeypatch: pytest.MonkeyPatch, name: str, entry_points: str, module: str) -> None:
    """Install a distribution the way pip does: a module and a .dist-info folder on sys.path."""
    (root / f"{name}.py").write_text(module)
    info = root / f"{name}-1.2.3.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.2.3\n")
    (info / "entry_points.txt").write_text(textwrap.dedent(entry_points))
    monkeypatch.syspath_prepend(str(root))


@pytest.fixture
def plugins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Registry:
    # A group of its own keeps the backends installed in this environment (cpu, rocm, ...) out of the assertions;
    # discovery itself is the real one (importlib.metadata over .dist-info folders on sys.path).
    entry = f"[{GROUP}]\nfourbit = fourbit_plugin:FourBitOnly\nreference = wna16_reference:ReferenceBackend\n"
    install_plugin(tmp_path, monkeypatch, "fourbit_plugin", entry, PLUGIN)
    broken = "raise ImportError('libfoo.so: cannot open shared object file')\n"
    install_plugin(tmp_path, monkeypatch, "broken_plugin", f"[{GROUP}]\nbroken = broken_plugin:Nothing\n", broken)
    monkeypatch.delenv("WNA16_BACKEND", raising=False)
    monkeypatch.delenv("WNA16_DISABLED_BACKENDS", raising=False)
    return Registry(GROUP)


def spec(bits: int = 4, dtype: torch.dtype = torch.float32) -> LayerSpec:
    return LayerSpec(64, 32, Scheme(bits, 32, True), dtype)


def test_discovers_installed_plugins_and_reports_broken_ones(plugins: Registry) -> None:
    entries = {e.name: e for e in plugins.entries()}
    assert {"reference", "fourbit", "broken"} <= set(entries)
    assert entries["fourbit"].distribution == "fourbit_plugin" and entries["fourbit"].version == "1.2.3"
    assert entries["broken"].backend is None
    assert "libfoo.so" in (entries["broken"].error or "") and "Traceback" in (entries["broken"].error or "")
    assert entries["reference"].backend is not None  # the broken plugin did not break the others
    assert entries["reference"].distribution == "fourbit_plugin"  # declared by the test distribution


def test_highest_priority_wins_and_others_say_why(plugins: Registry) -> None:
    chosen = plugins.select(spec(4))
    assert chosen.backend.name == "fourbit"
    assert "lower priority" in chosen.rejected["reference"][0]
    assert "failed to load" in chosen.rejected["broken"][0]
    fallback = plugins.select(spec(3))
    assert fallback.backend.name == "reference"
    assert any("3-bit not supported" in r for r in fallback.rejected["fourbit"])


def test_environment_overrides(plugins: Registry, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WNA16_DISABLED_BACKENDS", "fourbit, other")
    assert plugins.select(spec(4)).backend.name == "reference"
    assert plugins.select(spec(4)).rejected["fourbit"] == ("disabled by WNA16_DISABLED_BACKENDS",)
    monkeypatch.delenv("WNA16_DISABLED_BACKENDS")
    monkeypatch.setenv("WNA16_BACKEND", "reference")
    assert plugins.select(spec(4)).backend.name == "reference"
    monkeypatch.setenv("WNA16_BACKEND", "fourbit")
    with pytest.raises(UnsupportedError, match="3-bit not supported"):
        plugins.select(spec(3))


def test_explicit_import_path(plugins: Registry) -> None:
    assert plugins.select(spec(4), "fourbit_plugin:FourBitOnly").backend.name == "fourbit"
    with pytest.raises(BackendLoadError, match="expected 'package.module:object'"):
        load_object("fourbit_plugin")
    with pytest.raises(BackendLoadError, match="no_such_module"):
        load_object("no_such_module:X")
    with pytest.raises(BackendLoadError, match="not a wna16.protocol.Backend"):
        load_object("torch:float32")
    with pytest.raises(BackendLoadError, match="failed to load"):
        plugins.get("broken")
    with pytest.raises(BackendLoadError, match="not installed"):
        plugins.get("nonexistent")


def test_no_backend_lists_every_reason(plugins: Registry, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WNA16_DISABLED_BACKENDS", "reference")
    with pytest.raises(NoBackendError) as info:
        plugins.select(spec(3))
    text = str(info.value)
    assert "no backend can serve 64 -> 32 w3g32sym float32 cpu" in text
    assert "fourbit: 3-bit not supported" in text and "reference: disabled" in text and "broken: failed to load" in text
    by_backend = info.value.by_backend
    assert set(by_backend) >= {"fourbit", "reference", "broken"}
    assert any("3-bit not supported" in r for r in by_backend["fourbit"])
    assert by_backend["reference"] == ("disabled by WNA16_DISABLED_BACKENDS",)


class Refusing(Backend):
    name = "refusing"
    capabilities = (Capability(bits=frozenset({4}), dtypes=frozenset({torch.float16}), n_multiple=64),)

    def build(self, weight: QuantizedWeight, spec: LayerSpec, bias: torch.Tensor | None) -> PreparedLinear:
        raise AssertionError("build must never be called for a refused spec")


def test_check_lists_every_reason_and_prepare_refuses() -> None:
    backend = Refusing()
    weight = QuantizedWeight.from_codes(
        Scheme(3, 32, False), torch.zeros(64, 32, dtype=torch.int32), torch.zeros(2, 32), torch.ones(2, 32)
    )
    s = LayerSpec.of(weight, torch.float32)
    support = backend.check(s)
    assert not support
    assert len(support.reasons) == 4, support.reasons  # bits, asym, dtype, N multiple
    with pytest.raises(UnsupportedError) as info:
        backend.prepare(weight, s)
    assert info.value.reasons == support.reasons
    assert backend.available("cpu")
    assert not backend.available("meta")


def test_no_plugins_installed_registry_is_empty() -> None:
    empty = Registry(discover=False)
    with pytest.raises(NoBackendError, match="no backend is installed"):
        empty.select(spec())
    assert "wna16" in sys.modules


class VendorRule(Backend):
    """Serves what the reference serves, except layers whose N the (pretend) vendor library refuses: a rule that is
    not capability data, computed by ``refusals``."""

    name = "vendor-rule"
    capabilities = (Capability(bits=frozenset({4}), dtypes=frozenset({torch.float32}), priority=60),)  # > fourbit
    asked: ClassVar[list[LayerSpec]] = []

    def refusals(self, spec: LayerSpec) -> list[str]:
        self.asked.append(spec)
        return [f"the vendor library refuses N={spec.out_features}"] if spec.out_features % 64 else []

    def build(self, weight: QuantizedWeight, spec: LayerSpec, bias: torch.Tensor | None) -> PreparedLinear:
        assert spec.out_features % 64 == 0, "build must never be called for a spec refusals() refused"
        return ReferenceBackend().build(weight, spec, bias)


def test_computed_refusals_are_part_of_check_and_of_selection(plugins: Registry) -> None:
    backend = VendorRule()
    plugins.register(backend)
    VendorRule.asked.clear()
    assert not backend.check(spec(3)) and VendorRule.asked == []  # rules refuse first: the hook is not asked
    refused = LayerSpec(64, 32, Scheme(4, 32, True), torch.float32)
    support = backend.check(refused)
    assert not support and support.reasons == ("the vendor library refuses N=32",) and support.rule is None
    weight = QuantizedWeight.from_codes(
        Scheme(4, 32, True), torch.zeros(64, 32, dtype=torch.int32), torch.full((2, 32), 8), torch.ones(2, 32)
    )
    with pytest.raises(UnsupportedError, match="refuses N=32"):
        backend.prepare(weight, refused)
    chosen = plugins.select(refused)  # the registry shows the computed reason like any other
    assert chosen.backend.name == "fourbit" and chosen.rejected["vendor-rule"] == ("the vendor library refuses N=32",)
    assert plugins.select(LayerSpec(64, 64, Scheme(4, 32, True), torch.float32)).backend.name == "vendor-rule"


def test_lazy_capabilities_resolve_once_and_only_for_their_device() -> None:
    resolved: list[int] = []

    def resolve() -> tuple[Capability, ...]:
        resolved.append(1)
        return (Capability(bits=frozenset({4}), dtypes=frozenset({torch.float16}), devices=frozenset({"cuda"})),)

    class Lazy(Backend):
        name = "lazy"
        capabilities = LazyCapabilities({"cuda"}, resolve)

        def build(self, weight: QuantizedWeight, spec: LayerSpec, bias: torch.Tensor | None) -> PreparedLinear:
            raise AssertionError("not built here")

    backend = Lazy()
    cpu = LayerSpec(64, 32, Scheme(4, 32, True), torch.float16)
    assert Lazy.device_types() == frozenset({"cuda"}) and not backend.available("cpu")
    assert backend.check(cpu).reasons == ("device type 'cpu' not supported (supports ['cuda'])",)
    assert resolved == [] and not Lazy.capability_declaration().resolved  # type: ignore[union-attr]
    cuda = LayerSpec(64, 32, Scheme(4, 32, True), torch.float16, device="cuda:0")
    assert backend.check(cuda) and backend.check(cuda) and len(backend.capabilities) == 1
    assert resolved == [1]

    class Stray(Lazy):
        name = "stray"
        capabilities = LazyCapabilities({"cuda"}, lambda: (Capability(bits=frozenset({4}), dtypes=frozenset()),))

    with pytest.raises(TypeError, match=r"Stray.capabilities: rules \['0'\] name device types outside"):
        Stray().check(cuda)
