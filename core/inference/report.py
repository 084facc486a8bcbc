"""Pictures of a prediction for people: the annotated radiograph, the heatmap, the one-page PNG report and the
"which runs made this result" line. The Predict page and ``python -m core predict --report`` both use these.

Drawn with PIL on a display-size copy of the film (coordinates scaled), so a 2048 px film is as quick to show as a
512 px one; the engine and the numbers always use the full size. No torch here.
"""
from __future__ import annotations

import functools
import importlib.util
import io
import json
import math
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from core.data.measure import LANDMARK_NAMES
from core.runs.promotion import PROMOTED_FILE
from core.settings import CLASSES

NOTICE = "Research and teaching use only — not a diagnosis."
DISPLAY_MAX = 1024  # px: the long side the pictures are drawn at
CLASS_COLOURS = {"normal": "#2a9d8f", "straightened": "#e9c46a", "reversed": "#e76f51"}
BOX_COLOUR = (255, 200, 0)
LANDMARK_COLOUR = (0, 220, 255)
ENDPLATE_COLOUR = (255, 64, 160)
# The endplates the C2–C7 Cobb angle is measured between (inferior endplates of C2 and C7); C6's when C7 is not seen
# (the angle is then C2–C6, as core.data.measure measures it).
ENDPLATES = {"C2": ("C2 bottom left", "C2 bottom right"), "C7": ("C7 bottom left", "C7 bottom right")}
FALLBACK_ENDPLATE = {"C7": ("C6", ("C6 bottom left", "C6 bottom right"))}
WARNING_FILL = "#fde7c6"  # behind a verdict's warning on the PNG report
NOT_JUDGED_COLOUR = "#bbb"


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


def _gray(pixels: np.ndarray) -> Image.Image:
    return Image.fromarray(np.round(np.clip(np.asarray(pixels, dtype=np.float32), 0.0, 1.0) * 255).astype(np.uint8))


def display_copy(pixels: np.ndarray, max_side: int = DISPLAY_MAX) -> tuple[np.ndarray, float]:
    """A float [0, 1] radiograph no larger than ``max_side`` px, and the factor applied to coordinates."""
    import cv2

    scale = min(1.0, max_side / max(pixels.shape[:2]))
    if scale == 1.0:
        return np.asarray(pixels, dtype=np.float32), 1.0
    size = (max(1, round(pixels.shape[1] * scale)), max(1, round(pixels.shape[0] * scale)))
    # area averaging: the same look as a high-quality filter, at a fraction of LANCZOS' cost on a 2048 px film
    return cv2.resize(np.asarray(pixels, dtype=np.float32), size, interpolation=cv2.INTER_AREA), scale


def annotated_radiograph(pixels: np.ndarray | Image.Image, roi_box: Sequence[float] | None = None,
                         landmarks: np.ndarray | None = None, box_label: str | None = None) -> Image.Image:
    """RGB image of the radiograph with the ROI box, the 23 landmarks and the C2 and C7 endplate lines.

    A box that is the whole image (no spine found) is not drawn: it would only frame the picture."""
    image = (pixels if isinstance(pixels, Image.Image) else _gray(pixels)).convert("RGB")
    draw = ImageDraw.Draw(image)
    k = max(1.0, max(image.size) / 512)  # lines and markers grow with the image
    if roi_box is not None and list(map(float, roi_box)) != [0.0, 0.0, float(image.width), float(image.height)]:
        x1, y1, x2, y2 = (float(v) for v in roi_box)
        draw.rectangle([x1, y1, x2, y2], outline=BOX_COLOUR, width=max(2, round(2 * k)))
        if box_label:
            draw.text((x1 + 3 * k, max(0.0, y1 - 16 * k)), box_label, fill=BOX_COLOUR, font=_font(round(12 * k)))
    if landmarks is not None:
        points = np.asarray(landmarks, dtype=float)
        for level, (left, right) in ENDPLATES.items():
            a, b = points[LANDMARK_NAMES.index(left)], points[LANDMARK_NAMES.index(right)]
            if not (np.isfinite(a).all() and np.isfinite(b).all()) and level in FALLBACK_ENDPLATE:
                level, (left, right) = FALLBACK_ENDPLATE[level]  # C7 not seen: the angle is measured to C6
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


