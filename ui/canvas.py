"""The film on the Label page: the keypoints component (box and 23 landmarks placed in the browser) and the pictures
of readings shown elsewhere on the page (review, disagreements), in image pixels.

- :func:`keypoints` draws the component (``ui/components/keypoints``: a plain HTML/JS Streamlit component, no build
  step, nothing fetched). It gets the film as a data URL (:func:`film_data_url`) and the reading, and answers only
  when the annotator saves or moves on (``ui.label_workflow`` reads the answer).
- a :class:`View` is the part of the image shown and its scale; :func:`background` renders a view of a film with
  window/level and readings drawn in (a picture, for review and the team view).

Only :func:`keypoints` touches Streamlit, and only when called.
"""
from __future__ import annotations

import base64
import io
import math
from functools import lru_cache
from pathlib import Path
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
from PIL import Image, ImageDraw

from core.data.measure import LANDMARK_NAMES

BOX_COLOUR = "#00e5ff"
POINT_COLOUR = "#ff3d00"
OTHER_COLOUR = "#ffd600"  # a second reading overlaid (disagreements, review)
LINE_COLOUR = "#ffd600"
POINT_RADIUS = 4
ZOOM_MARGIN = 0.15     # the zoomed view shows the ROI box plus this fraction of its size per side
# The endplates drawn as their corners arrive: C2's inferior and C7's inferior endplate (the Cobb C2-C7 lines).
ENDPLATES = ((LANDMARK_NAMES.index("C2 bottom left"), LANDMARK_NAMES.index("C2 bottom right")),
             (LANDMARK_NAMES.index("C7 bottom left"), LANDMARK_NAMES.index("C7 bottom right")))
COMPONENT_DIR = Path(__file__).resolve().parent / "components" / "keypoints"
# The film goes to the browser at most this many pixels on its longer side (zoom shows it up to 40x): a 1600 px
# 8-bit PNG is 1-3 MB, and it travels once per film shown.
FILM_MAX_SIDE = 1600
FILM_PNG_MAX_BYTES = 1_500_000  # larger PNGs go as JPEG (quality 95) instead
ANSWER_WAIT_MS = 30_000  # then the component lets the annotator go on; a later answer never replaces newer edits


# ------------------------------------------------------------------ view


@dataclass(frozen=True)
class ViewSettings:
    """Brightness and contrast as a window over [0, 1] intensities, and invert; kept from image to image."""

    window: float = 1.0  # width of the intensity range spread over black..white (smaller = more contrast)
    level: float = 0.5   # its centre (larger = darker)
    invert: bool = False

    @classmethod
    def from_sliders(cls, brightness: float = 0.0, contrast: float = 0.0, invert: bool = False) -> "ViewSettings":
        """The component's sliders: brightness -100..100 (up is brighter: the window's centre goes down),
        contrast 0..90 (up narrows the window). keypoints.js applies the same formula."""
        brightness = min(100.0, max(-100.0, float(brightness)))
        contrast = min(90.0, max(0.0, float(contrast)))
        return cls(window=1.0 - 0.95 * contrast / 100.0, level=0.5 - brightness / 200.0, invert=bool(invert))

    def sliders(self) -> dict:
        """The inverse of :meth:`from_sliders` (rounded to the sliders' whole steps)."""
        return {"brightness": int(round((0.5 - self.level) * 200.0)),
                "contrast": int(round((1.0 - self.window) / 0.95 * 100.0)), "invert": bool(self.invert)}


def apply_window(pixels: np.ndarray, settings: ViewSettings) -> np.ndarray:
    """float [0, 1] image -> uint8 through the window/level (and invert)."""
    width = max(float(settings.window), 1e-3)
    low = float(settings.level) - width / 2
    shown = np.clip((np.asarray(pixels, dtype=np.float32) - low) / width, 0.0, 1.0)
    if settings.invert:
        shown = 1.0 - shown
    return (shown * 255.0 + 0.5).astype(np.uint8)


@dataclass(frozen=True)
class View:
    """The image region ``(x0, y0, x1, y1)`` (image pixels) drawn on a canvas of ``size`` (w, h) pixels."""

    region: tuple[float, float, float, float]
    size: tuple[int, int]
    zoomed: bool = False

    @property
    def scale(self) -> float:
        return self.size[0] / (self.region[2] - self.region[0])

    def to_canvas(self, x: float, y: float) -> tuple[float, float]:
        return (x - self.region[0]) * self.scale, (y - self.region[1]) * self.scale

    def to_image(self, x: float, y: float) -> tuple[float, float]:
        return self.region[0] + x / self.scale, self.region[1] + y / self.scale

    def contains(self, x: float, y: float) -> bool:
        x0, y0, x1, y1 = self.region
        return x0 <= x <= x1 and y0 <= y <= y1


def _fit(width: float, height: float, max_width: int, max_height: int) -> tuple[int, int]:
    scale = min(max_width / width, max_height / height)
    return max(1, int(round(width * scale))), max(1, int(round(height * scale)))


def full_view(image_size: tuple[int, int], max_width: int = 640, max_height: int = 720) -> View:
    width, height = image_size
    size = _fit(width, height, max_width, max_height)
    return View((0.0, 0.0, float(width), size[1] * width / size[0]), size)


