"""The Label page in a real browser: `streamlit run app.py` + Debian's chromium driven by playwright.

The film is edited in the keypoints component (ui/components/keypoints): the mouse drags each film's C2-C7 box and
clicks its 23 landmarks in the component, picks the class there and presses "Save & next" — one server round trip
per film. The database must hold the clicked points in full-image pixels. Seconds and mouse actions (clicks, drags,
key presses) per film are printed (and written to $CERVICURVE_LABEL_TIMING when set); the film before the component
took 68 s and 29 clicks (a user test with streamlit-drawable-canvas: a server round trip per click).

- test_label_films_by_mouse: films by hand (CERVICURVE_LABEL_FILMS, default 4), then one film that uses the rest of
  the component (zoom, window/level, a click outside the box questioned, undo, reset, a point dragged, the
  unsaved-changes question next to the buttons); then the page at 1024 and 1400 px wide: no control's text cut, the
  component inside its column.
- test_label_export_train_and_label_from_drafts: 9 films by hand, export, a detector, a landmark model and a
  classifier trained from the Train page, and films labeled from their drafts (points dragged into place).
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

from tests.helpers.browser import BROWSER_MARKS, NOTICE, keep_screenshot, start_server, stop_server
from tests.helpers.films import unlabeled_phantoms
from tests.helpers.wait import wait_for

BY_HAND = int(os.environ.get("CERVICURVE_LABEL_FILMS", "4"))
FOR_TRAINING = 9  # the splits need 3 patients per class
WITH_DRAFT = 4
BEFORE = {"seconds_first_film": 68.0, "actions_first_film": 29}  # the user test, streamlit-drawable-canvas

pytestmark = BROWSER_MARKS

# Every control (button, widget label) with a text that does not fit: a cut text is wider than the box that shows
# it (scrollWidth > clientWidth). Boxes a few pixels wide are screen-reader-only parts, not text shown.
CUT_TEXTS = """root => [...root.querySelectorAll('button, [data-testid="stWidgetLabel"], label')]
    .filter(control => control.offsetParent !== null)
    .filter(control => [control, ...control.querySelectorAll('*')].some(
        e => e.clientWidth > 2 && e.scrollWidth > e.clientWidth + 1))
    .map(control => control.innerText.trim() || control.getAttribute('aria-label') || control.id)"""


class LabelPage:
    """The page and its keypoints component; every mouse action and key press made through it is counted."""

    def __init__(self, page):
        self.page = page
        self.frame = page.frame_locator("iframe[title*='keypoints']")
        self.actions = 0

    # -- the page around the component

    def button(self, key: str):
        return self.page.locator(f".st-key-{key} button").first

    def text(self, text: str, timeout: float = 30_000):
        try:
            self.page.get_by_text(text).first.wait_for(timeout=timeout)
        except Exception:
            if os.environ.get("CERVICURVE_SCREENSHOT_DIR"):  # what the page showed instead
                self.page.screenshot(path=str(Path(os.environ["CERVICURVE_SCREENSHOT_DIR"]) / "label_failure.png"),
                                     full_page=True)
            raise

    def wait_idle(self) -> None:
        self.page.locator("[data-testid='stStatusWidget']").wait_for(state="hidden", timeout=60_000)

    # -- the component

    def kp(self, selector: str):
        return self.frame.locator(selector).first

    def wait_film(self, image_id: int | None = None, timeout: float = 180_000) -> None:
        """The component shows ``image_id`` (any film when None), its film loaded, no answer pending."""
        which = "" if image_id is None else f"[data-image-id='{image_id}']"
        self.kp(f"#app[data-ready='1'][data-busy='0']{which}").wait_for(timeout=timeout)

    def wait_answer(self, timeout: float = 180_000) -> None:
        """Python has answered the component's last message. (A draft's first answer loads the three promoted
        models into the server: on a busy 2-core machine that took over a minute.)"""
        self.kp("#app[data-busy='0']").wait_for(timeout=timeout)

    def state(self, name: str) -> str:
        return self.kp("#app").get_attribute(f"data-{name}")

    def shown(self, what: str):
        """The component's own box ([x1, y1, x2, y2] or None) or 23 points ([x, y] or None each), in image pixels."""
        return json.loads(self.state(what))

    def show_film(self) -> None:
        """Scroll so the component's toolbar is at the top of the window (the film below it is then on screen)."""
        self.kp("#toolbar").evaluate("e => e.scrollIntoView({block: 'start'})")

    def mapping(self):
        """image (x, y) -> screen position on the view, from the component's own zoom and pan."""
        view = self.kp("#view")
        box = view.bounding_box()
        scale, tx, ty = (float(view.get_attribute(f"data-{k}")) for k in ("scale", "tx", "ty"))
        viewport = self.page.viewport_size
        assert box["y"] >= 0 and box["y"] + box["height"] <= viewport["height"], "the film is not on screen"

        def at(x: float, y: float) -> tuple[float, float]:
            return box["x"] + x * scale + tx, box["y"] + y * scale + ty

        return at, scale

    def click(self, position) -> None:
        self.page.mouse.click(*position)
        self.actions += 1

    def drag(self, start, end) -> None:
        mouse = self.page.mouse
        mouse.move(*start)
        mouse.down()
        mouse.move((start[0] + end[0]) / 2, (start[1] + end[1]) / 2, steps=4)
        mouse.move(*end, steps=4)
        mouse.up()
        self.actions += 1

    def press(self, selector: str) -> None:
        self.kp(selector).click()
        self.actions += 1

    def answered(self, selector: str, timeout: float = 180_000) -> None:
        """Press ``selector`` (draft, save) and wait for Python's answer itself: a new revision of the film. The
        component stops waiting after 30 s and reads as not busy, and an answer that comes later still replaces
        what was edited meanwhile (a clean-clone run at load 14 saved a draft's points that way)."""
        revision = self.kp("#app").get_attribute("data-revision")
        self.press(selector)
        self.kp(f"#app[data-busy='0']:not([data-revision='{revision}'])").wait_for(timeout=timeout)

    def key(self, key: str) -> None:
        self.page.keyboard.press(key)
        self.actions += 1


