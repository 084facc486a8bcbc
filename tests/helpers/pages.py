"""Driving pages through Streamlit's AppTest (``streamlit.testing.v1``): the Predict page (upload, the reading view's
arguments), the Train page (its settings widgets, Start) and the text any page shows."""
from __future__ import annotations

import json
from pathlib import Path

from streamlit.testing.v1 import AppTest

from tests.helpers import ROOT

APP = str(ROOT / "app.py")
TRAIN = str(ROOT / "pages" / "train.py")
RUNS = str(ROOT / "pages" / "runs.py")


def predict_page() -> AppTest:
    at = AppTest.from_file(APP, default_timeout=60).run()  # Predict is the default page
    assert not at.exception
    return at


def upload(at: AppTest, *files: tuple[str, bytes]) -> AppTest:
    at.file_uploader(key="predict_upload").set_value([(name, data, "application/octet-stream") for name, data in files])
    at.run()
    assert not at.exception
    return at


def film_view(at: AppTest) -> dict:
    """The arguments the page gives the reading view (ui/components/film_viewer), which AppTest cannot draw: what
    the browser gets is all it can show."""
    [viewer] = [e for e in at.get("component_instance") if e.proto.component_name.endswith("film_viewer")]
    return json.loads(viewer.proto.json_args)


def texts(at: AppTest) -> str:
    parts = [e.value for kind in ("markdown", "caption", "error", "info", "success", "warning") for e in at.get(kind)]
    return "\n".join(str(p) for p in parts)


# ------------------------------------------------------------------------------------------ Train and Runs pages
# The Train page's settings for a tiny run (on top of the page's defaults), as a user types them.
TINY_SETTINGS = {"epochs": 40, "batch_size": 4, "input_size": "32", "warmup_epochs": 0, "patience": 0}


def page(path: str = TRAIN) -> AppTest:
    """A page (the Train page unless ``path`` names another) run once, without an exception."""
    at = AppTest.from_file(path, default_timeout=60).run()
    assert not at.exception, at.exception
    return at


def widget(at: AppTest, name: str, config: str = "ClassifyConfig"):
    """The Train page's settings widget of config key ``name``, whatever kind it is."""
    key = f"train_{config}_{name}"
    for kind in ("number_input", "text_input", "checkbox", "selectbox"):
        found = [w for w in at.get(kind) if w.key == key]
        if found:
            return found[0]
    raise KeyError(key)


def fill(at: AppTest, model: str = "cnn", **values) -> AppTest:
    """Fill the Train page's settings for a tiny run of ``model`` (``values`` override TINY_SETTINGS)."""
    at.selectbox(key="train_model").set_value(model).run()
    for name, value in {**TINY_SETTINGS, **values}.items():
        widget(at, name).set_value(int(value) if isinstance(widget(at, name).value, int) else value).run()
    at.text_area(key="train_extra_ClassifyConfig").set_value("n_boot=20").run()
    assert not at.exception
    return at


def start(at: AppTest) -> Path:
    """Press Start on the Train page; the run folder it made."""
    from core.runs import layout

    at.button(key="train_start").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    [run] = layout.list_runs()[:1]
    return Path(run.run_dir)
