"""Drawing a box and the 23 landmarks on a radiograph with streamlit-drawable-canvas 0.13, in image pixels.

The canvas has no zoom, keeps no state we can trust across reruns and speaks canvas pixels. So:
- a :class:`View` is the part of the image shown (the whole film, or the ROI zoomed) and its scale; the background
  is that crop rendered at canvas size with window/level applied, and every coordinate goes through the View,
  so a click on the zoomed film lands in full-image pixels;
- an :class:`Annotation` (kept per image in ``st.session_state`` by the page) is the truth: box, points, which
  points are marked not visible, the class. The canvas only edits it: ``Annotation.sync`` reads the canvas's
  Fabric JSON back, and when the annotation changes in another way (undo, a model draft, another image or
  view) the page draws a fresh canvas (``Annotation.version`` is part of its key) from ``Annotation.drawing``.

Nothing here imports the canvas package (it only imports inside a running app), so this module is plain Python;
pages call ``st_canvas(**canvas_arguments(...))``.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
from PIL import Image, ImageDraw

from core.data.measure import LANDMARK_NAMES

BOX_COLOUR = "#00e5ff"
POINT_COLOUR = "#ff3d00"
OTHER_COLOUR = "#ffd600"  # a second reading overlaid (disagreements, review)
LINE_COLOUR = "#ffd600"
STROKE = 2
POINT_RADIUS = 4
MIN_BOX_CANVAS_PX = 8  # a click in box mode draws a tiny rect: not a box
ZOOM_MARGIN = 0.15     # the zoomed view shows the ROI box plus this fraction of its size per side
# The endplates drawn as their corners arrive: C2's inferior and C7's inferior endplate (the Cobb C2-C7 lines).
ENDPLATES = ((LANDMARK_NAMES.index("C2 bottom left"), LANDMARK_NAMES.index("C2 bottom right")),
             (LANDMARK_NAMES.index("C7 bottom left"), LANDMARK_NAMES.index("C7 bottom right")))


# ------------------------------------------------------------------ view


@dataclass(frozen=True)
class ViewSettings:
    """Brightness and contrast as a window over [0, 1] intensities, and invert; kept from image to image."""

    window: float = 1.0  # width of the intensity range spread over black..white (smaller = more contrast)
    level: float = 0.5   # its centre (larger = darker)
    invert: bool = False
    zoom: bool = False   # show the ROI box region instead of the whole film


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


# ------------------------------------------------------------------ Fabric JSON


def _rect(box: Sequence[float], view: View, colour: str = BOX_COLOUR) -> dict:
    (left, top), (right, bottom) = view.to_canvas(box[0], box[1]), view.to_canvas(box[2], box[3])
    return {"type": "Rect", "left": round(left, 2), "top": round(top, 2), "width": round(right - left, 2),
            "height": round(bottom - top, 2), "originX": "left", "originY": "top", "scaleX": 1, "scaleY": 1,
            "angle": 0, "fill": "rgba(0,0,0,0)", "stroke": colour, "strokeWidth": STROKE, "strokeUniform": True,
            "lockRotation": True}


def _circle(x: float, y: float, view: View, colour: str = POINT_COLOUR) -> dict:
    # the canvas's point tool puts a circle's left edge at the click minus radius and half the stroke
    cx, cy = view.to_canvas(x, y)
    return {"type": "Circle", "left": round(cx - (POINT_RADIUS + STROKE / 2), 2), "top": round(cy, 2),
            "radius": POINT_RADIUS, "originX": "left", "originY": "center", "scaleX": 1, "scaleY": 1,
            "fill": colour, "stroke": colour, "strokeWidth": STROKE}


def read_drawing(json_data: dict | None, view: View) -> tuple[list[list[float]], list[tuple[float, float]]]:
    """Canvas Fabric JSON -> (boxes, points) in image pixels, in drawing order. Rects smaller than
    MIN_BOX_CANVAS_PX (a stray click in box mode) are left out."""
    boxes, points = [], []
    for obj in (json_data or {}).get("objects", []):
        kind = str(obj.get("type", "")).lower()
        sx, sy = float(obj.get("scaleX", 1) or 1), float(obj.get("scaleY", 1) or 1)
        left, top = float(obj.get("left", 0)), float(obj.get("top", 0))
        if kind == "rect":
            width, height = float(obj.get("width", 0)) * sx, float(obj.get("height", 0)) * sy
            if obj.get("originX") == "center":
                left -= width / 2
            if obj.get("originY") == "center":
                top -= height / 2
            if width < MIN_BOX_CANVAS_PX or height < MIN_BOX_CANVAS_PX:
                continue
            (x1, y1), (x2, y2) = view.to_image(left, top), view.to_image(left + width, top + height)
            boxes.append([x1, y1, x2, y2])
        elif kind == "circle":
            radius, stroke = float(obj.get("radius", POINT_RADIUS)), float(obj.get("strokeWidth", STROKE))
            cx = left + (radius + stroke / 2) * sx if obj.get("originX", "left") == "left" else left
            cy = top if obj.get("originY", "center") == "center" else top + (radius + stroke / 2) * sy
            points.append(view.to_image(cx, cy))
    return boxes, points


# ------------------------------------------------------------------ the annotation being edited


@dataclass
class Annotation:
    """One image's reading while it is being edited (the page keeps one per image in session state)."""

    image_id: int
    image_size: tuple[int, int]
    roi_box: list[float] | None = None
    landmarks: np.ndarray = field(default_factory=lambda: np.full((len(LANDMARK_NAMES), 2), np.nan))
    hidden: set[int] = field(default_factory=set)      # marked not visible: stored as missing
    curvature_class: str | None = None
    note: str = ""
    draft: dict | None = None                         # the model draft it started from (store record)
    placed: list[int] = field(default_factory=list)   # indices in the order they were placed or hidden (undo)
    dirty: bool = False                               # edited since opened or saved
    version: int = 0                                  # bumps when the canvas must be drawn afresh
    seconds: float = 0.0                              # time spent on it before the current visit
    opened_at: float | None = None
    _circles: list[int] = field(default_factory=list)  # landmark index of each canvas circle, in drawing order
    _drawn: dict = field(default_factory=dict)         # {"view": view, "drawing": what the canvas started from}

    @classmethod
    def from_reading(cls, image_id: int, image_size: tuple[int, int], *, curvature_class=None, roi_box=None,
                     landmarks=None, note=None, draft=None) -> "Annotation":
        """A saved reading (or a draft) to continue from; a saved missing point comes back as not visible."""
        work = cls(image_id, tuple(image_size), roi_box=None if roi_box is None else [float(v) for v in roi_box],
                   curvature_class=curvature_class, note=note or "", draft=draft)
        if landmarks is not None:
            points = np.asarray(landmarks, dtype=float).reshape(len(LANDMARK_NAMES), 2)
            work.landmarks = points.copy()
            work.placed = list(range(len(LANDMARK_NAMES)))
            work.hidden = {i for i in range(len(LANDMARK_NAMES)) if not np.isfinite(points[i]).all()}
        return work

    # -- state

    @property
    def next_index(self) -> int | None:
        """The next landmark to place (CSXA order), None when every one is placed or marked not visible."""
        return next((i for i in range(len(LANDMARK_NAMES)) if i not in self.placed), None)

    @property
    def next_name(self) -> str | None:
        index = self.next_index
        return None if index is None else LANDMARK_NAMES[index]

    @property
    def placed_points(self) -> list[int]:
        return [i for i in self.placed if i not in self.hidden]

    def saved_landmarks(self) -> np.ndarray | None:
        """The points to store: nan for not visible and not yet placed; None when no point was placed at all."""
        return None if not self.placed else self.landmarks.copy()

    def endplate_lines(self) -> list[tuple[tuple[float, float], tuple[float, float]]]:
        lines = []
        for a, b in ENDPLATES:
            if np.isfinite(self.landmarks[[a, b]]).all():
                lines.append((tuple(self.landmarks[a]), tuple(self.landmarks[b])))
        return lines

    def touch(self, now: float | None = None) -> None:
        """Start (or go on) timing this image."""
        if self.opened_at is None:
            self.opened_at = time.monotonic() if now is None else now

    def leave(self, now: float | None = None) -> None:
        """Stop timing (moving to another image); the time so far is kept."""
        if self.opened_at is not None:
            self.seconds += (time.monotonic() if now is None else now) - self.opened_at
            self.opened_at = None

    def elapsed(self, now: float | None = None) -> float:
        current = 0.0 if self.opened_at is None else (time.monotonic() if now is None else now) - self.opened_at
        return self.seconds + current

    def saved(self) -> None:
        """After a save: nothing unsaved, and the clock starts again for any later edit."""
        self.dirty = False
        self.seconds = 0.0
        self.opened_at = time.monotonic()

    # -- edits that redraw the canvas

    def _redraw(self) -> None:
        self.version += 1
        self._drawn = {}

    def mark_not_visible(self) -> None:
        index = self.next_index
        if index is not None:
            self.placed.append(index)
            self.hidden.add(index)
            self.landmarks[index] = np.nan
            self.dirty = True

    def undo(self) -> str | None:
        """Take back the last point placed or marked not visible; returns its name."""
        if not self.placed:
            return None
        index = self.placed.pop()
        self.hidden.discard(index)
        self.landmarks[index] = np.nan
        self.dirty = True
        self._redraw()
        return LANDMARK_NAMES[index]

    def clear_points(self) -> None:
        self.placed, self.hidden = [], set()
        self.landmarks = np.full((len(LANDMARK_NAMES), 2), np.nan)
        self.dirty = True
        self._redraw()

    def choose_class(self, curvature_class: str) -> None:
        if curvature_class != self.curvature_class:
            self.curvature_class = curvature_class
            self.dirty = True

    def apply_draft(self, record: dict) -> None:
        """Fill box, points and class from a model draft (``Draft.record()``); the draft is kept as provenance."""
        if record.get("roi_box") is not None:
            self.roi_box = [float(v) for v in record["roi_box"]]
        if record.get("landmarks") is not None:
            points = np.array([[np.nan if v is None else v for v in row] for row in record["landmarks"]], dtype=float)
            self.landmarks = points
            self.placed = list(range(len(LANDMARK_NAMES)))
            self.hidden = {i for i in range(len(LANDMARK_NAMES)) if not np.isfinite(points[i]).all()}
        if record.get("curvature_class"):
            self.curvature_class = record["curvature_class"]
        self.draft = record
        self.dirty = True
        self._redraw()

    # -- the canvas

    def canvas_key(self, prefix: str, view: View) -> str:
        self.drawing(view)
        return f"{prefix}_{self.image_id}_{'zoom' if view.zoomed else 'full'}_{self.version}"

    def drawing(self, view: View) -> dict:
        """The Fabric JSON to start this view's canvas from; the same object on every rerun of one version
        (the canvas reloads whenever it changes). Another view (zoom on or off) is a fresh canvas."""
        if self._drawn.get("view") != view:
            if self._drawn:
                self.version += 1
            objects = [] if self.roi_box is None else [_rect(self.roi_box, view)]
            self._circles = [i for i in sorted(self.placed_points) if view.contains(*self.landmarks[i])]
            objects += [_circle(*self.landmarks[i], view) for i in self._circles]
            self._drawn = {"view": view, "drawing": {"objects": objects}}
        return self._drawn["drawing"]

    def sync(self, json_data: dict | None, view: View) -> bool:
        """Take the canvas's drawing in: the last box drawn is the box; circles are the points in the order
        drawn (a new one is the next landmark). Returns True when the annotation changed."""
        self.drawing(view)  # makes sure the circle order belongs to this view
        boxes, points = read_drawing(json_data, view)
        changed = False
        if boxes:
            box = [round(v, 2) for v in boxes[-1]]
            if self.roi_box is None or not np.allclose(box, self.roi_box, atol=0.05):
                self.roi_box, changed = box, True
            if len(boxes) > 1:
                self._redraw()  # keep one box on the canvas
        if len(points) < len(self._circles):
            # Circles gone from the canvas (its toolbar's undo or delete, or a canvas drawn afresh by the browser):
            # points are taken back only with Annotation.undo, so nothing placed is lost here; redraw them.
            self._redraw()
            return changed
        for position, (x, y) in enumerate(points):
            if position < len(self._circles):
                index = self._circles[position]
                if not np.allclose(self.landmarks[index], (x, y), atol=0.05):
                    self.landmarks[index] = (round(x, 2), round(y, 2))
                    changed = True
                continue
            index = self.next_index
            if index is None:
                self._redraw()  # all 23 placed: a 24th click is dropped
                break
            self.landmarks[index] = (round(x, 2), round(y, 2))
            self.placed.append(index)
            self._circles.append(index)
            changed = True
        if changed:
            self.dirty = True
        return changed


