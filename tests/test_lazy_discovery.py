"""Discovery is lazy: listing backends and selecting one for a CPU layer import no vendor runtime and probe no
device until a backend is asked about its device (issue 22, item 5).

Each scenario runs in a fresh interpreter (what was imported is per process) with a meta-path finder that records
every lookup of a vendor package, found or not (so the proof holds where none is installed), and torch's device
probes wrapped to record their calls.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

VENDOR = ("vllm", "intel_extension_for_pytorch", "triton", "torch_npu")

PRELUDE = textwrap.dedent(
    """
    import contextlib, importlib.abc, io, json, sys

    VENDOR = {vendor!r}
    looked = []

    class Recorder(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in VENDOR:
                looked.append(name)
            return None  # the normal finders decide

    sys.meta_path.insert(0, Recorder())

    import torch

    probes = []

    def recording(owner, attr):
        original = getattr(owner, attr)

        def probe(*args, **kwargs):
            probes.append(f"{{owner.__name__}}.{{attr}}")
            return original(*args, **kwargs)

        setattr(owner, attr, probe)

    for attr in ("is_available", "device_count", "get_device_capability", "current_device"):
        recording(torch.cuda, attr)
    recording(torch.xpu, "is_available")

    def report():
        from wna16.registry import default_registry

        def lazy_and_unresolved(backend):
            declaration = getattr(type(backend), "capability_declaration", None)  # None: a wna16 without laziness
            return declaration is not None and not getattr(declaration(), "resolved", True)

        entries = default_registry().entries()
        unresolved = sorted(e.name for e in entries if e.backend is not None and lazy_and_unresolved(e.backend))
        imported = sorted(m for m in sys.modules if m.split(".")[0] in VENDOR)
        print(json.dumps({{"looked": looked, "imported": imported, "probes": probes, "unresolved": unresolved}}))
    """
).format(vendor=VENDOR)

SCENARIOS = {
    "wna16 backends": (
        "from wna16.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    assert main(['backends']) == 0\n"
        "    assert main(['backends', '--json']) == 0\n"
    ),
    "select for CPU layers": (
        "from wna16 import LayerSpec, Scheme\n"
        "from wna16.registry import default_registry\n"
        "for dtype in (torch.bfloat16, torch.float16, torch.float32):\n"
        "    for scheme in (Scheme(4, 128, True), Scheme(8, -1, True), Scheme(3, 32, False)):\n"
        "        default_registry().select(LayerSpec(256, 512, scheme, dtype, act_order=True, device='cpu'))\n"
    ),
    "QuantLinear on CPU": (
        "from wna16 import Scheme\n"
        "from wna16.nn import QuantLinear\n"
        "from wna16.quantize import quantize_rtn\n"
        "w = quantize_rtn(torch.randn(64, 128), Scheme(4, 32, True))\n"
        "layer = QuantLinear(w, dtype=torch.bfloat16)\n"
        "layer(torch.randn(2, 128, dtype=torch.bfloat16))\n"
    ),
}


def run(body: str) -> dict[str, list[str]]:
    """Run ``body`` after the recorders are in place; what it looked up, imported and probed."""
    env = {
        k: v for k, v in os.environ.items() if k not in ("WNA16_BACKEND", "WNA16_TRITON_INTERPRET", "TRITON_INTERPRET")
    }
    code = PRELUDE + body + "report()\n"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    result: dict[str, list[str]] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_discovery_imports_no_vendor_runtime_and_probes_no_device(scenario: str) -> None:
    got = run(SCENARIOS[scenario])
    assert got["looked"] == [], f"{scenario} looked up vendor packages: {got['looked']}"
    assert got["imported"] == [], f"{scenario} imported vendor packages: {got['imported']}"
    assert got["probes"] == [], f"{scenario} probed devices: {got['probes']}"
    assert "marlin" in got["unresolved"], "Marlin's capabilities (vLLM's, for CUDA) were resolved"


def test_asking_about_cuda_resolves_what_cuda_backends_serve() -> None:
    """The laziness is per device: ``wna16 backends --device cuda`` asks the CUDA backends, which then probe."""
    got = run(
        "from wna16.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    assert main(['backends', '--device', 'cuda']) == 0\n"
    )
    assert "torch.cuda.is_available" in got["probes"]
    assert "marlin" not in got["unresolved"]
