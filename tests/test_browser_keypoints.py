"""The keypoints component on its own, in chromium, with this test playing Streamlit: it posts the render messages
and catches what the component sends, so it can hold Python's answer back as long as it likes.

What a user depends on here: an answer that comes after the component stopped waiting, or a new copy of the film
drawn from outside the component, never replaces edits made since the last message the component sent (a lost
label: a clean-clone run at load 14 saved a draft's 23 points over the 23 the annotator had clicked)."""
from __future__ import annotations

import base64
import functools
import http.server
import io
import threading

import numpy as np
import pytest
from PIL import Image

from tests.helpers.browser import BROWSER_MARKS
from tests.helpers.wait import wait_for
from ui import canvas, label_workflow
from ui.label_workflow import Annotation

pytestmark = BROWSER_MARKS

SIZE = (120, 160)  # film width, height (px)
BOX = [20.0, 20.0, 100.0, 140.0]
CLICKED = [(30.0 + 4 * k, 30.0 + 4 * k) for k in range(5)]
CATCH = """window.__sent = [];
window.addEventListener("message", (event) => {
  if (event.data && event.data.isStreamlitMessage && event.data.type === "streamlit:setComponentValue")
    window.__sent.push(event.data.value);
});"""


@pytest.fixture(scope="module")
def component_url():
    """The component's own folder over http on a free loopback port (as Streamlit serves it)."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(canvas.COMPONENT_DIR))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/index.html"
    server.shutdown()


def film_url(shade: int) -> str:
    picture = Image.fromarray(np.full((SIZE[1], SIZE[0]), shade, dtype=np.uint8))
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def draft_points() -> list[list[float]]:
    return [[60.0 + (k % 5), 70.0 + k] for k in range(label_workflow.N_POINTS)]


class Host:
    """Streamlit's side of the component: render arguments in, the component's messages out."""

    def __init__(self, page, url: str, wait_ms: int):
        self.page, self.wait_ms = page, wait_ms
        page.add_init_script(CATCH)
        page.goto(url)

    def render(self, work: Annotation, ack: str | None = None, can_next: bool = True) -> None:
        args = canvas.keypoints_args(
            film=film_url(90 + work.image_id), film_key=f"film-{work.image_id}", image_size=work.image_size,
            state=label_workflow.component_state(work, "left"), names=label_workflow.component_names(),
            sides=[label_workflow.image_side(i) for i in range(label_workflow.N_POINTS)],
            colours=label_workflow.point_colours(),
            vertebrae=[label_workflow.vertebra_of(i) for i in range(label_workflow.N_POINTS)],
            diagram=label_workflow.diagram_points(), classes=["Lordotic", "Straight", "Kyphotic", "S-shaped"],
            suggested=None, nav={"can_previous": False, "can_next": can_next, "can_skip": True},
            view={"brightness": 0, "contrast": 0, "invert": False}, ack=ack, notice=None,
            answer_wait_ms=self.wait_ms)
        self.page.evaluate("args => window.postMessage({type: 'streamlit:render', args: args}, '*')", args)
        self.page.locator(f"#app[data-ready='1'][data-image-id='{work.image_id}']"
                          f"[data-revision='{work.revision}']").wait_for(timeout=30_000)

    def app(self, name: str) -> str:
        return self.page.locator("#app").get_attribute(f"data-{name}")

    def sent(self) -> list[dict]:
        return self.page.evaluate("window.__sent")

    def press(self, selector: str) -> dict:
        """Press a button that talks to Python; returns the message it sent."""
        before = len(self.sent())
        self.page.locator(selector).click()
        wait_for(lambda: len(self.sent()) > before, timeout=30, message=f"a message after {selector}")
        return self.sent()[-1]

    def gave_up(self) -> None:
        """The component stopped waiting for the answer (the annotator may edit again)."""
        self.page.locator("#app[data-busy='0']").wait_for(timeout=30_000)

    def click(self, x: float, y: float) -> None:
        view = self.page.locator("#view")
        box = view.bounding_box()
        scale, tx, ty = (float(view.get_attribute(f"data-{k}")) for k in ("scale", "tx", "ty"))
        self.page.mouse.click(box["x"] + x * scale + tx, box["y"] + y * scale + ty)

    def status(self) -> str:
        return self.page.locator("#status").inner_text()


def film(image_id: int) -> Annotation:
    return Annotation(image_id, SIZE, roi_box=list(BOX))


def answer(work: Annotation, message: dict, *, draft: bool = False) -> Annotation:
    """What the page does with a message: take the component's copy, then draft or save."""
    work.take(message["edit"], ["Lordotic", "Straight", "Kyphotic", "S-shaped"])
    work.revision += 1
    if draft:
        work.apply_draft({"roi_box": BOX, "landmarks": draft_points(), "curvature_class": "Straight"})
    return work