def canvas_arguments(work: Annotation, view: View, image: Image.Image, mode: str, key_prefix: str = "canvas") -> dict:
    """Keyword arguments for ``st_canvas``: ``mode`` is "box" (draw/redraw the ROI) or "points"."""
    if mode not in ("box", "points"):
        raise ValueError(f"mode must be 'box' or 'points', got {mode!r}")
    return dict(background_image=image, background_image_fit="contain", width=view.size[0], height=view.size[1],
                drawing_mode="rect" if mode == "box" else "point", fill_color="rgba(0,0,0,0)",
                stroke_color=BOX_COLOUR if mode == "box" else POINT_COLOUR, stroke_width=STROKE,
                point_display_radius=POINT_RADIUS, initial_drawing=work.drawing(view),
                key=work.canvas_key(key_prefix, view), update_streamlit=True)


def canvas_state(session_state: Any, work: Annotation, view: View, key_prefix: str = "canvas") -> dict | None:
    """The drawing the canvas last sent for this annotation and view (None before it sent one): read it before
    drawing the page, so everything shown reflects the latest click."""
    key = work.canvas_key(key_prefix, view)
    value = session_state[key] if key in session_state else None
    if not value:
        return None
    drawing = value.get("drawing") if hasattr(value, "get") else None
    return None if not drawing else drawing.get("raw")
