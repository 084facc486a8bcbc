"""Predict page through AppTest, with a real (tiny) classifier trained and promoted the way the app does it (the
``with_model`` / ``with_judging_model`` fixtures of tests/conftest.py)."""
from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

from core.settings import CLASSES
from tests.helpers import ROOT
from tests.helpers.models import phantom_png, promote_tiny_classifier
from tests.helpers.pages import APP, film_view, predict_page, upload


def result_heading(at: AppTest) -> str:
    return next(s.value for s in at.subheader if ":" in s.value)


def picture_captions(at: AppTest) -> list[str]:
    """The captions under the reading view: what is drawn on the film, then the heatmap's."""
    return [c.value for c in at.caption if c.value.startswith("ROI box") or " heatmap for '" in c.value]


@pytest.mark.slow
def test_a_phantom_gives_class_probabilities_heatmap_and_report(with_model):
    at = upload(predict_page(), ("spine.png", phantom_png("reversed", seed=3)))
    assert not at.error
    name, _, outcome = result_heading(at).partition(": ")
    # this one-epoch model may find the phantom unlike its six training films; with no landmark model to measure
    # an angle, the page then gives no class at all rather than the network's capped answer
    judged = outcome != "not judged — check this film by eye"
    assert name == "spine.png"
    captions = picture_captions(at)
    assert captions[0].startswith("ROI box")
    view = film_view(at)
    assert view["film"].startswith("data:image/jpeg;base64,") and max(view["size"]) <= 1024
    assert view["landmarks"] is None and view["endplates"] is None  # no landmark model: no angle, nothing drawn
    bars = at.get("progress")
    bold = [bar.proto.text.startswith("**") for bar in bars]
    if judged:
        assert outcome.split(" ")[0] in CLASSES and outcome.endswith("%)")
        assert "Grad-CAM heatmap" in captions[1]
        assert view["heatmap"].startswith("data:image/png;base64,") and view["heatmap_label"] == captions[1]
        assert bold == [c == outcome.split(" ")[0] for c in CLASSES]  # the network's answer in bold
    else:  # no class: no heatmap as its evidence, no bar marked as the answer, and the page says what to do
        assert any("no class is given" in w.value and "**What to do:**" in w.value for w in at.warning)
        assert len(captions) == 1 and not any(bold) and view["heatmap"] is None  # not even sent to the browser
        assert any(i.value.startswith("No heatmap: the network's class is not the result") for i in at.info)
    # the probabilities: one bar per class in the fixed order, summing to one
    assert [bar.proto.text.split(":")[0].strip("*") for bar in bars] == list(CLASSES)
    assert sum(bar.proto.value for bar in bars) == pytest.approx(100, abs=2)
    assert [b.label for b in at.get("download_button")] == ["Download the PNG report"]
    # No landmark model is promoted: the page says why there is no angle instead of a table.
    assert any("no angle" in info.value for info in at.info)
    # The sidebar names the model in use.
    assert any(c.value.startswith("**Classifier:** cnn · run") for c in at.sidebar.caption)


@pytest.mark.slow
def test_a_film_the_models_judge_shows_its_class_with_its_heatmap(with_judging_model):
    at = upload(predict_page(), ("spine.png", phantom_png("normal", seed=4)))
    assert not at.error
    name, _, outcome = result_heading(at).partition(": ")
    network = outcome.split(" ")[0]
    # no detector: the whole image is read, which the title and the warning say (judged, with low confidence)
    assert name == "spine.png" and network in CLASSES and outcome.endswith("%, low confidence)")
    assert [w.value for w in at.warning if "whole image" in w.value and "**What to do:**" in w.value]
    assert picture_captions(at) == ["ROI box (whole image) — no landmarks drawn", f"Grad-CAM heatmap for '{network}'"]
    view = film_view(at)
    assert view["box"] is None  # the whole image: a box would only frame the picture
    assert view["heatmap"].startswith("data:image/png;base64,")
    assert [bar.proto.text.startswith("**") for bar in at.get("progress")] == [c == network for c in CLASSES]
    assert not at.expander or not any(e.label.startswith("Details: how unlike") for e in at.expander)
    assert any("carries no out-of-distribution reference" in c.value for c in at.caption)  # and the page says so