def stored(store, image_id: int):
    (reading,) = [r for r in store.readings("films") if r.image_id == image_id and r.annotator == "ana"]
    return reading


def label_by_hand(ui: LabelPage, case, image_id: int, next_id: int | None) -> dict:
    """Box (one drag), 23 clicks, the class, Save & next, all in the component. Returns seconds (film on screen
    to the next film on screen: the save is in the database by then), of those the seconds waiting on the server
    (Save & next to the next film shown), mouse actions, and the view's scale (how precisely a click lands in image
    pixels)."""
    ui.wait_film(image_id)
    ui.show_film()
    start, before = time.monotonic(), ui.actions
    at, scale = ui.mapping()
    if ui.kp("#face-left").is_visible():  # the session's first film: which side the face is on (asked once)
        ui.press(f"#face-{case.facing}")
    x1, y1, x2, y2 = case.roi_box
    ui.drag(at(x1, y1), at(x2, y2))
    assert ui.state("mode") == "points"  # a box drawn: the next click places point 1
    for x, y in case.landmarks:
        ui.click(at(x, y))
    assert ui.state("placed") == "23"
    ui.press(f"#class-{case.curvature_class}")
    ui.press("#save-next")
    sent = time.monotonic()
    ui.wait_film(next_id) if next_id is not None else ui.wait_answer()
    end = time.monotonic()
    return {"seconds": end - start, "waiting": end - sent, "actions": ui.actions - before, "scale": scale}


def open_label_page(browser, url: str, width: int, height: int, first_film: int) -> LabelPage:
    page = browser.new_page(viewport={"width": width, "height": height})
    ui = LabelPage(page)
    page.goto(f"{url}/label")
    page.get_by_text(NOTICE).first.wait_for(timeout=60_000)
    page.get_by_label("Annotator").fill("ana")
    ui.button("label_start").click()
    ui.wait_film(first_film)
    return ui


def cut_texts(ui: LabelPage) -> list[str]:
    ui.wait_idle()
    settled = "() => document.fonts.ready.then(() => new Promise(r => requestAnimationFrame(() => " \
              "requestAnimationFrame(r))))"  # fonts in and a layout pass done
    ui.page.evaluate(settled)
    if ui.page.locator("iframe[title*='keypoints']").count():
        ui.kp("body").evaluate(f"b => ({settled})()")
    return ui.page.evaluate(CUT_TEXTS, ui.page.locator("body").element_handle())