def box_label(prediction) -> str:
    if prediction.box_source == "detector" and prediction.box_confidence is not None:
        return f"C2–C7 {prediction.box_confidence:.2f}"
    return f"box from {prediction.box_source}"


def pictures(prediction, alpha: float = 0.5, max_side: int = DISPLAY_MAX, evidence_only: bool = False
             ) -> tuple[Image.Image, Image.Image | None]:
    """The annotated radiograph and the heatmap (None without a map), drawn at display size.

    The landmarks and endplate lines are drawn only where the verdict shows the angle (never where the text says
    they were not found or are withheld). ``evidence_only``: no heatmap unless it explains the class the verdict
    gives (Predict and its report); the Teach page asks for the network's own map beside its own answer."""
    from core.inference.explain import overlay

    verdict = prediction.verdict
    pixels, scale = display_copy(prediction.radiograph.pixels, max_side)
    box = [v * scale for v in prediction.roi_box]
    shown = prediction.landmarks is not None and verdict.angle_shown
    landmarks = prediction.landmarks * scale if shown else None
    annotated = annotated_radiograph(pixels, box, landmarks, box_label(prediction))
    heatmap = None
    if prediction.cam is not None and (verdict.heatmap_shown or not evidence_only):
        heatmap = annotated_radiograph(Image.fromarray(overlay(pixels, prediction.cam, alpha)), box)
    return annotated, heatmap


def provenance(predictor) -> str:
    """``classifier run A (promoted) · detector run B · landmarks none``: which runs made this result."""
    parts = []
    for what, path in (("classifier", predictor.classifier_path), ("detector", predictor.detector_path),
                       ("landmarks", predictor.landmarks_path)):
        if path is None:
            parts.append(f"{what} none")
            continue
        try:
            record = json.loads((Path(path).parent / PROMOTED_FILE).read_text(encoding="utf-8"))
            parts.append(f"{what} run {record.get('run_id', '?')} (promoted)")
        except (OSError, ValueError):
            parts.append(f"{what} run {Path(path).parent.name}")
    return " · ".join(parts)


def _angle_text(m) -> str:
    # C7 hidden behind the shoulders: the angle measured is C2-C6, and the C2-C7 one is not a number
    if m.lowest_level == "C6":
        return f"Cobb C2–C6 {m.cobb_c2c6:+.1f}° (C7 not seen)"
    return f"Cobb C2–C7 {m.cobb_c2c7:+.1f}°"


def report_lines(prediction, provenance_line: str, quality: str | None = None, truth: str | None = None) -> list[str]:
    """The evidence lines of the report: the angle (only where the verdict shows it), the box and the models."""
    m = prediction.measurements
    verdict = getattr(prediction, "verdict", None)
    lead = "network" if verdict is None else verdict.lead
    if m is not None and (verdict is None or verdict.angle_shown):
        relation = {"network": f"{'agrees' if prediction.agreement else 'disagrees'} with the network",
                    "angle": "the result"}.get(lead, "not used")
        angle = (f"{_angle_text(m)} (rule class {m.rule_class}, {relation})"
                 + (f"; CCI {m.cci:.1f} %" if math.isfinite(m.cci) else ""))
    elif verdict is not None and verdict.angle_note:
        angle = verdict.angle_note
    else:
        angle = "No landmark model or no usable vertebrae: no angle measured."
    return [
        angle,
        f"ROI box from the {prediction.box_source}; model {prediction.model}"
        + (f", demo quality: {quality}" if quality else ""),
        f"Models: {provenance_line}",
        *([truth] if truth else []),
    ]


