"""`.ci/run`, the CI entry point, against a stand-in nox: it names the machine first, runs every CPU session, and
ends with why each failed session failed, so that a CI service that keeps only the last lines still shows them."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

FAKE_NOX = """#!{python}
import json, sys
args = sys.argv[1:]
if args[:1] == ["-l"]:
    sessions = [{{"session": "good"}}, {{"session": "bad(backend='x')"}}, {{"session": "skip", "selected": False}}]
    print(json.dumps(sessions))
elif args == ["-s", "environments"]:
    print("nox > Session environments was successful in 3 seconds.")
elif args == ["-s", "good"]:
    print("1 passed in 0.1s")
else:
    print("." * 70 + "F")
    print("E       assert 0.5 <= 0.25")
    print("FAILED tests/test_x.py::test_y[w4g32] - assert 0.5 <= 0.25")
    print("nox > Session bad(backend='x') failed.")
    sys.exit(1)
"""

FAKE_PYTHON3 = """#!/bin/sh
# `python3 -m venv .venv-ci` makes the stand-in nox (and a pip that installs nothing); anything else is Python.
if [ "$1 $2" = "-m venv" ]; then
  mkdir -p "$3/bin" && cp "{nox}" "$3/bin/nox" && printf '#!/bin/sh\\n' > "$3/bin/pip" && chmod +x "$3/bin/pip"
  exit 0
fi
exec {python} "$@"
"""


def test_ci_run_repeats_why_a_session_failed_after_the_table(tmp_path: Path) -> None:
    repo, stubs = tmp_path / "repo", tmp_path / "stubs"
    (repo / ".ci").mkdir(parents=True)
    stubs.mkdir()
    shutil.copy(ROOT / ".ci" / "run", repo / ".ci" / "run")
    nox = stubs / "nox"
    nox.write_text(FAKE_NOX.format(python=sys.executable))
    (stubs / "python3").write_text(FAKE_PYTHON3.format(nox=nox, python=sys.executable))
    for stub in (nox, stubs / "python3"):
        stub.chmod(0o755)
    env = {**os.environ, "PATH": f"{stubs}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run(["bash", ".ci/run"], cwd=repo, capture_output=True, text=True, env=env, timeout=60)

    assert done.returncode == 1, done.stdout + done.stderr
    out = done.stdout
    assert out.startswith("machine: ") and "cores" in out.splitlines()[0]
    table = out.index("wall time per session")
    why = out.index("why bad(backend='x') failed (whole output in .ci-logs/bad_backend=_x__.log):")
    assert table < why, "the failures come after the table, at the very end"
    tail = out[why:].splitlines()
    assert tail[1:] == [  # the test's name first: a long assertion message cannot push it out
        "FAILED tests/test_x.py::test_y[w4g32] - assert 0.5 <= 0.25",
        "E       assert 0.5 <= 0.25",
        "nox > Session bad(backend='x') failed.",
    ]
    assert "why good failed" not in out and "skip" not in out[table:]
    assert (repo / ".ci-logs" / "good.log").read_text() == "1 passed in 0.1s\n"
    assert out.count("FAILED (rc 1)") == 1