def check_fit(ui: LabelPage, width: int) -> None:
    """No control's text cut, on the page or in the component; the component inside its column, nothing in it
    wider than it; the film's view inside the component."""
    cut = cut_texts(ui)
    frame = ui.page.locator("iframe[title*='keypoints']")
    cut += ui.kp("body").evaluate(CUT_TEXTS)
    assert not cut, f"text cut at {width} px: {cut}"
    column = ui.page.locator(".st-key-label_keypoints_box").bounding_box()
    outer = frame.bounding_box()
    assert outer["x"] >= column["x"] - 0.5 and outer["x"] + outer["width"] <= column["x"] + column["width"] + 0.5
    scroll, client = ui.kp("body").evaluate("b => [document.documentElement.scrollWidth, "
                                            "document.documentElement.clientWidth]")
    assert scroll <= client, f"the component is wider than its frame at {width} px: {scroll} > {client}"
    view = ui.kp("#view").bounding_box()
    assert view["x"] >= outer["x"] and view["x"] + view["width"] <= outer["x"] + outer["width"] + 0.5
    side = ui.kp("#side").bounding_box()
    assert side["x"] + side["width"] <= outer["x"] + outer["width"] + 0.5


def use_the_rest(ui: LabelPage, case, image_id: int, store, shot: Path | None) -> None:
    """One film through the component's other tools; what is saved must still be the clicked points."""
    ui.wait_film(image_id)
    ui.show_film()
    at, scale = ui.mapping()
    x1, y1, x2, y2 = case.roi_box
    ui.drag(at(x1, y1), at(x2, y2))
    # the corners are named anterior/posterior from the side the face is on (kept from the films before; the
    # Face button turns it), with the image side beside the name
    if ui.kp("#facing").inner_text() != {"left": "Face ◀", "right": "Face ▶"}[case.facing]:
        ui.press("#facing")
    ui.click(at(*case.landmarks[0]))
    anterior = "anterior" if case.facing == "left" else "posterior"
    assert f"C2 bottom, {anterior}" in ui.kp("#next").inner_text() and "(image left)" in ui.kp("#next").inner_text()
    # another section and back: the component is drawn afresh and keeps the edits not sent yet
    ui.page.locator(".st-key-label_section label").filter(has_text="Review").click()
    ui.page.locator("iframe[title*='keypoints']").wait_for(state="detached", timeout=30_000)
    ui.page.locator(".st-key-label_section label").filter(has_text="Annotate").click()
    ui.wait_film(image_id)
    ui.show_film()
    assert ui.state("placed") == "1" and ui.state("dirty") == "1" and ui.state("mode") == "points"
    at, _ = ui.mapping()
    ui.press("#undo")

    # a click outside the box (the skull) is questioned; Cancel drops it
    ui.click(at(x1 + (x2 - x1) / 2, max(1.0, y1 / 3)))
    ui.kp("#confirm").wait_for(state="visible", timeout=5_000)
    assert "Outside the C2–C7 box" in ui.kp("#confirm-text").inner_text()
    ui.press("#confirm-cancel")
    assert ui.state("placed") == "0"

    # brightness up makes the film brighter
    mean = "() => { const c = document.getElementById('view'); const d = c.getContext('2d').getImageData(" \
           "0, 0, c.width, c.height).data; let s = 0; for (let i = 0; i < d.length; i += 4) s += d[i]; " \
           "return s / (d.length / 4); }"
    dark = ui.kp("#view").evaluate(f"c => ({mean})()")
    ui.kp("#brightness").focus()
    ui.page.keyboard.press("End")  # the slider's top: brightness 100
    bright = ui.kp("#view").evaluate(f"c => ({mean})()")
    assert bright > dark + 5, (dark, bright)
    ui.kp("#view-reset").click()

    # "To box" fills the view with the box (a tall box: its width, its top first); + and the wheel zoom further, a
    # right-button drag pans
    ui.press("#zoom-box")
    at, fitted = ui.mapping()
    view = ui.kp("#view").bounding_box()
    (bx1, by1), (bx2, by2) = at(x1, y1), at(x2, y2)
    assert bx1 >= view["x"] - 0.5 and by1 >= view["y"] - 0.5 and bx2 <= view["x"] + view["width"] + 0.5
    assert max((bx2 - bx1) / view["width"], (by2 - by1) / view["height"]) > 0.85
    assert fitted > 1.5 * scale, (scale, fitted)  # a real zoom, not x0.40 -> x0.49
    ui.press("#zoom-in")
    _at, zoomed = ui.mapping()
    assert zoomed == pytest.approx(1.5 * fitted, rel=1e-3)
    ui.page.mouse.move(view["x"] + view["width"] / 2, view["y"] + view["height"] / 2)
    ui.page.mouse.wheel(0, -200)
    ui.page.wait_for_function("s => Number(document.querySelector('iframe[title*=keypoints]').contentDocument"
                              ".getElementById('view').dataset.scale) > s", arg=zoomed * 1.1, timeout=5_000)
    at, zoomed = ui.mapping()
    assert zoomed > 1.8 * scale, (scale, zoomed)

    def on_screen(x: float, y: float):
        """Pan (right-button drag) until image point (x, y) is well inside the view; its screen position."""
        nonlocal at
        px, py = at(x, y)
        cx, cy = view["x"] + view["width"] / 2, view["y"] + view["height"] / 2
        if abs(px - cx) > 0.4 * view["width"] or abs(py - cy) > 0.4 * view["height"]:
            mouse = ui.page.mouse
            mouse.move(cx, cy)
            mouse.down(button="right")
            mouse.move(cx - (px - cx) / 2, cy - (py - cy) / 2, steps=3)
            mouse.move(cx - (px - cx), cy - (py - cy), steps=3)
            mouse.up(button="right")
            ui.actions += 1
            at, _ = ui.mapping()
            px, py = at(x, y)
        return px, py

    points = case.landmarks
    for x, y in points[:12]:
        ui.click(on_screen(x, y))
    assert ui.state("placed") == "12"
    if shot is not None:
        ui.page.screenshot(path=str(shot))
    ui.press("#undo")
    assert ui.state("placed") == "11"
    ui.press("#reset")
    assert ui.state("placed") == "0"
    ui.press("#undo")  # Reset is undone too
    assert ui.state("placed") == "11"
    # the 12th point placed a little off, then dragged to its place
    off = points[11] + [3.0, 2.0]
    ui.click(on_screen(*off))
    ui.drag(on_screen(*off), on_screen(*points[11]))
    for x, y in points[12:21]:
        ui.click(on_screen(x, y))
    ui.key("h")  # C7's lower corners "behind the shoulders": not visible
    ui.key("h")
    assert ui.state("placed") == "21" and ui.state("hidden") == "2"

    # another film with unsaved changes (the last film: back to the one before): the question comes up next to the
    # buttons, and Stay keeps everything
    ui.press("#previous")
    question = ui.kp("#question")
    question.wait_for(state="visible", timeout=5_000)
    asked, nav = question.bounding_box(), ui.kp("#nav").bounding_box()
    assert 0 <= nav["y"] - (asked["y"] + asked["height"]) <= 40, (asked, nav)
    assert asked["y"] + asked["height"] <= ui.page.viewport_size["height"]
    ui.press("#question-stay")
    assert ui.state("placed") == "21"
    ui.press("#zoom-fit")
    ui.press(f"#class-{case.curvature_class}")
    ui.press("#save")
    ui.wait_answer()
    ui.text(f"(image {image_id})")
    reading = stored(store, image_id)
    expected = case.landmarks.copy()
    expected[21:] = np.nan
    assert np.allclose(reading.landmarks, expected, atol=0.6 / zoomed + 0.01, equal_nan=True)
    assert reading.curvature_class == case.curvature_class