def _sections(prediction, provenance_line: str, quality: str | None, truth: str | None) -> dict:
    """What the report says, in its parts: the verdict's title, its warning (why and what to do), the network's
    probabilities when they are the evidence, and the other lines (evidence, models, details with the numbers)."""
    verdict = prediction.verdict
    warning = [verdict.why] if verdict.warns else []
    if verdict.advice:
        warning.append(f"What to do: {verdict.advice}")
    details = []
    if verdict.lead != "network":
        answer = ", ".join(f"{name} {float(prediction.probabilities.get(name, 0.0)):.0%}" for name in CLASSES)
        details.append(f"The network's own answer, not used for this film: {answer}.")
    if prediction.out_of_distribution:
        details.append(unlike_text(prediction))
    return {"shown": verdict.curvature_class, "title": f"Result: {verdict.title}", "warning": warning,
            "probabilities": prediction.probabilities if verdict.lead == "network" else None,
            "lines": [*report_lines(prediction, provenance_line, quality, truth), *details]}


def report_png(prediction, provenance_line: str, *, quality: str | None = None, truth: str | None = None,
               alpha: float = 0.5, images: tuple[Image.Image, Image.Image | None] | None = None) -> bytes:
    """One-page PNG: annotated radiograph and heatmap side by side, the verdict with its warning, probabilities
    (when the network's class is the result), angle, models, notice. Long lines wrap; none is cut.

    ``images``: the two pictures when the caller has drawn them already (the page has, with ``evidence_only``)."""
    radiograph, heatmap = images if images is not None else pictures(prediction, alpha, evidence_only=True)
    if not prediction.verdict.heatmap_shown:
        heatmap = None  # never a map beside a class that is not given
    parts = _sections(prediction, provenance_line, quality, truth)
    return _compose(radiograph, heatmap, f"CerviCurve — {prediction.file}", parts)


def report_text(prediction, provenance_line: str, quality: str | None = None, truth: str | None = None
                ) -> tuple[str | None, list[str]]:
    """(the class the report shows, or None for "not judged"; its lines, in order, before wrapping). The first
    line is the verdict's title ("Result: ..."), then its warning, then the evidence and the details: what the
    PNG says, as text."""
    parts = _sections(prediction, provenance_line, quality, truth)
    probabilities = []
    if parts["probabilities"] is not None:
        probabilities = ["Probabilities: " + ", ".join(f"{name} {float(parts['probabilities'].get(name, 0.0)):.0%}"
                                                        for name in CLASSES)]
    return parts["shown"], [parts["title"], *parts["warning"], *probabilities, *parts["lines"]]


def unlike_text(prediction) -> str:
    """The technical detail behind the plain warning: the score, and what it did to the probabilities."""
    score = "" if prediction.ood_score is None else f" (out-of-distribution score {prediction.ood_score:.1f}, over 1 is unlike)"
    return (f"Unlike the films the models were trained on{score}: the network's probabilities are capped at "
            "90 % and not calibrated for it.")


def wrap_to_width(text: str, font: ImageFont.ImageFont, width: float) -> list[str]:
    """``text`` broken at spaces into lines no wider than ``width`` px in ``font`` (a word wider than that is
    broken inside). Nothing is dropped: the words of the lines are the words of the text."""
    lines: list[str] = []
    current = ""
    for word in text.split():
        candidate = f"{current} {word}" if current else word
        if font.getlength(candidate) <= width:
            current = candidate
            continue
        if current:
            lines.append(current)
        while font.getlength(word) > width and len(word) > 1:  # a path or a run id longer than the page
            cut = len(word) - 1
            while cut > 1 and font.getlength(word[:cut]) > width:
                cut -= 1
            lines.append(word[:cut])
            word = word[cut:]
        current = word
    if current:
        lines.append(current)
    return lines or [""]


TITLE_SIZE, RESULT_SIZE, TEXT_SIZE, LINE_GAP = 28, 30, 20, 6


def report_layout(parts: dict, width: int, margin: int = 24) -> dict:
    """The report's text wrapped to the page: {"title", "warning", "lines"} as lists of lines that fit ``width``."""
    inner = width - 2 * margin
    return {"title": wrap_to_width(parts["title"], _font(RESULT_SIZE), inner - 34),
            "warning": [line for text in parts["warning"]
                        for line in wrap_to_width(text, _font(TEXT_SIZE), inner - 20)],
            "lines": [line for text in parts["lines"] for line in wrap_to_width(text, _font(TEXT_SIZE), inner)]}


