"""Label page through AppTest: a canvas drawing fed through session state, saved in image pixels; the contradiction
flag; asking before unsaved edits are left behind; review and the team view. And the canvas helpers' geometry."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from core.data.store import AnnotationStore
from test_labels import unlabeled_phantoms
from ui import canvas

APP = str(Path(__file__).resolve().parents[1] / "app.py")


def fabric_drawing(box, points, view: canvas.View) -> dict:
    """What the canvas sends after a drag (Rect, as its rect tool makes it) and clicks (Circles, as its point tool
    makes them: left edge at the click minus radius and half the stroke)."""
    (x1, y1), (x2, y2) = view.to_canvas(box[0], box[1]), view.to_canvas(box[2], box[3])
    objects = [{"type": "Rect", "left": x1, "top": y1, "width": x2 - x1, "height": y2 - y1, "originX": "left",
                "originY": "top", "scaleX": 1, "scaleY": 1, "strokeWidth": canvas.STROKE}]
    for x, y in points:
        cx, cy = view.to_canvas(x, y)
        objects.append({"type": "Circle", "left": cx - canvas.POINT_RADIUS - canvas.STROKE / 2, "top": cy,
                        "radius": canvas.POINT_RADIUS, "strokeWidth": canvas.STROKE, "originX": "left",
                        "originY": "center", "scaleX": 1, "scaleY": 1})
    return {"drawing": {"raw": {"objects": objects}, "data": None}, "backgroundFit": None}


def label_page(annotator: str = "ana") -> AppTest:
    at = AppTest.from_file(APP, default_timeout=60).run()
    at.switch_page("pages/label.py").run()
    assert not at.exception
    at.text_input(key="label_annotator_input").set_value(annotator).run()
    at.button(key="label_start").click().run()
    assert not at.exception, at.exception
    return at


def canvas_key(at: AppTest) -> str:
    """The key of the canvas the page shows now (its annotation's version is part of it)."""
    work = at.session_state["label_work"][at.session_state["label_queue"][at.session_state["label_position"]]]
    return work.canvas_key("label_canvas", canvas.full_view(work.image_size))


@pytest.fixture()
def films(database, workspace):  # each page test on SQLite, then on PostgreSQL
    return unlabeled_phantoms(workspace, 3)


def test_drawing_saved_in_image_pixels_and_a_contradicting_class_flagged(films):
    at = label_page()
    assert "0 / 3 labeled" in at.get("progress")[0].proto.text
    case = films[0]  # a normal neck
    view = canvas.full_view((case.width, case.height))
    at.session_state[canvas_key(at)] = fabric_drawing(case.roi_box, case.landmarks, view)
    at.run()
    assert not at.exception
    assert any("All 23 points placed" in m.value for m in at.markdown)
    at.button(key="label_class_reversed").click().run()
    assert any("contradicts the measured C2–C7 angle" in w.value for w in at.warning)
    at.button(key="label_class_normal").click().run()
    assert not any("contradicts" in w.value for w in at.warning)
    at.button(key="label_save").click().run()
    assert not at.exception and any("Saved label" in s.value for s in at.success)

    store = AnnotationStore()
    (reading,) = store.readings("films")
    assert reading.annotator == "ana" and reading.curvature_class == "normal"
    assert np.allclose(reading.roi_box, case.roi_box, atol=0.05)
    assert np.allclose(reading.landmarks, case.landmarks, atol=0.05)
    assert reading.seconds is not None and reading.draft is None
    assert "1 / 3 labeled" in at.get("progress")[0].proto.text


def test_moving_on_with_unsaved_edits_asks_first(films):
    at = label_page()
    first = at.session_state["label_queue"][0]
    at.button(key="label_class_straightened").click().run()
    at.button(key="label_next").click().run()
    assert any("unsaved changes" in w.value for w in at.warning)
    assert at.session_state["label_position"] == 0  # still on the first film
    at.button(key="label_pending_stay").click().run()
    assert not any("unsaved changes. Save" in w.value for w in at.warning)
    at.button(key="label_next").click().run()
    at.button(key="label_pending_save").click().run()
    assert at.session_state["label_position"] == 1
    store = AnnotationStore()
    assert [(r.image_id, r.curvature_class) for r in store.readings("films")] == [(first, "straightened")]
    # a film with nothing changed moves on at once
    at.button(key="label_previous").click().run()
    assert at.session_state["label_position"] == 0 and not any("unsaved" in w.value for w in at.warning)


def test_not_visible_undo_and_zoomed_clicks(films):
    at = label_page()
    case = films[0]  # the queue's first film
    view = canvas.full_view((case.width, case.height))
    at.session_state[canvas_key(at)] = fabric_drawing(case.roi_box, case.landmarks[:19], view)
    at.run()
    assert any("Next point:** C7 top left" in m.value for m in at.markdown)
    for _ in range(2):
        at.button(key="label_hidden").click().run()  # C7 top corners behind the shoulders
    at.button(key="label_undo").click().run()  # takes back the last "not visible"
    assert any("Next point:** C7 top right" in m.value for m in at.markdown)
    at.button(key="label_hidden").click().run()
    # the last two points on the zoomed view: its clicks map back to full-image pixels
    at.toggle(key="label_zoom").set_value(True).run()
    work = at.session_state["label_work"][at.session_state["label_queue"][0]]
    zoomed = canvas.zoom_view(work.image_size, work.roi_box)
    key = work.canvas_key("label_canvas", zoomed)
    drawn = at.session_state[key]["drawing"]["raw"] if key in at.session_state else work.drawing(zoomed)
    extra = fabric_drawing(case.roi_box, case.landmarks[21:], zoomed)["drawing"]["raw"]["objects"][1:]
    at.session_state[key] = {"drawing": {"raw": {"objects": drawn["objects"] + extra}, "data": None},
                             "backgroundFit": None}
    at.run()
    assert any("Zoomed to the box" in c.value for c in at.caption)
    at.button(key=f"label_class_{case.curvature_class}").click().run()
    at.button(key="label_save").click().run()
    (reading,) = AnnotationStore().readings("films")
    expected = case.landmarks.copy()
    expected[19:21] = np.nan
    assert np.allclose(reading.landmarks, expected, atol=0.05, equal_nan=True)


def test_review_reject_and_team_view(films):
    store = AnnotationStore()
    ids = [image.image_id for image in store.images("films")]
    for image_id, case in zip(ids, films):
        store.save_reading(image_id, annotator="ben", curvature_class=case.curvature_class, roi_box=case.roi_box,
                           landmarks=case.landmarks, seconds=30)
        store.save_reading(image_id, annotator="cat", curvature_class="normal", roi_box=case.roi_box,
                           landmarks=case.landmarks + [2.0, 0.0], seconds=50)
    at = label_page("rev")
    at.radio(key="label_section").set_value("Review").run()
    at.button(key="label_reject").click().run()
    assert any("needs a comment" in e.value for e in at.error)
    at.text_input(key="label_review_comment").set_value("box misses C7").run()
    at.button(key="label_reject").click().run()
    assert not at.exception
    assert [r.verdict for r in store.reviews()] == ["reject"]
    at.radio(key="label_section").set_value("Team").run()
    assert not at.exception
    values = {m.label: m.value for m in at.metric}
    assert values["Landmark distance"] == "2.0 px"
    assert any("Disagreements (2)" in h.value for h in at.subheader)


def test_view_geometry_maps_both_ways():
    full = canvas.full_view((200, 100), max_width=600, max_height=600)
    assert full.size == (600, 300) and full.scale == 3
    zoomed = canvas.zoom_view((200, 100), [50, 20, 90, 80], max_width=600, max_height=600)
    x, y = zoomed.to_canvas(61.5, 33.25)
    assert zoomed.to_image(x, y) == pytest.approx((61.5, 33.25))
    assert zoomed.region[0] == pytest.approx(44.0) and zoomed.region[1] == pytest.approx(11.0)
    shown = canvas.apply_window(np.array([[0.0, 0.5, 1.0]]), canvas.ViewSettings(window=0.5, level=0.5, invert=True))
    assert shown.tolist() == [[255, 128, 0]]