def test_label_films_by_mouse(browser, tmp_path, monkeypatch):
    home = tmp_path / "workspace"
    home.mkdir()
    monkeypatch.setenv("CERVICURVE_HOME", str(home))
    cases = unlabeled_phantoms(home, BY_HAND + 1, size=256)
    from core.data.store import AnnotationStore

    store = AnnotationStore()
    ids = [image.image_id for image in store.images("films")]
    server, url = start_server(home, tmp_path / "server.log")
    timing: dict = {"before": BEFORE}
    try:
        ui = open_label_page(browser, url, 1400, 1300, ids[0])
        films = [label_by_hand(ui, case, image_id, ids[n + 1])
                 for n, (case, image_id) in enumerate(zip(cases[:BY_HAND], ids))]
        for case, image_id, film in zip(cases, ids, films):
            reading = stored(store, image_id)
            # the clicked points, in image pixels: within what one screen pixel is on the film
            assert np.abs(reading.landmarks - case.landmarks).max() <= 0.6 / film["scale"] + 0.01, image_id
            assert np.abs(np.asarray(reading.roi_box) - case.roi_box).max() <= 0.6 / film["scale"] + 0.01
            assert reading.curvature_class == case.curvature_class and reading.seconds is not None
        timing.update(seconds_per_film=[round(f["seconds"], 2) for f in films],
                      actions_per_film=[f["actions"] for f in films],
                      seconds_waiting_per_film=[round(f["waiting"], 2) for f in films],
                      seconds_first_film=round(films[0]["seconds"], 2), actions_first_film=films[0]["actions"],
                      median_seconds=round(statistics.median(f["seconds"] for f in films), 2))
        shot = tmp_path / "label_annotating.png"
        use_the_rest(ui, cases[BY_HAND], ids[BY_HAND], store, shot)
        keep_screenshot(shot, "label_annotating.png")
        ui.page.close()

        for image_id, case in zip(ids, cases):  # a second reader: Review and Team have something to show
            store.save_reading(image_id, annotator="ben", roi_box=case.roi_box, curvature_class=case.curvature_class,
                               landmarks=case.landmarks + 1.0, seconds=40.0)

        for width in (1024, 1400):  # the page on a laptop and on a desktop screen, sidebar open
            ui = open_label_page(browser, url, width, 900, ids[0])
            ui.page.locator(".st-key-label_filter [role=combobox]").click()
            ui.page.get_by_role("option", name="All images").click()
            ui.wait_film()
            check_fit(ui, width)
            for section, shown in (("Review", "Comment (needed to reject)"), ("Team", "Agreement on"),
                                   ("Export", "Format")):
                ui.page.locator(".st-key-label_section label").filter(has_text=section).click()
                ui.text(shown)
                ui.page.locator("iframe[title*='keypoints']").wait_for(state="detached", timeout=30_000)
                assert not cut_texts(ui), (section, width, cut_texts(ui))
            ui.page.close()
    finally:
        stop_server(server)
    log = (tmp_path / "server.log").read_text(errors="replace")
    assert "will be removed after" not in log, log[-2000:]  # no deprecated st.components.v1.html on this page
    print(json.dumps(timing))
    if os.environ.get("CERVICURVE_LABEL_TIMING"):
        Path(os.environ["CERVICURVE_LABEL_TIMING"]).write_text(json.dumps(timing, indent=1))
    assert timing["seconds_first_film"] < BEFORE["seconds_first_film"]
    assert timing["actions_first_film"] < BEFORE["actions_first_film"]


