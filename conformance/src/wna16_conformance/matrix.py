"""The support matrix: conformance reports from many machines merged into one page of what works where.

The reader of the reports this distribution writes (:mod:`wna16_conformance.report`): every file is validated
against ``report.schema.json``, its outcome names and cell ids are the writer's (:data:`report.OUTCOMES`,
:class:`wna16_conformance.cells.Cell`), so a report the writer changes cannot be misread here.

Output: ``SUPPORT_MATRIX.md`` and a self-contained HTML page. Both open with the same first view: rows
``backend@device``, one column per bits x group size, each summary cell counting its sym/asym x dtype x act-order
sub-cells by outcome with a glyph (never colour alone), per-row totals, and the failing cells first with their reason
and repro. The page then drills down to every one of the 216 cells of each row.

Merging: a cell that one report skipped (a filter file, ``--wna16-max-dim``) and another ran takes the outcome of the
run, with the skip kept as a qualifier: a skip says nothing about the backend. Two reports that computed different
outcomes for one cell make it fail, naming both reports: a matrix must never show the more pleasant of two answers.
"""

from __future__ import annotations

import html
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wna16.checkpoint.files import read_json
from wna16.errors import Wna16Error
from wna16_conformance.cells import BITS, DTYPES, GROUP_SIZES, Cell, all_cells
from wna16_conformance.report import ENV_UNVALIDATED, OUTCOMES, SCHEMA_ID, SCHEMA_VERSION, schema, worst

PASSED, FAILED, REFUSED, SKIPPED = OUTCOMES
NOTRUN = "notrun"
STATUSES = (FAILED, PASSED, REFUSED, SKIPPED, NOTRUN)
"""A merged cell's status: the report's outcome names, plus ``notrun`` (no report covered the cell)."""

GLYPHS = {FAILED: "✗", PASSED: "✓", REFUSED: "⊘", SKIPPED: "↷", NOTRUN: "○"}
MEANING = {
    FAILED: "failed (or two reports disagree)",
    PASSED: "passed",
    REFUSED: "refused: the backend declares the cell unsupported and refuses it with a reason",
    SKIPPED: "skipped: a filter file or --wna16-max-dim left every test of the cell out",
    NOTRUN: "not run: no report covers the cell, or the backend was unavailable on that device",
}
COLOURS = {FAILED: "#f8c9c4", PASSED: "#cfe8cf", REFUSED: "#e4e4e4", SKIPPED: "#fbe9b7", NOTRUN: "#ffffff"}
"""Background colours: a second signal only; every cell also carries its glyph and counts as text."""


class ReportError(Wna16Error, ValueError):
    """A file given to the matrix is not a conformance report this version understands."""


@dataclass(frozen=True)
class Seen:
    """One cell as one report saw it: its outcome and the qualifiers a reader must see."""

    source: str
    status: str
    worst_ratio: float | str | None
    multipliers: tuple[tuple[float, str], ...] = ()
    """(multiplier, reason) of each tolerance entry that applied to a test of the cell."""
    skips: tuple[tuple[str, str], ...] = ()
    """(test, reason) of each test skipped inside the cell."""
    failures: tuple[tuple[str, str, str], ...] = ()
    """(test, message, repro) of each failing test."""


@dataclass
class Merged:
    """One cell of one row after merging every report that covers it."""

    seen: list[Seen] = field(default_factory=list)
    status: str = NOTRUN
    note: str = ""

    @property
    def sources(self) -> list[str]:
        """The reports this cell comes from."""
        return [s.source for s in self.seen]

    @property
    def worst_ratio(self) -> float | str | None:
        """The worst error-to-bound ratio any report measured."""
        return worst([s.worst_ratio for s in self.seen])

    @property
    def multipliers(self) -> list[tuple[float, str]]:
        """Tolerance multipliers (with their reasons) applied in any report."""
        return sorted({m for s in self.seen for m in s.multipliers}, reverse=True)

    @property
    def skips(self) -> list[tuple[str, str, str]]:
        """(report, test, reason) of every test skipped inside the cell."""
        return [(s.source, t, r) for s in self.seen for t, r in s.skips]

    def add(self, new: Seen) -> None:
        """Merge one report's view: a skip never disagrees; different computed outcomes fail, naming both reports."""
        self.seen.append(new)
        decided = [s for s in self.seen if s.status not in (SKIPPED, NOTRUN)]
        statuses = {s.status for s in decided}
        if not decided:
            self.status = SKIPPED if any(s.status == SKIPPED for s in self.seen) else NOTRUN
        elif len(statuses) == 1:
            self.status = decided[0].status
        else:
            self.status = FAILED
            self.note = "reports disagree: " + "; ".join(f"{s.source} says {s.status}" for s in decided)