@pytest.mark.slow
def test_heatmap_method_and_opacity_change_the_heatmap_only(with_judging_model):
    at = upload(predict_page(), ("spine.png", phantom_png("normal", seed=4)))
    heading = result_heading(at)
    at.selectbox(key="cam_method").set_value("eigencam").run()
    assert not at.exception and not at.error
    assert "Eigen-CAM heatmap" in picture_captions(at)[1] and "Eigen-CAM heatmap" in film_view(at)["heatmap_label"]
    film = film_view(at)["film"]
    at.slider(key="cam_alpha").set_value(0.9).run()
    assert not at.exception and result_heading(at) == heading
    assert film_view(at)["heatmap_alpha"] == 0.9 and film_view(at)["film"] == film  # the same film, more colour


@pytest.mark.slow
def test_garbage_bytes_are_an_error_message(with_model):
    at = upload(predict_page(), ("garbage.png", os.urandom(2000)))
    assert [e.value for e in at.error] == [
        "The prediction failed: garbage.png: not a supported image (PNG, JPEG, TIFF or DICOM); "
        "its content matches none of them"]
    assert not at.get("component_instance")


@pytest.mark.slow
def test_many_files_give_a_table_with_thumbnails_and_a_csv(with_model):
    files = [("a.png", phantom_png("normal", seed=5)), ("b.png", phantom_png("reversed", seed=6)),
             ("broken.tif", b"II*\x00 truncated")]
    at = upload(predict_page(), *files)
    table = at.dataframe[0].value
    assert table["file"].tolist() == ["a.png", "b.png", "broken.tif"]
    # the verdict comes first, in the words of the page's title; a summary line counts them above the table
    assert table.columns[0] == "verdict" and table["verdict"][2] == "could not be read"
    assert all(v == "not judged — check this film by eye" or v.split(" ")[0] in CLASSES for v in table["verdict"][:2])
    judged = sum(v != "not judged — check this film by eye" for v in table["verdict"][:2])
    summary = "**3 films: " + ", ".join(
        part for part in (f"{judged} judged" if judged else "",
                          f"{2 - judged} not judged (unlike the training films)" if judged < 2 else "",
                          "1 could not be read") if part) + "**"
    assert summary in [m.value for m in at.markdown]
    assert table["image"][0].startswith("data:image/png;base64,") and pd.isna(table["image"][2])
    assert set(table["class"][:2]) <= set(CLASSES) | {"not judged"}  # see the single-film test
    # the network's probabilities where its class is the result; none beside "not judged"
    for row in range(2):
        probabilities = table[[f"p_{c}" for c in CLASSES]].iloc[row].astype(float)
        if table["class"][row] == "not judged":
            assert probabilities.isna().all()
        else:
            assert probabilities.sum() == pytest.approx(1.0, abs=0.01)
    assert "broken.tif" in table["error"][2]
    assert len(at.error) == 1 and at.error[0].value.startswith("1 of 3 files could not be analysed")
    assert "Download the table (CSV)" in [b.label for b in at.get("download_button")]
    # One of them in detail, with its heatmap.
    at.selectbox(key="detail_choice").set_value("b.png").run()
    assert result_heading(at).startswith("b.png: ")


@pytest.mark.slow
def test_two_uploads_with_one_name_stay_two_results_and_a_tiny_image_is_refused(with_model):
    import io

    from PIL import Image

    tiny = io.BytesIO()
    Image.new("L", (1, 1), 128).save(tiny, format="PNG")
    files = [("IM0001.png", phantom_png("normal", seed=5)), ("IM0001.png", phantom_png("reversed", seed=6)),
             ("dot.png", tiny.getvalue())]
    at = upload(predict_page(), *files)
    table = at.dataframe[0].value
    assert table["file"].tolist() == ["IM0001.png", "IM0001.png (2)", "dot.png"]
    assert "only 1 x 1 pixels" in table["error"][2]


