"""Merge conformance reports from many machines into SUPPORT_MATRIX.md and an HTML page."""

from __future__ import annotations

import argparse
from pathlib import Path

from wna16.matrix import build


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``wna16 matrix``."""
    parser.add_argument("reports", nargs="+", type=Path, help="conformance report JSON files")
    parser.add_argument("--markdown", type=Path, default=Path("SUPPORT_MATRIX.md"), help="Markdown output")
    parser.add_argument("--html", type=Path, default=Path("support_matrix.html"), help="HTML output")


def run(args: argparse.Namespace) -> int:
    """Write both outputs; exit 1 when any cell fails (including conflicts between reports)."""
    matrix = build(args.reports, args.markdown, args.html)
    failing = sum(m.status == "fail" for cells in matrix.rows.values() for m in cells.values())
    print(f"{len(args.reports)} report(s), {len(matrix.rows)} row(s), {len(matrix.columns)} cells per row")
    print(f"wrote {args.markdown} and {args.html}; {failing} failing cell(s)")
    return 1 if failing else 0
