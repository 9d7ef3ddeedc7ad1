"""The writer and the reader agree: a report written by a real suite run (a correct and a planted broken backend)
is read back by the matrix, schema-validated, with the writer's cell ids, and the broken cell fails with its repro."""

from pathlib import Path

from suite_run import run_suite

from wna16_conformance.cells import Cell
from wna16_conformance.matrix import FAILED, PASSED, build


def test_a_suite_report_reads_back_into_the_matrix(tmp_path: Path) -> None:
    run = run_suite(tmp_path, ["reference", "planted:ZeroOffByOne"], "-k", "numerics and w4g128asym-fp32", workers=0)
    assert run.rc == 1, run.output[-3000:]
    report = tmp_path / "report-0.json"
    assert report.exists()
    matrix = build([report], tmp_path / "SUPPORT_MATRIX.md", tmp_path / "m.html")
    rows = {r.label: r for r in matrix.ordered()}
    assert set(rows) == {"reference@cpu", "zero-off-by-one@cpu"}
    cell = Cell(4, 128, False, "fp32", False)
    assert rows["reference@cpu"].cell(cell).status == PASSED
    broken = rows["zero-off-by-one@cpu"].cell(cell)
    assert broken.status == FAILED
    ((test, message, repro),) = [f for s in broken.seen for f in s.failures]
    assert test == f"numerics[{cell.id}]" and message and "--wna16-case=" in repro
    md = (tmp_path / "SUPPORT_MATRIX.md").read_text()
    assert f"zero-off-by-one@cpu {cell.id}" in md and "--wna16-case=" in md