@pytest.mark.slow
def test_a_sample_phantom_with_its_ground_truth(with_model):
    at = predict_page()
    at.button(key="sample_straightened").click().run()
    assert not at.exception and not at.error
    assert result_heading(at).startswith("phantom_straightened.png: ")
    assert any(c.value.startswith("Phantom ground truth: straightened") for c in at.caption)


@pytest.mark.slow
def test_dicom_header_is_shown_de_identified(with_model):
    from pydicom.data import get_testdata_file

    at = upload(predict_page(), ("ct.dcm", Path(get_testdata_file("CT_small.dcm")).read_bytes()))
    assert not at.error
    header = at.get("json")[0].proto.body
    assert '"modality": "CT"' in header
    assert "CompressedSamples" not in header  # the file's PatientName


def test_without_a_model_the_page_says_how_to_get_one(workspace):
    at = upload(predict_page(), ("spine.png", phantom_png("normal", seed=7)))
    assert any(info.value.startswith("No classifier yet") for info in at.info)
    assert not at.error


def run_page_in_a_fresh_process(extra: str, **env: str) -> str:
    """Run the Predict page once with AppTest in a new Python process, then ``extra``; returns its last line."""
    import subprocess
    import sys

    script = (
        "import sys\n"
        "from streamlit.testing.v1 import AppTest\n"
        f"at = AppTest.from_file({APP!r}, default_timeout=60).run()\n"
        "assert not at.exception, at.exception\n" + extra
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=180,
                            env=dict(os.environ, **env), cwd=ROOT)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout.strip().splitlines()[-1]


@pytest.mark.slow
def test_the_page_opens_without_loading_torch_even_with_a_model(with_model):
    loaded = run_page_in_a_fresh_process(
        "print(sorted(m for m in ('torch', 'ultralytics', 'pytorch_grad_cam') if m in sys.modules))\n",
        CERVICURVE_PRELOAD="0")
    assert loaded == "[]"


@pytest.mark.slow
def test_once_drawn_the_page_loads_the_model_in_the_background(with_model):
    loaded = run_page_in_a_fresh_process(
        "def loaded():  # classifiers in the per-process model cache (None while it is being imported)\n"
        "    cache = getattr(sys.modules.get('core.inference.models'), 'CACHE', None)\n"
        "    return sum(key[0] == 'classify' for key in cache.keys()) if cache else 0\n"
        "from tests.helpers.wait import wait_for\n"
        "try:\n"
        "    wait_for(loaded, timeout=120, every=0.2)\n"
        "except AssertionError:\n"
        "    pass  # print what there is: the assertion below says it\n"
        "print(loaded())\n"
        # let the preload thread finish its warm-up: a process leaving while torch works in a daemon thread can
        # abort in C++ ('terminate called without an active exception', seen on a busy machine)
        "import threading\n"
        "for thread in threading.enumerate():\n"
        "    if thread.name == 'cervicurve-preload':\n"
        "        thread.join(120)\n")
    assert loaded == "1"


