"""Merge conformance reports from many machines into SUPPORT_MATRIX.md and an HTML page."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from wna16_conformance.matrix import ReportError, build


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``wna16 matrix``."""
    parser.add_argument("reports", nargs="+", type=Path, help="conformance report JSON files")
    parser.add_argument("--markdown", type=Path, default=Path("SUPPORT_MATRIX.md"), help="Markdown output")
    parser.add_argument("--html", type=Path, default=Path("support_matrix.html"), help="HTML output")


def run(args: argparse.Namespace) -> int:
    """Write both outputs; exit 1 when any cell fails (including reports that disagree), 2 on an unreadable report."""
    try:
        matrix = build(args.reports, args.markdown, args.html)
    except ReportError as exc:
        print(f"wna16 matrix: {exc}", file=sys.stderr)
        return 2
    failing = len(matrix.failing())
    print(f"{len(args.reports)} report(s), {len(matrix.rows)} row(s)")
    print(f"wrote {args.markdown} and {args.html}; {failing} failing cell(s)")
    return 1 if failing else 0
