"""The Label page in a real browser: `streamlit run app.py` + Debian's chromium driven by playwright.

The mouse drags each film's C2-C7 box and clicks its 23 landmarks (one film on the zoomed view), picks the class and
saves; the database must hold box and points within 2 px of the clicks, in full-image pixels. Then the labels are
exported from the page, a detector, a landmark model and a classifier are trained on them from the Train page,
promoted, and more films are labeled starting from their drafts (points off by more than
2 px dragged to place on the canvas in edit mode, or, for a draft off at more than 6 points, cleared and clicked
afresh). Seconds per film with and without pre-annotation and the distance
between the draft and the saved points are printed (and written to $CERVICURVE_LABEL_TIMING when set).

CERVICURVE_LABEL_FILMS sets how many films are labeled by hand (default 9: the splits need 3 patients per class; the
README's numbers come from 20).
"""
from __future__ import annotations

import json
import os
import re
import statistics
import time
from pathlib import Path

import numpy as np
import pytest

from test_browser import CHROMIUM, CHROMIUM_ARGS, NOTICE, keep_screenshot, start_server, stop_server
from test_labels import unlabeled_phantoms

BY_HAND = int(os.environ.get("CERVICURVE_LABEL_FILMS", "9"))
WITH_DRAFT = 4
TASK_OPTIONS = {"detect": "Detect (C2–C7 box)", "landmarks": "Landmarks (23 points)",
                "classify": "Classify (curvature class)"}

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="/usr/bin/chromium is not installed (apt-get install chromium)"),
]


class LabelPage:
    """The page's controls, found by their widget keys (Streamlit puts ``st-key-<key>`` on each)."""

    def __init__(self, page):
        self.page = page

    def button(self, key: str):
        return self.page.locator(f".st-key-{key} button").first

    def canvas(self):
        return self.page.locator("canvas.upper-canvas").first

    def text(self, text: str, timeout: float = 30_000):
        try:
            self.page.get_by_text(text).first.wait_for(timeout=timeout)
        except Exception:
            if os.environ.get("CERVICURVE_SCREENSHOT_DIR"):  # what the page showed instead
                self.page.screenshot(path=str(Path(os.environ["CERVICURVE_SCREENSHOT_DIR"]) / "label_failure.png"),
                                     full_page=True)
            raise

    def canvas_origin(self, view) -> tuple[float, float, float]:
        self.canvas().wait_for(state="visible", timeout=30_000)  # a canvas drawn afresh may be mounting
        box = self.canvas().bounding_box()
        return box["x"], box["y"], box["width"] / view.size[0]

    def at(self, view, x: float, y: float) -> tuple[float, float]:
        """Screen position of image pixel (x, y) on the canvas showing ``view``."""
        left, top, css = self.canvas_origin(view)
        cx, cy = view.to_canvas(x, y)
        # a box clipped to the film's edge ends on the canvas's last pixel, not past it
        cx, cy = min(max(cx, 0.0), view.size[0] - 0.5), min(max(cy, 0.0), view.size[1] - 0.5)
        return left + cx * css, top + cy * css

    def mode(self, name: str) -> None:
        option = self.page.locator(".st-key-label_mode label").filter(has_text=name).first
        if option.locator("input").is_checked():
            return
        option.click()
        self.wait_idle()
        self.page.wait_for_timeout(700)  # the canvas takes the new tool once the rerun reaches it

    def choose(self, curvature_class: str) -> None:
        self.button(f"label_class_{curvature_class}").click()
        self.page.locator(f".st-key-label_class_{curvature_class} [data-testid='stBaseButton-primary']").wait_for(
            timeout=30_000)

    def drag(self, start, end) -> None:
        mouse = self.page.mouse
        mouse.move(*start)
        mouse.down()
        mouse.move((start[0] + end[0]) / 2, (start[1] + end[1]) / 2, steps=4)
        mouse.move(*end, steps=4)
        mouse.up()

    def place_points(self, view, points, first: int = 0) -> None:
        for k, (x, y) in enumerate(points, start=first):
            shown = f"({k + 2} of 23)" if k + 1 < 23 else "All 23 points placed"
            self.page.mouse.click(*self.at(view, x, y))
            # wait for the page to take the point in before the next click; a click that landed while a freshly
            # drawn canvas was still starting up is made again
            try:
                self.page.get_by_text(shown).first.wait_for(timeout=10_000)
            except Exception:
                self.page.mouse.click(*self.at(view, x, y))
                self.text(shown)

    def points_placed(self) -> int:
        """The page's count of placed points, once the page has settled (two reads a second apart agree)."""
        def read() -> int:
            self.wait_idle()
            caption = self.page.get_by_text("points placed:").first.inner_text()
            return int(caption.split("points placed: ")[1].split(" ")[0])

        last = read()
        while True:
            self.page.wait_for_timeout(1000)
            now = read()
            if now == last:
                return now
            last = now

    def wait_idle(self) -> None:
        self.page.wait_for_timeout(200)
        self.page.locator("[data-testid='stStatusWidget']").wait_for(state="hidden", timeout=60_000)


