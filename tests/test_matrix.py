"""`wna16 matrix`: merging reports, conflicts shown as failures naming both sources, Markdown and HTML output."""

import json
from pathlib import Path

import pytest
from matrix_reports import report

from wna16.cli import main
from wna16.matrix import ReportError, load_report, merge, render_html, render_markdown, status_of


def test_status_of_counts() -> None:
    assert status_of({"passed": 3, "failed": 1}) == "fail"
    assert status_of({"passed": 3, "skipped": 2}) == "pass"
    assert status_of({"refused": 3}) == "refused"
    assert status_of({"skipped": 1}) == "skipped"
    assert status_of({}) == "notrun"


def test_rows_columns_and_markdown() -> None:
    cpu = report("cpu", "cpu", "AMD EPYC", ["pass", "pass", "refused", "refused", "skipped"], multiplier=2.0)
    ref = report("reference", "cpu", "AMD EPYC", ["pass"] * 5)
    matrix = merge([("cpu.json", cpu), ("ref.json", ref)])
    assert sorted(matrix.rows) == ["cpu @ cpu (AMD EPYC)", "reference @ cpu (AMD EPYC)"]
    assert len(matrix.columns) == 5
    md = render_markdown(matrix)
    assert "| backend @ device | w2channelsym | w3g32asym | w4g128sym | w4g128asym |" in md
    assert "| cpu @ cpu (AMD EPYC) | S1 x2 | R1 x2 | P2 x2 | R1 x2 |" in md
    assert "| reference @ cpu (AMD EPYC) | P1 | P1 | P2 | P1 |" in md
    assert "## Failing cells\n\nNone." in md


def test_conflicting_reports_fail_naming_both_sources() -> None:
    a = report("marlin", "cuda", "H100", ["pass"] * 5)
    b = report("marlin", "cuda", "H100", ["pass", "fail", "pass", "pass", "pass"])
    matrix = merge([("runner-a.json", a), ("runner-b.json", b)])
    row = matrix.rows["marlin @ cuda (H100)"]
    failing = [m for m in row.values() if m.status == "fail"]
    assert len(failing) == 1
    assert failing[0].note == "conflict: runner-a.json: pass; runner-b.json: fail"
    assert "conflict: runner-a.json: pass; runner-b.json: fail" in render_markdown(matrix)
    assert "runner-a.json: pass; runner-b.json: fail" in render_html(matrix)


def test_html_has_one_square_per_cell_with_details() -> None:
    matrix = merge([("a.json", report("cpu", "cpu", "x", ["pass", "fail", "refused", "skipped", "pass"], ratio=0.5))])
    page = render_html(matrix)
    assert page.count('<td class="cell ') == 5
    assert 'data-status="fail"' in page and "worst error/bound: 0.5" in page


def test_bad_reports_are_named(tmp_path: Path) -> None:
    bad = tmp_path / "x.json"
    bad.write_text("{}")
    with pytest.raises(ReportError, match=r"x\.json: 'schema' is not"):
        load_report(bad)
    bad.write_text(json.dumps({**report("a", "cpu", "x", ["pass"] * 5), "schema_version": 9}))
    with pytest.raises(ReportError, match="schema_version 9"):
        load_report(bad)


def test_cli_writes_both_files_and_fails_on_failures(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good, bad = tmp_path / "good.json", tmp_path / "bad.json"
    good.write_text(json.dumps(report("cpu", "cpu", "x", ["pass"] * 5)))
    bad.write_text(json.dumps(report("rocm", "cuda", "MI300", ["pass", "fail", "pass", "pass", "pass"])))
    md, page = tmp_path / "SUPPORT_MATRIX.md", tmp_path / "m.html"
    assert main(["matrix", str(good), "--markdown", str(md), "--html", str(page)]) == 0
    assert md.exists() and page.exists()
    assert main(["matrix", str(good), str(bad), "--markdown", str(md), "--html", str(page)]) == 1
    assert "1 failing cell(s)" in capsys.readouterr().out


def test_unavailable_backend_cells_are_not_run_never_passed() -> None:
    """A backend unavailable on its device (marlin without vLLM): cells whose cases were not computed show as not
    run, honest refusals stay refused, a failed refusal still fails; the Sources name the reason."""
    gpu = report("marlin", "cuda", "H200", ["skipped", "refused", "fail", "skipped", "refused"])
    gpu["backends"][0].update(available=False, unavailable_reason="vLLM is not installed")
    gpu["backends"][0]["cells"][3]["refused"] = 2  # a cell with some draws refused, its claimed cases not run
    assert status_of({"refused": 2, "skipped": 3}, available=False) == "notrun"
    assert status_of({"refused": 2}, available=False) == "refused"
    assert status_of({}, available=False) == "notrun"
    matrix = merge([("gpu.json", gpu)])
    row = matrix.rows["marlin @ cuda (H200)"]
    assert sorted(m.status for m in row.values()) == ["fail", "notrun", "notrun", "refused", "refused"]
    md = render_markdown(matrix)
    assert "unavailable: vLLM is not installed" in md and "backend was unavailable on that device" in md
    assert "P" not in md.split("| marlin @ cuda (H200) |")[1].splitlines()[0]
    # a later report from a machine where it ran fills the not-run cells without a conflict
    ran = report("marlin", "cuda", "H200", ["pass", "refused", "fail", "pass", "refused"])
    merged = merge([("gpu.json", gpu), ("vllm.json", ran)]).rows["marlin @ cuda (H200)"]
    assert sorted(m.status for m in merged.values()) == ["fail", "pass", "pass", "refused", "refused"]
