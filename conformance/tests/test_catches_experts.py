"""Proof that the experts check can fail: each planted experts bug is caught; correct fused and generic paths pass."""

from __future__ import annotations

from pathlib import Path

import pytest
from planted_experts import BROKEN_EXPERTS
from suite_run import SuiteRun, run_suite

SELECTION = "test_experts and (w4g64asym-fp16 or w8g64asym-bf16)"

EXPECTED: dict[str, str] = {
    # backend class: a variant whose test must fail
    "WrongExpertPicked": "empty-experts",
    "RoutingWeightDropped": "random-routing",
    "ExpertScalesReused": "one-expert",
}


@pytest.fixture(scope="module")
def broken_run(tmp_path_factory: pytest.TempPathFactory) -> SuiteRun:
    tmp = tmp_path_factory.mktemp("broken-experts")
    return run_suite(tmp, [f"planted_experts:{name}" for name in BROKEN_EXPERTS], "-k", SELECTION)


def test_every_planted_experts_bug_is_listed() -> None:
    assert set(EXPECTED) == set(BROKEN_EXPERTS)


@pytest.mark.parametrize("cls", sorted(EXPECTED))
def test_broken_experts_backend_is_caught(broken_run: SuiteRun, cls: str) -> None:
    assert broken_run.rc == 1, broken_run.output[-3000:]
    name = BROKEN_EXPERTS[cls]().name
    failing = {t: v for t, v in broken_run.tests(name).items() if v["outcome"] == "failed"}
    assert any(t.startswith(f"experts[{EXPECTED[cls]}-") for t in failing), sorted(failing)
    assert all(v["repro"] and "--wna16-case=" in v["repro"] for v in failing.values())
    ratios = [v["worst_ratio"] for v in failing.values()]
    assert all(r == "inf" or r > 2 for r in ratios), ratios


def test_correct_experts_paths_pass(tmp_path: Path) -> None:
    """The reference (generic per-expert path, mixed schemes served) and a correct fused backend (mixed schemes
    refused with reasons) pass every experts variant."""
    run = run_suite(tmp_path, ["reference", "planted_experts:FusedExperts"], "-k", SELECTION)
    assert run.rc == 0, run.output[-3000:]
    reference, fused = run.tests("reference"), run.tests("fused-experts")
    assert len(reference) == len(fused) == 10
    assert all(v["outcome"] == "passed" for v in reference.values()), reference
    mixed = {t: v for t, v in fused.items() if "mixed-schemes" in t}
    assert mixed and all(v["refused"] > 0 and v["failed"] == 0 for v in mixed.values()), mixed
    others = {t: v for t, v in fused.items() if "mixed-schemes" not in t}
    assert all(v["outcome"] == "passed" and v["passed"] > 0 for v in others.values()), others
    for b in ("reference", "fused-experts"):
        assert 0 < run.backend(b)["worst_ratio"] <= 1
