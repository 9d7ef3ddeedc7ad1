"""`wna16 backends` works on a machine with no GPU and no optional packages."""

import importlib
import json
import subprocess
import sys

import pytest


def test_backends_lists_reference_as_available() -> None:
    out = subprocess.run([sys.executable, "-m", "wna16.cli", "backends"], capture_output=True, text=True, check=True)
    line = next(line for line in out.stdout.splitlines() if line.startswith("reference"))
    assert "wna16-reference" in line and " yes " in line
    # The precisions the error bound is derived from, and a legend for every abbreviation.
    assert "param fp32 accum fp32" in line
    legend = " ".join(out.stdout.split("legend:", 1)[1].split())
    for term in ("w: weight bits", "g: group sizes", "act: activation dtypes", "param:", "accum:", "p: priority",
                 "act-order:", "k-slices:", "ties go to"):  # fmt: skip
        assert term in legend, term


def test_backends_gives_each_reason_once() -> None:
    out = subprocess.run([sys.executable, "-m", "wna16.cli", "backends", "--json"], capture_output=True, text=True)
    reasons = [row["reason"] for row in json.loads(out.stdout) if not row["available"]]
    assert reasons  # this machine has no GPU: the GPU backends say why
    table = subprocess.run(
        [sys.executable, "-m", "wna16.cli", "backends"], capture_output=True, text=True, check=True
    ).stdout
    for reason in reasons:
        assert table.count(reason) == 1, reason


def test_backends_json() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "wna16.cli", "backends", "--json"], capture_output=True, text=True, check=True
    )
    rows = {row["name"]: row for row in json.loads(out.stdout)}
    ref = rows["reference"]
    assert ref["available"] is True
    assert ref["capabilities"][0]["bits"] == [2, 3, 4, 8] and ref["capabilities"][0]["act_order"] is True


def test_conform_without_wna16_conformance_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import wna16.cli

    core_only = {name: importlib.import_module(module) for name, module in wna16.cli.COMMANDS.items()}
    monkeypatch.setattr(wna16.cli, "commands", lambda: core_only)
    assert wna16.cli.main(["conform"]) == 2
    assert "wna16 conform comes with wna16-conformance, which is not installed here: pip install wna16-conformance" in (
        capsys.readouterr().err
    )
