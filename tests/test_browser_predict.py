"""Predict's reading view in a real browser: `streamlit run app.py` + Debian's chromium driven by playwright.

The film is most of the page at 1400 and 1024 px wide, zooms with the buttons, its layers turn off, and no button's
words are cut, on the page or in the viewer (ui/components/film_viewer). Needs /usr/bin/chromium.
"""
from __future__ import annotations

import base64
import io

import pytest
from PIL import Image

from tests.helpers.browser import BROWSER_MARKS, NOTICE, start_server, stop_server
from tests.helpers.models import phantom_png, promote_tiny_classifier

pytestmark = BROWSER_MARKS

VIEWER = "iframe[title*='film_viewer']"
BOX_RGB = (255, 200, 0)  # core.inference.report.BOX_COLOUR, as the viewer draws it

# Every button whose words do not fit its box, in a document (the page's or the viewer's).
CUT_BUTTONS = """() => [...document.querySelectorAll('button')]
    .filter(b => b.getClientRects().length && b.scrollWidth > b.clientWidth + 0.5)
    .map(b => (b.innerText || b.getAttribute('aria-label') || '?').trim()
              + ' ' + b.scrollWidth + '>' + b.clientWidth)"""

# Pixels of the box colour on the viewer's canvas (a tolerance for the line's anti-aliased edge).
BOX_PIXELS = """([r, g, b]) => {
    const canvas = document.getElementById('view');
    const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
    let n = 0;
    for (let i = 0; i < data.length; i += 4)
        if (Math.abs(data[i] - r) < 12 && Math.abs(data[i + 1] - g) < 12 && Math.abs(data[i + 2] - b) < 12) n++;
    return n;
}"""


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("predict_view")
    home = folder / "workspace"
    promote_tiny_classifier(home)
    process, url = start_server(home, folder / "server.log")
    try:
        yield url
    finally:
        stop_server(process)


def film_with_a_box() -> dict:
    """The uploaded film as the viewer would get it with a ROI box (the phantom's true box): the test models find
    none (no detector is promoted), so the page's own render has no box layer. The same film and size as the page's,
    so the frame keeps its height and Streamlit has no reason to draw it again."""
    from core.data.phantom import generate_case

    case = generate_case(21, size=512, curvature_class="reversed")  # phantom_png("reversed", seed=21, size=512)
    buffer = io.BytesIO()
    Image.fromarray(case.image).convert("L").save(buffer, format="JPEG", quality=92)
    url = "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
    height, width = case.image.shape[:2]
    return {"film": url, "film_key": "box-test", "size": [width, height], "box": [float(v) for v in case.roi_box],
            "box_label": "C2–C7 0.90", "landmarks": None, "endplates": None, "heatmap": None, "heatmap_alpha": 0.5,
            "heatmap_label": "heatmap", "colours": {"box": "#ffc800", "landmarks": "#00dcff", "endplates": "#ff40a0"}}


# Hands the viewer a render (as Streamlit does) until it shows that film: Streamlit may draw the frame again with the
# page's own arguments while the page settles.
SHOW = """([selector, args]) => {
    const frame = document.querySelector(selector), app = frame.contentDocument.getElementById('app');
    if (app.dataset.film === args.film_key && app.dataset.ready === '1') return true;
    if (!window.__shown || Date.now() - window.__shown > 1000) {
        frame.contentWindow.postMessage({type: 'streamlit:render', args: args}, '*');
        window.__shown = Date.now();
    }
    return false;
}"""