def accept_draft(ui: LabelPage, case, image_id: int, next_id: int | None) -> float:
    """A film pre-annotated by the models: when the detector found no box, draw it and ask for a draft again (the
    landmark model then reads your box); drag every point more than 2 px off to its place, or, for a draft off at
    more than 6 points, Reset and click all 23; choose the class; Save & next. Returns the seconds. Where the box
    and points are is read from the component itself, as a user sees them (a draft computed beside it may differ)."""
    ui.wait_film(image_id)
    ui.wait_idle()  # no script run still to come with another copy of this film
    ui.show_film()
    start = time.monotonic()
    at, _scale = ui.mapping()

    if ui.state("placed") == "0" and ui.state("hidden") == "0":  # the page's draft brought nothing yet
        ui.answered("#draft")
    if ui.shown("box") is None:  # the detector found none: draw it, and the landmark model reads that box
        ui.press("#mode-box")
        x1, y1, x2, y2 = case.roi_box
        ui.drag(at(x1, y1), at(x2, y2))
        ui.answered("#draft")
    box = np.asarray(ui.shown("box"), dtype=float)  # what the component shows, not a draft computed beside it
    if np.abs(box - case.roi_box).max() > 2:  # the detector's box is off: its corners dragged into place
        ui.press("#mode-box")
        ui.drag(at(*box[:2]), at(*case.roi_box[:2]))
        ui.drag(at(*box[2:]), at(*case.roi_box[2:]))
        ui.press("#mode-points")
    assert np.abs(np.asarray(ui.shown("box"), dtype=float) - case.roi_box).max() <= 0.5, ui.shown("box")
    placed = int(ui.state("placed"))
    points = None if placed + int(ui.state("hidden")) != 23 else \
        np.asarray([p if p is not None else (np.nan, np.nan) for p in ui.shown("points")], dtype=float)
    off = [] if points is None else [k for k in range(23) if not np.isfinite(points[k]).all()
                                     or np.hypot(*(points[k] - case.landmarks[k])) > 2]
    if points is None or len(off) > 6 or any(not np.isfinite(points[k]).all() for k in off):
        if placed or int(ui.state("hidden")):
            ui.press("#reset")
        ui.press("#mode-points")
        for k, (x, y) in enumerate(case.landmarks):
            ui.click(at(x, y))
            assert ui.state("placed") == str(k + 1), (k, ui.state("placed"), ui.state("busy"), ui.shown("box"))
    else:
        for k in reversed(off):  # where draft points coincide, the later one is grabbed: move it first
            ui.drag(at(*points[k]), at(*case.landmarks[k]))
    assert ui.state("placed") == "23"
    ui.press(f"#class-{case.curvature_class}")
    if next_id is not None:
        ui.press("#save-next")
        ui.wait_film(next_id)
    else:
        ui.answered("#save-next")
    return time.monotonic() - start


