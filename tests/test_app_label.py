"""Label page through AppTest: the keypoints component's messages (what keypoints.js sends on Save, Save & next,
another film, Draft) fed through session state and saved in image pixels; the contradiction flag; unsaved edits
kept or dropped as asked; the queue that opens; review, fix and the team view. And the workflow's rules as plain
Python (ui.label_workflow), the film sent to the browser and the window/level (ui.canvas)."""
from __future__ import annotations

import base64
import io
import json
import uuid
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

from core.data.store import AnnotationStore
from core.settings import CLASSES
from tests.helpers.films import unlabeled_phantoms
from ui import canvas, label_workflow
from ui.label_workflow import Annotation, LabelQueue

APP = str(Path(__file__).resolve().parents[1] / "app.py")
KEY = "label_keypoints"


def label_page(annotator: str = "ana") -> AppTest:
    at = AppTest.from_file(APP, default_timeout=60).run()
    at.switch_page("pages/label.py").run()
    assert not at.exception
    at.text_input(key="label_annotator_input").set_value(annotator).run()
    at.button(key="label_start").click().run()
    assert not at.exception, at.exception
    return at


def component(at: AppTest) -> dict:
    """The arguments the page drew the keypoints component with."""
    (element,) = at.get("component_instance")
    return json.loads(element.proto.json_args)


SHOWN = object()  # send(): the component's copy as drawn


def send(at: AppTest, action: str, *, box=SHOWN, points=SHOWN, hidden=SHOWN, curvature_class=SHOWN,
         facing="left", image_id=None, **extra) -> str:
    """What keypoints.js sends: the whole film in image pixels (what the component was drawn with, unless given)
    and the action; returns its nonce."""
    shown = component(at)["state"]
    nonce = uuid.uuid4().hex
    box = shown["box"] if box is SHOWN else box
    points = shown["points"] if points is SHOWN else points
    hidden = shown["hidden"] if hidden is SHOWN else hidden
    curvature_class = shown["curvature_class"] if curvature_class is SHOWN else curvature_class
    at.session_state[KEY] = {
        "nonce": nonce, "action": action, "image_id": shown["image_id"] if image_id is None else image_id,
        "edit": {"box": None if box is None else [float(v) for v in box],
                 "points": [None if p is None or not np.isfinite(p).all() else [float(p[0]), float(p[1])]
                            for p in points],
                 "hidden": list(hidden), "curvature_class": curvature_class, "facing": facing},
        "step": 0, "skip": False, "save": False, "discard": False,
        "view": {"brightness": 20, "contrast": 10, "invert": False}, **extra}
    at.run()
    assert not at.exception, at.exception
    return nonce


def texts(elements) -> list[str]:
    return [e.value for e in elements]


@pytest.fixture()
def films(database, workspace):  # each page test on SQLite, then on PostgreSQL
    return unlabeled_phantoms(workspace, 3)


def test_points_saved_in_image_pixels_and_a_contradicting_class_flagged(films):
    at = label_page()
    assert "0 / 3 labeled" in at.get("progress")[0].proto.text
    drawn = component(at)
    case = films[0]  # a normal neck
    assert drawn["image_size"] == [case.width, case.height] and drawn["film"].startswith("data:image/png;base64,")
    assert drawn["state"]["points"] == [None] * 23 and drawn["nav"] == {"can_previous": False, "can_next": True,
                                                                         "can_skip": True}
    nonce = send(at, "save", box=case.roi_box, points=case.landmarks, curvature_class="reversed")
    assert any("contradicts the measured C2–C7 angle" in w for w in texts(at.warning))
    assert any("Saved label" in s for s in texts(at.success))
    drawn = component(at)
    assert drawn["ack"] == nonce and drawn["state"]["revision"] > 0 and not drawn["state"]["dirty"]
    assert np.allclose(np.array(drawn["state"]["points"], dtype=float), case.landmarks, atol=0.005)
    assert drawn["suggested"] == "normal" and drawn["view"] == {"brightness": 20, "contrast": 10, "invert": False}
    send(at, "save", box=case.roi_box, points=case.landmarks, curvature_class="normal")
    assert not any("contradicts" in w for w in texts(at.warning))
    at.run()  # the same message again (the component's value stays until it sends another): handled once
    store = AnnotationStore()
    assert len(store.history(case_id := drawn["state"]["image_id"])) == 2
    (reading,) = store.readings("films")
    assert reading.image_id == case_id and reading.annotator == "ana" and reading.curvature_class == "normal"
    assert np.allclose(reading.roi_box, case.roi_box, atol=0.005)
    assert np.allclose(reading.landmarks, case.landmarks, atol=0.005)
    assert reading.seconds is not None and reading.draft is None
    assert "1 / 3 labeled" in at.get("progress")[0].proto.text