@pytest.mark.slow
def test_figures_draw_the_endplates_at_the_landmarks_and_the_report_is_a_png(with_judging_model, tmp_path):
    from core.data.measure import LANDMARK_NAMES
    from core.data.phantom import generate_case
    from core.inference.pipeline import Predictor
    from core.inference.report import (ENDPLATE_COLOUR, annotated_radiograph, pictures, provenance, report_png,
                                       write_overlay)

    case = generate_case(8, size=256, curvature_class="normal")
    drawn = np.asarray(annotated_radiograph(case.image, case.roi_box, case.landmarks, "box"))
    for left, right in (("C2 bottom left", "C2 bottom right"), ("C7 bottom left", "C7 bottom right")):
        middle = (case.landmarks[LANDMARK_NAMES.index(left)] + case.landmarks[LANDMARK_NAMES.index(right)]) / 2
        x, y = np.round(middle).astype(int)
        patch = drawn[y - 1:y + 2, x - 1:x + 2].reshape(-1, 3)
        assert any(tuple(pixel) == ENDPLATE_COLOUR for pixel in patch), f"no endplate line through {left}/{right}"
    predictor = Predictor()
    prediction = predictor.predict(phantom_png("normal", seed=8, size=256), name="spine.png")
    radiograph, heatmap = pictures(prediction)
    png = report_png(prediction, provenance(predictor), truth="Phantom ground truth: normal")
    report = Image.open(io.BytesIO(png))
    assert report.format == "PNG" and report.width > 2 * 720 * radiograph.width / radiograph.height
    assert heatmap is not None and heatmap.size == radiograph.size
    assert report.getpixel((5, report.height - 5)) == (255, 243, 205)  # the notice band at the bottom
    # the class is given (no reference flags the film): its map is evidence, and `predict --out` writes it full size
    assert prediction.verdict.judged and prediction.verdict.heatmap_shown
    write_overlay(prediction, tmp_path / "cam.png")
    overlay = Image.open(tmp_path / "cam.png")
    assert overlay.mode == "RGB" and overlay.size == prediction.radiograph.original_size


@pytest.fixture(scope="module")
def two_landmark_runs(tmp_path_factory) -> tuple[Path, str, str]:
    """A workspace with the tiny classifier and two finished landmark runs, the first promoted."""
    from core.runs import layout, promotion
    from core.training import landmarks
    from core.data.datasets import TrainingItem
    from core.data.phantom import generate_case

    home = tmp_path_factory.mktemp("choose") / "workspace"
    promote_tiny_classifier(home)
    previous = os.environ.get("CERVICURVE_HOME")
    os.environ["CERVICURVE_HOME"] = str(home)
    try:
        items = []
        for number in range(4):
            case = generate_case(800 + number, size=128, curvature_class=CLASSES[number % 3])
            path = home / f"landmarks_{number}.png"
            Image.fromarray(case.image).save(path)
            items.append(TrainingItem(path=path, label=number % 3, roi_box=case.roi_box, landmarks=case.landmarks,
                                      patient_id=f"L{number}", image_id=100 + number))
        config = {"dataset": "tiny", "epochs": 1, "input_size": 64, "batch_size": 2, "widths": [8, 8, 8, 8, 8],
                  "device": "cpu"}
        runs = []
        for seed in (0, 1):
            run_dir = layout.new_run_dir(landmarks.MODEL_NAME, "landmarks")
            landmarks.fit({**config, "seed": seed}, run_dir,
                                    items={"train": items[:3], "val": items[3:], "test": []})
            runs.append(run_dir.name)
        promotion.promote(layout.resolve_run(runs[0]))
    finally:
        if previous is None:
            os.environ.pop("CERVICURVE_HOME", None)
        else:
            os.environ["CERVICURVE_HOME"] = previous
    return home, runs[0], runs[1]


@pytest.mark.slow
def test_another_landmark_run_can_be_chosen_and_the_result_says_which(two_landmark_runs, monkeypatch):
    home, promoted, other = two_landmark_runs
    monkeypatch.setenv("CERVICURVE_HOME", str(home))
    at = predict_page()
    chooser = at.selectbox(key="choice_landmarks")
    assert chooser.options == [f"Promoted: landmark-unet ({promoted})", f"Run {other} (landmark-unet)"]
    assert not [s for s in at.selectbox if s.key == "choice_detect"]  # no detector run: nothing to choose
    at.button(key="sample_normal").click().run()
    assert not at.exception
    assert any(c.value.startswith("Models: ") and f"landmarks run {promoted} (promoted)" in c.value for c in at.caption)

    chooser = at.selectbox(key="choice_landmarks")
    chooser.set_value(chooser.options[1]).run()
    assert not at.exception
    used = [c.value for c in at.caption if c.value.startswith("Models: ")]
    assert used and f"landmarks run {other}" in used[0] and "(promoted)" in used[0].split("landmarks")[0]
