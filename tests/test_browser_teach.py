"""The Teach page in a real browser (`streamlit run app.py` + Debian's chromium through playwright): the angle slider
walks the rule class through its thresholds, four clicks on the canvas give an angle, a five-film quiz is scored.

Set CERVICURVE_SCREENSHOT_DIR to keep docs/screenshots/teach_explore.png and teach_quiz.png.
"""
from __future__ import annotations

import os
import re

import pytest

from core.settings import CLASSES
from tests.helpers.browser import BROWSER_MARKS, NOTICE, after_rerun, drawn, keep_screenshot, start_server, stop_server
from tests.helpers.models import promote_tiny_classifier

pytestmark = BROWSER_MARKS


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """One server on a workspace with a tiny promoted classifier and a five-film quiz (made by the CLI)."""
    from core import cli

    scratch = tmp_path_factory.mktemp("teach_browser")
    home = scratch / "workspace"
    promote_tiny_classifier(home)
    previous = os.environ.get("CERVICURVE_HOME")
    os.environ["CERVICURVE_HOME"] = str(home)
    try:
        assert cli.main(["quiz", "create", "--films", "5", "--seed", "5", "--title", "Browser quiz"]) == 0
        from core.inference.teaching import quiz

        truths = [item.truth_class for item in quiz.quiz(1).items]
    finally:
        if previous is None:
            os.environ.pop("CERVICURVE_HOME", None)
        else:
            os.environ["CERVICURVE_HOME"] = previous
    server, url = start_server(home, scratch / "server.log")
    try:
        yield url, home, truths, scratch
    finally:
        stop_server(server)


def rule_heading(page) -> str:
    return page.locator("h4:has-text('Rule class')").first.inner_text()


def move_slider_to(page, value: int, expected_class: str) -> None:
    """Keyboard steps on the angle slider (1° each) until it reads ``value``; then wait for the redraw."""
    thumb = page.locator("[data-testid='stSlider']").filter(has_text="C2–C7 angle").locator("input[type='range']")
    thumb.focus()
    current = int(thumb.input_value())
    key = "ArrowLeft" if value < current else "ArrowRight"
    for _ in range(abs(value - current)):
        thumb.press(key)
    assert int(thumb.input_value()) == value
    page.locator(f"h4:has-text('Cobb C2–C7 {value:+.1f}°')").wait_for(timeout=60_000)
    heading = rule_heading(page)
    assert f"Rule class: {expected_class} (Cobb C2–C7 {value:+.1f}°)" == heading, heading


def test_the_angle_slider_walks_the_rule_class_through_its_thresholds(browser, served):
    url, _, _, scratch = served
    page = browser.new_page(viewport={"width": 1500, "height": 2000})
    page.goto(f"{url}/teach")
    page.get_by_text(NOTICE).first.wait_for(timeout=30_000)
    page.locator("h4:has-text('Rule class: normal (Cobb C2–C7 +20.0°)')").wait_for(timeout=90_000)
    page.get_by_text("Model's answer:").wait_for(timeout=90_000)  # the first answer imports torch
    # +20 -> -10: normal down to the 10° threshold, straightened below it, reversed from -4° down.
    for value, expected in ((10, "normal"), (9, "straightened"), (-3, "straightened"), (-4, "reversed"),
                            (-10, "reversed")):
        move_slider_to(page, value, expected)
        # Elements of the new run replace the old ones one by one: wait for this run's verdict.
        answer = page.locator("p:has-text(\"Model's answer:\")").filter(has_text=f"the rule's {expected}.")
        answer.wait_for(timeout=60_000)
        verdict = answer.first.inner_text()
        # Predict's verdict: a class beside the rule's, or (a film unlike the training films) no class at all
        assert re.fullmatch(rf"Model's answer: (({'|'.join(CLASSES)}) \(\d+%[^)]*\)\. It (agrees|disagrees) with|"
                            rf"not judged — check this film by eye\. No class to set beside) the rule's {expected}\.",
                            verdict), verdict
    drawn(page)
    shot = scratch / "teach_explore.png"
    page.screenshot(path=str(shot), full_page=True)
    keep_screenshot(shot, "teach_explore.png")


def test_four_clicks_on_the_film_give_an_angle_against_the_truth(browser, served):
    from core.inference.teaching import films, geometry

    url, _, _, _ = served
    page = browser.new_page(viewport={"width": 1500, "height": 1200})
    page.goto(f"{url}/teach")
    page.get_by_text(NOTICE).first.wait_for(timeout=30_000)
    page.get_by_text("Measure it yourself").click()
    canvas = page.locator("canvas.upper-canvas").first
    canvas.wait_for(timeout=60_000)
    film = films.phantom_film(films.FilmSettings())  # the page's default Explore phantom
    scale = 440 / film.pixels.shape[1]

    def click(x: float, y: float) -> None:
        # where the canvas is once the page is idle: one measured while the page still drew itself could move
        # (a clean-clone run at load 10 clicked beside the canvas, and no rerun came)
        box = canvas.bounding_box()
        page.mouse.click(box["x"] + x * scale, box["y"] + y * scale)

    for x, y in geometry.truth_endplates(film.landmarks):
        after_rerun(page, lambda: click(x, y))
    value = page.locator("[data-testid='stMetric']").filter(has_text="Your angle").locator(
        "[data-testid='stMetricValue']")
    value.wait_for(timeout=60_000)
    yours = float(value.inner_text().rstrip("°"))
    # Clicks land on whole canvas pixels (~1.2 film px here): a degree or two from the truth at most.
    assert abs(yours - film.truth.cobb_c2c7) < 3.0
    assert page.locator("[data-testid='stMetric']").filter(has_text="True angle").inner_text().find(
        f"{film.truth.cobb_c2c7:+.1f}°") >= 0


def test_a_five_film_quiz_is_answered_and_scored(browser, served):
    url, _, truths, scratch = served
    page = browser.new_page(viewport={"width": 1500, "height": 2200})  # the screenshot holds the whole result
    page.goto(f"{url}/teach")
    page.get_by_text(NOTICE).first.wait_for(timeout=30_000)
    page.get_by_text("Self-test").click()
    name = page.get_by_label("Your name")
    name.wait_for(timeout=60_000)
    name.fill("Ana")
    after_rerun(page, lambda: name.press("Enter"))  # a click during this rerun could be lost
    answers = list(truths)
    answers[1] = CLASSES[(CLASSES.index(truths[1]) + 1) % 3]  # one wrong
    for position, answer in enumerate(answers, start=1):
        group = page.get_by_role("radiogroup", name=f"Film {position}")
        after_rerun(page, group.get_by_text(answer, exact=True).click)
        assert group.get_by_role("radio", name=answer, exact=True).is_checked()
    page.get_by_role("button", name="Submit my answers").click()
    score = page.get_by_text("Score: 4/5 (80%)")
    score.wait_for(timeout=60_000)
    page.get_by_text("Film 2: you said").wait_for(timeout=30_000)
    drawn(page)
    shot = scratch / "teach_quiz.png"
    page.screenshot(path=str(shot), full_page=True)
    keep_screenshot(shot, "teach_quiz.png")