def _compose(radiograph: Image.Image, heatmap: Image.Image | None, title: str, parts: dict) -> bytes:
    panel_h = 720
    panels = [radiograph] + ([heatmap] if heatmap is not None else [])
    resized = [p.convert("RGB").resize((max(1, round(p.width * panel_h / p.height)), panel_h)) for p in panels]
    gap, margin = 16, 24
    width = max(900, sum(p.width for p in resized) + gap * (len(resized) - 1) + 2 * margin)
    text = report_layout(parts, width, margin)
    header = wrap_to_width(title, _font(TITLE_SIZE), width - 2 * margin)
    result_step, text_step = RESULT_SIZE + 12, TEXT_SIZE + LINE_GAP
    probabilities = parts["probabilities"]
    text_h = (16 + result_step * len(text["title"]) + (text_step * len(text["warning"]) + 20 if text["warning"] else 0)
              + (30 * len(CLASSES) + 8 if probabilities is not None else 0) + text_step * len(text["lines"]) + 70)
    top = 18 + (TITLE_SIZE + 10) * len(header) + 8
    page = Image.new("RGB", (width, top + panel_h + text_h), "white")
    draw = ImageDraw.Draw(page)
    for number, line in enumerate(header):
        draw.text((margin, 18 + (TITLE_SIZE + 10) * number), line, fill="black", font=_font(TITLE_SIZE))
    x = margin
    for panel in resized:
        page.paste(panel, (x, top))
        x += panel.width + gap
    y = top + panel_h + 16
    shown = parts["shown"]
    draw.rectangle([margin, y + 6, margin + 24, y + 30], fill=CLASS_COLOURS.get(shown, NOT_JUDGED_COLOUR))
    for line in text["title"]:
        draw.text((margin + 34, y), line, fill="black", font=_font(RESULT_SIZE))
        y += result_step
    if text["warning"]:
        draw.rectangle([margin, y, width - margin, y + text_step * len(text["warning"]) + 12], fill=WARNING_FILL)
        y += 6
        for line in text["warning"]:
            draw.text((margin + 10, y), line, fill="#5a3200", font=_font(TEXT_SIZE))
            y += text_step
        y += 14
    if probabilities is not None:
        bar_w = width - 2 * margin - 200
        for name in CLASSES:
            p = float(probabilities.get(name, 0.0))
            draw.text((margin, y), name, fill="black", font=_font(TEXT_SIZE))
            draw.rectangle([margin + 150, y + 2, margin + 150 + bar_w, y + 22], outline="#999")
            draw.rectangle([margin + 150, y + 2, margin + 150 + round(bar_w * p), y + 22],
                           fill=CLASS_COLOURS.get(name, "#888"))
            draw.text((margin + 160 + bar_w, y), f"{p:.0%}", fill="black", font=_font(TEXT_SIZE))
            y += 30
        y += 8
    for line in text["lines"]:
        draw.text((margin, y), line, fill="black", font=_font(TEXT_SIZE))
        y += text_step
    draw.rectangle([0, page.height - 48, width, page.height], fill="#fff3cd")
    draw.text((margin, page.height - 38), NOTICE, fill="#664d03", font=_font(22))
    buffer = io.BytesIO()
    page.save(buffer, format="PNG")
    return buffer.getvalue()


def write_overlay(prediction, path: str | Path, alpha: float = 0.5) -> None:
    """The heatmap over the full-size film with the ROI box (``predict --out``)."""
    from core.inference.explain import overlay

    image = Image.fromarray(overlay(prediction.radiograph.pixels, prediction.cam, alpha), mode="RGB")
    draw = ImageDraw.Draw(image)
    draw.rectangle([round(v) for v in prediction.roi_box], outline=(0, 255, 0), width=max(1, round(max(image.size) / 400)))
    image.save(path)


def as_jpeg(image: Image.Image, quality: int = 85) -> bytes:
    """Encoded once here, so the page hands Streamlit bytes instead of an image it would convert and encode."""
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()
