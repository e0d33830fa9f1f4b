"""End to end in a real browser: Debian's Chromium, driven by Playwright, against `streamlit run app.py`.

Visits every page, picks a neuron, clicks a node of the computation graph,
runs an attribution, checks what is drawn and saves screenshots; and opens a
fresh server on a deep link, which Streamlit would otherwise run without
`app.py` (see `app_support.entry`). Run as a
script to refresh the README's screenshot:

    python tests/test_browser.py --screenshot docs/screenshot-neuron-graph.png [--neuron twin_009]
"""
from __future__ import annotations

import argparse
import contextlib
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import pytest

ROOT = Path(__file__).resolve().parents[1]
RUN = Path(os.environ.get("COMPACTVISION_RUN", ROOT / "assets" / "default_run"))
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
PAGES = ["Home", "Gallery", "Profile", "Gabor bank", "Layer weights", "Attributions", "Neuron graph", "Teacher vs student",
         "Preferred stimuli", "Robustness", "Train"]
TIMEOUT_MS = 120_000

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian chromium not installed (apt-get install chromium)"),
    pytest.mark.skipif(not (RUN / "manifest.json").is_file(), reason=f"no run at {RUN} (build it with `make bundle`)"),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def streamlit_server(run: Path) -> Iterator[str]:
    """`streamlit run app.py` on a free local port, usage statistics off; yields its URL."""
    port = free_port()
    env = {**os.environ, "COMPACTVISION_RUN": str(run), "MPLCONFIGDIR": tempfile.mkdtemp(prefix="mpl-")}
    cmd = [sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true",
           "--server.address", "127.0.0.1", "--server.port", str(port), "--browser.gatherUsageStats", "false",
           "--server.fileWatcherType", "none"]
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                    if r.read().strip() == b"ok":
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                log.seek(0)
                raise RuntimeError(f"streamlit did not start:\n{log.read().decode(errors='replace')[-3000:]}")
            time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def wait_idle(page) -> None:
    """Connected, and no script running: what is on screen is the finished rerun."""
    page.wait_for_selector('[data-testid="stApp"][data-test-connection-state="CONNECTED"]', timeout=TIMEOUT_MS)
    page.wait_for_timeout(200)  # a rerun triggered by the last action may take a moment to start
    page.wait_for_selector('[data-testid="stApp"][data-test-script-state="notRunning"]', timeout=TIMEOUT_MS)


def go_to(page, title: str) -> None:
    page.locator('[data-testid="stSidebarNav"] a', has_text=title).first.click()
    wait_idle(page)
    expect_title(page, title if title != "Home" else "compactvision")


def expect_title(page, text: str) -> None:
    from playwright.sync_api import expect

    expect(page.locator("h1", has_text=text).first).to_be_visible(timeout=TIMEOUT_MS)


def pick(page, label: str, option: str, scope: str = "") -> None:
    """Choose `option` in the selectbox labelled `label`."""
    box = page.locator(f'{scope} [data-testid="stSelectbox"]', has_text=label).first
    box.click()
    page.locator('[role="option"]', has_text=option).first.click()
    wait_idle(page)


def selected(page, label: str) -> str:
    """The value shown in the selectbox labelled `label` (it lives in the combobox input)."""
    return page.locator(f'input[role="combobox"][aria-label="{label}"]').first.input_value()


def charts(page):
    return page.locator('[data-testid="stPlotlyChart"]')


