"""The Train page in a real browser: start a tiny run through the settings' own widgets (plain labels), see the
curve gain a point and the run chooser follow the run from starting to running by itself; then two runs side by side
on the Runs page. Prints the time from clicking Start to the first curve point and the server's CPU while an open Train
page polls a running run. CERVICURVE_SCREENSHOT_DIR keeps train_live.png and runs_compare.png."""
from __future__ import annotations

import time

from core.runs import launch, layout
from tests.helpers.browser import (BROWSER_MARKS, NOTICE, after_rerun, cpu_percent_over, drawn, keep_screenshot,
                                   start_server, stop_server)
from tests.helpers.tiny import import_tiny
from tests.helpers.wait import wait_for

pytestmark = BROWSER_MARKS

# markers drawn in the first trace of the first curve (the loss): one per finished epoch
POINTS_JS = """() => {
  const trace = document.querySelector('[data-testid="stPlotlyChart"] .scatterlayer .trace');
  return trace ? trace.querySelectorAll('.points path').length : 0;
}"""


def set_field(page, label: str, value: str) -> None:
    box = page.get_by_label(label, exact=True)
    box.fill(value)
    after_rerun(page, lambda: box.press("Enter"))


def test_start_a_run_and_watch_the_curve_gain_a_point(browser, tmp_path, monkeypatch):
    from playwright.sync_api import expect

    home = tmp_path / "workspace"
    home.mkdir()
    monkeypatch.setenv("CERVICURVE_HOME", str(home))
    monkeypatch.setenv("CERVICURVE_THREADS", "1")
    import_tiny(home)
    server, url = start_server(home, tmp_path / "server.log")
    try:
        page = browser.new_page(viewport={"width": 1500, "height": 1300})
        page.goto(f"{url}/train")
        page.get_by_text(NOTICE).first.wait_for(timeout=60_000)
        page.get_by_label("Epochs", exact=True).wait_for(timeout=60_000)
        for label, value in (("Epochs", "60"), ("Batch size", "4"), ("Input size (px)", "48"),
                             ("Patience (epochs)", "0"), ("Warm-up epochs", "0")):
            set_field(page, label, value)
        start = page.get_by_role("button", name="Start")
        assert start.is_enabled()
        clicked = time.monotonic()
        start.click()
        page.wait_for_function(f"({POINTS_JS})() >= 1", timeout=180_000)
        first_point = time.monotonic() - clicked
        points = page.evaluate(POINTS_JS)
        page.wait_for_function(f"({POINTS_JS})() > {points}", timeout=180_000)  # the curve gains a point by itself
        print(f"\nstart -> first curve point: {first_point:.1f} s")
        [run] = layout.list_runs()
        # the chooser was drawn while the run was starting; the live view's poll brings it up to date by itself
        expect(page.get_by_role("combobox", name="Run", exact=True)).to_have_value(f"{run.run_id} — running",
                                                                                 timeout=30_000)
        page.get_by_text("Running on cpu — training").first.wait_for(timeout=30_000)

        # what an open Train page costs the server while one run trains: its CPU over 20 s of polling
        print(f"server CPU while the page polls a running run: {cpu_percent_over(server.pid, 20):.1f} % of one core")
        # the app scrolls inside its main block: bring the live view into the picture
        page.get_by_text("Live view", exact=True).scroll_into_view_if_needed()
        page.mouse.wheel(0, 250)
        drawn(page)
        shot = tmp_path / "train_live.png"
        page.screenshot(path=str(shot))
        keep_screenshot(shot, "train_live.png")
        assert layout.read_status(run.run_dir)["state"] == "running"
        page.get_by_role("button", name="Cancel").first.click()
        wait_for(lambda: layout.read_status(run.run_dir)["state"] == "cancelled", timeout=60)
    finally:
        stop_server(server)


def test_two_runs_side_by_side_on_the_runs_page(browser, tmp_path, monkeypatch):
    home = tmp_path / "workspace"
    home.mkdir()
    monkeypatch.setenv("CERVICURVE_HOME", str(home))
    monkeypatch.setenv("CERVICURVE_THREADS", "1")
    import_tiny(home)
    base = {"dataset": "tiny", "input_size": 32, "batch_size": 4, "n_boot": 200, "epochs": 6, "patience": 0}
    runs = [launch.start_run(dict(base, model="s_resnet34")), launch.start_run(dict(base, model="resnet34"))]
    wait_for(lambda: all(layout.read_status(r)["state"] in ("done", "failed") for r in runs), timeout=600)
    server, url = start_server(home, tmp_path / "server.log")
    try:
        page = browser.new_page(viewport={"width": 1500, "height": 1300})
        page.goto(f"{url}/runs")
        page.get_by_text(NOTICE).first.wait_for(timeout=60_000)
        picker = page.get_by_text("Open one run, or pick several to compare")
        picker.wait_for(timeout=60_000)
        for run in runs:
            page.locator("[data-testid='stMultiSelect']").last.click()
            page.get_by_role("option", name=run.name).click()
            page.keyboard.press("Escape")
        page.get_by_text("Test metrics in the study's layout").wait_for(timeout=60_000)
        page.get_by_text("the published row is").wait_for(timeout=30_000)  # (the table itself is a canvas grid)
        page.get_by_text("runs side by side").scroll_into_view_if_needed()
        drawn(page)
        shot = tmp_path / "runs_compare.png"
        page.screenshot(path=str(shot))
        keep_screenshot(shot, "runs_compare.png")
    finally:
        stop_server(server)