def test_save_and_next_discard_and_the_note(films):
    at = label_page()
    first, second, third = at.session_state["label_queue"].ids
    case = films[0]
    # Save & next: one message saves the film and shows the next
    send(at, "move", step=1, save=True, box=case.roi_box, points=case.landmarks, curvature_class="normal")
    assert component(at)["state"]["image_id"] == second
    assert any(f"(image {first})" in s for s in texts(at.success))
    assert any("Film 2 of 3" in m for m in texts(at.markdown))
    # a note typed on the page is an unsaved change the component asks about
    at.text_input(key=f"label_note_{second}").set_value("odd C7").run()
    assert component(at)["state"]["dirty"]
    # the annotator answered "Discard, go on": the film's edits are dropped, nothing is stored
    send(at, "move", step=-1, discard=True, box=films[1].roi_box, curvature_class="reversed")
    assert component(at)["state"]["image_id"] == first
    send(at, "move", step=1)
    shown = component(at)["state"]
    assert shown["image_id"] == second and shown["box"] is None and shown["curvature_class"] is None
    assert [(r.image_id, r.curvature_class) for r in AnnotationStore().readings("films")] == [(first, "normal")]
    # Skip sends the film to the end of the queue
    send(at, "move", step=1, skip=True)
    assert at.session_state["label_queue"].ids == [first, third, second] and component(at)["state"]["image_id"] == third
    # a message about a film no longer shown changes nothing
    send(at, "save", image_id=second, curvature_class="normal")
    assert any("no longer the one shown" in e for e in texts(at.error))
    assert len(AnnotationStore().readings("films")) == 1


def test_hidden_points_names_and_refused_edits(films):
    at = label_page()
    drawn = component(at)
    assert drawn["names"]["left"][3] == "C3 top, anterior" and drawn["names"]["right"][3] == "C3 top, posterior"
    assert drawn["names"]["unknown"][3] == "C3 top, image left" and drawn["state"]["facing"] is None
    assert drawn["sides"][:4] == [None, "left", "right", "left"] and len(set(drawn["colours"])) == 6
    case = films[0]
    # a point off the film is refused (the component never sends one): nothing stored
    off = case.landmarks.copy()
    off[5] = [case.width + 40, 10]
    send(at, "save", box=case.roi_box, points=off, curvature_class="normal")
    assert any("refused" in e and "outside" in e for e in texts(at.error))
    assert AnnotationStore().readings("films") == []
    # C7's lower corners marked not visible: stored as missing, the rule reads C2-C6
    points = case.landmarks.copy()
    points[21:] = np.nan
    send(at, "save", box=case.roi_box, points=points, hidden=[21, 22], curvature_class=case.curvature_class,
         facing="right")
    (reading,) = AnnotationStore().readings("films")
    assert np.allclose(reading.landmarks, points, atol=0.005, equal_nan=True)
    shown = component(at)["state"]
    assert shown["hidden"] == [21, 22] and shown["facing"] == "right"
    send(at, "move", step=1, facing="right")  # the next film starts from the facing the annotator gave
    assert component(at)["state"]["facing"] == "right"


def test_opening_on_an_empty_unlabeled_queue_shows_a_queue_with_films(films):
    store = AnnotationStore()
    for image in store.images("films"):  # like the demo: every film labeled already
        store.save_reading(image.image_id, annotator="demo", curvature_class="normal")
    at = label_page()
    assert at.selectbox(key="label_filter").value == "others"
    assert any("Nothing in “Unlabeled”: opened “Labeled by others only” (3 films)" in i for i in texts(at.info))
    assert any("Film 1 of 3" in m for m in texts(at.markdown))