def explore(page, shots: Path) -> dict[str, str]:
    """The whole tour; returns what was observed for the assertions."""
    from playwright.sync_api import expect

    seen: dict[str, str] = {}
    wait_idle(page)
    expect_title(page, "compactvision")
    for title in PAGES:
        go_to(page, title)
        assert page.locator('[data-testid="stException"]').count() == 0, f"{title} raised"
        page.screenshot(path=str(shots / f"{title.lower().replace(' ', '_')}.png"), full_page=True)

    # A neuron, then the graph of its compact model.
    go_to(page, "Neuron graph")
    neuron_box = page.locator('[data-testid="stSidebar"] [data-testid="stSelectbox"]', has_text="Neuron").first
    neuron_box.click()
    options = page.locator('[role="option"]')
    second = options.nth(1 if options.count() > 1 else 0)
    seen["neuron"] = second.inner_text().strip().split(" · ")[0]  # the picker shows "id · cell type"
    second.click()
    wait_idle(page)
    expect(page.get_by_text(f"Neuron {seen['neuron']}", exact=False).first).to_be_visible(timeout=TIMEOUT_MS)
    graph = charts(page).first
    graph.locator(".main-svg").first.wait_for(timeout=TIMEOUT_MS)
    before = selected(page, "Filter")
    # Click the first filter of layer 0: a point of the graph's selectable "filters" trace
    # (the figure's last scatter trace; the SVG keeps the traces in figure order).
    points = graph.locator(".scatterlayer .trace").last.locator(".points path")
    boxes = [b for b in (points.nth(i).bounding_box() for i in range(points.count())) if b and b["width"] > 0]
    assert boxes, "no clickable node in the graph"
    # The most important filter is selected first; click the first layer-0 filter, or the next if that was it.
    for target in sorted(boxes, key=lambda b: (round(b["x"]), b["y"]))[:2]:
        page.mouse.click(target["x"] + target["width"] / 2, target["y"] + target["height"] / 2)
        # On a busy machine the click's rerun can start after wait_idle's grace: wait for the selection itself.
        deadline = time.time() + 30
        while selected(page, "Filter") == before and time.time() < deadline:
            page.wait_for_timeout(250)
        wait_idle(page)
        after = selected(page, "Filter")
        if after != before:
            break
    seen["node_before"], seen["node_after"] = before, after
    detail_title = charts(page).nth(1).locator(".gtitle").first.text_content()
    seen["detail_title"] = detail_title
    page.screenshot(path=str(shots / "neuron_graph_selected.png"), full_page=True)

    # An attribution with a method that waits for the button.
    go_to(page, "Attributions")
    pick(page, "Method", "Integrated Gradients")
    page.get_by_role("button", name="Compute attributions").click()
    wait_idle(page)
    chart = charts(page).first
    chart.locator(".main-svg").first.wait_for(timeout=TIMEOUT_MS)
    seen["attribution_title"] = chart.locator(".gtitle").first.text_content()
    seen["attribution_heatmaps"] = str(chart.locator(".hm, .heatmaplayer image, image").count())
    page.screenshot(path=str(shots / "attributions_integrated_gradients.png"), full_page=True)
    return seen


def launch(playwright):
    return playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)


@contextlib.contextmanager
def app_in_chromium(path: str = "", width: int = 1400, height: int = 1100) -> Iterator[tuple[Any, Any, str]]:
    """A server on the run and Chromium on its page `path`, idle: yields (page, browser, server URL), closes both."""
    from playwright.sync_api import sync_playwright

    with streamlit_server(RUN) as url, sync_playwright() as pw:
        browser = launch(pw)
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            page.goto(f"{url}/{path}", timeout=TIMEOUT_MS)
            wait_idle(page)
            yield page, browser, url
        finally:
            browser.close()


def test_browser_tour(tmp_path):
    with app_in_chromium("", 1400, 1000) as (page, browser, url):
        seen = explore(page, tmp_path)
        # A second session at the same time keeps its own choices.
        other = browser.new_page()
        other.goto(url, timeout=TIMEOUT_MS)
        wait_idle(other)
        go_to(other, "Neuron graph")
        other_neuron = selected(other, "Neuron").split(" · ")[0]
        first_neuron = selected(page, "Neuron").split(" · ")[0]
    assert seen["node_after"] != seen["node_before"], "clicking a node selects it"
    layer, channel = re.search(r"layer (\d+), filter (\d+)", seen["node_after"]).groups()
    assert f"Layer {layer}, filter {channel}" in seen["detail_title"]
    assert "rank correlation" in seen["attribution_title"] and "Integrated Gradients" in seen["attribution_title"]
    assert first_neuron == seen["neuron"] != other_neuron, "each session keeps its own neuron"
    assert len(list(tmp_path.glob("*.png"))) == len(PAGES) + 2


