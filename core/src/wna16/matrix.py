"""The support matrix: conformance reports from many machines merged into one table of what works where.

Input: JSON reports written by the conformance suite (``wna16-conformance-report``, schema version 1). Output:
``SUPPORT_MATRIX.md`` (rows backend x device, columns schemes, each cell summarising its dtype / act-order sub-cells)
and a self-contained HTML page with the full grid, one coloured square per cell: pass / fail / refused / skipped /
not run, with the worst error-to-bound ratio, any tolerance multiplier and the sources on hover, and each report's
provenance below. Two reports that disagree about a cell make it FAIL, naming both sources: a matrix must never show
the more pleasant of two answers.
"""

from __future__ import annotations

import html
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wna16.errors import Wna16Error

REPORT_ID = "wna16-conformance-report"
REPORT_VERSIONS = (1,)
STATUSES = ("pass", "fail", "refused", "skipped", "notrun")
COLOURS = {"pass": "#2e7d32", "fail": "#c62828", "refused": "#9e9e9e", "skipped": "#f9a825", "notrun": "#ffffff"}
SYMBOLS = {"pass": "P", "fail": "F", "refused": "R", "skipped": "S", "notrun": "-"}


class ReportError(Wna16Error, ValueError):
    """A file given to the matrix is not a conformance report this version understands."""


@dataclass
class Entry:
    """One cell of one row as one report saw it."""

    status: str
    worst_ratio: float | str | None
    multiplier: float
    source: str


@dataclass
class Merged:
    """One cell of one row after merging every report: status, the worst ratio, and where it came from."""

    status: str = "notrun"
    worst_ratio: float | str | None = None
    multiplier: float = 1.0
    sources: list[str] = field(default_factory=list)
    note: str = ""


@dataclass(frozen=True, order=True)
class CellKey:
    """A column of the full grid; ``scheme`` groups the columns of the Markdown table."""

    bits: int
    group_size: int
    sym: bool
    dtype: str
    act_order: bool

    @property
    def scheme(self) -> str:
        group = "channel" if self.group_size == -1 else f"g{self.group_size}"
        return f"w{self.bits}{group}{'sym' if self.sym else 'asym'}"

    @property
    def id(self) -> str:
        return f"{self.scheme}-{self.dtype}" + ("-actorder" if self.act_order else "")


@dataclass
class Matrix:
    """Merged cells by row (``backend @ device``) and column, plus the provenance of every report read."""

    rows: dict[str, dict[CellKey, Merged]] = field(default_factory=dict)
    columns: set[CellKey] = field(default_factory=set)
    provenance: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ordered_columns(self) -> list[CellKey]:
        """Columns in a stable order: bits, group (-1 first), sym before asym, dtype, act order."""
        dtypes = {"fp16": 0, "bf16": 1, "fp32": 2}
        return sorted(
            self.columns, key=lambda c: (c.bits, c.group_size, not c.sym, dtypes.get(c.dtype, 9), c.act_order)
        )

    def cell(self, row: str, column: CellKey) -> Merged:
        """The merged cell (``notrun`` when no report covered it)."""
        return self.rows.get(row, {}).get(column, Merged())


def status_of(counts: Mapping[str, int], available: bool = True) -> str:
    """A cell's status from its counts: any failure fails it; else a pass; else refused; else skipped.

    For a backend the report calls unavailable on its device the suite still checks refusals but computes nothing:
    a cell with any case not computed (skipped) is ``notrun`` there, never ``refused`` or ``skipped`` (a filter's
    word); only a cell whose every case was refused honestly keeps ``refused``."""
    if counts.get("failed", 0):
        return "fail"
    if not available and (counts.get("skipped", 0) or not counts.get("refused", 0)):
        return "notrun"
    if counts.get("passed", 0):
        return "pass"
    if counts.get("refused", 0):
        return "refused"
    if counts.get("skipped", 0):
        return "skipped"
    return "notrun"


def load_report(path: Path) -> dict[str, Any]:
    """Read one report; :class:`ReportError` naming the file unless it is a conformance report we understand."""
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ReportError(f"{path}: not readable as JSON: {exc}") from exc
    if not isinstance(data, dict) or data.get("schema") != REPORT_ID:
        raise ReportError(f"{path}: 'schema' is not {REPORT_ID!r}")
    if data.get("schema_version") not in REPORT_VERSIONS:
        raise ReportError(f"{path}: schema_version {data.get('schema_version')!r}, expected one of {REPORT_VERSIONS}")
    return data