def test_review_reject_fix_and_team_view(films):
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
    assert any("needs a comment" in e for e in texts(at.error))
    at.text_input(key="label_review_comment").set_value("box misses C7").run()
    at.button(key="label_reject").click().run()
    assert not at.exception
    assert [r.verdict for r in store.reviews()] == ["reject"]
    # Fix: the reading opens in the component; saving accepts the corrected copy
    at.button(key="label_fix_button").click().run()
    assert at.radio(key="label_section").value == "Annotate"
    shown = component(at)["state"]
    reading = store.label(at.session_state["label_fix"]["label_id"])
    assert reading.image_id == shown["image_id"]
    assert np.allclose(np.array(shown["points"], dtype=float), reading.landmarks, atol=0.005)
    moved = reading.landmarks.copy()
    moved[0] += [1.5, 0.0]
    send(at, "save", box=reading.roi_box, points=moved, curvature_class=reading.curvature_class)
    assert any("Fixed and accepted" in s for s in texts(at.success))
    assert sorted(r.verdict for r in store.reviews()) == ["fix", "reject"]
    at.radio(key="label_section").set_value("Team").run()
    assert not at.exception
    values = {m.label: m.value for m in at.metric}
    assert values["Point distance"].endswith(" px")
    assert any(h.startswith("Disagreements (") for h in texts(at.subheader))


# ------------------------------------------------------------------ the workflow's rules, no Streamlit


def test_workflow_handles_messages_without_losing_edits():
    queue = LabelQueue([7, 8, 9])
    work = Annotation(7, (100, 120))
    works = {7: work}
    saved = []

    def save(reading):
        if reading.curvature_class == "reversed":
            raise ValueError("the store is read-only")
        saved.append((reading.image_id, reading.curvature_class, reading.saved_landmarks()))
        return len(saved), f"Saved {len(saved)}"

    points = [[10.0 + i, 20.0 + i] for i in range(23)]
    edit = {"box": [80, 90, 5, 10], "points": points, "hidden": [], "curvature_class": "reversed", "facing": "left"}
    message = label_workflow.read_message({"nonce": "a", "action": "move", "image_id": 7, "edit": edit, "step": 1,
                                           "save": True}, None)
    outcome = label_workflow.handle(message, works, queue, classes=CLASSES, save=save, draft=lambda w: None)
    # the save failed: the film stays, and Python holds the browser's edits (the component starts again from them)
    assert outcome.error == "the store is read-only" and not outcome.moved and queue.current == 7
    assert work.roi_box == [5.0, 10.0, 80.0, 90.0] and work.dirty and work.revision == 1
    assert np.allclose(work.landmarks, points)
    assert label_workflow.read_message({"nonce": "a", "action": "save"}, "a") is None  # handled already
    edit["curvature_class"] = "normal"
    message = label_workflow.read_message({"nonce": "b", "action": "move", "image_id": 7, "edit": edit, "step": 1,
                                           "save": True}, "a")
    outcome = label_workflow.handle(message, works, queue, classes=CLASSES, save=save, draft=lambda w: None)
    assert outcome.moved and queue.current == 8 and outcome.saved_label == 1 and not work.dirty
    assert saved[0][0] == 7 and np.allclose(saved[0][2], points)
    # the last film: Save & next saves and says so
    queue.position = 2
    works[9] = Annotation(9, (100, 120))
    message = label_workflow.read_message({"nonce": "c", "action": "move", "image_id": 9, "step": 1, "save": True,
                                           "edit": dict(edit, points=[None] * 23, box=None)}, "b")
    outcome = label_workflow.handle(message, works, queue, classes=CLASSES, save=save, draft=lambda w: None)
    assert not outcome.moved and "last film" in outcome.flash and saved[-1][0] == 9 and saved[-1][2] is None
    # saving again with nothing changed stores no second row
    message = label_workflow.read_message({"nonce": "e", "action": "save", "image_id": 9,
                                           "edit": dict(edit, points=[None] * 23, box=None)}, "c")
    outcome = label_workflow.handle(message, works, queue, classes=CLASSES, save=save, draft=lambda w: None)
    assert len(saved) == 2 and "nothing changed" in outcome.flash
    with pytest.raises(ValueError, match="unknown action"):
        label_workflow.read_message({"nonce": "d", "action": "delete"}, "c")
    with pytest.raises(ValueError, match="class must be one of"):
        Annotation(1, (10, 10)).take(dict(edit, points=[None] * 23, box=None, curvature_class="sigmoid"), CLASSES)


