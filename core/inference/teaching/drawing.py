"""The Explore picture: the film with the layers asked for (landmarks, Cobb construction, Ishihara chord,
arc depth, the models' landmarks) drawn over it, the colours each is drawn in, and the small drawing helpers
the "Measure it yourself" picture shares."""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw

from core.inference import report
from core.inference.teaching.films import Film
from core.inference.teaching.geometry import Construction, truth_endplates

LAYERS = ("landmarks", "cobb", "ishihara", "arc", "model")

TRUTH_COLOUR = (0, 220, 255)
COBB_COLOUR = (255, 64, 160)
CHORD_COLOUR = (80, 230, 80)
DISTANCE_COLOUR = (255, 165, 0)
ARC_COLOUR = (255, 60, 60)
MODEL_COLOUR = (255, 235, 0)
STUDENT_COLOUR = (255, 140, 0)


def rgb(pixels: np.ndarray) -> Image.Image:
    return Image.fromarray(np.round(np.clip(pixels, 0, 1) * 255).astype(np.uint8)).convert("RGB")


def _extended(a: np.ndarray, b: np.ndarray, reach: float) -> list[tuple[float, float]]:
    d = (b - a) / max(float(np.hypot(*(b - a))), 1e-9)
    return [tuple(a - d * reach), tuple(b + d * reach)]


def endplate_lines(draw: ImageDraw.ImageDraw, corners: np.ndarray, colour, width: int, reach: float) -> None:
    for a, b in ((corners[0], corners[1]), (corners[2], corners[3])):
        draw.line(_extended(a, b, reach), fill=colour, width=width)


def draw_exploration(film: Film, cons: Construction | None, layers: Sequence[str],
                     model_landmarks: np.ndarray | None = None) -> Image.Image:
    """The film with the layers asked for (``LAYERS``) drawn over it."""
    image = rgb(film.pixels)
    draw = ImageDraw.Draw(image)
    k = max(1.0, max(image.size) / 512)
    width, font = max(1, round(2 * k)), report._font(round(13 * k))
    if cons is not None and "cobb" in layers:
        endplate_lines(draw, cons.endplates, COBB_COLOUR, width, 0.8 * float(np.hypot(*(cons.endplates[1] - cons.endplates[0]))))
        for start, end in cons.perpendiculars:
            draw.line([tuple(start), tuple(end)], fill=COBB_COLOUR, width=max(1, width - 1))
        if cons.meet is not None:
            r = 4 * k
            draw.ellipse([cons.meet[0] - r, cons.meet[1] - r, cons.meet[0] + r, cons.meet[1] + r], outline=COBB_COLOUR,
                         width=width)
        label_at = cons.endplates[3] + np.array([6 * k, -6 * k])
        draw.text(tuple(label_at), f"Cobb {film.truth.cobb_c2c7:+.1f}°", fill=COBB_COLOUR, font=font)
    if cons is not None and "ishihara" in layers:
        draw.line([tuple(cons.chord[0]), tuple(cons.chord[1])], fill=CHORD_COLOUR, width=width)
        for number, (corner, foot, value) in enumerate(cons.distances, start=1):
            draw.line([tuple(corner), tuple(foot)], fill=DISTANCE_COLOUR, width=width)
            draw.text((min(corner[0], foot[0]) - 34 * k, corner[1] - 7 * k), f"a{number}", fill=DISTANCE_COLOUR, font=font)
    if cons is not None and "arc" in layers:
        point, foot, _ = cons.arc
        draw.line([tuple(point), tuple(foot)], fill=ARC_COLOUR, width=width + 1)
        r = 3.5 * k
        draw.ellipse([point[0] - r, point[1] - r, point[0] + r, point[1] + r], fill=ARC_COLOUR)
    if model_landmarks is not None and "model" in layers:
        endplate_lines(draw, truth_endplates(model_landmarks), MODEL_COLOUR, max(1, width - 1), 10 * k)
        r = 2 * k
        for x, y in model_landmarks:
            if math.isfinite(x) and math.isfinite(y):
                draw.rectangle([x - r, y - r, x + r, y + r], outline=MODEL_COLOUR)
    if film.landmarks is not None and "landmarks" in layers:
        r = 2.5 * k
        for x, y in film.landmarks:
            if math.isfinite(x) and math.isfinite(y):
                draw.ellipse([x - r, y - r, x + r, y + r], fill=TRUTH_COLOUR)
    return image
