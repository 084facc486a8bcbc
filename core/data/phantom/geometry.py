"""Geometry shared by the phantom's anatomy and its renderer: outline shapes (rounded polygons, ellipses,
tapering ribbons, smooth curves) and the cervical column as a curve with a moving frame (millimetres)."""
from __future__ import annotations

import math

import numpy as np
from scipy.spatial import cKDTree


def smoothstep(x):
    """0 -> 1 logistic step; x in units of the transition width."""
    return 0.5 * (1.0 + np.tanh(x))


def rounded_polygon(points, radius: float, steps: int = 5) -> np.ndarray:
    """Polygon with every corner replaced by a quadratic curve ``radius`` long on each side."""
    p = np.asarray(points, dtype=float)
    prev, nxt = np.roll(p, 1, axis=0), np.roll(p, -1, axis=0)
    to_prev, to_next = prev - p, nxt - p
    len_prev = np.linalg.norm(to_prev, axis=1, keepdims=True)
    len_next = np.linalg.norm(to_next, axis=1, keepdims=True)
    cut = np.minimum(radius, 0.45 * np.minimum(len_prev, len_next))
    start = p + to_prev / np.maximum(len_prev, 1e-9) * cut
    end = p + to_next / np.maximum(len_next, 1e-9) * cut
    t = np.linspace(0.0, 1.0, steps)[None, :, None]
    curve = (1 - t) ** 2 * start[:, None] + 2 * (1 - t) * t * p[:, None] + t**2 * end[:, None]
    return curve.reshape(-1, 2)


def ellipse(centre, ax: float, ay: float, angle_deg: float = 0.0, n: int = 28) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    c, s = math.cos(math.radians(angle_deg)), math.sin(math.radians(angle_deg))
    x, y = ax * np.cos(t), ay * np.sin(t)
    return np.stack([centre[0] + c * x - s * y, centre[1] + s * x + c * y], axis=1)


def ribbon(path, half_start: float, half_end: float | None = None) -> np.ndarray:
    """Polygon around a polyline whose half-width tapers from start to end (processes, arches)."""
    p = np.asarray(path, dtype=float)
    hw = np.linspace(half_start, half_start if half_end is None else half_end, len(p))
    tangent = np.gradient(p, axis=0)
    tangent /= np.maximum(np.linalg.norm(tangent, axis=1, keepdims=True), 1e-9)
    normal = np.stack([-tangent[:, 1], tangent[:, 0]], axis=1)
    return np.concatenate([p + normal * hw[:, None], (p - normal * hw[:, None])[::-1]])


def smooth_curve(points, n: int = 24) -> np.ndarray:
    """Smooth polyline through control points (Catmull-Rom), for bone outlines."""
    p = np.asarray(points, dtype=float)
    ext = np.concatenate([p[:1] * 2 - p[1:2], p, p[-1:] * 2 - p[-2:-1]])
    out = []
    t = np.linspace(0, 1, max(2, n // max(1, len(p) - 1)), endpoint=False)[:, None]
    for i in range(1, len(ext) - 2):
        p0, p1, p2, p3 = ext[i - 1], ext[i], ext[i + 1], ext[i + 2]
        out.append(0.5 * (2 * p1 + (-p0 + p2) * t + (2 * p0 - 5 * p1 + 4 * p2 - p3) * t**2
                          + (-p0 + 3 * p1 - 3 * p2 + p3) * t**3))
    out.append(p[-1:])
    return np.concatenate(out)


def polygon_centroid(poly: np.ndarray) -> np.ndarray:
    x, y = poly[:, 0], poly[:, 1]
    cross = x * np.roll(y, -1) - np.roll(x, -1) * y
    area = cross.sum() / 2
    return np.array([((x + np.roll(x, -1)) * cross).sum(), ((y + np.roll(y, -1)) * cross).sum()]) / (6 * area)


# --- the column ----------------------------------------------------------------------------------


class Column:
    """The cervical column as a curve: centre c(s), tangent t(s) (down), anterior normal e(s)."""

    def __init__(self, s: np.ndarray, phi: np.ndarray):
        self.s, self.phi = s, phi
        t = np.stack([np.sin(phi), np.cos(phi)], axis=1)
        step = np.diff(s)[:, None]
        centre = np.concatenate([[[0.0, 0.0]], np.cumsum((t[1:] + t[:-1]) / 2 * step, axis=0)])
        self.centre = centre - np.array([np.interp(0.0, s, centre[:, 0]), np.interp(0.0, s, centre[:, 1])])

    def frame(self, s: float):
        phi = float(np.interp(s, self.s, self.phi))
        c = np.array([np.interp(s, self.s, self.centre[:, 0]), np.interp(s, self.s, self.centre[:, 1])])
        return c, np.array([math.cos(phi), -math.sin(phi)]), np.array([math.sin(phi), math.cos(phi)])

    def local(self, s: float, ab) -> np.ndarray:
        """Points given as (a anterior, b down) mm in the rigid frame at arc length ``s``."""
        c, e, t = self.frame(s)
        ab = np.atleast_2d(np.asarray(ab, dtype=float))
        return c + ab[:, :1] * e + ab[:, 1:2] * t

    def coordinates(self, points: np.ndarray):
        """(s, n) of points: arc length of the nearest centre point and signed anterior offset."""
        if not hasattr(self, "_tree"):
            self._stride = 5  # 1 mm samples; the along-track term below refines between them
            self._tree = cKDTree(self.centre[::self._stride])
        _, index = self._tree.query(points)
        index = index * self._stride
        phi = self.phi[index]
        d = points - self.centre[index]
        n = d[:, 0] * np.cos(phi) - d[:, 1] * np.sin(phi)
        along = d[:, 0] * np.sin(phi) + d[:, 1] * np.cos(phi)  # beyond the ends
        return self.s[index] + along, n