@dataclass
class Row:
    """One ``backend@device`` row: its cells and the reports (with profile and max_dim) it was merged from."""

    backend: str
    device: str
    device_name: str
    cells: dict[Cell, Merged] = field(default_factory=dict)
    sources: list[dict[str, Any]] = field(default_factory=list)

    @property
    def label(self) -> str:
        """``backend@device``: the row's name on every rendering."""
        return f"{self.backend}@{self.device}"

    def cell(self, cell: Cell) -> Merged:
        """The merged cell (``notrun`` when no report covered it)."""
        return self.cells.get(cell, Merged())

    def totals(self) -> dict[str, int]:
        """Cells per status over the whole row."""
        return _count(self.cell(c).status for c in all_cells())


@dataclass
class Matrix:
    """Merged rows by key (backend, device type, device name), in a stable order."""

    rows: dict[tuple[str, str, str], Row] = field(default_factory=dict)

    def ordered(self) -> list[Row]:
        """Rows with failing cells first, then by backend and device."""
        return sorted(self.rows.values(), key=lambda r: (not r.totals()[FAILED], r.label, r.device_name))

    def failing(self) -> list[tuple[Row, Cell, Merged]]:
        """Every failing cell, in row then matrix order."""
        return [(r, c, r.cell(c)) for r in self.ordered() for c in all_cells() if r.cell(c).status == FAILED]


def columns() -> list[tuple[int, int]]:
    """The summary's columns: (bits, group size), in matrix order."""
    return [(b, g) for b in BITS for g in GROUP_SIZES]


def column_name(bits: int, group: int) -> str:
    """``w4 g128`` / ``w4 channel``."""
    return f"w{bits} " + ("channel" if group == -1 else f"g{group}")


def sub_cells(bits: int, group: int) -> list[Cell]:
    """The cells a summary column counts: sym/asym x dtype x act order."""
    return [c for c in all_cells() if (c.bits, c.group_size) == (bits, group)]


def _count(statuses: Iterable[str]) -> dict[str, int]:
    listed = list(statuses)
    return {s: listed.count(s) for s in STATUSES}


def status_of(counts: Mapping[str, int], available: bool = True) -> str:
    """A cell's status from one report's counts: any failure fails it; else a pass; else refused; else skipped.

    For a backend the report calls unavailable on its device the suite still checks refusals but computes nothing:
    a cell with any case not computed (skipped) is ``notrun`` there, never ``refused`` or ``skipped`` (a filter's
    word); only a cell whose every case was refused honestly keeps ``refused``."""
    if counts.get(FAILED, 0):
        return FAILED
    if not available and (counts.get(SKIPPED, 0) or not counts.get(REFUSED, 0)):
        return NOTRUN
    for outcome in (PASSED, REFUSED, SKIPPED):
        if counts.get(outcome, 0):
            return outcome
    return NOTRUN


def load_report(path: Path) -> dict[str, Any]:
    """Read one report, validated against ``report.schema.json``; :class:`ReportError` naming the file and the
    offending field otherwise."""
    try:
        import jsonschema  # type: ignore[import-untyped]
    except ModuleNotFoundError:  # an offline GPU machine (see report.ENV_UNVALIDATED): validated elsewhere, later
        if os.environ.get(ENV_UNVALIDATED) != "1":
            raise
        jsonschema = None
    data = read_json(path, ReportError)  # a regular file, bounded; any JSON failure (deep nesting too) named
    if not isinstance(data, dict) or data.get("schema") != SCHEMA_ID:
        raise ReportError(f"{path}: 'schema' is not {SCHEMA_ID!r}")
    if data.get("schema_version") != SCHEMA_VERSION:
        raise ReportError(f"{path}: schema_version {data.get('schema_version')!r}, expected {SCHEMA_VERSION}")
    if jsonschema is None:
        return data
    try:
        jsonschema.validate(data, schema())
    except jsonschema.ValidationError as exc:
        where = "/".join(str(p) for p in exc.absolute_path) or "(top level)"
        raise ReportError(f"{path}: {where}: {exc.message} (report.schema.json)") from exc
    return data