def click_gallery_row(page, row: int) -> None:
    """Select row `row` of the gallery's table: its row marker, at the left edge of the data grid's canvas."""
    grid = page.locator('[data-testid="stDataFrame"]').first
    grid.wait_for(timeout=TIMEOUT_MS)
    grid.scroll_into_view_if_needed()
    box = grid.bounding_box()
    header, row_height = 35, 64  # Streamlit's header row; the gallery's row_height
    page.mouse.click(box["x"] + 18, box["y"] + header + row_height * row + row_height / 2)
    wait_idle(page)


def test_gallery_opens_a_profile_and_a_reload_keeps_it(tmp_path):
    from playwright.sync_api import expect

    with app_in_chromium("gallery", 1400, 1100) as (page, browser, url):
        expect_title(page, "Gallery")
        page.screenshot(path=str(tmp_path / "gallery.png"), full_page=True)
        click_gallery_row(page, 2)
        expect_title(page, "Profile")
        picked = selected(page, "Neuron").split(" · ")[0]
        expect(page.locator("h3", has_text=picked).first).to_be_visible(timeout=TIMEOUT_MS)
        # The page is drawn top-down; its last element, the download, means the run is complete.
        expect(page.get_by_role("button", name=re.compile("Download this compact model"))).to_be_visible(
            timeout=TIMEOUT_MS)
        wait_idle(page)
        assert "neuron=" + picked in page.url, page.url
        page.screenshot(path=str(tmp_path / "profile.png"), full_page=True)
        # A reload (or the link sent to a colleague) opens the same neuron on the same page.
        page.reload(timeout=TIMEOUT_MS)
        wait_idle(page)
        expect_title(page, "Profile")
        assert selected(page, "Neuron").split(" · ")[0] == picked
        fresh = browser.new_page(viewport={"width": 1400, "height": 1100})
        fresh.goto(page.url, timeout=TIMEOUT_MS)
        wait_idle(fresh)
        assert selected(fresh, "Neuron").split(" · ")[0] == picked, "a shared link opens the same neuron"
    from compactvision.artifacts import list_students

    assert picked == list_students(RUN)[2], "the clicked row, not the default, chose the neuron"


def plotly_traces(page, chart_index: int = 0) -> list[dict]:
    """The traces a chart really drew, read from Plotly's own figure in the page (names and point counts)."""
    return page.evaluate(
        """i => Array.from(document.querySelectorAll('[data-testid="stPlotlyChart"] .js-plotly-plot'))[i].data
             .map(t => ({name: t.name || '', n: (t.x && t.x.length) || 0}))""", chart_index)


def test_ablating_a_node_marks_it_and_a_new_neuron_starts_intact(tmp_path):
    from playwright.sync_api import expect

    with app_in_chromium("neuron_graph", 1400, 1100) as (page, browser, url):
        charts(page).first.locator(".main-svg").first.wait_for(timeout=TIMEOUT_MS)
        before = [t for t in plotly_traces(page) if t["name"] == "ablated"]
        chosen = selected(page, "Filter")  # the most important filter, selected first
        node = re.search(r"layer (\d+), filter (\d+)", chosen).groups()
        box = page.locator('[data-testid="stMultiSelect"]', has_text="Filters switched off").first
        box.locator("input").first.click()
        box.locator("input").first.fill(f"L{node[0]}")  # narrows the long option list to the filter's layer
        page.get_by_role("option", name=f"L{node[0]}·f{node[1]}", exact=True).click()
        page.keyboard.press("Escape")
        wait_idle(page)
        after = [t for t in plotly_traces(page) if t["name"] == "ablated"]
        page.screenshot(path=str(tmp_path / "graph_ablated.png"), full_page=True)
        # Another neuron: its graph starts with nothing switched off.
        pick(page, "Neuron", "twin_003", scope='[data-testid="stSidebar"]')
        charts(page).first.locator(".main-svg").first.wait_for(timeout=TIMEOUT_MS)
        expect(page.get_by_text("Neuron twin_003", exact=False).first).to_be_visible(timeout=TIMEOUT_MS)
        next_neuron = [t for t in plotly_traces(page) if t["name"] == "ablated"]
    assert sum(t["n"] for t in before) == 0
    assert sum(t["n"] for t in after) == 1, after
    assert sum(t["n"] for t in next_neuron) == 0, "ablations reset per neuron"


