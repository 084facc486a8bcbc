"""Driving pages through Streamlit's AppTest (``streamlit.testing.v1``)."""
from __future__ import annotations

import json

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
