"""`wna16 conform` (registered by wna16-conformance in the `wna16.commands` group): it checks its requirements
before starting, prints a broken suite run's own stderr, and finds the embedded checkpoints from any directory."""

import argparse
from pathlib import Path

import pytest

from wna16.cli import commands, main
from wna16_conformance.commands import conform
from wna16_conformance.invocation import worker_env


def test_wna16_keeps_its_subcommands_through_the_entry_point_group() -> None:
    found = commands()
    assert {"backends", "inspect", "conform", "matrix"} <= set(found)
    assert found["conform"] is conform


def test_embedded_checkpoints_do_not_depend_on_the_current_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("WNA16_CHECKPOINTS", raising=False)
    folder = conform.embedded_checkpoints()
    assert folder is not None and (folder / "tiny-llama-w4g128-auto_round" / "config.json").exists()
    monkeypatch.setenv("WNA16_CHECKPOINTS", str(tmp_path))
    assert conform.embedded_checkpoints() == tmp_path


def test_requirements_are_checked_before_any_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(conform.REQUIRED, "wna16_no_such_module", "wna16-no-such-dist")
    assert main(["conform", "--reports", str(tmp_path / "r")]) == 2
    assert "pip install wna16-no-such-dist" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()  # nothing started


def test_a_suite_that_cannot_start_prints_its_stderr(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = argparse.Namespace(device="cpu", profile="ci", max_dim=None, workers=0, reports=tmp_path)
    passed, report = conform.run_suite("no-such-backend", args)
    assert not passed and not report.exists()
    err = capsys.readouterr().err
    assert "did not complete (exit status 4, no report written)" in err
    assert "--wna16-backend=no-such-backend" in err  # pytest's own usage error, not "(no output)"


def test_each_suite_worker_gets_an_equal_share_of_the_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(8)), raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert worker_env(2) == {"OMP_NUM_THREADS": "4"}
    assert worker_env(16) == {"OMP_NUM_THREADS": "1"}
    assert worker_env(None) == {}  # without xdist torch keeps every core
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert worker_env(2) == {}  # the caller's choice stands
