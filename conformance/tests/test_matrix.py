"""`wna16 matrix`: the reader validates reports against the schema, uses the writer's cell ids and outcome names,
merges filtered and unfiltered reports without inventing conflicts, fails real disagreements naming both reports,
and renders the first view (summary, failing cells with repro, qualifiers) plus the 216-cell drill-down."""

import json
import re
from pathlib import Path

import pytest
from matrix_reports import filter_entry, four_bit_only, record_of, report, showcase, simple

from wna16.cli import main
from wna16_conformance.cells import Cell, all_cells
from wna16_conformance.matrix import (
    FAILED,
    PASSED,
    REFUSED,
    SKIPPED,
    ReportError,
    columns,
    load_report,
    merge,
    render_html,
    render_markdown,
    status_of,
    summary,
)

TARGET = Cell(4, 128, False, "bf16", False)


def test_status_of_counts_uses_the_writers_outcome_names() -> None:
    assert status_of({"passed": 3, "failed": 1}) == FAILED == "failed"
    assert status_of({"passed": 3, "skipped": 2}) == PASSED
    assert status_of({"refused": 3}) == REFUSED
    assert status_of({"skipped": 1}) == SKIPPED
    assert status_of({}) == "notrun"


def test_summary_counts_sub_cells_with_glyphs_and_row_totals() -> None:
    matrix = merge([("cpu.json", report("cpu", "cpu", "EPYC", simple(four_bit_only)))])
    (row,) = matrix.ordered()
    assert row.label == "cpu@cpu"
    assert summary(row, 4, 128) == (PASSED, "✓12", "")  # sym/asym x 3 dtypes x act order
    assert summary(row, 4, -1) == (PASSED, "✓6", "")  # no act order with one group
    assert summary(row, 2, 32) == (REFUSED, "⊘12", "")
    assert row.totals()[PASSED] == 54 and row.totals()[REFUSED] == 162
    assert len(columns()) == 20 and len(all_cells()) == 216
    md = render_markdown(matrix)
    assert "| cpu@cpu | ⊘6 | ⊘12 |" in md and "| ✓54 ⊘162 |" in md
    assert "## Failing cells\n\nNone." in md


def test_a_skip_by_a_filter_does_not_disagree_with_a_pass() -> None:
    filtered = report("ipex", "xpu", "Max", simple(lambda c: "skipped" if c.act_order else "passed"))
    full = report("ipex", "xpu", "Max", simple(lambda c: "passed"))
    matrix = merge([("filtered.json", filtered), ("full.json", full)])
    (row,) = matrix.ordered()
    assert not matrix.failing()
    cell = row.cell(Cell(4, 128, True, "fp16", True))
    assert cell.status == PASSED and cell.sources == ["filtered.json", "full.json"]
    assert cell.skips == [("filtered.json", "numerics[w4g128sym-fp16-actorder]", "(no reason recorded)")]
    assert summary(row, 4, 128)[2] == "6 skip"  # the skips stay visible as a qualifier
    # Skipped by every report: skipped, never passed.
    only = merge([("filtered.json", filtered)])
    assert only.ordered()[0].cell(Cell(4, 128, True, "fp16", True)).status == SKIPPED


def test_reports_that_really_disagree_fail_naming_both() -> None:
    a = report("marlin", "cuda", "H100", simple(four_bit_only))
    b = report("marlin", "cuda", "H100", simple(lambda c: "failed" if c == TARGET else four_bit_only(c),
                                                message="error/bound 3.2 > 1", repro="python -m pytest x"))  # fmt: skip
    matrix = merge([("runner-a.json", a), ("runner-b.json", b)])
    ((_, cell, merged),) = matrix.failing()
    assert cell == TARGET and merged.note == "reports disagree: runner-a.json says passed; runner-b.json says failed"
    md = render_markdown(matrix)
    assert "**marlin@cuda w4g128asym-bf16**: reports disagree: runner-a.json says passed; runner-b.json" in md
    assert "repro: `python -m pytest x`" in md
    # A pass against a refusal is a disagreement as well (one machine computes what the other refuses).
    c = report("marlin", "cuda", "H100", simple(lambda c: "refused" if c == TARGET else four_bit_only(c)))
    assert [c_.id for _, c_, _ in merge([("a.json", a), ("c.json", c)]).failing()] == [TARGET.id]


def test_qualifiers_are_text_not_hover() -> None:
    mult = filter_entry("f1", "tolerance", "numerics[w2*]", "2-bit codes amplify fp16 rounding", 2.0)
    rocm = report("rocm", "cpu", "EPYC", simple(lambda c: "passed", multiplier=2.0, filters=["f1"]), max_dim=512,
                  filters=[mult])  # fmt: skip
    page = render_html(merge([("rocm.json", rocm)]))
    text = re.sub(r"<[^>]+>", " ", page.split("<script>")[0])
    assert "title=" not in page  # nothing is only on hover
    assert "x2: 2-bit codes amplify fp16 rounding" in text
    assert "max_dim 512" in text and "profile ci" in text and "from rocm.json" in text
    assert page.count('<td class="det passed"') == 216  # every cell in the drill-down
    assert page.count('<td class="det notrun">n/a') == 24  # act order with one group cannot exist: marked n/a


