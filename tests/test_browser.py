"""The real app in a real browser: `streamlit run app.py` + Debian's chromium driven by playwright.

Needs /usr/bin/chromium (`apt-get install chromium`; scripts/test.sh installs it when run as root).
Set CERVICURVE_SCREENSHOT_DIR to keep the screenshots (docs/screenshots is made this way).
"""
from __future__ import annotations

import pytest

from tests.helpers.browser import BROWSER_MARKS, NOTICE, drawn, keep_screenshot, start_server, stop_server
from tests.helpers.models import phantom_png, promote_tiny_classifier

pytestmark = BROWSER_MARKS


def test_empty_workspace_shows_the_notice_and_the_demo_offer(browser, tmp_path):
    home = tmp_path / "workspace"
    home.mkdir()
    server, url = start_server(home, tmp_path / "server.log")
    try:
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        # The server's first run asks for a page by URL: still the app's menu and frame, not a bare page.
        page.goto(f"{url}/data")
        page.get_by_text(NOTICE).first.wait_for(timeout=30_000)
        menu = page.locator("[data-testid='stSidebarNav']")
        menu.get_by_text("Predict").wait_for(timeout=30_000)
        links = menu.locator("a").all_inner_texts()
        # (after each link's icon name)
        assert [text.split()[-1] for text in links] == ["Predict", "Data", "Label", "Train", "Runs", "Teach"]
        page.goto(url)
        page.get_by_text(NOTICE).first.wait_for(timeout=30_000)
        page.get_by_role("button", name="Build the demo").wait_for(timeout=30_000)
        assert page.get_by_text("0 images · 0 datasets · 0 runs").is_visible()
        shot = tmp_path / "empty_workspace.png"
        page.screenshot(path=str(shot), full_page=True)
        keep_screenshot(shot, "empty_workspace.png")
    finally:
        stop_server(server)


def test_upload_a_phantom_and_see_class_and_heatmap(browser, tmp_path):
    home = tmp_path / "workspace"
    promote_tiny_classifier(home)
    radiograph = tmp_path / "spine.png"
    radiograph.write_bytes(phantom_png("reversed", seed=21, size=512))
    server, url = start_server(home, tmp_path / "server.log")
    try:
        page = browser.new_page(viewport={"width": 1500, "height": 1200})
        page.goto(url)
        page.get_by_text(NOTICE).first.wait_for(timeout=30_000)
        page.locator("input[type='file']").first.set_input_files(str(radiograph))
        heading = page.get_by_text("spine.png: ").first
        heading.wait_for(timeout=90_000)  # the first prediction imports torch and loads the model
        verdict = heading.inner_text().split(": ", 1)[1]
        # the tiny test model flags films unlike its 64 px training set: then it says so and shows no class
        assert verdict.split(" ")[0] in ("normal", "straightened", "reversed") or verdict.startswith("not judged")
        # the film in the reading view (ui/components/film_viewer; tests/test_browser_predict.py tries its tools)
        viewer = page.frame_locator("iframe[title*='film_viewer']")
        viewer.locator("#app[data-ready='1']").wait_for(timeout=30_000)
        assert viewer.locator("#view").bounding_box()["width"] > 100
        if not verdict.startswith("not judged"):
            page.get_by_text("heatmap for '").first.wait_for(timeout=30_000)
            heatmap = viewer.locator("#layer-heatmap")
            assert heatmap.is_enabled() and heatmap.is_checked()
            page.wait_for_function("() => document.querySelector(\"iframe[title*='film_viewer']\").contentDocument"
                                   ".getElementById('view').dataset.layers.split(',').includes('heatmap')")
        drawn(page)
        shot = tmp_path / "predict_result.png"
        page.screenshot(path=str(shot), full_page=True)
        assert shot.stat().st_size > 20_000
        keep_screenshot(shot, "predict_result.png")
    finally:
        stop_server(server)


@pytest.mark.parametrize("case", ["loaded", "no wait", "broken model"])
def test_the_readme_launcher_answers_once_the_models_are_loaded(browser, tmp_path, monkeypatch, case):
    """`python -m ui.serve`: the promoted models load before the server answers, so the first upload does not wait
    for torch and the models (benchmarks/app_latency.py times it); with CERVICURVE_PRELOAD_WAIT_S=0 the server answers
    at once and they load beside it; a model that cannot be loaded is named in the log, and Predict says why."""
    home = tmp_path / "workspace"
    promote_tiny_classifier(home)
    if case == "no wait":
        monkeypatch.setenv("CERVICURVE_PRELOAD_WAIT_S", "0")
    if case == "broken model":
        (home / "promoted" / "classify" / "best.pt").write_bytes(b"not a checkpoint")
    radiograph = tmp_path / "spine.png"
    radiograph.write_bytes(phantom_png("normal", seed=5, size=256))
    log = tmp_path / "server.log"
    server, url = start_server(home, log, launcher=("ui.serve",))  # returns once the server answers
    try:
        said = log.read_text(errors="replace")
        assert {"loaded": "the promoted models are loaded",
                "no wait": "(CERVICURVE_PRELOAD_WAIT_S=0)",
                "broken model": "the promoted models could not be loaded"}[case] in said, said
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(url)
        page.get_by_text(NOTICE).first.wait_for(timeout=30_000)
        page.locator("input[type='file']").first.set_input_files(str(radiograph))
        if case == "broken model":
            page.get_by_text("Loading the models failed").first.wait_for(timeout=60_000)
            assert page.get_by_text("Traceback").count() == 0
        else:
            page.get_by_text("spine.png: ").first.wait_for(timeout=60_000)
            assert "Traceback" not in log.read_text(errors="replace")
    finally:
        stop_server(server)