def zoom_view(image_size: tuple[int, int], box: Sequence[float], max_width: int = 640, max_height: int = 720,
              margin: float = ZOOM_MARGIN) -> View:
    """The ROI box plus ``margin`` of its size per side, clipped to the image, filling the canvas."""
    width, height = image_size
    x1, y1, x2, y2 = (float(v) for v in box)
    dx, dy = (x2 - x1) * margin, (y2 - y1) * margin
    left, top = max(0.0, x1 - dx), max(0.0, y1 - dy)
    right, bottom = min(float(width), x2 + dx), min(float(height), y2 + dy)
    size = _fit(right - left, bottom - top, max_width, max_height)
    # the region's height follows the canvas's aspect, so one scale serves both axes
    return View((left, top, right, top + size[1] * (right - left) / size[0]), size, zoomed=True)


def background(pixels: np.ndarray, view: View, settings: ViewSettings,
               lines: Sequence[tuple[tuple[float, float], tuple[float, float]]] = (),
               readings: Sequence[tuple[Sequence[float] | None, np.ndarray | None, str]] = ()) -> Image.Image:
    """The view's crop at canvas size, windowed, with ``lines`` (image pixels) and ``readings`` — (box, points,
    colour) each, e.g. two annotators' readings overlaid — drawn in."""
    height, width = pixels.shape[:2]
    x0, y0, x1, y1 = view.region
    left, top = int(math.floor(x0)), int(math.floor(y0))
    right, bottom = min(width, int(math.ceil(x1))), min(height, int(math.ceil(y1)))
    crop = Image.fromarray(apply_window(pixels[top:bottom, left:right], settings), mode="L")
    # resize so that image pixel (x, y) lands on canvas (x - x0) * scale: scale the crop, then shift by the
    # fraction of a pixel the floor() cut off
    scale = view.scale
    scaled = crop.resize((max(1, round(crop.width * scale)), max(1, round(crop.height * scale))),
                         Image.Resampling.BILINEAR)
    shown = Image.new("RGB", view.size, (0, 0, 0))
    shown.paste(scaled.convert("RGB"), (round((left - x0) * scale), round((top - y0) * scale)))
    draw = ImageDraw.Draw(shown)
    for start, end in lines:
        draw.line([view.to_canvas(*start), view.to_canvas(*end)], fill=LINE_COLOUR, width=2)
    for box, points, colour in readings:
        if box is not None:
            draw.rectangle([*view.to_canvas(box[0], box[1]), *view.to_canvas(box[2], box[3])], outline=colour, width=2)
        for x, y in (np.empty((0, 2)) if points is None else np.asarray(points, dtype=float)):
            if np.isfinite(x) and np.isfinite(y):
                cx, cy = view.to_canvas(x, y)
                draw.ellipse([cx - POINT_RADIUS, cy - POINT_RADIUS, cx + POINT_RADIUS, cy + POINT_RADIUS],
                             outline=colour, width=2)
    return shown


# ------------------------------------------------------------------ the keypoints component


def film_data_url(pixels: np.ndarray, max_side: int = FILM_MAX_SIDE) -> tuple[str, tuple[int, int]]:
    """The film as the browser gets it: 8-bit grey, no window applied (the component windows it), at most
    ``max_side`` px on its longer side; PNG, or JPEG when the PNG would be large. Returns (data URL, size sent)."""
    grey = Image.fromarray(apply_window(pixels, ViewSettings()), mode="L")
    longest = max(grey.size)
    if longest > max_side:
        scale = max_side / longest
        grey = grey.resize((max(1, round(grey.width * scale)), max(1, round(grey.height * scale))),
                           Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    grey.save(buffer, format="PNG", optimize=False, compress_level=6)
    kind = "png"
    if buffer.tell() > FILM_PNG_MAX_BYTES:
        buffer = io.BytesIO()
        grey.save(buffer, format="JPEG", quality=95)
        kind = "jpeg"
    return f"data:image/{kind};base64,{base64.b64encode(buffer.getvalue()).decode('ascii')}", grey.size


@lru_cache(maxsize=1)
def _component():
    import streamlit.components.v1 as components

    return components.declare_component("keypoints", path=str(COMPONENT_DIR))


def keypoints_args(*, film: str, film_key: str, image_size: tuple[int, int], state: dict, names: dict,
                   sides: list, colours: list, vertebrae: list, diagram: list, classes: Sequence[str],
                   suggested: str | None, nav: dict, view: dict, ack: str | None, notice: dict | None,
                   answer_wait_ms: int = ANSWER_WAIT_MS) -> dict:
    """The keypoints component's render arguments, all JSON (see keypoints.js): ``state`` from
    ``label_workflow.component_state``, ``names`` {facing: 23 names}, ``nav`` {can_previous, can_next, can_skip},
    ``view`` the sliders' start, ``ack`` the nonce of the last message handled, ``notice`` {text, kind} to show by
    the buttons, ``answer_wait_ms`` how long the component waits for an answer before letting the annotator go on."""
    return dict(film=film, film_key=film_key, image_size=[int(image_size[0]), int(image_size[1])], state=state,
                names=names, sides=sides, colours=colours, vertebrae=vertebrae, diagram=diagram,
                classes=list(classes), suggested=suggested, nav=nav, view=view, ack=ack, notice=notice,
                endplates=[list(pair) for pair in ENDPLATES], box_colour=BOX_COLOUR,
                answer_wait_ms=int(answer_wait_ms))


def keypoints(*, key: str, **args) -> Any:
    """Draw the keypoints component (arguments as :func:`keypoints_args`); returns its last message (or None)."""
    return _component()(key=key, default=None, height=640, **keypoints_args(**args))