def merge(reports: Iterable[tuple[str, Mapping[str, Any]]]) -> Matrix:
    """Merge ``(source name, report)`` pairs; conflicting statuses for one cell become ``fail`` naming both."""
    matrix = Matrix()
    for source, report in reports:
        device = report["device"]
        device_label = f"{device['type']} ({device['name']})" if device.get("name") else device["type"]
        for backend in report["backends"]:
            row = f"{backend['name']} @ {device_label}"
            matrix.provenance.append(_provenance(source, report, backend, row))
            cells = matrix.rows.setdefault(row, {})
            for cell in backend["cells"]:
                key = CellKey(cell["bits"], cell["group_size"], cell["sym"], cell["dtype"], cell["act_order"])
                matrix.columns.add(key)
                multiplier = max((float(t.get("multiplier", 1.0)) for t in cell.get("tests", [])), default=1.0)
                status = status_of(cell, bool(backend.get("available", True)))
                entry = Entry(status, cell.get("worst_ratio"), multiplier, source)
                cells[key] = _combine(cells.get(key), entry)
    return matrix


def _combine(old: Merged | None, new: Entry) -> Merged:
    if old is None or old.status == "notrun":
        return Merged(new.status, new.worst_ratio, new.multiplier, [new.source])
    merged = Merged(
        old.status,
        _worse(old.worst_ratio, new.worst_ratio),
        max(old.multiplier, new.multiplier),
        [*old.sources, new.source],
        old.note,
    )
    if new.status != old.status and new.status != "notrun":
        said = f"{', '.join(old.sources)}: {old.status}; {new.source}: {new.status}"
        merged.status, merged.note = "fail", f"conflict: {said}" + (f"; {old.note}" if old.note else "")
    return merged


def _worse(a: float | str | None, b: float | str | None) -> float | str | None:
    if a == "inf" or b == "inf":
        return "inf"
    present = [float(v) for v in (a, b) if v is not None]
    return max(present) if present else None


def _provenance(source: str, report: Mapping[str, Any], backend: Mapping[str, Any], row: str) -> dict[str, Any]:
    env = report.get("environment", {})
    return {
        "source": source,
        "row": row,
        "backend": f"{backend['name']} ({backend.get('distribution', '?')} {backend.get('version', '?')})"
        + ("" if backend.get("available", True) else f"; unavailable: {backend.get('unavailable_reason') or '?'}"),
        "available": backend.get("available", True),
        "device": report["device"],
        "profile": report.get("profile"),
        "date": report.get("run", {}).get("date", "?"),
        "torch": env.get("torch", "?"),
        "python": env.get("python", "?"),
        "totals": backend.get("totals", {}),
    }


def _ratio_text(ratio: float | str | None) -> str:
    return "-" if ratio is None else str(ratio) if isinstance(ratio, str) else f"{ratio:.3g}"