def test_queue_moves_skips_and_opens_on_films():
    queue = LabelQueue([1, 2, 3])
    assert queue.move(1) and queue.current == 2
    assert queue.move(1, skip=True) and queue.ids == [1, 3, 2] and queue.current == 3
    assert queue.move(1, skip=True) and queue.ids == [1, 2, 3] and queue.current == 2
    assert queue.move(1) and queue.current == 3 and queue.at_end
    assert queue.move(1, skip=True) and queue.ids == [1, 2, 3] and queue.current == 1  # the last one skipped: wrap
    assert not queue.move(-1) and queue.current == 1
    assert LabelQueue([]).current is None and not LabelQueue([]).move(1)
    lists = {"unlabeled": [], "rejected": [], "others": ["a", "b"], "mine": ["c"], "all": ["a", "b", "c"]}
    name, items, note = label_workflow.opening_queue(lists.get, {"unlabeled": "Unlabeled", "others": "Others"})
    assert (name, items) == ("others", ["a", "b"])
    assert note == "Nothing in “Unlabeled”: opened “Others” (2 films)."
    lists["unlabeled"] = ["z"]
    assert label_workflow.opening_queue(lists.get, {}) == ("unlabeled", ["z"], None)


def test_point_names_colours_and_diagram():
    assert label_workflow.point_name(0, "left") == "C2 centroid (centre of the body)"
    assert label_workflow.point_name(1, "left") == "C2 bottom, anterior"  # "C2 bottom left": the face on the left
    assert label_workflow.point_name(1, "right") == "C2 bottom, posterior"
    assert label_workflow.point_name(22, "right") == "C7 bottom, anterior"  # "C7 bottom right"
    assert label_workflow.point_name(22, None) == "C7 bottom, image right"  # the facing not known yet
    assert [label_workflow.vertebra_of(i) for i in (0, 2, 3, 6, 7, 22)] == ["C2", "C2", "C3", "C3", "C4", "C7"]
    colours = label_workflow.point_colours()
    assert colours[3] == colours[6] != colours[7] and len(set(colours)) == 6
    spots = label_workflow.diagram_points()
    assert all(a[1] < b[1] for a, b in zip(spots[1::2], spots[3::2]))  # top to bottom in the 23-point order
    assert {x for x, _ in spots[1:]} == {0.22, 0.78}
    with pytest.raises(ValueError):
        label_workflow.point_name(3, "up")


# ------------------------------------------------------------------ the film in the browser and the window


def test_film_sent_to_the_browser_and_window_level():
    pixels = np.linspace(0, 1, 3000 * 2000, dtype=np.float32).reshape(3000, 2000)
    url, size = canvas.film_data_url(pixels, max_side=1600)
    kind, data = url.split(",", 1)
    picture = Image.open(io.BytesIO(base64.b64decode(data)))
    assert size == picture.size == (1067, 1600) and picture.mode == "L" and kind.startswith("data:image/")
    # brightness up is brighter, contrast up is steeper, and the sliders come back from the settings
    grey = np.array([[0.3, 0.5, 0.7]])
    plain = canvas.apply_window(grey, canvas.ViewSettings.from_sliders())
    brighter = canvas.apply_window(grey, canvas.ViewSettings.from_sliders(brightness=40))
    steeper = canvas.apply_window(grey, canvas.ViewSettings.from_sliders(contrast=50))
    assert (brighter > plain).all()
    assert steeper[0, 2] - steeper[0, 0] > plain[0, 2] - plain[0, 0]
    assert canvas.ViewSettings.from_sliders(-30, 45, True).sliders() == {"brightness": -30, "contrast": 45,
                                                                          "invert": True}


def test_view_geometry_maps_both_ways():
    full = canvas.full_view((200, 100), max_width=600, max_height=600)
    assert full.size == (600, 300) and full.scale == 3
    zoomed = canvas.zoom_view((200, 100), [50, 20, 90, 80], max_width=600, max_height=600)
    x, y = zoomed.to_canvas(61.5, 33.25)
    assert zoomed.to_image(x, y) == pytest.approx((61.5, 33.25))
    assert zoomed.region[0] == pytest.approx(44.0) and zoomed.region[1] == pytest.approx(11.0)
    shown = canvas.apply_window(np.array([[0.0, 0.5, 1.0]]), canvas.ViewSettings(window=0.5, level=0.5, invert=True))
    assert shown.tolist() == [[255, 128, 0]]