def _cell_of(source: str, data: Mapping[str, Any]) -> Cell:
    cell = Cell(data["bits"], data["group_size"], data["sym"], data["dtype"], data["act_order"])
    if cell.id != data["cell"]:
        raise ReportError(f"{source}: cell {data['cell']!r} has the fields of {cell.id!r}")
    return cell


def _seen(source: str, data: Mapping[str, Any], reasons: Mapping[str, str], available: bool) -> Seen:
    multipliers, skips, failures = set(), [], []
    for t in data["tests"]:
        if t["multiplier"] > 1:
            why = "; ".join(reasons.get(f, f) for f in t["filters"]) or "(no reason recorded)"
            multipliers.add((float(t["multiplier"]), why))
        if t[SKIPPED]:
            why = t["message"] or "; ".join(reasons.get(f, f) for f in t["filters"]) or "(no reason recorded)"
            skips.append((t["test"], why))
        if t[FAILED]:
            failures.append((t["test"], t["message"], t["repro"] or ""))
    return Seen(
        source,
        status_of(data, available),
        data["worst_ratio"],
        tuple(sorted(multipliers)),
        tuple(skips),
        tuple(failures),
    )


def merge(reports: Iterable[tuple[str, Mapping[str, Any]]]) -> Matrix:
    """Merge ``(source name, report)`` pairs into rows ``backend@device``."""
    matrix = Matrix()
    for source, report in reports:
        device = report["device"]
        reasons = {f["id"]: f["reason"] for f in report["filters"]}
        for backend in report["backends"]:
            key = (backend["name"], device["type"], device["name"])
            row = matrix.rows.setdefault(key, Row(backend["name"], device["type"], device["name"]))
            row.sources.append(_provenance(source, report, backend))
            for data in backend["cells"]:
                cell = _cell_of(source, data)
                row.cells.setdefault(cell, Merged()).add(_seen(source, data, reasons, backend["available"]))
    return matrix


def _provenance(source: str, report: Mapping[str, Any], backend: Mapping[str, Any]) -> dict[str, Any]:
    env = report["environment"]
    return {
        "source": source,
        "backend": f"{backend['name']} ({backend['distribution']} {backend['version']})",
        "available": backend["available"],
        "unavailable_reason": backend["unavailable_reason"],
        "device": report["device"],
        "profile": report["profile"],
        "max_dim": report["max_dim"],
        "date": report["run"]["date"],
        "torch": env["torch"],
        "python": env["python"],
        "totals": backend["totals"],
    }


def ratio_text(ratio: float | str | None) -> str:
    """A worst ratio as printed: ``-`` when nothing computed."""
    return "-" if ratio is None else str(ratio) if isinstance(ratio, str) else f"{ratio:.3g}"


def counts_text(counts: Mapping[str, int]) -> str:
    """``✓10 ⊘2``: each status present, glyph then count, worst first."""
    return " ".join(f"{GLYPHS[s]}{n}" for s, n in counts.items() if n)


def summary(row: Row, bits: int, group: int) -> tuple[str, str, str]:
    """(dominant status, counts text, qualifiers text) of one summary cell."""
    merged = [row.cell(c) for c in sub_cells(bits, group)]
    counts = _count(m.status for m in merged)
    dominant = next(s for s in STATUSES if counts[s])
    return dominant, counts_text(counts), qualifiers(merged, len(row.sources))


def qualifiers(merged: Sequence[Merged], row_reports: int = 1) -> str:
    """The qualifiers of a group of merged cells as short text: tests skipped inside cells that otherwise ran
    (``3 skip``), the largest tolerance multiplier (``x2``), and ``1/2 rep`` when some cells come from fewer of the
    row's ``row_reports`` reports than the others (which ones: the drill-down)."""
    inner = sum(len(m.skips) for m in merged if m.status != SKIPPED)
    mult = max((x for m in merged for x, _ in m.multipliers), default=1.0)
    fewest = min((len(set(m.sources)) for m in merged), default=0)
    parts = [
        f"{inner} skip" if inner else "",
        f"x{mult:g}" if mult > 1 else "",
        f"{fewest}/{row_reports} rep" if row_reports > 1 and fewest < row_reports else "",
    ]
    return " ".join(p for p in parts if p)


