"""One verdict per film (``core.inference.verdict.verdict_of``), carried identically by the Predict page's title, its
batch table (first column and summary line), ``predict --json``, ``predictions.csv`` and the PNG report; nothing is
drawn (landmarks, endplates, heatmap) that the verdict does not rest on.

The first tests build predictions from phantoms' true landmarks and a real radiograph (no models: each branch of
the verdict on purpose); the last ones run the real Predict page and ``python -m core predict`` with a tiny trained
classifier on films it finds unlike its training films.
"""
from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.inference import table as predictions_table
from tests.helpers import ROOT
from tests.helpers.films import colour_pixels, screenshot_png
from tests.helpers.models import phantom_png
from tests.helpers.pages import film_view, predict_page, upload
from ui.film_viewer import viewer_args

SURE, UNSURE = np.full(23, 0.9), np.full(23, 0.3)


# ------------------------------------------------------------------------------------ predictions without models
def film_prediction(*, flagged: bool, confidence=SURE, spine_found: bool | None = True, measured: bool = True,
                    probabilities=None, box_source: str = "detector", with_cam: bool = True, cobb: float = 25.0):
    """A Prediction of a phantom whose landmarks are the true ones, its lead chosen by the pipeline's own rule."""
    from core.data.imaging import Radiograph
    from core.data.measure import measure_landmarks
    from core.data.phantom import generate_case
    from core.evaluation import ood
    from core.inference.pipeline import Prediction
    from core.inference.verdict import choose_lead

    case = generate_case(4, size=256, cobb_c2c7=cobb)
    m = measure_landmarks(case.landmarks, facing=case.facing) if measured else None
    film = Radiograph(pixels=case.image.astype(np.float32) / 255, source_bit_depth=8, pixel_spacing_mm=None,
                      photometric="MONOCHROME2", original_size=(case.width, case.height))
    probabilities = probabilities or {"normal": 0.97, "straightened": 0.02, "reversed": 0.01}
    if flagged:
        probabilities = ood.cap_probabilities(probabilities)
    network = max(probabilities, key=probabilities.get)
    cam = None
    if with_cam:
        cam = np.zeros(case.image.shape, np.float32)
        cam[:, : case.width // 2] = 1.0  # a map that lights half the film: visible on any picture drawn with it
    lead = choose_lead(flagged, m, [], confidence, spine_found)
    return Prediction(
        file="film.png", curvature_class=network, probabilities=probabilities,
        roi_box=case.roi_box if box_source == "detector" else [0.0, 0.0, float(case.width), float(case.height)],
        box_confidence=0.8 if box_source == "detector" else None, box_source=box_source,
        low_confidence=flagged or probabilities[network] < 0.6 or box_source == "whole image", cam=cam,
        cam_method="gradcam" if with_cam else None, landmarks=case.landmarks, measurements=m,
        agreement=None if m is None else m.rule_class == network, radiograph=film, timings={},
        ood_score=2.4 if flagged else 0.6, out_of_distribution=flagged, calibrated=not flagged,
        ood_components={"features": 2.4, "image": 0.8} if flagged else {"features": 0.6},
        ood_reasons=["the classifier's features are 2.4x further from its training films than nearly all "
                     "held-out films"] if flagged else [],
        lead=lead, spine_found=spine_found, angle_missing=None if measured else "the landmark model found no vertebrae")


def everywhere(prediction) -> dict:
    """What each output says the result is: JSON, CSV row, the report's text."""
    from core.inference import report

    record = json.loads(json.dumps(prediction.to_json()))
    row = predictions_table.row(prediction)
    shown, lines = report.report_text(prediction, "classifier run X (promoted)")
    return {"json": record, "csv": row, "report_class": shown, "report": lines}


def test_a_flagged_film_with_sure_landmarks_is_judged_by_its_angle_in_every_output():
    from core.inference import report

    prediction = film_prediction(flagged=True)
    verdict = prediction.verdict
    m = prediction.measurements
    assert verdict.lead == "angle" and verdict.curvature_class == m.rule_class == "normal"
    assert verdict.title == f"normal by its measured angle (Cobb C2-C7 {m.cobb_c2c7:+.1f} deg)"
    said = everywhere(prediction)
    assert said["json"]["headline"] == said["json"]["verdict"]["title"] == verdict.title
    assert said["json"]["verdict"]["class"] == "normal" and said["json"]["verdict"]["heatmap_shown"] is False
    assert said["json"]["measurements"]["withheld"] is False
    assert said["csv"]["verdict"] == verdict.title and said["csv"]["verdict_class"] == "normal"
    assert said["csv"]["cobb_c2c7"] == round(m.cobb_c2c7, 2)
    assert said["report_class"] == "normal" and said["report"][0] == f"Result: {verdict.title}"
    # the warning travels with it, in plain words, with what to do; the capped 90 % is named as not the result
    assert "unlike the films the models were trained on" in said["report"][1]
    assert "the classifier has seen no films like it" in said["report"][1]
    assert any(line.startswith("What to do:") and "Label page" in line for line in said["report"])
    assert ("The network's own answer, not used for this film: normal 90%, straightened 5%, reversed 5%."
            in said["report"])
    assert not any(line.startswith("Probabilities:") for line in said["report"])
    assert not any("agrees with the network" in line for line in said["report"])
    assert any(line.startswith("Cobb C2–C7") and "the result" in line for line in said["report"])
    # the angle is the evidence: its points and endplates are drawn; the network's map is not evidence
    annotated, heatmap = report.pictures(prediction, evidence_only=True)
    assert heatmap is None and colour_pixels(annotated, report.LANDMARK_COLOUR) > 0
    assert colour_pixels(annotated, report.ENDPLATE_COLOUR) > 0
    view = viewer_args(prediction)  # the page's reading view gets the same: points and endplates, no map
    assert view["heatmap"] is None and len(view["landmarks"]) == 23 and len(view["endplates"]) == 2
    png = Image.open(io.BytesIO(report.report_png(prediction, "classifier run X (promoted)")))
    assert png.format == "PNG" and png.width == 900  # one panel: no heatmap beside it


def test_a_withheld_angle_and_class_draw_nothing_and_say_why():
    from core.inference import report

    prediction = film_prediction(flagged=True, confidence=UNSURE)  # measured, but its points are not sure
    verdict = prediction.verdict
    assert verdict.lead == "none" and not verdict.judged and not verdict.angle_shown and not verdict.heatmap_shown
    assert verdict.title == "not judged — check this film by eye"
    assert "so no class is given" in verdict.why and "no angle is given either" in verdict.why
    assert "Label page" in verdict.advice and "fine-tune from the promoted model on the Train page" in verdict.advice
    assert "features" not in verdict.why and "x further" not in verdict.why  # plain words; numbers in the details
    said = everywhere(prediction)
    assert said["json"]["verdict"]["class"] is None and said["json"]["measurements"]["withheld"] is True
    assert said["csv"]["verdict"] == verdict.title and said["csv"]["judged"] is False
    assert said["csv"]["cobb_c2c7"] == "" and said["csv"]["rule_class"] == ""
    assert said["report_class"] is None and said["report"][0] == f"Result: {verdict.title}"
    assert not any("Cobb" in line for line in said["report"])
    assert any(line.startswith("The landmarks and their angle are withheld") for line in said["report"])
    assert any("out-of-distribution score 2.4" in line for line in said["report"])  # the number, as a detail
    # no landmarks, endplates or heatmap where the text says they are withheld
    annotated, heatmap = report.pictures(prediction, evidence_only=True)
    assert heatmap is None
    assert colour_pixels(annotated, report.LANDMARK_COLOUR) == colour_pixels(annotated, report.ENDPLATE_COLOUR) == 0
    view = viewer_args(prediction)  # nor are they sent to the page's reading view, where a toggle could show them
    assert view["heatmap"] is None and view["landmarks"] is None and view["endplates"] is None and view["box"]
    # even handed both pictures (as the page hands them), the report leaves the map out
    drawn_map = report.pictures(prediction)[1]
    assert drawn_map is not None  # the Teach page still gets the network's own map on request
    png = Image.open(io.BytesIO(report.report_png(prediction, "models", images=(annotated, drawn_map))))
    assert png.width == 900


def test_no_cervical_spine_found_withholds_the_class_even_from_a_sure_network():
    from core.inference.verdict import NO_SPINE

    prediction = film_prediction(flagged=False, spine_found=False, measured=False, box_source="whole image")
    verdict = prediction.verdict
    assert prediction.probabilities["normal"] == 0.97  # not flagged, not capped: still withheld
    assert verdict.lead == "none" and verdict.curvature_class is None and verdict.reason == NO_SPINE
    assert verdict.flag == "not judged (no cervical spine found)"
    assert verdict.why.startswith("The detector found no cervical spine in this image, so no class is given.")
    assert verdict.advice.startswith("Check that this is a lateral cervical radiograph.")
    assert verdict.angle_note == "No angle: the landmark model found no vertebrae."
    assert not verdict.heatmap_shown and everywhere(prediction)["json"]["measurements"] is None


def test_a_film_like_the_training_films_is_judged_by_the_network_with_its_evidence():
    from core.inference import report

    prediction = film_prediction(flagged=False)
    verdict = prediction.verdict
    assert verdict.lead == "network" and verdict.title == "normal (97%)" and not verdict.warns
    assert verdict.angle_shown and verdict.heatmap_shown and verdict.flag == "judged"
    said = everywhere(prediction)
    assert said["report"][0] == "Result: normal (97%)"
    assert said["report"][1] == "Probabilities: normal 97%, straightened 2%, reversed 1%"
    assert any("agrees with the network" in line for line in said["report"])
    annotated, heatmap = report.pictures(prediction, evidence_only=True)
    assert heatmap is not None and colour_pixels(annotated, report.LANDMARK_COLOUR) > 0
    view = viewer_args(prediction, 0.4)
    assert view["heatmap"].startswith("data:image/png;base64,") and view["heatmap_alpha"] == 0.4
    assert len(view["landmarks"]) == 23 and [line["level"] for line in view["endplates"]] == ["C2", "C7"]
    # a low top probability or a whole-image read is judged, with a warning that says so
    low = film_prediction(flagged=False, probabilities={"normal": 0.5, "straightened": 0.3, "reversed": 0.2})
    assert low.verdict.title == "normal (50%, low confidence)" and low.verdict.warns
    assert "only 50%" in low.verdict.why and low.verdict.judged


def test_the_batch_summary_counts_each_kind_of_verdict():
    from core.inference.pipeline import PredictFailure, batch_summary

    judged = film_prediction(flagged=False)
    low = film_prediction(flagged=False, probabilities={"normal": 0.5, "straightened": 0.3, "reversed": 0.2})
    by_angle = film_prediction(flagged=True)
    unlike = film_prediction(flagged=True, confidence=UNSURE)
    no_spine = film_prediction(flagged=True, spine_found=False, measured=False, box_source="whole image")
    assert batch_summary([unlike, judged, unlike]) == "3 films: 1 judged, 2 not judged (unlike the training films)"
    assert batch_summary([no_spine, by_angle, low, judged, PredictFailure("x.png", "x.png: broken")]) == (
        "5 films: 2 judged (1 with low confidence), 1 judged by its measured angle (unlike the training films), "
        "1 not judged (no cervical spine found), 1 could not be read")


def test_long_report_lines_wrap_to_the_page_instead_of_being_cut():
    from core.inference import report

    prediction = film_prediction(flagged=True, confidence=UNSURE)
    models = " · ".join(f"{what} run 20261207-041012-{what}-s_resnet34-8f0d (promoted)"
                        for what in ("classifier", "detector", "landmarks"))
    parts = report._sections(prediction, models, None, None)
    layout = report.report_layout(parts, 900)
    inner = 900 - 2 * 24
    font = report._font(report.TEXT_SIZE)
    assert all(font.getlength(line) <= inner for line in layout["lines"])
    assert all(font.getlength(line) <= inner - 20 for line in layout["warning"])
    # nothing dropped: the wrapped lines hold every word of the text, in order
    assert " ".join(layout["lines"]).split() == " ".join(parts["lines"]).split()
    assert " ".join(layout["warning"]).split() == " ".join(parts["warning"]).split()
    assert len([line for line in layout["lines"] if "run 2026" in line]) >= 2  # "Models:" went onto more lines
    # a word wider than the page (a long path) is broken, not cut
    word = "x" * 400
    pieces = report.wrap_to_width(word, font, 300)
    assert "".join(pieces) == word and all(font.getlength(p) <= 300 for p in pieces)
    png = Image.open(io.BytesIO(report.report_png(prediction, models)))
    assert png.format == "PNG" and png.width == 900


# ------------------------------------------------------------------------------------ real page, real CLI


def noise_png(seed: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (128, 128), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def inverted_phantom_png(seed: int) -> bytes:
    """A phantom with bone dark and air bright: a film, but unlike any the classifier was trained on."""
    pixels = np.asarray(Image.open(io.BytesIO(phantom_png("normal", seed))))
    buffer = io.BytesIO()
    Image.fromarray(255 - pixels).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture()
def flagged_films(model_home, monkeypatch, tmp_path) -> list[Path]:
    monkeypatch.setenv("CERVICURVE_HOME", str(model_home))
    monkeypatch.delenv("CERVICURVE_DB", raising=False)
    files = []
    for name, data in (("shot.png", screenshot_png()), ("noise.png", noise_png(0)),
                       ("inverted.png", inverted_phantom_png(3))):
        (tmp_path / name).write_bytes(data)
        files.append(tmp_path / name)
    return files


@pytest.mark.slow
def test_flagged_films_get_one_verdict_on_the_page_in_the_table_csv_json_and_report(flagged_films, tmp_path):
    from core.inference import report
    from core.inference.pipeline import Predictor, batch_summary

    predictor = Predictor()
    predictions = {path.name: predictor.predict(path.read_bytes(), name=path.name) for path in flagged_films}
    verdicts = {name: p.verdict for name, p in predictions.items()}
    # the tiny classifier finds all three unlike its six training phantoms, and has no landmark model to measure
    assert all(p.out_of_distribution for p in predictions.values())
    assert {v.title for v in verdicts.values()} == {"not judged — check this film by eye"}

    # the page, one film at a time: the title is the verdict, the warning says why and what to do
    for path in flagged_films:
        at = upload(predict_page(), (path.name, path.read_bytes()))
        assert not at.error
        assert [s.value for s in at.subheader if s.value.startswith(path.name)] == [
            f"{path.name}: {verdicts[path.name].title}"]
        warning = next(w.value for w in at.warning if "no class is given" in w.value)
        assert warning.startswith(verdicts[path.name].why) and "**What to do:**" in warning and "Label page" in warning
        assert "x further" not in warning  # the jargon lives in the details
        view = film_view(at)  # the reading view gets the film only: no heatmap for a class not given, no landmarks
        assert view["film"] and view["heatmap"] is None and view["landmarks"] is None and view["endplates"] is None
        assert any(i.value.startswith("No heatmap: the network's class is not the result") for i in at.info)
        assert not any(bar.proto.text.startswith("**") for bar in at.get("progress"))  # no bar is "the answer"
        assert any(e.label.startswith("Details: how unlike the training films") for e in at.expander)
        assert any("x further" in c.value for c in at.caption)  # ... here, with the numbers

    # the page, all at once: the verdict is the first column, a summary line above the table
    at = upload(predict_page(), *[(path.name, path.read_bytes()) for path in flagged_films])
    table = at.dataframe[0].value
    assert list(table.columns[:2]) == ["verdict", "file"]
    assert dict(zip(table["file"], table["verdict"])) == {name: v.title for name, v in verdicts.items()}
    assert table["class"].tolist() == ["not judged"] * 3
    assert table[["p_normal", "p_straightened", "p_reversed"]].isna().all().all()  # no "normal 0.90" beside them
    summary = batch_summary(predictions.values())
    assert summary == "3 films: 3 not judged (unlike the training films)"
    assert any(m.value == f"**{summary}**" for m in at.markdown)

    # the CLI: JSON and predictions.csv say the same, and the PNG report is written with the same text
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "core", "predict", *map(str, flagged_films), "--json", "--out",
                           str(out), "--report", str(out / "report.png")], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    records = {Path(r["file"]).name: r for r in map(json.loads, done.stdout.splitlines())}
    with open(out / "predictions.csv", newline="", encoding="utf-8") as handle:
        rows = {Path(r["file"]).name: r for r in csv.DictReader(handle)}
    assert list(rows[flagged_films[0].name])[:2] == ["file", "verdict"]
    for path in flagged_films:
        verdict, record, row = verdicts[path.name], records[path.name], rows[path.name]
        assert record["headline"] == record["verdict"]["title"] == row["verdict"] == verdict.title
        assert record["verdict"]["class"] is None and row["judged"] == "False" and row["verdict_class"] == ""
        assert record["verdict"]["why"] == row["why"] == verdict.why
        assert record["verdict"]["flag"] == row["status"] == "not judged (unlike the training films)"
        assert record["cam"] is None and not (out / f"{path.stem}_cam.png").exists()  # no map for no class
        page = Image.open(out / f"report_{path.stem}.png")
        assert page.format == "PNG" and page.getpixel((5, page.height - 5)) == (255, 243, 205)
        shown, lines = report.report_text(predictions[path.name], report.provenance(predictor))
        assert shown is None and lines[0] == f"Result: {verdict.title}" and lines[1] == verdict.why
    # the page's "Download the table (CSV)" is predict --out's predictions.csv, column for column (the CLI names
    # files by the paths it was given, and writes the overlays the page has no folder for)
    page_rows = {r["file"]: r for r in csv.DictReader(io.StringIO(at.session_state["batch"][4], newline=""))}
    assert set(page_rows) == {path.name for path in flagged_films}
    for name, row in rows.items():
        assert {k: v for k, v in page_rows[name].items() if k not in ("file", "cam")} == \
            {k: v for k, v in row.items() if k not in ("file", "cam")}