def choose(page, key: str, option) -> None:
    """Pick ``option`` (text or pattern) in the select box with widget key ``key``; returns once the box shows it."""
    page.locator(f".st-key-{key} [role=combobox]").click()
    item = page.get_by_role("option", name=option).first
    text = item.inner_text().strip()
    item.click()
    page.wait_for_function("([key, text]) => { const box = document.querySelector(`.st-key-${key}`); "
                           "return !!box && (box.innerText.includes(text) || "
                           "[...box.querySelectorAll('input')].some(i => i.value.includes(text))); }",
                           arg=[key, text], timeout=30_000)


def train_on_page(page, url: str, task: str, model: str, settings: tuple[str, ...]) -> Path:
    """Start a run from the Train page on the labeled films — task, dataset and model picked in its select boxes,
    the settings typed as key=value lines in its "Other settings" box (they override the fields above it) — as a
    user would, and wait until it finishes; returns the run folder. Widgets are found by their keys."""
    from core.runs import layout
    from core.runs.registry import TASKS

    config_name = {"classify": "ClassifyConfig", "detect": "YoloConfig", "landmarks": "HeatmapConfig"}[task]
    before = {run.run_id for run in layout.list_runs()}
    page.goto(f"{url}/train")
    page.get_by_text(NOTICE).first.wait_for(timeout=60_000)
    choose(page, "train_task", re.compile(f"^{re.escape(TASKS[task].title)}: "))
    choose(page, "train_dataset", re.compile("^films$"))
    choose(page, "train_model" if task == "classify" else f"train_model_{task}",
           re.compile(f"^{re.escape(model)}( —|$)"))  # "cnn — ..." too
    area = page.locator(f".st-key-train_extra_{config_name} textarea")
    area.fill("\n".join(settings))
    area.press("Control+Enter")
    page.locator("[data-testid='stStatusWidget']").wait_for(state="hidden", timeout=60_000)
    page.wait_for_function("() => { const b = [...document.querySelectorAll('.st-key-train_start button')]"
                           ".filter(b => b.checkVisibility()); return b.length === 1 && !b[0].disabled; }",
                           timeout=60_000)  # the settings taken: Start enabled
    page.locator(".st-key-train_start button:visible").click()
    def finished() -> list:  # the run folder is the truth: poll its status.json as written
        new = [run for run in layout.list_runs() if run.run_id not in before]
        return new if new and layout.read_status_file(Path(new[0].run_dir)).get("state") in (
            "done", "failed", "cancelled") else []

    (run,) = wait_for(finished, timeout=900, every=1)
    run_dir = Path(run.run_dir)
    status = layout.read_status(run_dir)
    assert status["state"] == "done", (run_dir / "train.log").read_text()[-3000:]
    assert layout.read_config(run_dir)["dataset"] == "films"
    page.get_by_text(re.compile(r"^Done\b")).first.wait_for(timeout=60_000)  # the live view says so too
    return run_dir


