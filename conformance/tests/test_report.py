"""The JSON report: schema-valid, equal for -n 0 and -n 2, filters shown honestly (skips, multipliers, warnings)."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from suite_run import SuiteRun, run_suite

from wna16_conformance.report import SCHEMA_VERSION, schema

SELECTION = "w4g128asym-fp16 or w3g32sym-bf16 or w8g64asym-fp32"


def without_run(report: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(report)
    out.pop("run")
    return out


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[SuiteRun, SuiteRun]:
    """The same selection, reference plus a broken backend (so failures and repro lines are in it), -n 0 and -n 2."""
    backends = ["reference", "planted:ZeroOffByOne"]
    serial = run_suite(tmp_path_factory.mktemp("n0"), backends, "-k", SELECTION, workers=0)
    parallel = run_suite(tmp_path_factory.mktemp("n2"), backends, "-k", SELECTION, workers=2)
    return serial, parallel


def test_reports_are_schema_valid(pair: tuple[SuiteRun, SuiteRun]) -> None:
    for run in pair:
        assert run.rc == 1, run.output[-3000:]
        jsonschema.validate(run.report, schema())
        assert run.report["schema_version"] == SCHEMA_VERSION
        assert run.report["device"]["type"] == "cpu"
        ref, broken = run.backend("reference"), run.backend("zero-off-by-one")
        assert ref["distribution"] == "wna16-reference" and ref["version"]
        assert ref["totals"]["failed"] == 0 and broken["totals"]["cells_failed"] > 0


def test_serial_and_parallel_reports_are_equal(pair: tuple[SuiteRun, SuiteRun]) -> None:
    serial, parallel = pair
    assert serial.report["run"]["workers"] == 0 and parallel.report["run"]["workers"] == 2
    assert without_run(serial.report) == without_run(parallel.report)


def test_schema_rejects_a_broken_report(pair: tuple[SuiteRun, SuiteRun]) -> None:
    bad = copy.deepcopy(pair[0].report)
    bad["backends"][0]["cells"][0]["passed"] = -1
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema())
    bad = copy.deepcopy(pair[0].report)
    del bad["backends"][0]["cells"][0]["worst_ratio"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema())


FILTER = """
[[skip]]
match = "numerics[w4g128asym-fp16]"
reason = "known gap, recorded"

[[tolerance]]
match = "*[*-fp32*]"
multiplier = 2.5
reason = "fp32 runs through tf32"

[[skip]]
match = "numerics[w9g*"
reason = "a typo: matches nothing"
"""


def test_filter_skips_multipliers_and_warnings_in_report(tmp_path: Path) -> None:
    path = tmp_path / "filter.toml"
    path.write_text(FILTER)
    run = run_suite(tmp_path, ["reference"], "-k", "w4g128asym-fp16 or w8g64asym-fp32", f"--wna16-filter={path}")
    assert run.rc == 0, run.output[-3000:]
    tests = run.tests("reference")
    skipped = tests["numerics[w4g128asym-fp16]"]
    assert skipped["outcome"] == "skipped" and skipped["skipped"] == 1 and skipped["passed"] == 0
    assert skipped["filters"] == ["filter.toml:skip[0]"] and "known gap" in skipped["message"]
    widened = tests["numerics[w8g64asym-fp32]"]
    assert widened["multiplier"] == 2.5 and widened["filters"] == ["filter.toml:tolerance[0]"]
    assert tests["numerics[w4g128asym-fp16-actorder]"]["outcome"] == "passed"
    assert any("skip[1]" in w and "matches no test" in w for w in run.report["warnings"])
    assert "wna16 WARNING: filter entry filter.toml:skip[1]" in run.output
    assert {f["id"] for f in run.report["filters"]} == {
        "filter.toml:skip[0]",
        "filter.toml:skip[1]",
        "filter.toml:tolerance[0]",
    }
    assert "SKIPPED" in run.output and "known gap, recorded" in run.output


def test_filter_multiplier_above_cap_is_a_usage_error(tmp_path: Path) -> None:
    path = tmp_path / "filter.toml"
    path.write_text('[[tolerance]]\nmatch = "*"\nmultiplier = 10\nreason = "too loose"\n')
    run = run_suite(tmp_path, ["reference"], "-k", "w4g128asym-fp16", f"--wna16-filter={path}", workers=0)
    assert run.rc == 4 and "multiplier" in run.output and "[1, 4]" in run.output


def test_each_cell_draws_its_own_cases_and_drawstats_reads_them(pair: tuple[SuiteRun, SuiteRun]) -> None:
    """ci draws are seeded per test name: no two numerics cells ran the same shapes (they used to share one set)."""
    from wna16_conformance.drawstats import summary

    tests = pair[1].tests("reference")
    drawn = [v["drawn"] for t, v in tests.items() if t.startswith("numerics[")]
    assert len(drawn) >= 4 and all(d["cases"] >= 5 for d in drawn)
    assert len({json.dumps(d, sort_keys=True) for d in drawn}) == len(drawn)
    lines = summary(pair[1].report)
    assert any(line.startswith("  numerics:") for line in lines) and any("rows 0" in line for line in lines)
