"""Figures of a prediction: the radiograph with ROI box, landmarks and C2/C7 endplate lines, the class
probabilities, and the one-page PNG report. Drawn with PIL (images) and plotly (charts); no torch here."""
from __future__ import annotations

import functools
import importlib.util
import io
import math
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import plotly.graph_objects as go
from PIL import Image, ImageDraw, ImageFont

from core.data.measure import LANDMARK_NAMES
from core.settings import CLASSES
from ui.imagery import as_pil

CLASS_COLOURS = {"normal": "#2a9d8f", "straightened": "#e9c46a", "reversed": "#e76f51"}
BOX_COLOUR = (255, 200, 0)
LANDMARK_COLOUR = (0, 220, 255)
ENDPLATE_COLOUR = (255, 64, 160)
# The endplates the C2–C7 Cobb angle is measured between (inferior endplates of C2 and C7).
ENDPLATES = {"C2": ("C2 bottom left", "C2 bottom right"), "C7": ("C7 bottom left", "C7 bottom right")}


@functools.lru_cache(maxsize=16)
def _font(size: int) -> ImageFont.ImageFont:
    """DejaVu Sans (shipped with matplotlib, which ultralytics needs) has the dashes and degree sign the
    labels use; Pillow's bundled font, the fallback, does not. Nothing is downloaded either way."""
    spec = importlib.util.find_spec("matplotlib")
    if spec is not None and spec.origin:
        path = Path(spec.origin).parent / "mpl-data" / "fonts" / "ttf" / "DejaVuSans.ttf"
        if path.exists():
            return ImageFont.truetype(str(path), size=size)
    return ImageFont.load_default(size=size)


def _scale(image: Image.Image) -> float:
    """Line width and marker size grow with the image, so a 2048 px film shows them as a 512 px one does."""
    return max(1.0, max(image.size) / 512)


def annotated_radiograph(pixels: np.ndarray, roi_box: Sequence[float] | None = None,
                         landmarks: np.ndarray | None = None, box_label: str | None = None) -> Image.Image:
    """RGB image of the radiograph with the ROI box, the 23 landmarks and the C2 and C7 endplate lines.

    A box that is the whole image (no spine found) is not drawn: it would only frame the picture."""
    image = as_pil(pixels).convert("RGB")
    draw = ImageDraw.Draw(image)
    k = _scale(image)
    if roi_box is not None and list(map(float, roi_box)) != [0.0, 0.0, float(image.width), float(image.height)]:
        x1, y1, x2, y2 = (float(v) for v in roi_box)
        draw.rectangle([x1, y1, x2, y2], outline=BOX_COLOUR, width=max(2, round(2 * k)))
        if box_label:
            font = _font(round(12 * k))
            draw.text((x1 + 3 * k, max(0.0, y1 - 16 * k)), box_label, fill=BOX_COLOUR, font=font)
    if landmarks is not None:
        points = np.asarray(landmarks, dtype=float)
        for level, (left, right) in ENDPLATES.items():
            a, b = points[LANDMARK_NAMES.index(left)], points[LANDMARK_NAMES.index(right)]
            if np.isfinite(a).all() and np.isfinite(b).all():
                direction = (b - a) / max(1e-6, float(np.hypot(*(b - a))))
                reach = 0.6 * float(np.hypot(*(b - a)))  # extend past the corners so the angle reads easily
                start, end = a - direction * reach, b + direction * reach
                draw.line([tuple(start), tuple(end)], fill=ENDPLATE_COLOUR, width=max(2, round(2 * k)))
                draw.text(tuple(end + np.array([3 * k, -8 * k])), level, fill=ENDPLATE_COLOUR, font=_font(round(12 * k)))
        radius = 2.5 * k
        for x, y in points:
            if math.isfinite(x) and math.isfinite(y):
                draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=LANDMARK_COLOUR)
    return image


def probability_chart(probabilities: Mapping[str, float], predicted: str | None = None) -> go.Figure:
    """Horizontal bars, one per class in the fixed order, the predicted class outlined."""
    names = [name for name in CLASSES if name in probabilities]
    values = [float(probabilities[name]) for name in names]
    figure = go.Figure(go.Bar(
        x=values, y=names, orientation="h", text=[f"{v:.0%}" for v in values], textposition="auto",
        marker_color=[CLASS_COLOURS.get(name, "#888") for name in names],
        marker_line_width=[3 if name == predicted else 0 for name in names], marker_line_color="#222",
    ))
    figure.update_layout(height=170, margin=dict(l=10, r=10, t=10, b=10), xaxis=dict(range=[0, 1], tickformat=".0%"),
                         yaxis=dict(autorange="reversed"), showlegend=False)
    return figure


def report_png(*, radiograph: Image.Image, heatmap: Image.Image | None, title: str, curvature_class: str,
               probabilities: Mapping[str, float], lines: Sequence[str], notice: str) -> bytes:
    """One-page PNG: annotated radiograph and heatmap side by side, class, probabilities, angle, notice."""
    panel_h = 720
    panels = [radiograph] + ([heatmap] if heatmap is not None else [])
    resized = [p.convert("RGB").resize((max(1, round(p.width * panel_h / p.height)), panel_h)) for p in panels]
    gap, margin = 16, 24
    width = max(900, sum(p.width for p in resized) + gap * (len(resized) - 1) + 2 * margin)
    text_h = 130 + 30 * len(CLASSES) + 26 * len(lines)
    page = Image.new("RGB", (width, 70 + panel_h + text_h), "white")
    draw = ImageDraw.Draw(page)
    draw.text((margin, 18), title, fill="black", font=_font(28))
    x = margin
    for panel in resized:
        page.paste(panel, (x, 64))
        x += panel.width + gap
    y = 64 + panel_h + 16
    draw.rectangle([margin, y + 6, margin + 24, y + 30], fill=CLASS_COLOURS.get(curvature_class, "#000"))
    draw.text((margin + 34, y), f"Class: {curvature_class}", fill="black", font=_font(30))
    y += 44
    bar_w = width - 2 * margin - 200
    for name in CLASSES:
        p = float(probabilities.get(name, 0.0))
        draw.text((margin, y), name, fill="black", font=_font(20))
        draw.rectangle([margin + 150, y + 2, margin + 150 + bar_w, y + 22], outline="#999")
        draw.rectangle([margin + 150, y + 2, margin + 150 + round(bar_w * p), y + 22], fill=CLASS_COLOURS.get(name, "#888"))
        draw.text((margin + 160 + bar_w, y), f"{p:.0%}", fill="black", font=_font(20))
        y += 30
    y += 8
    for line in lines:
        draw.text((margin, y), line, fill="black", font=_font(20))
        y += 26
    draw.rectangle([0, page.height - 48, width, page.height], fill="#fff3cd")
    draw.text((margin, page.height - 38), notice, fill="#664d03", font=_font(22))
    buffer = io.BytesIO()
    page.save(buffer, format="PNG")
    return buffer.getvalue()
