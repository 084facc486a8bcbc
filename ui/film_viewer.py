"""The film on the Predict page: one reading view (``ui/components/film_viewer``: a plain HTML/JS Streamlit component,
no build step, nothing fetched) with zoom, pan, window/level and layers the reader turns on and off.

:func:`viewer_args` decides what the browser gets from one prediction, keeping the verdict's rules: the landmarks and
endplate lines only where ``verdict.angle_shown``, the heatmap only where ``verdict.heatmap_shown`` (what is not sent
cannot be shown). Everything is in display coordinates (the film as sent, at most ``report.DISPLAY_MAX`` px).
:func:`film_viewer` draws the component; it never answers Python (nothing to save), so it returns nothing.
:func:`waiting_args` is the view before any film: the Predict page draws it where the result's view will be, with
the same key, so the browser makes the viewer's iframe while the user picks a file and a result only sends it the
film (an iframe made with the result cost ~0.9 s of a warm upload, benchmarks/results/app_latency.md).
"""
from __future__ import annotations

import base64
import hashlib
import io
import math
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from core.data.measure import LANDMARK_NAMES
from core.inference import report

COMPONENT_DIR = Path(__file__).resolve().parent / "components" / "film_viewer"
HEATMAP_MAX_SIDE = 512  # the map is smooth: the browser scales this layer up to the film


def _colour(rgb) -> str:
    return "#" + "".join(f"{int(v):02x}" for v in rgb)


def _data_url(image: Image.Image, kind: str, **options) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format=kind.upper(), **options)
    return f"data:image/{kind.lower()};base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _point(p) -> list[float] | None:
    x, y = (float(v) for v in p)
    return [round(x, 2), round(y, 2)] if math.isfinite(x) and math.isfinite(y) else None


def endplate_lines(landmarks: np.ndarray) -> list[dict]:
    """The C2 and C7 (or C6) inferior endplates the Cobb angle is measured between, extended past their corners as
    ``report.annotated_radiograph`` draws them: ``[{level, start, end}]`` in the landmarks' coordinates."""
    points = np.asarray(landmarks, dtype=float)
    lines = []
    for level, (left, right) in report.ENDPLATES.items():
        a, b = points[LANDMARK_NAMES.index(left)], points[LANDMARK_NAMES.index(right)]
        if not (np.isfinite(a).all() and np.isfinite(b).all()) and level in report.FALLBACK_ENDPLATE:
            level, (left, right) = report.FALLBACK_ENDPLATE[level]
            a, b = points[LANDMARK_NAMES.index(left)], points[LANDMARK_NAMES.index(right)]
        if np.isfinite(a).all() and np.isfinite(b).all():
            direction = (b - a) / max(1e-6, float(np.hypot(*(b - a))))
            reach = 0.6 * float(np.hypot(*(b - a)))
            lines.append({"level": level, "start": _point(a - direction * reach), "end": _point(b + direction * reach)})
    return lines


def heatmap_layer(cam: np.ndarray, size: tuple[int, int]) -> str:
    """The map as an RGBA PNG data URL: jet colours, opacity = the map's value (``explain.overlay``'s blend: the
    component draws it at the page's opacity, so ``(1 - a * cam) * film + a * cam * colour``)."""
    import cv2

    width, height = size
    scale = min(1.0, HEATMAP_MAX_SIDE / max(width, height))
    shape = (max(1, round(width * scale)), max(1, round(height * scale)))
    cam = np.clip(np.asarray(cam, dtype=np.float32), 0.0, 1.0)
    cam = cv2.resize(cam, shape, interpolation=cv2.INTER_AREA if cam.shape[1] > shape[0] else cv2.INTER_LINEAR)
    value = np.round(cam * 255).astype(np.uint8)
    heat = cv2.cvtColor(cv2.applyColorMap(value, cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)
    return _data_url(Image.fromarray(np.dstack([heat, value]), mode="RGBA"), "png")


def viewer_args(prediction, alpha: float = 0.5, heatmap_label: str = "Heatmap") -> dict:
    """What the component gets for one prediction (JSON). Landmarks and endplates only where the verdict shows the
    angle; the heatmap only where the verdict rests on the network's class."""
    verdict = prediction.verdict
    pixels, scale = report.display_copy(prediction.radiograph.pixels)
    film = Image.fromarray(np.round(np.clip(pixels, 0.0, 1.0) * 255).astype(np.uint8), mode="L")
    width, height = film.size
    box = [float(v) * scale for v in prediction.roi_box] if prediction.roi_box is not None else None
    if box is not None and [round(v, 3) for v in box] == [0.0, 0.0, float(width), float(height)]:
        box = None  # the whole image (no spine found) frames nothing: report.annotated_radiograph skips it too
    landmarks = endplates = None
    if prediction.landmarks is not None and verdict.angle_shown:
        shown = np.asarray(prediction.landmarks, dtype=float) * scale
        landmarks = [_point(p) for p in shown]
        endplates = endplate_lines(shown)
    heatmap = None
    if prediction.cam is not None and verdict.heatmap_shown:
        heatmap = heatmap_layer(prediction.cam, (width, height))
    film_url = _data_url(film, "jpeg", quality=92)
    return {
        "film": film_url, "film_key": hashlib.sha1(film_url.encode("ascii")).hexdigest()[:16],
        "size": [width, height], "box": None if box is None else [round(v, 2) for v in box],
        "box_label": report.box_label(prediction), "landmarks": landmarks, "endplates": endplates,
        "heatmap": heatmap, "heatmap_alpha": float(alpha), "heatmap_label": heatmap_label,
        "colours": {"box": _colour(report.BOX_COLOUR), "landmarks": _colour(report.LANDMARK_COLOUR),
                    "endplates": _colour(report.ENDPLATE_COLOUR)},
    }


def waiting_args(note: str) -> dict:
    """The view with no film yet: the note only."""
    return {"film": None, "note": note}


@lru_cache(maxsize=1)
def _component():
    import streamlit.components.v1 as components

    return components.declare_component("film_viewer", path=str(COMPONENT_DIR))


def film_viewer(args: dict, *, key: str) -> Any:
    """Draw the reading view with ``viewer_args``' (or ``waiting_args``') arguments."""
    return _component()(key=key, default=None, **args)
