"""Per-cell draw statistics of a conformance report: which rows, K, N and group counts the cases actually ran with.

``python -m wna16_conformance.drawstats reports/cpu-reference.json`` prints, per backend and check, the ranges over
every test, how many tests reached each row regime and large-shape class, and the per-cell ranges of ``numerics``.
It reads the ``drawn`` block the suite writes for every test that computed or refused a case.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any


def summary(report: dict[str, Any]) -> list[str]:
    """The lines printed for ``report``."""
    lines = []
    for backend in report["backends"]:
        tests = [t for c in backend["cells"] for t in c["tests"] if "drawn" in t]
        by_check: dict[str, list[dict[str, Any]]] = {}
        for t in tests:
            by_check.setdefault(t["test"].split("[", 1)[0], []).append(t)
        lines.append(f"{backend['name']}: {len(tests)} tests with cases (profile {report['profile']})")
        for check, group in sorted(by_check.items()):
            d = [t["drawn"] for t in group]
            spans = {
                key: (min(x[key][0] for x in d), max(x[key][1] for x in d)) for key in ("rows", "k", "n", "groups")
            }
            reach = Counter[str]()
            for x in d:
                reach["rows 0"] += x["rows"][0] == 0
                reach["rows >= 256"] += x["rows"][1] >= 256
                reach["K > 2048"] += x["k"][1] > 2048
                reach["K > 8192"] += x["k"][1] > 8192
                reach["N > 256"] += x["n"][1] > 256
                reach["G > 64"] += x["groups"][1] > 64
            cases = sum(x["cases"] for x in d)
            ranges = ", ".join(f"{key} {lo}-{hi}" for key, (lo, hi) in spans.items())
            lines.append(f"  {check}: {len(group)} tests, {cases} cases; {ranges}")
            lines.append("    tests reaching: " + ", ".join(f"{k} {v}" for k, v in reach.items()))
        for t in (t for t in tests if t["test"].startswith("numerics[")):
            d = t["drawn"]
            lines.append(
                f"    {t['test']}: {d['cases']} cases, rows {d['rows']}, K {d['k']}, N {d['n']}, G {d['groups']}"
            )
    return lines


def main(argv: list[str] | None = None) -> int:
    """Print the statistics of each report named on the command line."""
    paths = sys.argv[1:] if argv is None else argv
    if not paths:
        print("usage: python -m wna16_conformance.drawstats REPORT.json [...]", file=sys.stderr)
        return 2
    for path in paths:
        print("\n".join(summary(json.loads(Path(path).read_text()))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