def _row_context(row: Row) -> str:
    profiles = sorted({str(s["profile"]) for s in row.sources})
    dims = sorted({"max_dim " + (str(s["max_dim"]) if s["max_dim"] else "none") for s in row.sources})
    down = [
        f"unavailable in {s['source']}: {s['unavailable_reason'] or '?'}" for s in row.sources if not s["available"]
    ]
    text = f"{row.device_name} · profile {'/'.join(profiles)} · {'/'.join(dims)} · {len(row.sources)} report(s)"
    return " · ".join([text, *down])


def _failure_lines(matrix: Matrix) -> list[tuple[str, str, str]]:
    """(where, reason, repro) of each failing cell."""
    out = []
    for row, cell, m in matrix.failing():
        where = f"{row.label} {cell.id}"
        fails = [f for s in m.seen for f in s.failures]
        reason = m.note or (f"{fails[0][0]}: {fails[0][1]}" if fails else "failed")
        if m.note and fails:
            reason += f" — {fails[0][0]}: {fails[0][1]}"
        out.append((where, reason, fails[0][2] if fails else ""))
    return out


def _multiplier_lines(matrix: Matrix) -> list[str]:
    seen: dict[tuple[str, float, str], list[str]] = {}
    for row in matrix.ordered():
        for cell, m in row.cells.items():
            for x, why in m.multipliers:
                seen.setdefault((row.label, x, why), []).append(cell.id)
    return [f"{label}: x{x:g} on {len(ids)} cell(s) ({', '.join(ids[:4])}{', …' if len(ids) > 4 else ''}): {why}"
            for (label, x, why), ids in seen.items()]  # fmt: skip


def _skip_lines(matrix: Matrix) -> list[str]:
    seen: dict[tuple[str, str], int] = {}
    for row in matrix.ordered():
        for m in row.cells.values():
            for source, _, why in m.skips:
                seen[(f"{row.label} ({source})", why)] = seen.get((f"{row.label} ({source})", why), 0) + 1
    return [f"{where}: {n} test(s) skipped: {why}" for (where, why), n in seen.items()]


LEGEND_MD = " · ".join(f"{GLYPHS[s]} {MEANING[s].split(':')[0]}" for s in STATUSES)