def test_every_summary_and_detail_cell_carries_a_glyph() -> None:
    matrix = merge(showcase())
    page = render_html(matrix)
    sums = re.findall(r'<td class="sum (\w+)"[^>]*><a [^>]*>([^<]*)<small>', page)
    assert len(sums) == len(matrix.rows) * 20
    assert all(text.strip() and text.strip()[0] in "✓✗⊘↷○" for _, text in sums)
    dets = re.findall(r'<td class="det (\w+)"[^>]*>([^<]*)', page)
    assert all(text[0] in "✓✗⊘↷○n" for _, text in dets)


def test_reader_validates_against_the_schema(tmp_path: Path) -> None:
    bad = tmp_path / "x.json"
    bad.write_text("{}")
    with pytest.raises(ReportError, match=r"x\.json: 'schema' is not"):
        load_report(bad)
    good = report("a", "cpu", "x", simple(four_bit_only))
    bad.write_text(json.dumps({**good, "schema_version": 9}))
    with pytest.raises(ReportError, match="schema_version 9"):
        load_report(bad)
    broken = json.loads(json.dumps(good))
    broken["backends"][0]["cells"][0]["dtype"] = "fp8"
    bad.write_text(json.dumps(broken))
    with pytest.raises(ReportError, match=r"x\.json: backends/0/cells/0/dtype: 'fp8' is not one of"):
        load_report(bad)
    renamed = json.loads(json.dumps(good))
    renamed["backends"][0]["cells"][0]["cell"] = "w2g32sym-fp16"
    bad.write_text(json.dumps(renamed))
    with pytest.raises(ReportError, match="cell 'w2g32sym-fp16' has the fields of 'w2channelsym-fp16'"):
        merge([("x.json", load_report(bad))])


def test_cli_writes_both_files_and_fails_on_failures(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good, bad = tmp_path / "good.json", tmp_path / "bad.json"
    good.write_text(json.dumps(report("cpu", "cpu", "x", simple(four_bit_only))))
    failing = simple(lambda c: "failed" if c == TARGET else "passed")
    bad.write_text(json.dumps(report("rocm", "cuda", "MI300", failing)))
    md, page = tmp_path / "SUPPORT_MATRIX.md", tmp_path / "m.html"
    assert main(["matrix", str(good), "--markdown", str(md), "--html", str(page)]) == 0
    assert md.exists() and page.exists()
    assert main(["matrix", str(good), str(bad), "--markdown", str(md), "--html", str(page)]) == 1
    assert "1 failing cell(s)" in capsys.readouterr().out
    (tmp_path / "junk.json").write_text("[]")
    assert main(["matrix", str(tmp_path / "junk.json"), "--markdown", str(md), "--html", str(page)]) == 2
    assert "junk.json: 'schema' is not" in capsys.readouterr().err


def test_failing_cells_come_first_with_reason_and_repro() -> None:
    matrix = merge(showcase())
    rows = [r.label for r in matrix.ordered()]
    assert rows[0] == "marlin@cuda"  # the row with a failing cell leads
    page = render_html(matrix)
    assert page.index('id="failing"') < page.index('id="summary"') < page.index('id="detail"')
    failing = page[page.index('id="failing"') : page.index('id="summary"')]
    assert "marlin@cuda w4g128asym-bf16" in failing and "--wna16-case=k256n128m3b0s17" in failing
    assert record_of(TARGET, "passed")["test"] == "numerics[w4g128asym-bf16]"


def test_unavailable_backend_cells_are_not_run_never_passed() -> None:
    """A backend unavailable on its device (marlin without vLLM): cells whose cases were not computed show as not
    run, honest refusals stay refused, a failed refusal still fails; the row names the reason."""

    def outcome(c: Cell) -> str:
        return "failed" if c == TARGET else "refused" if c.bits != 4 else "skipped"

    gpu = report("marlin", "cuda", "H200", simple(outcome))
    gpu["backends"][0].update(available=False, unavailable_reason="vLLM is not installed")
    assert status_of({"refused": 2, "skipped": 3}, available=False) == "notrun"
    assert status_of({"refused": 2}, available=False) == REFUSED
    assert status_of({}, available=False) == "notrun"
    (row,) = merge([("gpu.json", gpu)]).ordered()
    totals = row.totals()
    assert (totals[FAILED], totals[REFUSED], totals["notrun"], totals[PASSED]) == (1, 162, 53, 0)
    md = render_markdown(merge([("gpu.json", gpu)]))
    assert "unavailable in gpu.json: vLLM is not installed" in md
    # A later report from a machine where it ran fills the not-run cells without a conflict.
    ran = report("marlin", "cuda", "H200", simple(lambda c: "failed" if c == TARGET else four_bit_only(c)))
    (merged,) = merge([("gpu.json", gpu), ("vllm.json", ran)]).ordered()
    assert (merged.totals()[PASSED], merged.totals()["notrun"]) == (53, 0)