def screen_view(case, zoom_box=None):
    from ui import canvas

    size = (case.width, case.height)
    return canvas.zoom_view(size, zoom_box) if zoom_box is not None else canvas.full_view(size)


def label_by_hand(ui: LabelPage, case, number: int, total: int, zoom: bool, shot: Path | None = None) -> float:
    """Box, 23 points, class, save; returns the seconds from the film appearing to the save confirmed."""
    ui.text(f"Film {number} of {total}")
    ui.wait_idle()
    start = time.monotonic()
    view = screen_view(case)
    ui.mode("C2–C7 box")
    x1, y1, x2, y2 = case.roi_box
    ui.drag(ui.at(view, x1, y1), ui.at(view, x2, y2))
    ui.text("Box (image px): " + f"{x1:.0f}"[:1])
    ui.wait_idle()
    ui.mode("Landmarks")
    points = case.landmarks
    if zoom:
        ui.page.locator(".st-key-label_zoom label").first.click()
        ui.text("Zoomed to the box")
        ui.wait_idle()
        view = screen_view(case, zoom_box=[round(v, 2) for v in case.roi_box])  # the box as the page keeps it
        ui.page.wait_for_function(  # the zoomed canvas is a new one: wait until it is up at its own size
            "w => [...document.querySelectorAll('*')].some(e => e.shadowRoot && [...e.shadowRoot.querySelectorAll("
            "'canvas.upper-canvas')].some(c => Math.abs(c.width - w) <= 1))", arg=view.size[0], timeout=30_000)
        ui.page.wait_for_timeout(500)
    ui.place_points(view, points[:12])
    if shot is not None:
        ui.wait_idle()
        ui.page.screenshot(path=str(shot), full_page=True)
    ui.place_points(view, points[12:], first=12)
    if zoom:
        ui.page.locator(".st-key-label_zoom label").first.click()  # back to the whole film
        ui.wait_idle()
    ui.choose(case.curvature_class)
    ui.button("label_save").click()
    ui.text("Saved label")
    seconds = time.monotonic() - start
    if number < total:
        ui.button("label_next").click()
    return seconds


def accept_draft(ui: LabelPage, case, number: int, total: int, image_id: int, store) -> float:
    """A film pre-annotated by the models: when the detector found no box, draw it and pre-annotate again (the
    landmark model then reads your box); drag every point more than 2 px off to its place (edit mode), or place them
    when there are none; choose the class; save. Returns the seconds, less the time this test spends computing
    the same draft to know where the page's points are."""
    from core.inference import drafts

    ui.text(f"Film {number} of {total}")
    ui.wait_idle()
    start, overhead = time.monotonic(), 0.0
    view = screen_view(case)

    def pre_annotate(box=None):
        nonlocal overhead
        ui.button("label_draft").click()
        ui.text("Started from a model draft")
        ui.wait_idle()
        ui.page.wait_for_timeout(700)  # the canvas is drawn afresh from the draft
        clock = time.monotonic()
        draft = drafts.draft_for_image(image_id, annotator_box=box, store=store)
        overhead += time.monotonic() - clock
        return draft

    draft = pre_annotate() if ui.page.get_by_text("Started from a model draft").count() == 0 else None
    if draft is None:
        clock = time.monotonic()
        draft = drafts.draft_for_image(image_id, store=store)
        overhead += time.monotonic() - clock
    if draft.roi_box is None:
        ui.mode("C2–C7 box")
        x1, y1, x2, y2 = case.roi_box
        ui.drag(ui.at(view, x1, y1), ui.at(view, x2, y2))
        ui.wait_idle()
        draft = pre_annotate([round(v, 2) for v in case.roi_box])
    placed = ui.points_placed()
    if placed != 23:
        draft.landmarks = None  # the page's draft brought no points (the page is the truth here)
    off = [] if draft.landmarks is None else [
        k for k, point in enumerate(np.asarray(draft.landmarks, dtype=float))
        if not np.isfinite(point).all() or np.hypot(*(point - case.landmarks[k])) > 2]
    if draft.landmarks is None or len(off) > 6:
        # no points, or a draft too far off to fix one by one (its points crowd each other, so a drag can grab
        # the wrong one): clear them and click all 23, as an annotator would
        if placed:
            ui.button("label_clear").click()
            ui.text("(1 of 23)")
            ui.wait_idle()
            ui.page.wait_for_timeout(700)
        ui.mode("Landmarks")
        ui.place_points(view, case.landmarks)
    else:
        edit = ui.page.locator("button[aria-label='Edit']").first
        points = np.asarray(draft.landmarks, dtype=float)
        for k in reversed(range(23)):  # where draft points overlap, the canvas grabs the last drawn: move it first
            point = points[k]
            if np.isfinite(point).all() and np.hypot(*(point - case.landmarks[k])) > 2:
                ui.canvas().wait_for(state="visible", timeout=30_000)
                if edit.get_attribute("aria-pressed") != "true":  # a canvas drawn afresh starts with editing off
                    edit.click()
                ui.drag(ui.at(view, *point), ui.at(view, *case.landmarks[k]))
                ui.wait_idle()
        if edit.get_attribute("aria-pressed") == "true":
            edit.click()
    ui.choose(case.curvature_class)
    ui.button("label_save").click()
    ui.text("Saved label")
    seconds = time.monotonic() - start - overhead
    if number < total:
        ui.button("label_next").click()
    return seconds


