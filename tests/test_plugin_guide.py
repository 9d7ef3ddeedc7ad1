"""The plugin author's guide (backends/README.md) is executed: its files are written and its commands run, in order,
in a fresh virtual environment; then the example out-of-tree backend is installed there and passes the suite.

Runs in the `plugin-guide` nox session (it builds its own venv: minutes, not seconds).
"""

import json
import os
import re
import subprocess
import time
from pathlib import Path

import pytest

from wna16_conformance.invocation import suite_command

ROOT = Path(__file__).resolve().parents[1]
GUIDE = ROOT / "backends" / "README.md"
BLOCK = re.compile(r"^```(\w+)(?: file=(\S+))?\n(.*?)^```", re.S | re.M)

pytestmark = pytest.mark.guide


def guide_steps() -> list[tuple[str, str | None, str]]:
    return [(m[1], m[2], m[3]) for m in BLOCK.finditer(GUIDE.read_text())]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Follow the guide from an empty folder; keep the folder (and its venv) for the tests below."""
    work = tmp_path_factory.mktemp("guide")
    env = {**os.environ, "WNA16_REPO": str(ROOT), "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    env.pop("VIRTUAL_ENV", None)
    for lang, path, body in guide_steps():
        if path is not None:
            target = work / path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(body)
        elif lang == "bash":
            for line in body.strip().splitlines():
                start = time.monotonic()
                done = subprocess.run(["bash", "-ec", line], cwd=work, env=env, capture_output=True, text=True)
                took = time.monotonic() - start
                (work / "guide.log").open("a").write(f"$ {line}\n{done.stdout}{done.stderr}[{took:.0f} s]\n")
                assert done.returncode == 0, f"guide command failed: {line}\n{done.stdout[-3000:]}{done.stderr[-3000:]}"
    return work


def test_guide_has_commands_and_files() -> None:
    steps = guide_steps()
    assert sum(lang == "bash" for lang, path, _ in steps) >= 5
    assert {path for _, path, _ in steps if path} >= {
        "mybackend/pyproject.toml",
        "mybackend/src/wna16_mybackend/__init__.py",
    }


def test_guide_backend_is_listed_and_passes(workdir: Path) -> None:
    log = (workdir / "guide.log").read_text()
    line = re.search(r"^mybackend\s+wna16-mybackend 0\.1\.0\s+yes\s+(.*)$", log, re.M)
    assert line is not None, log[-2000:]
    assert line[1].startswith("dequant-f.linear: w4 ") and " p5 " in line[1]  # label and priority as declared
    report = json.loads((workdir / "reports" / "cpu-mybackend.json").read_text())
    (backend,) = report["backends"]
    totals = backend["totals"]
    assert totals["failed"] == 0 and totals["passed"] > 0
    assert totals["refused"] > 0  # 2/3/8-bit cells are refused honestly
    assert backend["worst_ratio"] is not None and backend["worst_ratio"] <= 1


def test_guide_filter_file_shows_as_skip(workdir: Path) -> None:
    report = json.loads((workdir / "reports" / "cpu-mybackend-filtered.json").read_text())
    cells = {c["cell"]: c for c in report["backends"][0]["cells"]}
    gap = cells["w4g128asym-fp16-actorder"]
    assert gap["skipped"] > 0 and gap["filters"], gap
    # The filter came from the installed wheel (package data), not from the source tree.
    (entry,) = [f for f in report["filters"] if f["id"] in gap["filters"]]
    assert "site-packages" in entry["source"] and "wna16_mybackend" in entry["source"], entry
    python = workdir / ".venv" / "bin" / "python"
    where = subprocess.run([str(python), "-c", "import wna16_mybackend; print(wna16_mybackend.__file__)"],
                           capture_output=True, text=True, check=True, cwd=workdir).stdout  # fmt: skip
    assert "site-packages" in where, where
    matrix = (workdir / "SUPPORT_MATRIX.md").read_text()
    summary = matrix.split("## Summary")[1].split("## Qualifiers")[0]
    assert summary.count("| mybackend@cpu |") == 1


def test_example_backend_installs_from_its_wheel_and_passes(workdir: Path) -> None:
    python = workdir / ".venv" / "bin" / "python"
    dist = workdir / "dist-example"
    pip = [str(python), "-m", "pip", "-q"]
    subprocess.run(
        [*pip, "wheel", "--no-deps", "-w", str(dist), str(ROOT / "backends" / "example_compile")], check=True
    )
    (wheel,) = dist.glob("wna16_example_compile-*.whl")
    subprocess.run([*pip, "install", "--no-deps", str(wheel)], check=True)
    report_path = workdir / "reports" / "cpu-example-compile.json"
    cmd = suite_command(str(python), "example-compile", max_dim=256, report=str(report_path))
    done = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    (backend,) = json.loads(report_path.read_text())["backends"]
    assert backend["totals"]["failed"] == 0 and backend["totals"]["passed"] > 0
