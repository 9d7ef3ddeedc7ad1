"""The CI workflow is valid against GitHub's workflow schema, and every nox session or tag it names exists."""

import json
import shlex
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
WORKFLOW = ROOT / "ci" / "workflows" / "hardware-matrix.yml"


def test_workflow_matches_the_github_schema() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.github-workflows", str(WORKFLOW)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def nox_sessions() -> tuple[set[str], set[str]]:
    out = subprocess.run(
        [sys.executable, "-m", "nox", "-l", "--json", "-f", str(ROOT / "noxfile.py")],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    listed = json.loads(out.stdout)
    names = {s["session"] for s in listed} | {s["name"] for s in listed}
    tags = {t for s in listed for t in s.get("tags", [])}
    return names, tags


def named_in_workflow() -> list[list[str]]:
    workflow = yaml.safe_load(WORKFLOW.read_text())
    args = [shlex.split(entry["nox"]) for entry in workflow["jobs"]["conformance"]["strategy"]["matrix"]["include"]]
    for job in workflow["jobs"].values():
        for step in job.get("steps", []):
            run = step.get("run", "")
            if run.startswith("nox ") and "${{" not in run:
                args.append(shlex.split(run)[1:])
    return args


def test_every_session_and_tag_exists_in_the_noxfile() -> None:
    names, tags = nox_sessions()
    seen = named_in_workflow()
    assert seen, "the workflow runs no nox session"
    for args in seen:
        flag, value = args[0], args[1]
        assert flag in ("-s", "-t"), args
        assert value in (names if flag == "-s" else tags), f"nox {flag} {value} is not defined in noxfile.py"


def test_nightly_uses_the_thorough_profile() -> None:
    workflow = yaml.safe_load(WORKFLOW.read_text())
    assert "thorough" in workflow["env"]["WNA16_PROFILE"] and workflow[True]["schedule"]
