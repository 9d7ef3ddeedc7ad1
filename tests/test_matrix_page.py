"""The HTML support matrix rendered for real in headless Chromium: it loads, the grid has one square per cell, each
square has its status colour, and a screenshot is written (to $WNA16_SCREENSHOT_DIR or the test's tmp dir).

Runs in the `matrix-page` nox session, which installs Debian's chromium and playwright; it fails (never skips) when
they are missing, so a green session means the page was really rendered.
"""

import os
from pathlib import Path

import pytest
from matrix_reports import report

from wna16.matrix import COLOURS, merge, render_html

CHROMIUM = os.environ.get("WNA16_CHROMIUM", "/usr/bin/chromium")
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

pytestmark = pytest.mark.browser


def rgb(hex_colour: str) -> str:
    r, g, b = (int(hex_colour[i : i + 2], 16) for i in (1, 3, 5))
    return f"rgb({r}, {g}, {b})"


def test_page_renders_in_chromium(tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    statuses = ["pass", "fail", "refused", "skipped", "pass"]
    matrix = merge(
        [
            ("cpu.json", report("cpu", "cpu", "AMD EPYC", statuses)),
            ("ref.json", report("reference", "cpu", "AMD EPYC", ["pass"] * 5)),
            ("cuda.json", report("marlin", "cuda", "H100", ["pass"] * 5)),
            ("cuda-b.json", report("marlin", "cuda", "H100", ["fail"] + ["pass"] * 4)),
        ]
    )
    page_file = tmp_path / "support_matrix.html"
    page_file.write_text(render_html(matrix))
    shots = Path(os.environ.get("WNA16_SCREENSHOT_DIR", tmp_path))
    shots.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": 1000, "height": 400})
        page.goto(page_file.as_uri())
        assert page.title() == "wna16 support matrix"
        cells = page.eval_on_selector_all(
            "#grid td.cell",
            "tds => tds.map(td => [td.dataset.status, getComputedStyle(td).backgroundColor,"
            " td.getBoundingClientRect().width])",
        )
        page.screenshot(path=str(shots / "support_matrix.png"), full_page=True)
        browser.close()
    assert len(cells) == 3 * 5  # three rows (cpu, reference, marlin@H100) x five cells
    for status, colour, width in cells:
        assert colour == rgb(COLOURS[status]), (status, colour)
        assert width > 5  # really laid out, not collapsed
    by_status = [c[0] for c in cells]
    assert by_status.count("fail") == 2  # the cpu failure and the conflicting H100 reports
    assert (shots / "support_matrix.png").stat().st_size > 1000