def render_markdown(matrix: Matrix) -> str:
    """``SUPPORT_MATRIX.md``: the first view (summary, failing cells, qualifiers) and the sources."""
    cols = columns()
    lines = [
        "# wna16 support matrix",
        "",
        "Generated by `wna16 matrix` from conformance reports; do not edit by hand. A column is bits x group size; a",
        "cell counts its sym/asym x dtype (fp16/bf16/fp32) x act-order cells by outcome: " + LEGEND_MD + ". After",
        "the counts: `N skip` tests skipped inside cells that ran, `xM` a tolerance multiplier, `1/2 rep` cells",
        "covered by fewer of the row's reports than others.",
        "",
        "## Failing cells",
        "",
    ]
    failures = _failure_lines(matrix)
    lines += [f"- ✗ **{w}**: {r}" + (f"  \n  repro: `{p}`" if p else "") for w, r, p in failures] or ["None."]
    lines += ["", "## Summary", ""]
    lines.append("| backend@device | " + " | ".join(column_name(b, g) for b, g in cols) + " | total |")
    lines.append("| --- |" + " --- |" * (len(cols) + 1))
    for row in matrix.ordered():
        texts = []
        for b, g in cols:
            _, counts, quals = summary(row, b, g)
            texts.append(counts + (f" ({quals})" if quals else ""))
        lines.append(f"| {row.label} | " + " | ".join(texts) + f" | {counts_text(row.totals())} |")
    lines += ["", "## Qualifiers", ""]
    lines += [f"- {row.label}: {_row_context(row)}" for row in matrix.ordered()]
    lines += [f"- tolerance {line}" for line in _multiplier_lines(matrix)]
    lines += [f"- {line}" for line in _skip_lines(matrix)]
    lines += [
        "",
        "## Sources",
        "",
        "| report | backend | device | profile | max_dim | torch | date | cells failed |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in matrix.ordered():
        for p in row.sources:
            lines.append(
                f"| {p['source']} | {p['backend']} | {row.label} ({p['device']['name']}) | {p['profile']} | "
                f"{p['max_dim'] or 'none'} | {p['torch']} | {p['date']} | {p['totals']['cells_failed']} |"
            )
    return "\n".join(lines) + "\n"


_CSS = """
body { font-family: "DejaVu Sans", sans-serif; margin: 12px 16px; font-size: 13px; }
h1 { font-size: 20px; margin: 0 0 4px 0; } h2 { font-size: 16px; margin: 14px 0 4px 0; }
p.legend { margin: 2px 0 8px 0; }
#failing { max-height: 170px; overflow: auto; border: 1px solid #c62828; padding: 4px 8px; margin-bottom: 8px; }
#failing li { margin: 2px 0; } code { font-size: 11px; word-break: break-all; }
.scroll { overflow: auto; max-height: 680px; }
table.grid { border-collapse: separate; border-spacing: 0; }
table.grid th, table.grid td { border: 1px solid #ccc; padding: 2px 3px; text-align: center; }
table.grid thead th { position: sticky; top: 0; background: #f4f4f4; z-index: 2; font-size: 12px; }
table.grid th.row { position: sticky; left: 0; background: #f4f4f4; text-align: left; z-index: 1; }
table.grid thead th.row { z-index: 3; }
th.row small { display: block; font-weight: normal; font-size: 10px; color: #444; max-width: 190px; }
td.sum { min-width: 56px; font-size: 12px; white-space: nowrap; }
td.sum a { color: inherit; text-decoration: none; display: block; }
td.sum small, td.det small { display: block; font-size: 10px; color: #333; }
td.det { font-size: 11px; min-width: 120px; text-align: left; }
td.total { font-weight: bold; white-space: nowrap; }
""" + "".join(f"td.{s} {{ background: {c}; }}\n" for s, c in COLOURS.items())


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _anchor(row: Row, cell: Cell | None = None) -> str:
    slug = "".join(ch if ch.isalnum() else "_" for ch in f"{row.backend}-{row.device}-{row.device_name}")
    base = f"d-{slug}"
    return base if cell is None else f"{base}-{cell.id}"


def _detail_text(m: Merged) -> str:
    lines = [f"{GLYPHS[m.status]} {m.status}"]
    if m.worst_ratio is not None:
        lines[0] += f", ratio {ratio_text(m.worst_ratio)}"
    lines += [f"x{x:g}: {why}" for x, why in m.multipliers]
    lines += [f"skipped {test} ({src}): {why}" for src, test, why in m.skips]
    if m.note:
        lines.append(m.note)
    lines += [f"{test}: {msg}" for s in m.seen for test, msg, _ in s.failures]
    if m.sources:
        lines.append("from " + ", ".join(m.sources))
    head, *rest = lines
    return _e(head) + "".join(f"<small>{_e(r)}</small>" for r in rest)


def _detail_table(row: Row) -> str:
    heads = [(d, act) for d in DTYPES for act in (False, True)]
    head = "".join(f"<th>{d}{' act-order' if act else ''}</th>" for d, act in heads)
    body = []
    for bits in BITS:
        for group in GROUP_SIZES:
            for sym in (True, False):
                name = f"{column_name(bits, group)} {'sym' if sym else 'asym'}"
                tds = []
                for d, act in heads:
                    cell = Cell(bits, group, sym, d, act)
                    if act and group == -1:
                        tds.append('<td class="det notrun">n/a (one group: no act order)</td>')
                        continue
                    m = row.cell(cell)
                    tds.append(
                        f'<td class="det {m.status}" id="{_anchor(row, cell)}" data-cell="{cell.id}" '
                        f'data-status="{m.status}">{_detail_text(m)}</td>'
                    )
                body.append(f'<tr><th class="row">{_e(name)}</th>{"".join(tds)}</tr>')
    return (
        f'<details id="{_anchor(row)}" class="drill"><summary><b>{_e(row.label)}</b> — {_e(_row_context(row))}: '
        f"all {len(all_cells())} cells</summary>"
        f'<div class="scroll"><table class="grid detail"><thead><tr><th class="row">scheme</th>{head}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table></div></details>"
    )


_SCRIPT = """
function openTarget() {
  const id = decodeURIComponent(location.hash.slice(1)); if (!id) return;
  const el = document.getElementById(id); if (!el) return;
  const d = el.closest('details'); if (d) d.open = true; el.scrollIntoView({block: 'center'});
}
window.addEventListener('hashchange', openTarget); window.addEventListener('load', openTarget);
"""


def render_html(matrix: Matrix) -> str:
    """A self-contained page: the first view (failing cells, the summary with sticky labels, qualifiers as text),
    then the per-row drill-down to every cell, then the sources."""
    cols = columns()
    rows = matrix.ordered()
    legend = " · ".join(f"{GLYPHS[s]} {_e(MEANING[s].split(':')[0])}" for s in STATUSES)
    failures = _failure_lines(matrix)
    fail_items = "".join(
        f"<li>✗ <b>{_e(w)}</b>: {_e(r)}" + (f"<br><code>{_e(p)}</code>" if p else "") + "</li>" for w, r, p in failures
    )
    failing = (
        f'<div id="failing"><b>Failing cells ({len(failures)})</b><ol>{fail_items}</ol></div>'
        if failures
        else ('<div id="failing" style="border-color:#2e7d32"><b>Failing cells: none</b></div>')
    )
    head = "".join(f'<th data-col="{b}-{g}">{column_name(b, g)}</th>' for b, g in cols)
    body = []
    for row in rows:
        tds = []
        for b, g in cols:
            status, counts, quals = summary(row, b, g)
            first = _anchor(row, sub_cells(b, g)[0])
            tds.append(
                f'<td class="sum {status}" data-status="{status}" data-col="{b}-{g}"><a href="#{first}">'
                f"{_e(counts)}<small>{_e(quals) or '&nbsp;'}</small></a></td>"
            )
        label = (
            f'<th class="row"><a href="#{_anchor(row)}">{_e(row.label)}</a><small>{_e(_row_context(row))}</small></th>'
        )
        totals = f'<td class="total">{_e(counts_text(row.totals()))}</td>'
        body.append(f'<tr data-row="{_e(row.label)}">{label}{"".join(tds)}{totals}</tr>')
    notes = [f"{row.label}: {_row_context(row)}" for row in rows]
    notes += [f"tolerance {line}" for line in _multiplier_lines(matrix)]
    notes += _skip_lines(matrix)
    prov = "".join(
        "<tr>"
        + "".join(
            f"<td>{_e(v)}</td>"
            for v in (
                p["source"],
                row.label,
                p["backend"],
                p["device"]["name"],
                p["profile"],
                p["max_dim"] or "none",
                p["torch"],
                p["python"],
                p["date"],
                p["totals"]["cells_failed"],
                "yes" if p["available"] else f"no: {p['unavailable_reason']}",
            )
        )
        + "</tr>"
        for row in rows
        for p in row.sources
    )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>wna16 support matrix</title><style>{_CSS}</style></head>
<body>
<h1>wna16 support matrix</h1>
<p class="legend" id="legend">{legend}. A column is bits x group size; a cell counts its sym/asym x dtype
(fp16/bf16/fp32) x act-order cells. Below the counts: <i>N skip</i> tests skipped inside cells that ran,
<i>xM</i> a tolerance multiplier, <i>1/2 rep</i> cells covered by fewer of the row's reports than others.
Click a cell or row for its {len(all_cells())} cells.</p>
{failing}
<div class="scroll" id="first-view"><table class="grid" id="summary"><thead><tr><th class="row">backend@device</th>
{head}<th>total</th></tr></thead><tbody>{"".join(body)}</tbody></table></div>
<h2>Qualifiers</h2>
<ul id="qualifiers">{"".join(f"<li>{_e(n)}</li>" for n in notes)}</ul>
<h2>All cells</h2>
<div id="detail">{"".join(_detail_table(row) for row in rows)}</div>
<h2>Sources</h2>
<table id="provenance" class="grid"><thead><tr><th>report</th><th>row</th><th>backend</th><th>device</th>
<th>profile</th><th>max_dim</th><th>torch</th><th>python</th><th>date</th><th>cells failed</th><th>available</th>
</tr></thead><tbody>{prov}</tbody></table>
<script>{_SCRIPT}</script>
</body></html>
"""


def build(paths: Sequence[Path], markdown: Path, page: Path) -> Matrix:
    """Read the reports at ``paths`` and write both renderings; returns the merged matrix."""
    if not paths:
        raise ReportError("no conformance reports given")
    matrix = merge((p.name, load_report(p)) for p in paths)
    markdown.parent.mkdir(parents=True, exist_ok=True)
    page.parent.mkdir(parents=True, exist_ok=True)
    markdown.write_text(render_markdown(matrix))
    page.write_text(render_html(matrix))
    return matrix