def test_synthesis_shows_progress_and_can_be_cancelled(tmp_path):
    from playwright.sync_api import expect

    with app_in_chromium("preferred_stimuli", 1400, 1100) as (page, browser, url):
        images_before = page.locator('[data-testid="stImage"] img').count()
        page.get_by_role("button", name="Synthesise").click()
        bar = page.locator('[data-testid="stProgress"]')
        expect(bar.first).to_be_visible(timeout=TIMEOUT_MS)
        seen_bar = bar.first.inner_text()
        wait_idle(page)
        expect(page.locator('[data-testid="stImage"] img')).to_have_count(images_before + 3, timeout=TIMEOUT_MS)
        page.screenshot(path=str(tmp_path / "synthesised.png"), full_page=True)
        # Another seed, at the most steps, is cancelled while it runs.
        slider = page.locator('[data-testid="stSlider"] input[type="range"][aria-label="Steps"]').first
        slider.focus()
        page.keyboard.press("End")
        wait_idle(page)
        seed = page.locator('[data-testid="stNumberInput"]', has_text="Seed").locator("input").first
        seed.fill("7")
        seed.press("Enter")
        wait_idle(page)
        page.get_by_role("button", name="Synthesise").click()
        expect(bar.first).to_be_visible(timeout=TIMEOUT_MS)
        page.get_by_role("button", name="Cancel").click()
        wait_idle(page)
        warning = page.locator('[data-testid="stAlert"]', has_text="stopped before it finished")
        expect(warning.first).to_be_visible(timeout=TIMEOUT_MS)
        images_after = page.locator('[data-testid="stImage"] img').count()
        page.screenshot(path=str(tmp_path / "synthesis_cancelled.png"), full_page=True)
    assert "Ascending the gradient" in seen_bar, seen_bar
    assert images_after == images_before, "a cancelled synthesis draws nothing"


def test_deep_link_on_a_fresh_server(tmp_path):
    """A fresh server's very first request is a deep link: the page comes with the app's sidebar and navigation."""
    with app_in_chromium("neuron_graph", 1400, 1000) as (page, browser, url):
        expect_title(page, "Neuron graph")
        sidebar = page.locator('[data-testid="stSidebar"]')
        nav = [a.inner_text().strip().splitlines()[-1] for a in page.locator('[data-testid="stSidebarNav"] a').all()]  # after the icon's name
        boxes = [b.inner_text() for b in sidebar.locator('[data-testid="stSelectbox"]').all()]
        tab_title = page.title()
        raised = page.locator('[data-testid="stException"]').count()
        charts(page).first.locator(".main-svg").first.wait_for(timeout=TIMEOUT_MS)
        page.screenshot(path=str(tmp_path / "deep_link.png"), full_page=True)
        go_to(page, "Robustness")  # and the app's own navigation works from there
        after = page.url
    assert nav == PAGES, "the app's page list, not one built from the pages/ folder"
    assert any(b.startswith("Run") for b in boxes) and any(b.startswith("Neuron") for b in boxes), boxes
    assert tab_title == "compactvision", "app.py's set_page_config ran"
    from urllib.parse import urlparse

    assert raised == 0 and urlparse(after).path.endswith("/robustness")


def main(argv: list[str] | None = None) -> int:
    """Write the README's screenshot of the neuron-graph page."""
    from playwright.sync_api import sync_playwright

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--screenshot", default=str(ROOT / "docs" / "screenshot-neuron-graph.png"))
    parser.add_argument("--run", default=str(RUN))
    parser.add_argument("--neuron", default=None, help="the neuron to show, e.g. twin_009 (default: the run's first)")
    args = parser.parse_args(argv)
    out = Path(args.screenshot)
    out.parent.mkdir(parents=True, exist_ok=True)
    with streamlit_server(Path(args.run)) as url, sync_playwright() as pw:
        browser = launch(pw)
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.goto(url, timeout=TIMEOUT_MS)
        wait_idle(page)
        go_to(page, "Neuron graph")
        if args.neuron:
            pick(page, "Neuron", args.neuron, scope='[data-testid="stSidebar"]')
        charts(page).first.locator(".main-svg").first.wait_for(timeout=TIMEOUT_MS)
        page.wait_for_timeout(500)
        page.screenshot(path=str(out))
        browser.close()
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
