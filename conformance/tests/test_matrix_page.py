"""The HTML support matrix rendered for real in headless Chromium at 1600x1000: the first view shows every row label
and every column of the summary without scrolling, every cell carries a glyph and counts as text (colour is never the
only signal), labels are sticky, failing cells come first with their repro, and a drill-down link opens the cell.
A screenshot of the first view is written (to $WNA16_SCREENSHOT_DIR or the test's tmp dir).

Runs in the `matrix-page` nox session, which installs Debian's chromium and playwright; it fails (never skips) when
they are missing, so a green session means the page was really rendered.
"""

import os
from pathlib import Path

import pytest
from matrix_reports import showcase

from wna16_conformance.matrix import GLYPHS, columns, merge, render_html

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
VIEW = {"width": 1600, "height": 1000}

pytestmark = pytest.mark.browser

INSIDE = """el => { const r = el.getBoundingClientRect(); return r.width > 0 && r.height > 0 && r.left >= 0
  && r.top >= 0 && r.right <= innerWidth && r.bottom <= innerHeight; }"""


def test_first_view_in_chromium(tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    matrix = merge(showcase())
    labels = [r.label for r in matrix.ordered()]
    page_file = tmp_path / "support_matrix.html"
    page_file.write_text(render_html(matrix))
    shots = Path(os.environ.get("WNA16_SCREENSHOT_DIR", tmp_path))
    shots.mkdir(parents=True, exist_ok=True)
    shot = shots / "support_matrix-first-view.png"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport=VIEW)
        page.goto(page_file.as_uri())
        assert page.title() == "wna16 support matrix"
        page.screenshot(path=str(shot))  # the first view: the viewport, not the full page
        rows = page.eval_on_selector_all(
            "#summary tbody tr",
            f"trs => trs.map(tr => [tr.dataset.row, ({INSIDE})(tr.querySelector('th.row')),"
            " getComputedStyle(tr.querySelector('th.row')).position])",
        )
        heads = page.eval_on_selector_all(
            "#summary thead th",
            f"ths => ths.map(th => [th.textContent, ({INSIDE})(th), getComputedStyle(th).position])",
        )
        cells = page.eval_on_selector_all(
            "#summary td.sum, #summary td.total",
            f"tds => tds.map(td => [td.innerText.trim(), ({INSIDE})(td), td.dataset.status || 'total'])",
        )
        failing_visible = page.eval_on_selector("#failing li", INSIDE)
        failing_text = page.inner_text("#failing")
        # Drill-down: following a summary cell's link opens that row's 216-cell detail at the cell.
        assert not page.eval_on_selector("#detail details", "d => d.open")
        page.click("#summary tbody tr:first-child td.sum[data-status=failed] a")
        page.wait_for_timeout(200)
        opened = page.eval_on_selector_all("#detail details", "ds => ds.filter(d => d.open).length")
        detail_cells = page.eval_on_selector_all("#detail details[open] td.det", "tds => tds.length")
        page.screenshot(path=str(shots / "support_matrix-drill-down.png"))
        # Narrower than the summary: scrolled to its right end, the row labels stay on screen (sticky).
        page.set_viewport_size({"width": 900, "height": 700})
        page.goto(page_file.as_uri())
        page.eval_on_selector("#first-view", "d => { d.scrollLeft = d.scrollWidth; }")
        scrolled = page.eval_on_selector("#first-view", "d => d.scrollLeft")
        label_left = page.eval_on_selector("#summary tbody th.row", "th => th.getBoundingClientRect().left")
        last_col = page.eval_on_selector("#summary thead th:last-child", INSIDE)
        browser.close()
    assert [r[0] for r in rows] == labels
    assert all(visible and position == "sticky" for _, visible, position in rows), rows
    assert [h[0] for h in heads] == ["backend@device", *(f"w{b} " + ("channel" if g == -1 else f"g{g}")
                                                         for b, g in columns()), "total"]  # fmt: skip
    assert all(visible and position == "sticky" for _, visible, position in heads), heads
    assert len(cells) == len(labels) * (len(columns()) + 1)
    for text, visible, status in cells:
        assert visible, (text, status)
        assert text and text[0] in GLYPHS.values(), (text, status)  # a glyph and a count, not colour alone
        assert any(ch.isdigit() for ch in text), text
    assert failing_visible
    assert "marlin@cuda w4g128asym-bf16" in failing_text and "--wna16-case=k256n128m3b0s17" in failing_text
    assert "reports disagree" in failing_text
    assert opened == 1 and detail_cells == 240  # 40 schemes x 6 dtype/act-order columns (24 of them n/a)
    assert shot.stat().st_size > 10_000
    assert scrolled > 100 and 0 <= label_left < 40 and last_col  # scrolled, yet the label is still at the left
