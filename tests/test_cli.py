"""`wna16 backends` works on a machine with no GPU and no optional packages."""

import json
import subprocess
import sys


def test_backends_lists_reference_as_available() -> None:
    out = subprocess.run([sys.executable, "-m", "wna16.cli", "backends"], capture_output=True, text=True, check=True)
    line = next(line for line in out.stdout.splitlines() if line.startswith("reference"))
    assert "wna16-reference" in line and " yes " in line


def test_backends_json() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "wna16.cli", "backends", "--json"], capture_output=True, text=True, check=True
    )
    rows = {row["name"]: row for row in json.loads(out.stdout)}
    ref = rows["reference"]
    assert ref["available"] is True
    assert ref["capabilities"][0]["bits"] == [2, 3, 4, 8] and ref["capabilities"][0]["act_order"] is True
