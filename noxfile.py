"""Sessions of wna16: one per device target, plus tests, lint and the tools around them.

`nox -t cpu` runs everything a CPU machine can run (what CI runs); `nox -l` lists every session.

Every session that runs on torch 2.13 CPU shares one virtual environment (`.nox/_cpu`), built once and reused while
the package definitions are unchanged: installing torch once instead of per session saves minutes and gigabytes.
Torch is pinned explicitly because a bare `torch` requirement pulls several GB of CUDA wheels; override the pin with
`WNA16_TORCH` (e.g. `WNA16_TORCH="torch==2.13.0 --index-url ..."`) on other machines.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import shutil
import sys
from pathlib import Path

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
CPU_DISTRIBUTIONS = ["core", "backends/reference", "backends/cpu", "conformance"]


def local_distributions() -> list[str]:
    """The CPU distributions that exist in this checkout (installed editable)."""
    return [d for d in CPU_DISTRIBUTIONS if (ROOT / d / "pyproject.toml").exists()]


def shared_env(session: nox.Session, name: str, requirements: list[str], torch: str = TORCH) -> Path:
    """Create (once) the virtual environment `.nox/_<name>` with `torch` and `requirements`; return its python.

    The environment is rebuilt when the requirements or any pyproject.toml change (a stamp file records them).
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
    if python.exists() and stamp_file.exists() and stamp_file.read_text() == stamp:
        session.log(f"reusing {venv}")
        return python
    session.run(sys.executable, "-m", "venv", "--clear", str(venv), external=True)
    pip = [str(python), "-m", "pip", "install", "--disable-pip-version-check", "-q"]
    session.run(*pip, "--upgrade", "pip", external=True)
    session.run(*pip, *shlex.split(torch), external=True)
    session.run(*pip, *requirements, external=True)
    stamp_file.write_text(stamp)
    return python


def cpu_env(session: nox.Session) -> Path:
    """The shared torch-2.13-CPU environment with every CPU distribution (editable) and the test/lint tools."""
    editable = [arg for d in local_distributions() for arg in ("-e", str(ROOT / d))]
    return shared_env(session, "cpu", [*editable, *TEST_DEPS, *LINT_DEPS])


def run_in(session: nox.Session, python: Path, *args: str, env: dict[str, str] | None = None) -> None:
    """Run `python -m ...` from an environment nox did not create."""
    session.run(str(python), *args, external=True, env=env or {})


@nox.session(venv_backend="none", tags=["cpu"])
def tests(session: nox.Session) -> None:
    """Unit and property tests of core and of each backend's CPU-testable parts."""
    python = cpu_env(session)
    paths = ["tests", *(str(p) for p in sorted(ROOT.glob("backends/*/tests")))]
    run_in(session, python, "-m", "pytest", *paths, "-n", "2", "-m", "not browser", *session.posargs)


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
    run_in(
        session,
        python,
        "-m",
        "pytest",
        "tests/test_matrix_page.py",
        "-m",
        "browser",
        "-p",
        "no:randomly",
        env={"WNA16_SCREENSHOT_DIR": shots},
    )
