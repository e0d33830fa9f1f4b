"""Time until every chart of each app page is drawn, in real Chromium on a warm server, beside the script time.

A visitor waits for the whole page, not for the script: this opens every page
from the app's navigation in headless Chromium (Debian's `chromium`, driven
by Playwright) and times the click until Streamlit reports the script done
and every Plotly chart on the page has drawn its SVG. One warm-up visit per
page first pays for imports and for loading the cached models and data, as a
running server would have. Beside it, the median first-render time of the
same page's script alone in `AppTest` (`benchmarks/app_render.py`). Targets:
a median of at most 3 s per page in the browser, 1 s for the script.

    python benchmarks/browser_render.py [--run RUN_DIR] [--repeats 3]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "benchmarks")]

from app_render import render_seconds  # noqa: E402  (benchmarks/ on the path)
from test_browser import CHROMIUM, PAGES, RUN, TIMEOUT_MS, launch, streamlit_server, wait_idle  # noqa: E402

BROWSER_TARGET_S, SCRIPT_TARGET_S = 3.0, 1.0


def page_file(title: str) -> str:
    return title.lower().replace(" ", "_")


def drawn_seconds(page, title: str) -> float:
    """Click `title` in the navigation; seconds until the script is done and every chart has drawn."""
    t0 = time.perf_counter()
    page.locator('[data-testid="stSidebarNav"] a', has_text=title).first.click()
    wait_idle(page)
    page.wait_for_function(
        """() => Array.from(document.querySelectorAll('[data-testid="stPlotlyChart"]'))
                  .every(c => c.querySelector('.main-svg'))""", timeout=TIMEOUT_MS)
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default=str(RUN))
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    if not CHROMIUM.exists():
        print(f"{CHROMIUM} not found: install Debian's chromium (scripts/install-chromium.sh)")
        return 1
    from playwright.sync_api import sync_playwright

    times: dict[str, list[float]] = {t: [] for t in PAGES}
    with streamlit_server(Path(args.run)) as url, sync_playwright() as pw:
        browser = launch(pw)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(url, timeout=TIMEOUT_MS)
        wait_idle(page)
        for title in PAGES:  # warm-up: imports, cached models and data
            drawn_seconds(page, title)
        for _ in range(args.repeats):
            for title in PAGES:
                times[title].append(drawn_seconds(page, title))
        browser.close()
    import logging
    import os

    os.environ["COMPACTVISION_RUN"] = str(Path(args.run).resolve())
    logging.getLogger("streamlit").setLevel(logging.ERROR)
    print(f"run: {Path(args.run).name}; {args.repeats} timed visits per page after one warm-up, Chromium "
          f"{BROWSER_TARGET_S:.0f} s target, script {SCRIPT_TARGET_S:.0f} s target")
    print(f"{'page':20} {'browser median s':>17} {'worst s':>8} {'script median s':>16}  verdict")
    for title in PAGES:
        render_seconds(page_file(title))  # warm the script path too
        script = statistics.median(render_seconds(page_file(title)) for _ in range(args.repeats))
        med = statistics.median(times[title])
        ok = med <= BROWSER_TARGET_S and script <= SCRIPT_TARGET_S
        print(f"{title:20} {med:17.2f} {max(times[title]):8.2f} {script:16.2f}  {'ok' if ok else 'SLOW'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