@pytest.fixture
def host(browser, component_url):
    context = browser.new_context(viewport={"width": 1100, "height": 900})
    yield lambda wait_ms: Host(context.new_page(), component_url, wait_ms)
    context.close()


def sent_points(message: dict) -> list:
    return [p for p in message["edit"]["points"] if p is not None]


def draft_asked_then_given_up(host) -> tuple[Host, Annotation, dict]:
    """A film shown, a draft asked for, and the component no longer waiting for it (after 0.3 s)."""
    ui = host(300)
    work = film(1)
    ui.render(work)
    asked = ui.press("#draft")
    ui.gave_up()
    return ui, work, asked


def test_a_late_draft_never_replaces_points_clicked_meanwhile(host):
    ui, work, asked = draft_asked_then_given_up(host)
    for x, y in CLICKED:
        ui.click(x, y)
    assert ui.app("placed") == str(len(CLICKED))
    ui.render(answer(work, asked, draft=True), ack=asked["nonce"])  # the draft, long after
    assert ui.app("placed") == str(len(CLICKED)), "the late draft replaced the clicked points"
    assert ui.app("dirty") == "1" and "kept" in ui.status()
    saved = ui.press("#save")
    assert np.allclose(sent_points(saved), CLICKED, atol=1.0)


def test_a_new_copy_drawn_from_outside_keeps_unsent_edits(host):
    """A rerun the component did not ask for (a widget on the page) brings a newer revision of the same film."""
    ui = host(30_000)
    work = film(1)
    ui.render(work)
    for x, y in CLICKED[:3]:
        ui.click(x, y)
    work.apply_draft({"roi_box": BOX, "landmarks": draft_points(), "curvature_class": "Straight"})
    ui.render(work)
    assert ui.app("placed") == "3"
    assert np.allclose(sent_points(ui.press("#save")), CLICKED[:3], atol=1.0)


def test_edits_after_a_late_move_come_back_with_their_film(host):
    ui = host(300)
    first, second = film(1), film(2)
    ui.render(first)
    for x, y in CLICKED[:3]:
        ui.click(x, y)
    moved = ui.press("#save-next")
    assert moved["action"] == "move" and moved["save"]
    ui.gave_up()
    for x, y in CLICKED[3:]:
        ui.click(x, y)  # made after the component stopped waiting: not in the message
    answer(first, moved)
    first.saved()
    ui.render(second, ack=moved["nonce"])  # the move's answer, late: the next film
    assert ui.app("placed") == "0"
    ui.render(first)  # back to the first film: Python has the three saved points
    assert ui.app("placed") == str(len(CLICKED))
    assert "back" in ui.status() and ui.app("dirty") == "1"
    assert np.allclose(sent_points(ui.press("#save")), CLICKED, atol=1.0)
    ui.page.locator("#undo").click()  # the restored edits are one undo step over Python's copy
    assert ui.app("placed") == "3"


def test_a_late_answer_with_no_edits_since_is_taken(host):
    ui, work, asked = draft_asked_then_given_up(host)
    ui.render(answer(work, asked, draft=True), ack=asked["nonce"])
    assert ui.app("placed") == "23" and ui.app("dirty") == "1"


def test_an_answer_in_time_is_taken(host):
    ui = host(30_000)
    work = film(1)
    ui.render(work)
    asked = ui.press("#draft")
    assert ui.app("busy") == "1"
    ui.render(answer(work, asked, draft=True), ack=asked["nonce"])
    assert ui.app("busy") == "0" and ui.app("placed") == "23"
    assert np.allclose(sent_points(ui.press("#save")), draft_points(), atol=1.0)