def train_on_page(page, url: str, task: str, model: str, fields: dict[str, str], extra: tuple[str, ...] = ()) -> Path:
    """Start a run from the Train page on the labeled films (task, dataset, model, the main fields, other keys),
    as a user would, and wait until it finishes; returns the run folder."""
    from core.runs import layout

    before = {run.run_id for run in layout.list_runs()}
    page.goto(f"{url}/train")
    page.get_by_text(NOTICE).first.wait_for(timeout=60_000)
    for key, option in (("train_task", TASK_OPTIONS[task]), ("train_dataset", "films"),
                        ("train_model" if task == "classify" else f"train_model_{task}", model)):
        page.locator(f".st-key-{key} [role=combobox]").click()
        page.get_by_role("option", name=re.compile(f"^{re.escape(option)}( —|$)")).click()  # "cnn — ..." too
        page.wait_for_timeout(600)
    for label, value in fields.items():
        box = page.get_by_label(label, exact=True)
        box.fill(value)
        box.press("Enter")
        page.wait_for_timeout(400)
    if extra:
        area = page.get_by_label("Other keys (one key=value per line)")
        area.fill("\n".join(extra))
        area.press("Control+Enter")
        page.wait_for_timeout(600)
    start = page.get_by_role("button", name="Start")
    start.wait_for(timeout=30_000)
    assert start.is_enabled(), page.locator("[data-testid='stAlert']").all_inner_texts()
    start.click()
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline:
        new = [run for run in layout.list_runs() if run.run_id not in before]
        if new and layout.read_status(new[0].run_dir)["state"] not in ("queued", "running"):
            break
        time.sleep(1)
    (run,) = new
    run_dir = Path(run.run_dir)
    status = layout.read_status(run_dir)
    assert status["state"] == "done", (run_dir / "train.log").read_text()[-3000:]
    page.get_by_text("Done —").first.wait_for(timeout=60_000)  # the live view says so too
    return run_dir


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