@pytest.mark.parametrize("width", [1400, 1024])
def test_the_reading_view_is_large_zooms_and_hides_layers(browser, server, tmp_path, width):
    radiograph = tmp_path / "spine.png"
    radiograph.write_bytes(phantom_png("reversed", seed=21, size=512))
    page = browser.new_page(viewport={"width": width, "height": 900})
    try:
        page.goto(server)
        page.get_by_text(NOTICE).first.wait_for(timeout=30_000)
        page.locator("input[type='file']").first.set_input_files(str(radiograph))
        page.get_by_text("spine.png: ").first.wait_for(timeout=90_000)  # the first prediction imports torch
        page.locator(VIEWER).wait_for(timeout=30_000)
        frame = page.frame_locator(VIEWER)
        canvas = frame.locator("#view")
        frame.locator("#app[data-ready='1']").wait_for(timeout=30_000)
        page.wait_for_function(f"() => document.querySelector(\"{VIEWER}\").getBoundingClientRect().height > 300")

        # the film is most of the page: the viewer at least half the window's width, its canvas most of the viewer
        page_width = page.evaluate("() => window.innerWidth")
        viewer = page.locator(VIEWER).bounding_box()
        assert viewer["width"] >= page_width / 2, (viewer, page_width)
        assert canvas.bounding_box()["width"] >= 0.5 * viewer["width"]

        # the page's film has no box (the whole image was read): the box layer cannot be turned on
        assert frame.locator("#layer-box").is_disabled()
        assert "box" not in canvas.get_attribute("data-layers").split(",")

        # zoom in with the button: the drawn scale grows by the step; Fit brings the whole film back
        fitted = float(canvas.get_attribute("data-scale"))
        frame.get_by_role("button", name="+", exact=True).click()
        page.wait_for_function(f"() => Number(document.querySelector(\"{VIEWER}\").contentDocument"
                               f".getElementById('view').dataset.scale) > {fitted * 1.4}")
        assert float(canvas.get_attribute("data-scale")) == pytest.approx(fitted * 1.5, rel=1e-6)
        frame.get_by_role("button", name="Fit", exact=True).click()
        page.wait_for_function(f"() => Number(document.querySelector(\"{VIEWER}\").contentDocument"
                               f".getElementById('view').dataset.scale) < {fitted * 1.01}")

        # a film with a box: drawn in the box colour, and gone when its toggle is turned off
        page.wait_for_function(SHOW, arg=[VIEWER, film_with_a_box()], polling=100, timeout=15_000)
        page.wait_for_function(f"() => document.querySelector(\"{VIEWER}\").contentDocument"
                               ".getElementById('view').dataset.layers.split(',').includes('box')")
        view = next(f for f in page.frames if "/component/ui.film_viewer." in f.url)  # the viewer's document
        assert view.evaluate(BOX_PIXELS, list(BOX_RGB)) > 20
        frame.locator("#layer-box").uncheck()
        view.wait_for_function("() => !document.getElementById('view').dataset.layers.split(',').includes('box')")
        assert view.evaluate(BOX_PIXELS, list(BOX_RGB)) == 0
        assert frame.locator("#app").get_attribute("data-film") == "box-test"  # the same film, its box turned off

        # no button's words are cut, on the page or in the viewer
        assert page.evaluate(CUT_BUTTONS) == []
        assert view.evaluate(CUT_BUTTONS) == []
    finally:
        page.close()


def test_the_viewer_made_before_the_upload_shows_the_result_and_empties_when_the_file_goes(browser, server, tmp_path):
    """The empty page already has the reading view (its note only), so a result is a message to a frame the browser
    made while the user picked a file, not a new frame (which cost ~0.9 s of a warm upload); removing the file
    takes the film away again."""
    radiograph = tmp_path / "kept.png"
    radiograph.write_bytes(phantom_png("normal", seed=23, size=384))
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    try:
        page.goto(server)
        page.get_by_text(NOTICE).first.wait_for(timeout=30_000)
        frame = page.frame_locator(VIEWER)
        frame.get_by_text("Your film is read here").wait_for(timeout=30_000)
        assert frame.locator("#view").is_hidden()  # no empty black canvas before a film
        page.evaluate(f"() => {{ document.querySelector(\"{VIEWER}\").contentWindow.madeBeforeTheUpload = true; }}")

        page.locator("input[type='file']").first.set_input_files(str(radiograph))
        page.get_by_text("kept.png: ").first.wait_for(timeout=90_000)
        frame.locator("#app[data-ready='1']").wait_for(timeout=30_000)
        assert frame.locator("#view").is_visible()
        assert page.locator(VIEWER).count() == 1
        assert page.evaluate(f"() => document.querySelector(\"{VIEWER}\").contentWindow.madeBeforeTheUpload === true")

        page.get_by_role("button", name="Remove kept.png").click()  # the uploader's own remove button
        frame.get_by_text("Your film is read here").wait_for(timeout=30_000)
        assert frame.locator("#app").get_attribute("data-ready") == "0"
        assert frame.locator("#app").get_attribute("data-film") is None
        # the viewer empties mid-run; the old title goes when the run ends
        page.get_by_text("kept.png: ").first.wait_for(state="detached", timeout=60_000)
    finally:
        page.close()
