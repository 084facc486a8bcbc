"""The geometry the Teach page measures and draws: endplate tilts, the C2–C7 Cobb angle from a student's four
points, the true endplate corners, and the construction (four-line Cobb, Ishihara chord and distances, arc depth)
a picture draws."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from core.data.measure import LANDMARK_NAMES, Measurements
from core.inference.teaching.films import TeachingError


def _point(landmarks: np.ndarray, name: str) -> np.ndarray:
    return np.asarray(landmarks[LANDMARK_NAMES.index(name)], dtype=float)


def _posterior_side(facing: str) -> str:
    return "left" if facing == "right" else "right"  # "left"/"right" are image sides


def _anterior_side(facing: str) -> str:
    return "right" if facing == "right" else "left"


def endplate_tilt(a, b, facing: str) -> float:
    """Tilt (degrees) of the endplate through corners a and b, positive when its anterior end is higher: the
    convention of ``core.data.measure``, so a C2 tilt minus a C7 tilt is the C2–C7 Cobb angle, lordosis positive.
    The order of the two corners does not matter: the anterior one is the one on the facing side."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    sign = 1.0 if facing == "right" else -1.0
    posterior, anterior = (a, b) if (b[0] - a[0]) * sign >= 0 else (b, a)
    dx, dy = anterior - posterior
    return math.degrees(math.atan2(-dy, dx * sign))


def endplate_cobb(points, facing: str) -> float:
    """C2–C7 Cobb angle from four points: two corners of the C2 inferior endplate, then two of C7's."""
    try:
        p = np.asarray(points, dtype=float).reshape(4, 2)
    except ValueError:
        raise TeachingError("place four points: two on the C2 inferior endplate, then two on C7's") from None
    if not np.isfinite(p).all():
        raise TeachingError("a point has no position")
    if facing not in ("left", "right"):
        raise TeachingError(f"say which way the patient faces (left or right), not {facing!r}")
    for name, (a, b) in (("C2", (p[0], p[1])), ("C7", (p[2], p[3]))):
        if float(np.hypot(*(b - a))) < 2.0:
            raise TeachingError(f"the two {name} points are on top of each other: place them at the endplate's ends")
    return endplate_tilt(p[0], p[1], facing) - endplate_tilt(p[2], p[3], facing)


def truth_endplates(landmarks: np.ndarray) -> np.ndarray:
    """The four corners the Cobb angle uses (C2 bottom left/right, C7 bottom left/right), as a (4, 2) array."""
    return np.array([_point(landmarks, n) for n in ("C2 bottom left", "C2 bottom right",
                                                    "C7 bottom left", "C7 bottom right")])


@dataclass
class Construction:
    """What the picture draws: the four-line Cobb, the Ishihara chord and distances, the arc depth."""

    endplates: np.ndarray  # (4, 2): C2 posterior, C2 anterior, C7 posterior, C7 anterior
    perpendiculars: np.ndarray  # (2, 2, 2): from each endplate's middle, along its perpendicular
    meet: np.ndarray | None  # where the perpendiculars cross, when near enough to draw
    chord: np.ndarray  # (2, 2): C2 and C7 posterior-inferior corners
    distances: list[tuple[np.ndarray, np.ndarray, float]]  # a1..a4: (corner, foot on the chord, signed px)
    arc: tuple[np.ndarray, np.ndarray, float]  # the deepest posterior-line point, its foot, signed depth px


def _foot(point: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    d = b - a
    return a + d * float(np.dot(point - a, d) / max(float(np.dot(d, d)), 1e-9))


def construction(landmarks: np.ndarray, facing: str, measurements: Measurements, film_height: int) -> Construction:
    post, ant = _posterior_side(facing), _anterior_side(facing)
    c2 = (_point(landmarks, f"C2 bottom {post}"), _point(landmarks, f"C2 bottom {ant}"))
    c7 = (_point(landmarks, f"C7 bottom {post}"), _point(landmarks, f"C7 bottom {ant}"))
    middles = [(c2[0] + c2[1]) / 2, (c7[0] + c7[1]) / 2]
    normals = []
    for (p, a), middle, other in ((c2, middles[0], middles[1]), (c7, middles[1], middles[0])):
        d = (a - p) / max(float(np.hypot(*(a - p))), 1e-9)
        n = np.array([-d[1], d[0]])
        normals.append(n if np.dot(n, other - middle) > 0 else -n)  # each perpendicular points at the other endplate
    # Perpendiculars cross where m2 + t n2 = m7 + u n7; near-parallel ones (a small angle) cross off the film.
    matrix = np.column_stack([normals[0], -normals[1]])
    meet = None
    if abs(float(np.linalg.det(matrix))) > 1e-6:
        t, _ = np.linalg.solve(matrix, middles[1] - middles[0])
        candidate = middles[0] + t * normals[0]
        if max(float(np.hypot(*(candidate - m))) for m in middles) < 2.5 * film_height:
            meet = candidate
    span = float(np.hypot(*(middles[1] - middles[0])))
    ends = [meet if meet is not None else m + n * 0.6 * span for m, n in zip(middles, normals)]
    perpendiculars = np.array([[middles[0], ends[0]], [middles[1], ends[1]]])
    chord = np.array([c2[0], c7[0]])
    distances = []
    for level, value in zip(("C3", "C4", "C5", "C6"), measurements.toyama_px):
        corner = _point(landmarks, f"{level} bottom {post}")
        distances.append((corner, _foot(corner, *chord), float(value)))
    line = [_point(landmarks, f"{level} {edge} {post}") for level in ("C3", "C4", "C5", "C6") for edge in ("top", "bottom")]
    deepest = max(line, key=lambda q: float(np.hypot(*(q - _foot(q, *chord)))))
    arc = (deepest, _foot(deepest, *chord), float(measurements.arc_depth_px))
    return Construction(np.array([*c2, *c7]), perpendiculars, meet, chord, distances, arc)