def render_markdown(matrix: Matrix) -> str:
    """``SUPPORT_MATRIX.md``: an overview (rows backend @ device, columns schemes) and a legend."""
    columns = matrix.ordered_columns
    schemes = list(dict.fromkeys(c.scheme for c in columns))
    lines = [
        "# wna16 support matrix",
        "",
        "Generated by `wna16 matrix` from conformance reports; do not edit by hand. Each cell summarises the",
        "activation dtypes (fp16/bf16/fp32) x act order sub-cells of a scheme: P pass, F fail, R refused (the",
        "backend declares it unsupported and refuses it honestly), S skipped (by a filter file), - not run (no",
        "report, or the backend was unavailable on that device: see Sources).",
        "",
        "| backend @ device | " + " | ".join(schemes) + " |",
        "| --- |" + " --- |" * len(schemes),
    ]
    for row in sorted(matrix.rows):
        cells = []
        for scheme in schemes:
            merged = [matrix.cell(row, c) for c in columns if c.scheme == scheme]
            counts = {s: sum(m.status == s for m in merged) for s in STATUSES}
            text = " ".join(f"{SYMBOLS[s]}{n}" for s, n in counts.items() if n)
            if any(m.multiplier > 1 for m in merged):
                text += f" x{max(m.multiplier for m in merged):g}"
            cells.append(text)
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    problems = [(row, c, matrix.cell(row, c)) for row in sorted(matrix.rows) for c in columns]
    failing = [(row, c, m) for row, c, m in problems if m.status == "fail"]
    lines += ["", "## Failing cells", ""]
    lines += [f"- {row}: `{c.id}` ({m.note or 'worst ratio ' + _ratio_text(m.worst_ratio)})" for row, c, m in failing]
    if not failing:
        lines.append("None.")
    lines += [
        "",
        "## Sources",
        "",
        "| report | row | backend | profile | torch | date | cells failed |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for p in matrix.provenance:
        failed = p["totals"].get("cells_failed", "?")
        lines.append(
            f"| {p['source']} | {p['row']} | {p['backend']} | {p['profile']} | {p['torch']} | {p['date']} | {failed} |"
        )
    return "\n".join(lines) + "\n"


_CSS = """
body { font-family: sans-serif; margin: 1.5em; }
table.grid { border-collapse: collapse; }
table.grid th { font-size: 10px; font-weight: normal; padding: 1px 2px; white-space: nowrap; }
table.grid th.row { text-align: right; padding-right: 6px; font-weight: bold; font-size: 12px; }
td.cell { width: 12px; height: 18px; border: 1px solid #ddd; padding: 0; }
""" + "".join(f"td.{s} {{ background: {c}; }}\n" for s, c in COLOURS.items())


def render_html(matrix: Matrix) -> str:
    """A self-contained page: the full grid (one square per cell, details on hover) and the provenance table."""
    columns = matrix.ordered_columns
    head = [
        '<tr><th class="row">scheme</th>' + "".join(f'<th title="{c.id}">{c.scheme}</th>' for c in columns) + "</tr>",
        '<tr><th class="row">dtype</th>'
        + "".join(f"<th>{c.dtype}{'*' if c.act_order else ''}</th>" for c in columns)
        + "</tr>",
    ]
    body = []
    for row in sorted(matrix.rows):
        tds = []
        for c in columns:
            m = matrix.cell(row, c)
            tip = [c.id, f"status: {m.status}", f"worst error/bound: {_ratio_text(m.worst_ratio)}"]
            if m.multiplier > 1:
                tip.append(f"tolerance multiplier: x{m.multiplier:g}")
            if m.sources:
                tip.append("sources: " + ", ".join(m.sources))
            if m.note:
                tip.append(m.note)
            title = html.escape("\n".join(tip), quote=True)
            tds.append(f'<td class="cell {m.status}" data-cell="{c.id}" data-status="{m.status}" title="{title}"></td>')
        body.append(f'<tr><th class="row">{html.escape(row)}</th>{"".join(tds)}</tr>')
    legend = " ".join(
        f'<span style="background:{COLOURS[s]};border:1px solid #999;padding:0 6px">&nbsp;</span> {s}' for s in STATUSES
    )
    prov_rows = "".join(
        "<tr>"
        + "".join(
            f"<td>{html.escape(str(v))}</td>"
            for v in (
                p["source"],
                p["row"],
                p["backend"],
                p["device"].get("name", ""),
                p["profile"],
                p["torch"],
                p["python"],
                p["date"],
                p["totals"].get("cells_failed", "?"),
            )
        )
        + "</tr>"
        for p in matrix.provenance
    )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>wna16 support matrix</title><style>{_CSS}</style></head>
<body>
<h1>wna16 support matrix</h1>
<p>{legend}. A * after the dtype marks act order. Hover a cell for its worst error-to-bound ratio, tolerance
multiplier and sources.</p>
<table class="grid" id="grid"><thead>{"".join(head)}</thead><tbody>{"".join(body)}</tbody></table>
<h2>Provenance</h2>
<table id="provenance" border="1" cellpadding="3"><tr><th>report</th><th>row</th><th>backend</th><th>device</th>
<th>profile</th><th>torch</th><th>python</th><th>date</th><th>cells failed</th></tr>{prov_rows}</table>
</body></html>
"""


def build(paths: Sequence[Path], markdown: Path, page: Path) -> Matrix:
    """Read the reports at ``paths`` and write both renderings; returns the merged matrix."""
    if not paths:
        raise ReportError("no conformance reports given")
    matrix = merge((p.name, load_report(p)) for p in paths)
    markdown.write_text(render_markdown(matrix))
    page.write_text(render_html(matrix))
    return matrix