def test_label_export_train_and_label_from_drafts(browser, tmp_path, monkeypatch):
    home = tmp_path / "workspace"
    home.mkdir()
    monkeypatch.setenv("CERVICURVE_HOME", str(home))
    cases = unlabeled_phantoms(home, FOR_TRAINING + WITH_DRAFT, size=128)
    from core.data.store import AnnotationStore

    store = AnnotationStore()
    ids = [image.image_id for image in store.images("films")]
    server, url = start_server(home, tmp_path / "server.log")
    timing: dict = {"films_by_hand": FOR_TRAINING, "films_with_draft": WITH_DRAFT}
    try:
        ui = open_label_page(browser, url, 1500, 1300, ids[0])
        page = ui.page
        by_hand = [label_by_hand(ui, case, image_id, ids[n + 1])
                   for n, (case, image_id) in enumerate(zip(cases[:FOR_TRAINING], ids))]
        readings = {r.image_id: r for r in store.readings("films")}
        assert len(readings) == FOR_TRAINING
        for image_id, case in zip(ids[:FOR_TRAINING], cases):
            reading = readings[image_id]
            assert np.abs(np.asarray(reading.roi_box) - case.roi_box).max() <= 0.5, (image_id, reading.roi_box)
            assert np.abs(reading.landmarks - case.landmarks).max() <= 0.5, image_id
            assert reading.curvature_class == case.curvature_class and reading.annotator == "ana"
        timing["seconds_by_hand"] = [round(f["seconds"], 2) for f in by_hand]

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
                                 ("epochs=30", "imgsz=128", "batch=8", "device=cpu", "patience=30"))
        landmarks = train_on_page(train_tab, url, "landmarks", "landmark-unet",
                                  ("epochs=25", "input_size=64", "batch_size=8", "device=cpu", "widths=[8,16,24,32,48]",
                                   "film=0", "mirror_average=false"))
        classifier = train_on_page(train_tab, url, "classify", "cnn",
                                   ("epochs=3", "input_size=32", "batch_size=8", "device=cpu", "augment=false",
                                    "warmup_epochs=0", "workers=0", "n_boot=0"))
        for run in (detector, landmarks, classifier):
            promotion.promote(run)
        timing["training_seconds"] = round(time.monotonic() - started, 1)
        train_tab.close()

        # label the rest starting from the promoted models' drafts
        page.locator(".st-key-label_section label").filter(has_text="Annotate").click()
        ui.wait_idle()
        page.locator(".st-key-label_auto_draft label").first.click()
        ui.wait_idle()
        ui.button("label_refresh").click()  # the Unlabeled queue read again: the films not labeled yet
        queue = [i for i in ids if i not in readings]
        # the page's own words for the new queue: until then the rerun that reads it (and drafts its first film)
        # is still to come, and its draft would arrive over what the test does meanwhile
        ui.text(f"Film 1 of {len(queue)}", timeout=180_000)
        ui.wait_idle()
        with_draft = [accept_draft(ui, cases[ids.index(image_id)], image_id,
                                   queue[n + 1] if n + 1 < len(queue) else None)
                      for n, image_id in enumerate(queue)]
        drafted = [r for r in store.readings("films") if r.from_draft]
        assert len(drafted) == WITH_DRAFT
        for reading in drafted:
            case = cases[ids.index(reading.image_id)]
            assert np.abs(reading.landmarks - case.landmarks).max() <= 0.5
            assert np.abs(np.asarray(reading.roi_box) - case.roi_box).max() <= 0.5
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
        page.wait_for_function("() => document.querySelectorAll('[data-testid=stDataFrame]').length >= 2",
                               timeout=30_000)
        team_shot = tmp_path / "label_team.png"
        page.screenshot(path=str(team_shot), full_page=True)
        keep_screenshot(team_shot, "label_team.png")
    finally:
        stop_server(server)
    timing["median_seconds_by_hand"] = round(statistics.median(timing["seconds_by_hand"]), 2)
    timing["median_seconds_with_draft"] = round(statistics.median(timing["seconds_with_draft"]), 2)
    print(json.dumps(timing))