def test_label_by_mouse_export_train_and_label_from_drafts(browser, tmp_path, monkeypatch):
    home = tmp_path / "workspace"
    home.mkdir()
    monkeypatch.setenv("CERVICURVE_HOME", str(home))
    cases = unlabeled_phantoms(home, BY_HAND + WITH_DRAFT, size=128)
    from core.data.store import AnnotationStore

    store = AnnotationStore()
    ids = [image.image_id for image in store.images("films")]
    server, url = start_server(home, tmp_path / "server.log")
    timing: dict = {"films_by_hand": BY_HAND, "films_with_draft": WITH_DRAFT}
    try:
        page = browser.new_page(viewport={"width": 1500, "height": 1700})  # the whole canvas on screen
        ui = LabelPage(page)
        page.goto(f"{url}/label")
        page.get_by_text(NOTICE).first.wait_for(timeout=30_000)
        page.get_by_label("Annotator").fill("ana")
        ui.button("label_start").click()
        ui.text(f"Film 1 of {len(cases)}", timeout=60_000)

        by_hand = []
        for n, case in enumerate(cases[:BY_HAND]):
            shot = tmp_path / "label_annotating.png" if n == 1 else None
            by_hand.append(label_by_hand(ui, case, n + 1, len(cases), zoom=(n == 0), shot=shot))
        keep_screenshot(tmp_path / "label_annotating.png", "label_annotating.png")

        readings = {r.image_id: r for r in store.readings("films")}
        assert len(readings) == BY_HAND
        for image_id, case in zip(ids[:BY_HAND], cases):
            reading = readings[image_id]
            assert np.abs(np.asarray(reading.roi_box) - case.roi_box).max() <= 2.0, (image_id, reading.roi_box)
            assert np.abs(reading.landmarks - case.landmarks).max() <= 2.0, image_id
            assert reading.curvature_class == case.curvature_class and reading.annotator == "ana"
        timing["seconds_by_hand"] = [round(s, 2) for s in by_hand]

        # export from the page, then train on the labels through core runs
        page.locator(".st-key-label_section label").filter(has_text="Export").click()
        ui.wait_idle()
        from core.data.datasets import make_splits

        make_splits("films", store=store)
        page.locator(".st-key-label_export_kind").click()
        page.get_by_role("option", name="YOLO pose (box + 23 points)").click()
        ui.button("label_export").click()
        ui.text("exported")
        assert list((home / "exports").glob("films-yolo-pose-*/data.yaml"))

        from core.runs import promotion

        # train a detector, a landmark model and a classifier on those labels from the Train page
        started = time.monotonic()
        train_tab = browser.new_page(viewport={"width": 1500, "height": 1300})  # the Label tab keeps its session
        detector = train_on_page(train_tab, url, "detect", "yolov8n.yaml",
                                 {"epochs": "30", "imgsz": "128", "batch": "8", "device": "cpu", "patience": "30"})
        landmarks = train_on_page(train_tab, url, "landmarks", "landmark-unet",
                                  {"epochs": "25", "input_size": "64", "batch_size": "8", "device": "cpu"},
                                  ("widths=[8,16,24,32,48]", "film=0", "mirror_average=false"))
        classifier = train_on_page(train_tab, url, "classify", "cnn",
                                   {"epochs": "3", "input_size": "32", "batch_size": "8", "device": "cpu",
                                    "augment": "false", "warmup_epochs": "0"}, ("workers=0", "n_boot=0"))
        for run in (detector, landmarks, classifier):
            promotion.promote(run)
        timing["training_seconds"] = round(time.monotonic() - started, 1)
        train_tab.close()

        # label the rest starting from the promoted models' drafts
        page.locator(".st-key-label_section label").filter(has_text="Annotate").click()
        ui.wait_idle()
        page.locator(".st-key-label_auto_draft label").first.click()
        ui.button("label_refresh").click()
        ui.wait_idle()
        with_draft = []
        queue = [i for i in ids if i not in readings]
        for n, image_id in enumerate(queue):
            with_draft.append(accept_draft(ui, cases[ids.index(image_id)], n + 1, len(queue), image_id, store))
        drafted = [r for r in store.readings("films") if r.from_draft]
        assert len(drafted) == WITH_DRAFT
        for reading in drafted:
            case = cases[ids.index(reading.image_id)]
            assert np.abs(reading.landmarks - case.landmarks).max() <= 2.0
        moves = [m for r in drafted for m in (r.point_moves_px or []) if m is not None]
        timing["seconds_with_draft"] = [round(s, 2) for s in with_draft]
        timing["draft_point_move_px_mean"] = round(float(np.mean(moves)), 2) if moves else None
        timing["draft_point_move_px_median"] = round(float(np.median(moves)), 2) if moves else None
        timing["draft_points"] = len(moves)

        # a second annotator reads some of the same films: the team view
        for image_id, case in zip(ids[:6], cases):
            store.save_reading(image_id, annotator="ben", roi_box=case.roi_box,
                               curvature_class=case.curvature_class if image_id != ids[1] else
                               ("reversed" if case.curvature_class != "reversed" else "normal"),
                               landmarks=case.landmarks + np.random.default_rng(image_id).normal(0, 0.7, (23, 2)),
                               seconds=35.0)
        page.locator(".st-key-label_section label").filter(has_text="Team").click()
        ui.text("Agreement on 6 films")
        ui.wait_idle()
        page.locator(".js-plotly-plot .main-svg").first.wait_for(timeout=30_000)
        page.wait_for_timeout(2000)  # the chart and the tables draw after the page settles
        team_shot = tmp_path / "label_team.png"
        page.screenshot(path=str(team_shot), full_page=True)
        keep_screenshot(team_shot, "label_team.png")
    finally:
        stop_server(server)
    timing["median_seconds_by_hand"] = round(statistics.median(timing["seconds_by_hand"]), 2)
    timing["median_seconds_with_draft"] = round(statistics.median(timing["seconds_with_draft"]), 2)
    print(json.dumps(timing))
    if os.environ.get("CERVICURVE_LABEL_TIMING"):
        Path(os.environ["CERVICURVE_LABEL_TIMING"]).write_text(json.dumps(timing, indent=1))

