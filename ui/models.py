"""The models Predict uses: identified by file and modification time, loaded once per server process.

Loading means importing torch (and ultralytics for the detector and landmarks): seconds on a CPU. The
page opens without it; once it is drawn, ``preload`` loads the models in a background thread so the first
upload does not wait for them. ``CERVICURVE_PRELOAD=0`` turns that off (a server short of memory).
"""
from __future__ import annotations

import os
import sys
import threading
import traceback

import streamlit as st

from core import settings
from core.runs import promotion
from ui.frame import TASKS

_preloading: set[tuple] = set()
_preload_lock = threading.Lock()


def model_files(runs: tuple[str | None, ...]) -> tuple:
    """Identity of the models a prediction uses (path + modification time), to key caches on.

    ``runs``: classifier, detector and landmark run ids (``ui.frame.selected_runs``); None = the promoted one.
    """
    paths = [settings.runs_dir() / run / "best.pt" if run else promotion.promoted_model(task)
             for (task, _), run in zip(TASKS, runs)]
    return tuple((str(p), p.stat().st_mtime_ns) if p is not None and p.exists() else None for p in paths)


def _predictor(runs: tuple[str | None, ...]):
    from core.inference.pipeline import Predictor

    classifier, detector, landmarks = runs
    return Predictor(classifier=classifier, detector=detector, landmarks=landmarks)


@st.cache_resource(max_entries=4, show_spinner="Loading the models (once per server)…")
def load_predictor(runs: tuple[str | None, ...], files: tuple):
    """The pipeline's Predictor for the chosen runs (None: the promoted model of that task)."""
    return _predictor(runs)


def preload(runs: tuple[str | None, ...], files: tuple) -> None:
    """Load the models in a daemon thread (once per model set); the page never waits for it."""
    if os.environ.get("CERVICURVE_PRELOAD", "1") == "0" or files[0] is None:
        return
    with _preload_lock:
        if files in _preloading:
            return
        _preloading.add(files)

    def work() -> None:
        try:
            _predictor(runs)  # fills the pipeline's per-process model cache
        except Exception:  # the page's own load shows the reason when someone predicts
            traceback.print_exc(file=sys.stderr)

    threading.Thread(target=work, name="cervicurve-preload", daemon=True).start()
