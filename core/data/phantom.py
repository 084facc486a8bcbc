"""Synthetic lateral cervical radiographs with ground truth (the embedded default data).

A phantom is built in three steps:

1. **Anatomy** (one per patient, in millimetres, patient frame: ``u`` towards the face, ``v`` down).
   The cervical column is a curve whose tangent angle ``phi(s)`` changes along the arc length ``s``;
   the change between the C2 and the C7 inferior endplates *is* the requested C2–C7 Cobb angle,
   because every endplate is laid perpendicular to the local tangent. Curvature is concentrated in
   the discs (as in real necks); a sigmoid profile adds an S that integrates to zero.
2. **View** (one per image): pixel spacing, in-plane rotation, crop and frame shape (portrait to landscape),
   exposure, scatter, quantum and electronic noise, blur, processing (dynamic range compression, edge enhancement
   up to the strong unsharp masking of CR/DX workstations), a gamma or film-like (H&D) curve, collimation on any
   side, black borders, a side marker, burned-in text, a cross-table backboard, JPEG compression.
3. **Rendering** as an X-ray projection: attenuation line integrals add up (soft tissue, air, bone),
   then transmission, scatter, quantum noise, detector blur, log and a window/gamma LUT.
   Smooth fields (neck, airway, shoulders) are computed on a coarse grid and upsampled; bones are
   polygons drawn with Pillow in local patches, with cortical rims from a distance transform.

Ground truth (23 CSXA landmarks, ROI box, class) comes from :mod:`core.data.measure`, so labels and
measurements agree by construction. Everything is drawn facing right and mirrored for ``facing="left"``.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import shutil
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage
from scipy.spatial import cKDTree

from core.data.measure import (
    LANDMARK_NAMES,
    RuleThresholds,
    measure_landmarks,
    roi_box_from_landmarks,
    write_labelme,
)
from core.settings import CLASSES

FORMATS = ("csxa", "yolo", "dicom")
# CSXA curvature sheet codes (1 Lordotic, 2 Straight, 3 Sigmoid1, 4 Sigmoid2, 5 Kyphotic).
CSXA_CURVATURE_COLUMN = "Curvature: 1.Lordotic, 2.Straight, 3.Sigmoid1, 4.Sigmoid2, 5.Kyphotic"
CSXA_CODE = {"normal": 1, "straightened": 2, "reversed": 5}
CSXA_SIGMOID_CODE = {"sigmoid1": 3, "sigmoid2": 4}
PROFILES = ("arc", "sigmoid1", "sigmoid2")  # sigmoid1: upper lordotic, lower kyphotic; sigmoid2: the reverse

# Pixel spacing at 1024 px image height (mm/px); other sizes scale it so the field of view stays a neck.
SPACING_AT_1024_MM = (0.165, 0.205)
MAX_ROTATION_DEG = 12.0
COBB_LIMITS_DEG = (-45.0, 60.0)
# Margin (degrees) that sampled targets keep from the rule thresholds, so classes are unambiguous.
_CLASS_MARGIN = 4.0
PNG_COMPRESS_LEVEL = 1  # noisy radiographs barely compress further; level 6 takes twice as long
_MIN_SVA_MM = 5.0  # C2 centroid at least this far anterior of the C7 inferior endplate's centre, image x
_LEVELS = ("C3", "C4", "C5", "C6", "C7", "T1", "T2")
_SIDE_SWAP = {"left": "right", "right": "left"}


class PhantomError(ValueError):
    """Impossible phantom request (unknown class, angle out of range, bad size or format)."""


@dataclass
class PhantomCase:
    image: np.ndarray  # uint8 or uint16, H x W, bone bright (MONOCHROME2)
    landmarks: np.ndarray  # (23, 2) float, CSXA order, image pixels
    roi_box: list[float]  # [x1, y1, x2, y2] from measure.roi_box_from_landmarks
    curvature_class: str  # from measure_landmarks on the landmarks
    cobb_c2c7: float  # measured on the landmarks (equals the target within rounding)
    facing: str  # "left" | "right": the side the face is on
    patient_id: str
    bit_depth: int
    seed: int
    target_cobb: float = 0.0  # the angle the generator aimed at
    profile: str = "arc"  # "arc" | "sigmoid1" | "sigmoid2"
    pixel_spacing_mm: float = 0.0
    patient_seed: int = 0
    c7_hidden: bool = False  # shoulders overlap C7 (its landmarks are still ground truth)
    age: int = 0
    sex: str = "F"
    # Named probe points (pixels) for checks: body and disc centres, airway and prevertebral soft tissue.
    probes: dict = field(default_factory=dict)

    @property
    def width(self) -> int:
        return int(self.image.shape[1])

    @property
    def height(self) -> int:
        return int(self.image.shape[0])

    def as_label(self, file: str) -> dict:
        """One labels.jsonl record."""
        return {
            "file": file,
            "patient_id": self.patient_id,
            "curvature_class": self.curvature_class,
            "cobb_c2c7": round(self.cobb_c2c7, 4),
            "target_cobb": round(self.target_cobb, 4),
            "profile": self.profile,
            "facing": self.facing,
            "roi_box": [round(v, 3) for v in self.roi_box],
            "landmarks": [[round(float(x), 3), round(float(y), 3)] for x, y in self.landmarks],
            "width": self.width,
            "height": self.height,
            "bit_depth": self.bit_depth,
            "pixel_spacing_mm": round(self.pixel_spacing_mm, 6),
            "c7_hidden": self.c7_hidden,
            "age": self.age,
            "sex": self.sex,
            "seed": self.seed,
            "patient_seed": self.patient_seed,
        }


# --- small geometry helpers ----------------------------------------------------------------------


def _smoothstep(x):
    """0 -> 1 logistic step; x in units of the transition width."""
    return 0.5 * (1.0 + np.tanh(x))


def _rounded(points, radius: float, steps: int = 5) -> np.ndarray:
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


def _ellipse(centre, ax: float, ay: float, angle_deg: float = 0.0, n: int = 28) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    c, s = math.cos(math.radians(angle_deg)), math.sin(math.radians(angle_deg))
    x, y = ax * np.cos(t), ay * np.sin(t)
    return np.stack([centre[0] + c * x - s * y, centre[1] + s * x + c * y], axis=1)


def _ribbon(path, half_start: float, half_end: float | None = None) -> np.ndarray:
    """Polygon around a polyline whose half-width tapers from start to end (processes, arches)."""
    p = np.asarray(path, dtype=float)
    hw = np.linspace(half_start, half_start if half_end is None else half_end, len(p))
    tangent = np.gradient(p, axis=0)
    tangent /= np.maximum(np.linalg.norm(tangent, axis=1, keepdims=True), 1e-9)
    normal = np.stack([-tangent[:, 1], tangent[:, 0]], axis=1)
    return np.concatenate([p + normal * hw[:, None], (p - normal * hw[:, None])[::-1]])


def _curve(points, n: int = 24) -> np.ndarray:
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


# --- anatomy (one per patient) ---------------------------------------------------------------------


@dataclass
class Bone:
    """One bony outline in the patient frame (mm) and how it attenuates.

    ``fill`` rises over ``ramp_mm`` from the edge inwards (a rounded solid seen side-on); ``rim`` is the
    cortex seen tangentially, decaying over ``rim_mm``; ``texture`` scales the trabecular pattern.
    ``spread`` > 0 draws two half-density copies (left and right structures) apart by the view's yaw.
    """

    polygon: np.ndarray
    fill: float
    rim: float = 0.0
    rim_mm: float = 1.0
    ramp_mm: float = 0.0
    texture: float = 0.0
    spread: float = 0.0


@dataclass
class Anatomy:
    target_cobb: float
    profile: str
    column: Column
    landmarks_mm: np.ndarray  # (23, 2) canonical (facing right)
    bones: list[Bone]
    levels: dict  # name -> (s_top, s_bot) along the column
    params: dict


def _sample_target(rng: np.random.Generator, curvature_class: str, thresholds: RuleThresholds) -> float:
    lo_t, hi_t = thresholds.reversed_max_deg, thresholds.normal_min_deg
    if curvature_class == "normal":
        return float(rng.uniform(hi_t + _CLASS_MARGIN, max(hi_t + _CLASS_MARGIN + 1, 40.0)))
    if curvature_class == "reversed":
        return float(rng.uniform(min(lo_t - _CLASS_MARGIN - 1, -25.0), lo_t - _CLASS_MARGIN))
    low, high = lo_t + 2.0, hi_t - _CLASS_MARGIN
    if low >= high:
        low = high = (lo_t + hi_t) / 2
    return float(rng.uniform(low, high))


def _curvature_profile(s, seg_weight, length, target_deg, profile, skew, s_amp_deg):
    """Curvature kappa(s) (rad/mm) whose integral over [0, length] is exactly the target angle."""
    inside = (s >= 0) & (s <= length)
    w = np.where(inside, seg_weight, 0.0)
    ds = np.gradient(s)
    base = w * (1.0 + skew * (s / length - 0.5))
    kappa = base * (math.radians(target_deg) / np.sum(base * ds))
    if profile != "arc":
        wave = np.cos(np.pi * s / length)
        wave = wave - np.sum(w * wave * ds) / np.sum(w * ds)  # zero net angle: the Cobb stays the target
        sign = 1.0 if profile == "sigmoid1" else -1.0
        amp = math.radians(s_amp_deg) * math.pi / length / 2
        kappa = kappa + sign * amp * w * wave
    return kappa


def build_anatomy(rng: np.random.Generator, target_cobb: float, profile: str = "arc") -> Anatomy:
    """Bones and soft-tissue parameters of one patient, canonical facing right, mm."""
    scale = rng.uniform(0.9, 1.1)
    degenerative = rng.random() < 0.55  # most clinical films (CSXA: 96 %) show some spondylosis
    density = rng.uniform(0.8, 1.15)  # bone mineral density: osteopenic .. dense

    # Levels: C2 inferior endplate at s = 0, then disc/body pairs down to T2.
    disc = {"C3": 5.0, "C4": 5.3, "C5": 5.5, "C6": 5.3, "C7": 5.0, "T1": 4.5, "T2": 4.0}
    height = {"C3": 13.5, "C4": 13.3, "C5": 13.0, "C6": 13.2, "C7": 14.3, "T1": 16.0, "T2": 17.0}
    width_top = {"C3": 15.0, "C4": 15.3, "C5": 15.8, "C6": 16.3, "C7": 16.8, "T1": 18.0, "T2": 19.5}
    levels, widths, discs, s_cursor = {}, {}, {}, 0.0
    for name in _LEVELS:
        d = disc[name] * scale * rng.uniform(0.85, 1.15)
        if degenerative and name in ("C5", "C6", "C7") and rng.random() < 0.5:
            d *= rng.uniform(0.35, 0.7)  # narrowed disc
        h = height[name] * scale * rng.uniform(0.94, 1.06)
        levels[name] = (s_cursor + d, s_cursor + d + h)
        discs[name] = d
        wt = width_top[name] * scale * rng.uniform(0.95, 1.05)
        widths[name] = (wt, wt * rng.uniform(1.0, 1.06))
        s_cursor += d + h
    length = levels["C7"][1]
    # Cervical bodies are wedged against the curve: shorter in front, so their endplates do not follow the column's
    # tangent and the discs carry more than the whole lordosis. Measured on the official landmarks of the 6 real
    # CSXA dev films: body wedge (upper minus lower endplate tilt) -10.5 to +3.2 deg, mostly -1 to -7; discs +2 to
    # +17 deg. Phantoms with parallel endplates taught the landmark model a prior that put real C2 and C6 endplates
    # 10-15 deg off.
    wedge = {name: math.radians(rng.uniform(0.5, 8.0)) for name in _LEVELS}

    # Column curve: curvature lives mostly in the discs.
    s = np.arange(-260.0, length + 260.0, 0.2)
    seg = np.full_like(s, 1.0)
    for top, bot in levels.values():
        seg[(s > top) & (s < bot)] = 0.3
    # C7's lower endplate, tilted up in front by half its wedge, takes that much off the angle measured to it
    kappa = _curvature_profile(s, seg, length, target_cobb + math.degrees(wedge["C7"]) / 2, profile,
                               rng.uniform(-0.7, 0.7), rng.uniform(14, 24))
    phi = -np.concatenate([[0.0], np.cumsum((kappa[1:] + kappa[:-1]) / 2 * np.diff(s))])
    phi -= np.interp(0.0, s, phi)
    column = Column(s, phi)
    # Forward lean: C2 anterior of C7, the C2->C7 chord leaning back by `lean` going down.
    chord = column.local(length, [0, 0])[0] - column.local(0.0, [0, 0])[0]
    phi = phi - math.radians(rng.uniform(6, 22)) - math.atan2(chord[0], chord[1])
    column = Column(s, phi)

    bones: list[Bone] = []

    def add(polygon, fill, rim=0.0, rim_mm=1.0, ramp_mm=0.0, texture=0.0, spread=0.0):
        bones.append(Bone(np.asarray(polygon, float), fill * density, rim * density, rim_mm * scale,
                          ramp_mm * scale, texture, spread))

    # C3..T2 bodies: wedged (shorter in front), concave endplates, anterior waist.
    corners = {}
    for name in _LEVELS:
        top, bot = levels[name]
        wt, wb = widths[name]
        dt, db = math.tan(wedge[name] / 2) * wt / 2, math.tan(wedge[name] / 2) * wb / 2  # b runs down
        pt, at = column.local(top, [[-wt / 2, -dt], [wt / 2, dt]])
        pb, ab = column.local(bot, [[-wb / 2, db], [wb / 2, -db]])
        corners[name] = (pt, at, pb, ab)
        _, e, t = column.frame((top + bot) / 2)
        dent = rng.uniform(0.2, 1.0, 4) * scale  # endplate concavity, anterior waist: vary per body
        outline = [pt, (pt + at) / 2 + dent[0] * t, at, (at + ab) / 2 - (0.4 + dent[1]) * e, ab,
                   (ab + pb) / 2 - 0.5 * dent[2] * t, pb, (pb + pt) / 2 + 0.4 * dent[3] * e]
        add(_rounded(outline, 1.4 * scale), 0.36, 0.42, 0.8, 3.0, 0.2)
        # Uncinate process: a faint hump over the posterior half of the upper endplate.
        add(_rounded([pt + 0.5 * e, pt + 0.45 * (at - pt), pt + 0.3 * (at - pt) - 2.0 * t, pt - 1.5 * t], 0.8),
            0.06, 0.12, 0.5)
        if degenerative and name in ("C4", "C5", "C6", "C7") and rng.random() < 0.6:
            for corner, sign in ((at, -1.0), (ab, 1.0)):  # anterior osteophytes (spurs) at the disc
                spur = rng.uniform(1.2, 3.5) * scale
                add([corner - 2.5 * sign * t - 0.6 * e, corner + spur * (0.6 * e + sign * t), corner - 1.5 * e],
                    0.2, 0.35, 0.7)

    # C2 with the dens, in the rigid frame at its inferior endplate (s = 0).
    w2 = rng.uniform(15.0, 17.0) * scale
    hb = rng.uniform(20.0, 23.0) * scale  # body height
    hd = rng.uniform(36.0, 40.0) * scale  # endplate to dens tip
    dhw = rng.uniform(4.4, 5.3) * scale  # dens half width
    adc = -w2 / 2 + dhw + 0.8  # dens axis
    arc = np.linspace(0, np.pi, 9)
    tip = np.stack([adc + dhw * np.cos(arc), -hd + dhw - dhw * np.sin(arc)], 1)
    waist = 0.8 * dhw
    c2_outline = np.concatenate([
        [[-w2 / 2, 0], [w2 / 2, 0], [w2 / 2 + 0.9, 1.3 * scale], [w2 / 2 + 0.7, -3], [w2 / 2 - 0.6, -12 * scale],
         [w2 / 2 - 2.8, -hb + 0.5], [adc + waist + 0.5, -hb - 1.0], [adc + waist, -hb - 4.0], [adc + dhw, -hd + dhw]],
        tip,
        [[adc - dhw + 0.3, -hd + dhw + 4], [adc - dhw + 0.6, -hb - 1.5], [-w2 / 2 - 0.4, -hb + 1.0],
         [-w2 / 2 - 0.3, -10 * scale]],
    ])

    def c2(ab):  # points in the C2 frame
        return column.local(0.0, ab)

    add(_rounded(c2(c2_outline), 1.4 * scale), 0.38, 0.42, 0.9, 3.0, 0.2)
    c2_centroid = _polygon_centroid(c2([[-w2 / 2, 0], [w2 / 2, 0], [w2 / 2 - 2.2, -hb], [-w2 / 2 - 0.4, -hb + 1.0]]))
    c2_left, c2_right = c2([[-w2 / 2, 0], [w2 / 2, 0]])

    # C1: anterior arch (an oval ring), lateral masses over the dens, posterior arch with its tubercle.
    adi = rng.uniform(1.5, 3.0)
    add(c2(_ellipse((adc + dhw + adi + 4.2 * scale, -hd + 8.5 * scale), 4.2 * scale, 6.3 * scale, rng.uniform(-15, 5))),
        0.22, 0.45, 1.0, 2.0, 0.2)
    add(c2(_rounded([[-w2 / 2 - 1, -hd + 1], [w2 / 2 - 3, -hd + 2], [w2 / 2 - 4, -hd + 15], [-w2 / 2 - 4, -hd + 16]],
                    4.0)), 0.14, 0.1, 1.5, 3.0, 0.2)
    post = _curve([[-w2 / 2 - 3, -hd + 11], [-w2 / 2 - 17, -hd + 11.5], [-w2 / 2 - 30, -hd + 9.5]], 12)
    add(c2(_ribbon(post, 3.4 * scale, 2.6 * scale)), 0.16, 0.3, 1.0, 1.5, 0.2, spread=1.0)
    add(c2(_ellipse((-w2 / 2 - 33 * scale, -hd + 9.5), 4.5 * scale, 6.0 * scale, -10)), 0.2, 0.35, 1.0, 2.0, 0.2)

    # Facet joints between articular pillars slope down and back.
    facet = math.radians(rng.uniform(30, 45))
    joints = {}
    for name in _LEVELS:
        top, _ = levels[name]
        c, e, t = column.frame(top - discs[name] / 2 - 0.8 * scale)
        centre = c - (widths[name][0] / 2 + 9.0 * scale) * e
        direction = -math.cos(facet) * e + math.sin(facet) * t
        joints[name] = (centre - 6.5 * scale * direction, centre + 6.5 * scale * direction, t)

    # C2 posterior elements: pars and inferior articular process, then lamina and the large spinous process.
    a3, p3, t3 = joints["C3"]
    c2_pars = np.concatenate([c2([[-w2 / 2 + 0.5, -hb + 3], [-w2 / 2 - 12, -hb + 6]]), [p3 - 0.8 * t3, a3 - 0.8 * t3]])
    add(_rounded(c2_pars, 3.0 * scale), 0.28, 0.3, 1.0, 2.5, 0.2, spread=1.0)
    sp_len = rng.uniform(38, 46) * scale
    spine2 = _curve([[-w2 / 2 - 8, -10], [-w2 / 2 - 20, -7], [-w2 / 2 - sp_len, 1]], 14)
    add(c2(_ribbon(spine2, 5.5 * scale, 3.8 * scale)), 0.2, 0.35, 1.0, 2.5, 0.25)

    # C3..T1: pedicles, articular pillars between the facet joints, lamina + spinous process.
    spine_len = {"C3": 8, "C4": 9, "C5": 12, "C6": 19, "C7": 28, "T1": 30}
    droop_deg = {"C3": 32, "C4": 32, "C5": 28, "C6": 20, "C7": 12, "T1": 25}
    for name, nxt in zip(_LEVELS[:-1], _LEVELS[1:]):
        top, bot = levels[name]
        w = widths[name][0]
        mid = (top + bot) / 2
        _, e, t = column.frame(mid)
        (a1, p1, t1), (a2, p2, t2) = joints[name], joints[nxt]
        add(_rounded([a1 + 0.8 * t1, p1 + 0.8 * t1, p2 - 0.8 * t2, a2 - 0.8 * t2], 2.5 * scale),
            0.3, 0.3, 0.9, 2.5, 0.25, spread=1.0)
        h = bot - top
        add(column.local(mid, _rounded([[-w / 2 + 1, -h / 2 + 1], [-w / 2 - 6, -h / 2 + 2], [-w / 2 - 6, -h / 2 + 6],
                                        [-w / 2 + 1, -h / 2 + 6]], 1.5)), 0.05, 0.06, 0.8, 1.0, spread=1.0)
        start = column.local(mid, [[-w / 2 - 11 * scale, -1.0]])[0]
        junction = column.local(mid, [[-w / 2 - 19 * scale, 1.5]])[0]
        droop = math.radians(droop_deg[name] + rng.uniform(-6, 6))
        reach = spine_len[name] * scale * rng.uniform(0.85, 1.15)
        tip_pt = junction + reach * (-math.cos(droop) * e + math.sin(droop) * t)
        path = _curve([start, junction, (junction + tip_pt) / 2 + 0.6 * t, tip_pt], 14)
        long_spine = name in ("C6", "C7", "T1")
        add(_ribbon(path, 3.4 * scale, (2.6 if long_spine else 1.8) * scale), rng.uniform(0.11, 0.18), 0.3, 0.8, 2.0,
            0.25)
        if not long_spine:  # bifid tip: the two tubercles project slightly apart
            add(_ellipse(tip_pt + 1.2 * t, 2.2 * scale, 1.6 * scale), 0.08, 0.2, 0.6, 1.0, spread=0.6)

    # Skull base, in a head frame: the C2 frame tilted about the dens tip.
    tilt = math.radians(rng.uniform(-14, 14))  # head flexed or extended on the neck
    dens_tip = np.array([adc, -hd])

    def head(ab):
        ab = np.atleast_2d(np.asarray(ab, float))
        c, s_ = math.cos(tilt), math.sin(tilt)
        return c2(np.stack([c * ab[:, 0] + s_ * ab[:, 1], -s_ * ab[:, 0] + c * ab[:, 1]], 1) + dens_tip)

    basion = np.array([1.0, -5.0])
    opisthion = np.array([-rng.uniform(30, 36), -9.0])
    clivus_top = np.array([20.0, -46.0])
    occiput = _curve([opisthion, [-46, -16], [-61, -36], [-71, -62], [-74, -100], [-66, -145], [-45, -190]], 40)
    palate_b = rng.uniform(-4, 4)
    cranium = np.concatenate([occiput[::-1], [[-20, -7], [-8, -4], basion, clivus_top, [30, -70], [10, -260]]])
    add(head(cranium), 0.42, ramp_mm=6.0, texture=0.1)  # posterior fossa: both skull walls, brain
    face = _curve([clivus_top, [38, -30], [44, palate_b - 6], [80, palate_b - 9], [125, palate_b - 6]], 20)
    add(head(np.concatenate([face, [[125, -260], [10, -260], [30, -70]]])), 0.22, ramp_mm=8.0, texture=0.3)
    add(head(_ribbon(occiput, 3.0, 6.0)), 0.25, 0.4, 1.5, 2.0, 0.3)  # occipital squama, outer and inner tables
    add(head(_ribbon(_curve([basion, [9, -24], clivus_top], 12), 4.0)), 0.22, 0.3, 1.2, 2.0, 0.2)  # clivus
    add(head(_ellipse([-22, -2], 7, 4.5, 10)), 0.14, 0.3, 1.0, 2.0, 0.2, spread=1.0)  # occipital condyles
    add(head(_ellipse([-14, -12], 8.0, 14.0, 15)), 0.2, 0.25, 1.2, 4.0, 0.7, spread=2.0)  # mastoid air cells
    add(head(_ribbon(_curve([[-30, -24], [-8, -36], [22, -54]], 14), 7.0, 2.0)), 0.3, 0.15, 1.5, 5.0, 0.3,
        spread=2.0)  # petrous ridge
    add(head(_ellipse([32, -38], 9.0, 7.0, 0)), -0.25, ramp_mm=3.0)  # sphenoid sinus (air)
    add(head(_ribbon(_curve([[45, palate_b], [75, palate_b - 1], [110, palate_b - 3]], 12), 2.2, 4.0)),
        0.2, 0.3, 1.0, 1.5, 0.2)  # hard palate

    # Mandible: ramus from the condyle (in front of the ear) to the angle (C2/C3), body to the chin.
    gonion = np.array([w2 / 2 + rng.uniform(8, 22), rng.uniform(-8, 10)]) - dens_tip
    condyle = np.array([rng.uniform(18, 28), -10.0])
    drop = rng.uniform(-4, 8)  # mandibular plane
    chin = gonion + [76 * scale, 9 + drop]
    mandible = np.concatenate([
        _curve([condyle + [-3, -2], condyle + [-4, 9], (condyle + gonion) / 2 + [-4, 0], gonion + [-2, -8]], 14),
        _curve([gonion + [-2, -8], gonion + [3, 2], gonion + [30, 5 + drop / 3], chin], 16),
        _curve([chin, chin + [6, -12], chin + [3, -25], gonion + [36, -24 + drop / 2], gonion + [27, -24]], 16),
        _curve([gonion + [27, -24], condyle + [27, 4], condyle + [26, -3], condyle + [17, 9], condyle + [6, 4],
                condyle + [3, -4]], 16),
    ])
    add(head(_rounded(mandible, 1.5)), 0.12, 0.42, 2.2, 3.0, 0.25, spread=3.0)
    alveolus = gonion + [32, -24 + drop / 2]
    for k in range(int(rng.integers(3, 7))):  # molars/premolars, lower and upper, in occlusion
        x = alveolus[0] + 3 + 9.5 * k
        y = alveolus[1] + k * drop / 12
        half = rng.uniform(3.4, 4.4)
        for sign, y0 in ((1, y), (-1, y - 14.5)):  # lower tooth: root down; upper tooth: root up
            crown = [[x - half, y0 - sign * 7], [x + half, y0 - sign * 7], [x + half - 0.4, y0], [x - half + 0.4, y0]]
            apex = y0 + sign * 12
            root = [[x - half + 0.8, y0 - 1], [x + half - 0.8, y0 - 1], [x + 0.8, apex], [x - 0.8, apex]]
            add(head(_rounded(root, 1.0)), 0.12, 0.15, 0.8, 1.0, spread=1.0)
            add(head(_rounded(crown, 2.2)), 0.25, 0.55, 1.0, 1.5, spread=1.0)
    # Hyoid at C3/C4, well anterior of the bodies.
    hy_s = levels["C3"][1] + rng.uniform(-4, 6)
    hy_a = widths["C3"][0] / 2 + rng.uniform(28, 40)
    add(column.local(hy_s, _ellipse([hy_a, 0], 5.5, 3.0, -20)), 0.18, 0.4, 1.0, 1.5, 0.2)
    horn = column.local(hy_s, _curve([[hy_a - 2, -1], [hy_a - 12, -6], [hy_a - 20, -12]], 10))
    add(_ribbon(horn, 1.6, 1.2), 0.1, 0.25, 0.8, 1.0, spread=1.0)

    landmarks = np.full((len(LANDMARK_NAMES), 2), np.nan)
    landmarks[0], landmarks[1], landmarks[2] = c2_centroid, c2_left, c2_right
    for i, name in enumerate(("C3", "C4", "C5", "C6", "C7")):
        landmarks[3 + 4 * i: 7 + 4 * i] = corners[name]  # pt, at, pb, ab: facing right, posterior = image left

    hidden = rng.random() < 0.35
    params = dict(
        scale=scale, length=length, widths=widths, hd=hd, chin_s=float(gonion[1] + dens_tip[1]) + 2.0,
        neck_front=rng.uniform(34, 50) * scale, neck_back=rng.uniform(62, 85) * scale,
        neck_width=rng.uniform(95, 125) * scale, prevertebral=(rng.uniform(3, 6), rng.uniform(12, 19)),
        airway_half=rng.uniform(5.0, 8.0), airway_width=rng.uniform(35, 50), larynx=rng.uniform(0.45, 0.8),
        shoulder=rng.uniform(-26, -8) if hidden else rng.uniform(2, 35),
        # thin to heavy-set: shoulders over C7 from faint to white
        shoulder_density=rng.uniform(1.2, 3.8), shoulder_gap=rng.uniform(3, 14), shoulder_peak=rng.uniform(-45, 0),
        clavicle=rng.uniform(5, 30), mottle_seed=int(rng.integers(2**31)),
    )
    return Anatomy(target_cobb, profile, column, landmarks, bones, levels, params)


def _polygon_centroid(poly: np.ndarray) -> np.ndarray:
    x, y = poly[:, 0], poly[:, 1]
    cross = x * np.roll(y, -1) - np.roll(x, -1) * y
    area = cross.sum() / 2
    return np.array([((x + np.roll(x, -1)) * cross).sum(), ((y + np.roll(y, -1)) * cross).sum()]) / (6 * area)


# --- view (one per image) ----------------------------------------------------------------------------


@dataclass
class View:
    width: int
    height: int
    spacing: float  # mm per pixel
    angle: float  # radians, in-plane rotation
    anchor_mm: np.ndarray
    anchor_px: np.ndarray
    params: dict

    def to_px(self, points_mm) -> np.ndarray:
        d = (np.asarray(points_mm, float) - self.anchor_mm) / self.spacing
        c, s = math.cos(self.angle), math.sin(self.angle)
        return np.stack([c * d[:, 0] - s * d[:, 1], s * d[:, 0] + c * d[:, 1]], axis=1) + self.anchor_px

    def to_mm(self, points_px) -> np.ndarray:
        d = (np.asarray(points_px, float) - self.anchor_px) * self.spacing
        c, s = math.cos(self.angle), math.sin(self.angle)
        return np.stack([c * d[:, 0] + s * d[:, 1], -s * d[:, 0] + c * d[:, 1]], axis=1) + self.anchor_mm


def build_view(rng: np.random.Generator, patient_rng_state: dict, anatomy: Anatomy, size: int) -> View:
    """Framing and exposure of one image. ``patient_rng_state`` holds the patient's habitual pose."""
    base = patient_rng_state
    height = int(size)
    width = max(8, int(round(size * base["aspect"])))
    spacing = base["spacing_1024"] * rng.uniform(0.96, 1.04) * 1024.0 / size
    angle = math.radians(float(np.clip(base["rotation"] + rng.uniform(-2.5, 2.5), -MAX_ROTATION_DEG, MAX_ROTATION_DEG)))
    lm = anatomy.landmarks_mm
    # Upright films: C2 stays anterior of C7 on the image's horizontal (a positive C2-C7 SVA), so the
    # rotation may not undo the neck's forward lean.
    du, dv = lm[0] - (lm[-1] + lm[-2]) / 2
    reach = math.acos(min(1.0, _MIN_SVA_MM / math.hypot(du, dv)))
    lean = math.atan2(-dv, du)
    angle = float(np.clip(angle, lean - reach, lean + reach))
    anchor_mm = (lm.min(axis=0) + lm.max(axis=0)) / 2
    anchor_px = np.array([width * (base["x_frac"] + rng.uniform(-0.03, 0.03)),
                          height * (base["y_frac"] + rng.uniform(-0.03, 0.03))])
    view = View(width, height, spacing, angle, anchor_mm, anchor_px, {})
    # Keep the C2 dens tip .. C7 and a margin inside the film: zoom out, then shift, if needed.
    key = np.concatenate([lm, anatomy.column.local(0.0, [[0, -anatomy.params["hd"]]])])
    margin = 0.06 * np.array([width, height])
    for _ in range(20):
        px = view.to_px(key)
        lo, hi = px.min(axis=0) - margin, px.max(axis=0) + margin
        span = hi - lo
        if span[0] <= width and span[1] <= height:
            break
        view.spacing *= 1.08
    px = view.to_px(key)
    lo, hi = px.min(axis=0) - margin, px.max(axis=0) + margin
    view.anchor_px = view.anchor_px + np.maximum(0, -lo) - np.maximum(0, hi - np.array([width, height]))
    lm_px = view.to_px(lm)
    strips = (int(min(lm_px[:, 0].min() * 0.4, width * 0.08)),
              int(min((width - lm_px[:, 0].max()) * 0.4, width * 0.08)))
    view.params = dict(
        photons=10 ** rng.uniform(2.0, 3.0) * (view.spacing / 0.17) ** 2,  # quanta per pixel behind the neck
        attenuation=rng.uniform(1.5, 2.1),
        scatter=rng.uniform(0.1, 0.45),
        blur_mm=rng.uniform(0.06, 0.22),
        gamma=rng.uniform(0.75, 1.3),
        low_pct=rng.uniform(0.2, 3.0),
        high_pct=rng.uniform(99.0, 99.9),
        compression=rng.uniform(0.15, 0.6),
        sharpen=rng.uniform(0.0, 1.2),
        black=rng.uniform(0.0, 0.08),
        heel=rng.uniform(-0.2, 0.2),
        yaw_mm=np.array([rng.uniform(-4, 4), rng.uniform(-2, 2)]),
        shoulder_shift=rng.uniform(-4, 4),
        collimate=tuple(max(0, x) for x in strips) if rng.random() < 0.3 else None,
        collimate_value=1.0 if rng.random() < 0.5 else 0.0,
        marker=rng.random() < 0.7,
        marker_corner=int(rng.integers(4)),
        **_film_look(rng, lm_px, width, height),
    )
    return view


# Burned-in annotations seen on clinical laterals (side, projection, position, dates, accession numbers).
BURNED_IN_TEXT = ("L LAT", "R LAT", "LAT", "L", "R", "ERECT", "NEUTRAL", "FLEX", "EXT", "C-SPINE LAT", "X-TABLE LAT",
         "SUPINE", "12/03/2019", "2021-07-14 09:32", "ACC 4471023", "kVp 75 mAs 16", "PORTABLE")


def _film_look(rng: np.random.Generator, lm_px: np.ndarray, width: int, height: int) -> dict:
    """The draws that make a phantom look like a clinical film rather than a clean rendering (PLATFORM.md's list
    of how real lateral films differ): drawn after the classic view parameters so those keep their streams."""
    top, bottom = float(lm_px[:, 1].min()), float(height - lm_px[:, 1].max())
    return dict(
        strong_sharpen=rng.uniform(0.8, 2.5) if rng.random() < 0.45 else 0.0,  # CR/DX unsharp masking, ~4 mm kernel
        film_curve=rng.uniform(4.0, 9.0) if rng.random() < 0.35 else 0.0,  # sigmoid slope of an H&D curve
        read_noise=rng.uniform(0.0, 1.5),  # electronic noise, in units of the soft-tissue quantum noise
        # collimation on the top and bottom too (any side is clear of C2-C7), and scanned-film black borders
        collimate_tb=(int(min(top * 0.5, height * 0.1) * rng.uniform(0.3, 1.0)),
                      int(min(bottom * 0.5, height * 0.1) * rng.uniform(0.3, 1.0))) if rng.random() < 0.25 else None,
        border=rng.uniform(0.005, 0.03) if rng.random() < 0.2 else 0.0,
        text=[(str(rng.choice(BURNED_IN_TEXT)), int(rng.integers(4)), rng.uniform(0.025, 0.05), rng.random() < 0.85)
              for _ in range(int(rng.integers(1, 4)))] if rng.random() < 0.6 else [],
        backboard=rng.uniform(0.05, 0.2) if rng.random() < 0.12 else 0.0,  # cross-table: board behind the neck
        jpeg_quality=int(rng.integers(15, 80)) if rng.random() < 0.35 else 0,
    )


# --- rendering -------------------------------------------------------------------------------------


def _linear_taps(n_in: int, n_out: int, factor: int):
    """Source indices and weights of a bilinear resize along one axis; a coarse cell spans ``factor`` pixels."""
    x = np.clip((np.arange(n_out) + 0.5) / factor - 0.5, 0, n_in - 1)
    i0 = np.floor(x).astype(np.intp)
    i1 = np.minimum(i0 + 1, n_in - 1)
    return i0, i1, (x - i0).astype(np.float32)


def _upsample(coarse: np.ndarray, height: int, width: int, factor: int) -> np.ndarray:
    """Bilinear upsampling of a grid of ``factor``-pixel cells (see _block_mean) to (height, width)."""
    if factor == 1:
        return coarse[:height, :width]
    coarse = coarse.astype(np.float32, copy=False)
    r0, r1, rw = _linear_taps(coarse.shape[0], height, factor)
    rows = coarse[r0] * (1 - rw)[:, None] + coarse[r1] * rw[:, None]
    c0, c1, cw = _linear_taps(coarse.shape[1], width, factor)
    return rows[:, c0] * (1 - cw) + rows[:, c1] * cw


def _block_mean(image: np.ndarray, factor: int) -> np.ndarray:
    if factor == 1:
        return image
    h, w = -(-image.shape[0] // factor) * factor, -(-image.shape[1] // factor) * factor
    padded = np.pad(image, ((0, h - image.shape[0]), (0, w - image.shape[1])), mode="edge")
    return padded.reshape(h // factor, factor, w // factor, factor).mean(axis=(1, 3))


def _lowpass(image: np.ndarray, sigma_mm: float, spacing: float) -> np.ndarray:
    """Gaussian low-pass (sigma in mm) of a full-size image, computed on cells of about sigma / 3.

    A wide blur on a coarse grid costs a few passes over the image at any size.
    """
    factor = max(1, int(sigma_mm / (3.0 * spacing)))
    coarse = ndimage.gaussian_filter(_block_mean(image, factor), sigma_mm / (factor * spacing), mode="nearest")
    return _upsample(coarse, image.shape[0], image.shape[1], factor)


class _Film:
    """Attenuation line integrals on the image grid; bones are added in local patches."""

    def __init__(self, view: View, texture: np.ndarray):
        self.att = np.zeros((view.height, view.width), np.float32)
        self.texture = texture
        self.px_per_mm = 1.0 / view.spacing

    def add(self, polygon_px: np.ndarray, bone: Bone, weight: float = 1.0) -> None:
        h, w = self.att.shape
        x0, y0 = np.floor(polygon_px.min(axis=0)).astype(int) - 2
        x1, y1 = np.ceil(polygon_px.max(axis=0)).astype(int) + 3
        x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
        if x1 - x0 < 1 or y1 - y0 < 1:
            return
        canvas = Image.new("L", (x1 - x0, y1 - y0), 0)
        ImageDraw.Draw(canvas).polygon([(float(x), float(y)) for x, y in polygon_px - [x0, y0]], fill=255)
        mask = np.asarray(canvas) > 0
        if not mask.any():
            return
        value = np.full(mask.shape, bone.fill, np.float32)
        if bone.texture:
            value *= 1.0 + bone.texture * self.texture[y0:y1, x0:x1]
        if bone.rim or bone.ramp_mm:
            depth = ndimage.distance_transform_edt(mask).astype(np.float32) - 0.5
            if bone.ramp_mm:
                value *= np.sqrt(np.clip(depth / (bone.ramp_mm * self.px_per_mm), 0.05, 1.0))
            if bone.rim:
                value += bone.rim * np.exp(-depth / max(bone.rim_mm * self.px_per_mm, 0.35))
        self.att[y0:y1, x0:x1] += weight * value * mask


def _shoulder_top(u: np.ndarray, anatomy: Anatomy, shift: float, which: int) -> np.ndarray:
    """v (mm) of the top edge of the left (0) or right (1) shoulder above patient-frame u."""
    p = anatomy.params
    c7 = anatomy.column.local(p["length"], [0, 0])[0]
    peak = c7[0] + p["shoulder_peak"] - 10 * which
    return c7[1] + p["shoulder"] + shift + which * p["shoulder_gap"] + 25.0 * ((u - peak) / 80.0) ** 2


def _soft_tissue(anatomy: Anatomy, view: View, factor: int) -> np.ndarray:
    """Neck, face, airway and shoulders as attenuation on a coarse grid (cells of ``factor`` pixels)."""
    p, col = anatomy.params, anatomy.column
    gh, gw = -(-view.height // factor), -(-view.width // factor)
    # Column coordinates vary smoothly: find them on ~2 mm cells, interpolate to this grid.
    k = max(1, int(round(2.0 / (factor * view.spacing))))
    sh, sw = -(-gh // k), -(-gw // k)
    ys, xs = np.mgrid[0:sh, 0:sw].astype(np.float64)
    sparse = np.stack([(xs.ravel() + 0.5) * k * factor - 0.5, (ys.ravel() + 0.5) * k * factor - 0.5], axis=1)
    s, n = (_upsample(c.reshape(sh, sw), gh, gw, k).ravel().astype(np.float64)
            for c in col.coordinates(view.to_mm(sparse)))
    ys, xs = np.mgrid[0:gh, 0:gw].astype(np.float64)
    mm = view.to_mm(np.stack([(xs.ravel() + 0.5) * factor - 0.5, (ys.ravel() + 0.5) * factor - 0.5], axis=1))
    L, hd = p["length"], p["hd"]
    half = p["widths"]["C4"][0] / 2
    per_mm = 1.0 / 110.0  # soft tissue: the neck's mid line integrates to about 1

    # Neck in (s, n): the front jumps forward above the submental line (face), the back widens at the head.
    # The submental skin runs obliquely: lower towards the chin.
    face = _smoothstep((p["chin_s"] - s + 0.3 * np.maximum(n - half - p["neck_front"], 0)) / 4.0)
    front = half + p["neck_front"] + face * (90 + p["neck_front"]) + np.maximum(s - L - 15, 0) * 0.9
    back = -(half + p["neck_back"]) - 25 * _smoothstep((-hd - 5 - s) / 12.0) - np.maximum(s - L, 0) * 0.4
    mid, semi = (front + back) / 2, (front - back) / 2
    lateral = p["neck_width"] * (1 + 0.1 * face + 0.3 * _smoothstep((-hd - 10 - s) / 10))
    neck = lateral * np.sqrt(np.clip(1 - ((n - mid) / semi) ** 2, 0, 1)) * per_mm
    mottle = ndimage.gaussian_filter(np.random.default_rng(p["mottle_seed"]).standard_normal((gh, gw)),
                                     6.0 / (factor * view.spacing))  # fat and muscle planes
    neck *= 1 + 0.04 * mottle.ravel() / max(float(mottle.std()), 1e-6)

    # Airway: pharynx behind a thin prevertebral stripe that thickens below C4 (oesophagus), the
    # larynx narrowing it, the trachea; the nasopharynx curves forward above C2 under the skull base.
    c5 = anatomy.levels["C5"][0]
    pv_up, pv_low = p["prevertebral"]
    prevert = pv_up + (pv_low - pv_up) * _smoothstep((s - c5) / 6.0)
    hw = p["airway_half"] * (1 - (1 - p["larynx"]) * np.exp(-(((s - anatomy.levels["C5"][1]) / 7.0) ** 2)))
    centre = half + prevert + hw + 22 * _smoothstep((-hd + 6 - s) / 7.0)
    top = _smoothstep((s - (-hd - 12)) / 3.0)
    air = np.clip(1 - ((n - centre) / hw) ** 4, 0, 1) ** 0.5 * top
    pocket = np.exp(-(((s - p["chin_s"] - 3) / 5) ** 2 + ((n - centre - 14) / 7) ** 2)) * (1 - face)  # vallecula
    airway = -(p["airway_width"] * air + 12 * pocket) * per_mm

    # Shoulders: left and right domes in the patient frame, from C6 to below T2.
    u, v = mm[:, 0], mm[:, 1]
    shoulders = np.zeros_like(u)
    for which in (0, 1):
        depth = np.maximum(v - _shoulder_top(u, anatomy, view.params["shoulder_shift"], which), 0)
        shoulders += p["shoulder_density"] / 2 * (1 - np.exp(-depth / 10.0))
    inside = np.clip(1 - ((n - mid) / (semi + 60)) ** 2, 0, 1) ** 0.5
    field = neck + airway * (neck > 0.05) + shoulders * np.maximum(inside, 0.3)
    return field.reshape(gh, gw).astype(np.float32)


def _bone_texture(rng: np.random.Generator, view: View) -> np.ndarray:
    """Trabecular pattern, zero mean and unit spread: a mesh of thin bright struts around dark marrow spaces.

    The struts are the zero crossings of band-pass noise (~1 mm cells, stretched along the column,
    as the load-bearing vertical trabeculae are), plus a little fine grain.
    """
    factor = max(1, int(round(0.3 / view.spacing)))
    gh, gw = -(-view.height // factor), -(-view.width // factor)
    noise = rng.standard_normal((gh, gw)).astype(np.float32)
    cell = max(0.6, 0.45 / (view.spacing * factor))
    band = ndimage.gaussian_filter(noise, (1.6 * cell, cell)) - ndimage.gaussian_filter(noise, 3 * cell)
    band /= max(float(band.std()), 1e-6)
    struts = np.exp(-4.0 * band**2)  # near 1 on the zero crossings: a connected network of lines
    mesh = struts + 0.3 * ndimage.gaussian_filter(noise, 0.6)
    mesh -= mesh.mean()
    mesh /= max(float(mesh.std()), 1e-6)
    return _upsample(mesh, view.height, view.width, factor)


def attenuation(anatomy: Anatomy, view: View, rng: np.random.Generator) -> np.ndarray:
    """Line integrals of attenuation (neck mid line ~ 1) on the image grid, facing right."""
    film = _Film(view, _bone_texture(rng, view))
    yaw = view.params["yaw_mm"]
    for bone in anatomy.bones:
        if bone.spread:
            for side in (-0.5, 0.5):
                film.add(view.to_px(bone.polygon + side * bone.spread * yaw), bone, 0.5)
        else:
            film.add(view.to_px(bone.polygon), bone)
    # Shoulder girdle bones: clavicles low in front, humeral heads behind (both sides).
    p = anatomy.params
    c7 = anatomy.column.local(p["length"], [0, 0])[0]
    for side in (-1.0, 1.0):
        shift = np.array([side * 5.0, side * 4.0 + p["clavicle"]]) + view.params["shoulder_shift"] * np.array([0, 1])
        clavicle = _curve([c7 + [75, 42], c7 + [45, 32], c7 + [15, 22], c7 + [-20, 20]], 16) + shift
        film.add(view.to_px(_ribbon(clavicle, 6.0, 5.0)), Bone(np.empty((0, 2)), 0.14, 0.35, 1.8, 4.0, 0.3), 0.5)
        humerus = _ellipse(c7 + [-50 + side * 8, 60 + p["clavicle"] + side * 6], 24, 24)
        film.add(view.to_px(humerus), Bone(np.empty((0, 2)), 0.2, 0.35, 2.0, 6.0, 0.3), 0.5)
    factor = max(1, int(round(0.6 / view.spacing)))
    att = film.att + _upsample(_soft_tissue(anatomy, view, factor), view.height, view.width, factor)
    if view.params["backboard"]:  # cross-table lateral: a spine board behind the neck, straight across the film
        back = float(view.to_px(anatomy.column.local(anatomy.params["length"] / 2,
                                                     [[-anatomy.params["neck_back"] - 20.0, 0]]))[0, 0])
        x = np.arange(view.width, dtype=np.float32)
        att += view.params["backboard"] * _smoothstep((back - x) / 2.0)[None, :].astype(np.float32)
    return att


def expose(att: np.ndarray, view: View, rng: np.random.Generator) -> np.ndarray:
    """Film/detector chain: transmission, scatter, quantum noise, blur, log, processing, window."""
    vp = view.params
    transmission = np.exp(-vp["attenuation"] * att)
    transmission += vp["scatter"] * _lowpass(transmission, 25.0, view.spacing)  # scatter veil
    heel = 1 + vp["heel"] * np.linspace(-1, 1, view.height, dtype=np.float32)[:, None]
    photons = np.float32(vp["photons"] * math.exp(vp["attenuation"])) * heel  # soft tissue gets `photons`
    counts = transmission * photons
    counts += rng.standard_normal(counts.shape, dtype=np.float32) * np.sqrt(np.maximum(counts, 1.0))
    if vp["read_noise"] > 0:  # electronic (Gaussian) noise: the same everywhere, so it dominates behind bone
        counts += rng.standard_normal(counts.shape, dtype=np.float32) * np.float32(
            vp["read_noise"] * math.sqrt(vp["photons"]))
    blur_px = vp["blur_mm"] / view.spacing
    if blur_px > 0.25:
        counts = ndimage.gaussian_filter(counts, blur_px)
    density = -np.log(np.maximum(counts, 0.5) / photons)
    # Processing as on a DR workstation: compress the large-scale range, enhance edges.
    local = _lowpass(density, 1.5, view.spacing)
    low = _lowpass(density, 10.0, view.spacing)
    level = float(np.median(low[::4, ::4]))
    density = density - vp["compression"] * (low - level) + vp["sharpen"] * (density - local)
    if vp["strong_sharpen"]:  # the wide unsharp mask of CR/DX processing: halos along every edge
        density = density + vp["strong_sharpen"] * (density - _lowpass(density, 4.0, view.spacing))
    lo, hi = np.percentile(density[::3, ::3], [vp["low_pct"], vp["high_pct"]])
    image = np.clip((density - lo) / max(float(hi - lo), 1e-6), 0, 1)
    if vp["film_curve"]:  # film's S-shaped characteristic curve: toe and shoulder compress both ends
        k = vp["film_curve"]
        image = (1 / (1 + np.exp(-k * (image - 0.5))) - 1 / (1 + math.exp(k / 2))) / (1 - 2 / (1 + math.exp(k / 2)))
    else:
        image = image ** vp["gamma"]
    image = vp["black"] + (1 - vp["black"]) * image
    if vp["collimate"]:  # unexposed strips at the film's sides, clear of the spine
        left, right = vp["collimate"]
        image[:, :left] = vp["collimate_value"]
        image[:, view.width - right:] = vp["collimate_value"]
    if vp["collimate_tb"]:
        top, bottom = vp["collimate_tb"]
        image[:top] = vp["collimate_value"]
        image[view.height - bottom:] = vp["collimate_value"]
    if vp["border"]:  # a scanned film's black frame
        edge = max(1, int(vp["border"] * min(view.width, view.height)))
        image[:edge], image[-edge:], image[:, :edge], image[:, -edge:] = 0.0, 0.0, 0.0, 0.0
    return image.astype(np.float32)


def _draw_marker(image: np.ndarray, corner: int, px_per_mm: float, keep_clear: list[float]) -> None:
    """A lead side marker: a bright plate with a letter in a corner, as on most lateral films."""
    h, w = image.shape
    size = int(round(12 * px_per_mm))
    if size < 6 or size * 4 > min(h, w):
        return
    x0 = int(0.04 * w) if corner in (0, 2) else w - int(0.04 * w) - size
    y0 = int(0.04 * h) if corner in (0, 1) else h - int(0.04 * h) - size
    x1, y1, x2, y2 = keep_clear
    if x0 < x2 and x0 + size > x1 and y0 < y2 and y0 + size > y1:
        return
    plate = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(plate)
    stroke = max(1, size // 6)
    draw.rectangle([0, 0, size - 1, size - 1], outline=150, width=max(1, stroke // 2))
    draw.line([(size * 0.32, size * 0.2), (size * 0.32, size * 0.8), (size * 0.75, size * 0.8)], fill=255, width=stroke)
    region = image[y0:y0 + size, x0:x0 + size]
    region[...] = np.maximum(region, np.asarray(plate, np.float32) / 255.0 * 0.97)


def _draw_text(image: np.ndarray, text: str, corner: int, height_frac: float, bright: bool,
               keep_clear: list[float], line: int = 0) -> None:
    """Burned-in annotation text along an edge of the film, off the spine (skipped where it would cover it)."""
    from PIL import ImageFont

    h, w = image.shape
    size = max(6, int(round(height_frac * h)))
    font = ImageFont.load_default(size=size)
    left, top, right, bottom = font.getbbox(text)
    tw, th = right - left + 2, bottom - top + 2
    if tw >= w * 0.9 or th >= h * 0.3:
        return
    x0 = int(0.03 * w) if corner in (0, 2) else w - int(0.03 * w) - tw
    step = int(0.06 * h) * line  # later lines further in, so two in one corner do not overprint
    y0 = int(0.12 * h) + step if corner in (0, 1) else h - int(0.12 * h) - th - step  # beside the side marker
    x1, y1, x2, y2 = keep_clear
    if (x0 < x2 and x0 + tw > x1 and y0 < y2 and y0 + th > y1) or x0 < 0 or y0 < 0 or y0 + th > h:
        return
    patch = Image.new("L", (tw, th), 0)
    ImageDraw.Draw(patch).text((1 - left, 1 - top), text, fill=255, font=font)
    ink = np.asarray(patch, np.float32) / 255.0
    region = image[y0:y0 + th, x0:x0 + tw]
    region[...] = region * (1 - ink) + ink * (0.98 if bright else 0.02)


def _jpeg_artifacts(image: np.ndarray, quality: int) -> np.ndarray:
    """JPEG's block and ringing artifacts added to the float image (as the difference an 8-bit round trip
    makes), so 8- and 16-bit output keep agreeing and 16-bit keeps its fine levels."""
    import io

    eight = np.round(np.clip(image, 0, 1) * 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(eight).save(buffer, format="JPEG", quality=int(quality))
    decoded = np.asarray(Image.open(io.BytesIO(buffer.getvalue())), np.float32)
    return np.clip(image + (decoded - eight.astype(np.float32)) / 255.0, 0, 1).astype(np.float32)


# --- cases -----------------------------------------------------------------------------------------


def _patient_pose(rng: np.random.Generator) -> dict:
    return dict(
        aspect=float(rng.choice([rng.uniform(0.65, 1.0), rng.uniform(1.0, 1.35)], p=[0.8, 0.2])),  # width / height
        spacing_1024=rng.uniform(*SPACING_AT_1024_MM),
        rotation=rng.uniform(-9.0, 9.0),
        x_frac=rng.uniform(0.44, 0.58),
        y_frac=rng.uniform(0.57, 0.66),
    )


def _mirror_landmarks(landmarks: np.ndarray, width: int) -> np.ndarray:
    """Mirror x and swap left/right names, so "left" stays the image's left."""
    index = {name: i for i, name in enumerate(LANDMARK_NAMES)}
    out = np.empty_like(landmarks)
    for i, name in enumerate(LANDMARK_NAMES):
        words = name.split()
        if words[-1] in _SIDE_SWAP:
            words[-1] = _SIDE_SWAP[words[-1]]
        out[index[" ".join(words)]] = [width - 1 - landmarks[i, 0], landmarks[i, 1]]
    return out


def _check_size(size: int) -> int:
    if not isinstance(size, (int, np.integer)) or isinstance(size, bool) or not 32 <= int(size) <= 8192:
        raise PhantomError(f"size must be a whole number of pixels from 32 to 8192, got {size!r}")
    return int(size)


@dataclass
class _Plan:
    """Everything about a case except its pixels."""

    anatomy: Anatomy
    view: View
    landmarks: np.ndarray  # pixels, after mirroring
    facing: str
    target: float
    profile: str
    seed: int
    patient_seed: int
    thresholds: RuleThresholds


def _plan(seed, size, curvature_class, cobb_c2c7, profile, facing, patient_seed, thresholds) -> _Plan:
    size = _check_size(size)
    if curvature_class is not None and curvature_class not in CLASSES:
        raise PhantomError(f"unknown curvature class {curvature_class!r}; use one of {', '.join(CLASSES)}")
    if curvature_class is not None and cobb_c2c7 is not None:
        raise PhantomError("give either curvature_class or cobb_c2c7, not both")
    if cobb_c2c7 is not None and not COBB_LIMITS_DEG[0] <= float(cobb_c2c7) <= COBB_LIMITS_DEG[1]:
        raise PhantomError(f"cobb_c2c7 must lie between {COBB_LIMITS_DEG[0]:g} and {COBB_LIMITS_DEG[1]:g} degrees, "
                           f"got {cobb_c2c7!r}")
    if facing not in (None, "left", "right"):
        raise PhantomError(f"facing must be 'left' or 'right', not {facing!r}")
    if profile not in (None,) + PROFILES:
        raise PhantomError(f"profile must be one of {', '.join(PROFILES)}, not {profile!r}")
    thresholds = thresholds or RuleThresholds.from_env()
    for name, value in (("seed", seed), ("patient_seed", patient_seed)):
        if value is not None and (not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 0):
            raise PhantomError(f"{name} must be a whole number >= 0, got {value!r}")
    seed = int(seed)
    patient_seed = seed if patient_seed is None else int(patient_seed)

    # Patient draws happen in a fixed order whatever is forced, so forcing facing changes nothing else.
    prng = np.random.default_rng([patient_seed, 0xC5])
    drawn_facing = "left" if prng.random() < 0.5 else "right"
    drawn_class = CLASSES[int(prng.integers(len(CLASSES)))]
    if cobb_c2c7 is None:
        target = _sample_target(np.random.default_rng([patient_seed, 0xC6]), curvature_class or drawn_class, thresholds)
    else:
        target = float(cobb_c2c7)
    profile = profile or "arc"
    pose = _patient_pose(prng)
    anatomy = build_anatomy(prng, target, profile)
    view = build_view(np.random.default_rng([seed, 0xC7]), pose, anatomy, size)
    facing = facing or drawn_facing
    landmarks = view.to_px(anatomy.landmarks_mm)
    if facing == "left":
        landmarks = _mirror_landmarks(landmarks, view.width)
    return _Plan(anatomy, view, landmarks, facing, target, profile, seed, patient_seed, thresholds)


def case_landmarks(
    seed: int,
    *,
    size: int = 1024,
    curvature_class: str | None = None,
    cobb_c2c7: float | None = None,
    profile: str | None = None,
    facing: str | None = None,
    patient_seed: int | None = None,
) -> tuple[np.ndarray, tuple[int, int], float, str]:
    """The ground-truth geometry of ``generate_case`` with the same arguments, without rendering.

    Returns (landmarks (23, 2) in pixels, (width, height), target Cobb angle, facing): cheap enough to
    check thousands of curves.
    """
    plan = _plan(seed, size, curvature_class, cobb_c2c7, profile, facing, patient_seed, None)
    return plan.landmarks, (plan.view.width, plan.view.height), plan.target, plan.facing


def generate_case(
    seed: int,
    *,
    size: int = 1024,
    curvature_class: str | None = None,
    cobb_c2c7: float | None = None,
    profile: str | None = None,
    facing: str | None = None,
    bit_depth: int = 8,
    patient_id: str | None = None,
    patient_seed: int | None = None,
    thresholds: RuleThresholds | None = None,
) -> PhantomCase:
    """One synthetic lateral cervical radiograph with its ground truth.

    The same ``seed`` (and ``patient_seed``) always gives a byte-identical image. The patient's
    anatomy (curvature, bones, soft tissue, facing) comes from ``patient_seed`` (default: ``seed``);
    pose, exposure, noise and crop come from ``seed``, so one patient can have several images.
    Give ``curvature_class`` or ``cobb_c2c7`` (or neither: a class is drawn); ``profile`` "sigmoid1"
    or "sigmoid2" bends the column into an S with the same C2–C7 angle. ``size`` is the image height.
    """
    if bit_depth not in (8, 16):
        raise PhantomError(f"bit_depth must be 8 or 16, got {bit_depth!r}")
    plan = _plan(seed, size, curvature_class, cobb_c2c7, profile, facing, patient_seed, thresholds)
    anatomy, view, landmarks = plan.anatomy, plan.view, plan.landmarks
    noise_rng = np.random.default_rng([plan.seed, 0xC8])
    image = expose(attenuation(anatomy, view, noise_rng), view, noise_rng)
    if view.params["jpeg_quality"]:
        image = _jpeg_artifacts(image, view.params["jpeg_quality"])
    probes = _probes(anatomy, view)
    if plan.facing == "left":
        image = image[:, ::-1]
        probes = {k: np.stack([view.width - 1 - v[:, 0], v[:, 1]], 1) for k, v in probes.items()}
    roi_box = roi_box_from_landmarks(landmarks, (view.width, view.height))
    if view.params["marker"]:
        _draw_marker(image, view.params["marker_corner"], 1.0 / view.spacing, roi_box)
    for line, (text, corner, height_frac, bright) in enumerate(view.params["text"]):  # after mirroring: readable
        _draw_text(image, text, corner, height_frac, bright, roi_box, line)
    scale = 255 if bit_depth == 8 else 65535
    pixels = np.ascontiguousarray(np.round(image * scale).astype(np.uint8 if bit_depth == 8 else np.uint16))

    measured = measure_landmarks(landmarks, facing=plan.facing, pixel_spacing_mm=view.spacing,
                                 thresholds=plan.thresholds)
    if curvature_class is not None and measured.rule_class != curvature_class:  # cannot happen by design
        raise RuntimeError(f"phantom aimed at {curvature_class} but measures {measured.rule_class}")
    c7 = anatomy.column.local(sum(anatomy.levels["C7"]) / 2, [0, 0])[0]
    c7_hidden = bool(_shoulder_top(c7[:1], anatomy, view.params["shoulder_shift"], 0)[0] < c7[1])
    return PhantomCase(
        image=pixels,
        landmarks=landmarks,
        roi_box=roi_box,
        curvature_class=measured.rule_class,
        cobb_c2c7=measured.cobb_c2c7,
        facing=plan.facing,
        patient_id=patient_id or f"S{plan.patient_seed}",
        bit_depth=bit_depth,
        seed=plan.seed,
        target_cobb=plan.target,
        profile=plan.profile,
        pixel_spacing_mm=float(view.spacing),
        patient_seed=plan.patient_seed,
        c7_hidden=c7_hidden,
        age=int(np.random.default_rng([plan.patient_seed, 0xA6]).integers(20, 80)),
        sex="F" if np.random.default_rng([plan.patient_seed, 0x5E]).random() < 0.5 else "M",
        probes=probes,
    )


def _probes(anatomy: Anatomy, view: View) -> dict:
    """Pixel points inside named structures (canonical facing): for image-content checks."""
    col, p = anatomy.column, anatomy.params
    bodies, discs, airway, prevertebral = [], [], [], []
    names = ("C3", "C4", "C5", "C6", "C7")
    for name, nxt in zip(names[:-1], names[1:]):
        top, bot = anatomy.levels[name]
        bodies.append(col.local((top + bot) / 2, [0, 0])[0])
        discs.append(col.local((bot + anatomy.levels[nxt][0]) / 2, [0, 0])[0])
    half = p["widths"]["C4"][0] / 2
    top, bot = anatomy.levels["C4"]  # below the mandible and hyoid, above the larynx
    airway.append(col.local((top + bot) / 2, [half + p["prevertebral"][0] + p["airway_half"], 0])[0])
    top, bot = anatomy.levels["C6"]  # the thick prevertebral stripe in front of C6: soft tissue only
    prevertebral.append(col.local((top + bot) / 2, [p["widths"]["C6"][0] / 2 + p["prevertebral"][1] / 2, 0])[0])
    return {k: view.to_px(np.array(v)) for k, v in
            dict(bodies=bodies, discs=discs, airway=airway, soft_tissue=prevertebral).items()}


# --- writing phantom sets ----------------------------------------------------------------------------


def _derived_seed(*keys: int) -> int:
    """A 32-bit seed from (set seed, patient, image): stable, independent streams."""
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(1)[0])


def _save_png(path: Path, case: PhantomCase) -> None:
    dpi = 25.4 / case.pixel_spacing_mm  # pHYs chunk: readers recover the pixel spacing
    Image.fromarray(case.image).save(path, dpi=(dpi, dpi), compress_level=PNG_COMPRESS_LEVEL)


def _render(job: tuple) -> PhantomCase:
    case_seed, size, cls, profile, bit_depth, patient_id, patient_seed, image_path, *_ = job
    case = generate_case(case_seed, size=size, curvature_class=cls, profile=profile, bit_depth=bit_depth,
                         patient_id=patient_id, patient_seed=patient_seed)
    _save_png(image_path, case)
    return case


def _rendered(jobs: list[tuple], workers: int):
    """The cases of ``jobs`` in order, rendered (and their PNGs saved) here or in ``workers`` processes."""
    if workers <= 1 or len(jobs) < 2 * workers:
        yield from map(_render, jobs)
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    # spawn, not fork: the caller may be a threaded server (Streamlit) or hold torch's thread pool
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        yield from pool.map(_render, jobs, chunksize=8)


def _patient_plan(patients: int, seed: int, sigmoid_fraction: float) -> list[tuple[str, str]]:
    """(curvature class, profile) per patient: classes balanced and shuffled, some sigmoid shapes."""
    rng = np.random.default_rng([seed, 0x91A])
    classes = [CLASSES[i % len(CLASSES)] for i in range(patients)]
    rng.shuffle(classes)
    sigmoid = set(rng.permutation(patients)[: int(round(sigmoid_fraction * patients))].tolist())
    return [(cls, str(rng.choice(["sigmoid1", "sigmoid2"])) if i in sigmoid else "arc")
            for i, cls in enumerate(classes)]


def _validation_patients(plan: list[tuple[str, str]], seed: int, fraction: float) -> set[int]:
    """Patient indices for the YOLO val split, stratified by class; all images of a patient stay together."""
    rng = np.random.default_rng([seed, 0x7A1])
    chosen: set[int] = set()
    for cls in CLASSES:
        members = [i for i, (c, _) in enumerate(plan) if c == cls]
        if len(members) >= 2:
            count = max(1, int(round(fraction * len(members))))
            chosen.update(rng.permutation(members)[:count].tolist())
    return chosen


def write_phantoms(
    out: str | Path,
    patients: int,
    images_per_patient: int = 1,
    seed: int = 0,
    size: int = 1024,
    formats: tuple[str, ...] | list[str] = (),
    bit_depth: int = 8,
    progress: Callable[[int, int, PhantomCase], None] | None = None,
    *,
    sigmoid_fraction: float = 0.0,
    dicom_photometric: str = "MONOCHROME2",
    val_fraction: float = 0.2,
    overwrite: bool = False,
    workers: int = 1,
) -> dict:
    """Write a phantom set in the "Phantom output" layout of docs/ARCHITECTURE.md; returns a summary.

    Always: ``images/<P0001_01>.png``, ``labels.jsonl``, ``manifest.csv``. ``formats`` adds ``csxa``,
    ``yolo`` (train/val split by patient) and ``dicom``. One curvature per patient; its images vary
    pose, exposure, noise and crop. ``progress(done, total, case)`` is called after every image.
    ``workers`` > 1 renders in that many processes; the set written is the same byte for byte.
    """
    out = Path(out)
    formats = tuple(dict.fromkeys(formats))
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise PhantomError(f"unknown format(s) {', '.join(map(repr, unknown))}; use {', '.join(FORMATS)}")
    for name, value, low in (("patients", patients, 1), ("images_per_patient", images_per_patient, 1),
                             ("workers", workers, 1)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < low:
            raise PhantomError(f"{name} must be a whole number >= {low}, got {value!r}")
    if patients > 9999:
        raise PhantomError("at most 9999 patients per set (CSXA case numbers have four digits)")
    size = _check_size(size)
    if bit_depth not in (8, 16):
        raise PhantomError(f"bit_depth must be 8 or 16, got {bit_depth!r}")
    if not 0.0 <= sigmoid_fraction <= 1.0 or not 0.0 <= val_fraction < 1.0:
        raise PhantomError("sigmoid_fraction must lie in [0, 1] and val_fraction in [0, 1)")
    if dicom_photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise PhantomError(f"dicom_photometric must be MONOCHROME1 or MONOCHROME2, not {dicom_photometric!r}")
    if out.exists() and not out.is_dir():
        raise PhantomError(f"{out} exists and is not a folder")
    written = ("images", "labels.jsonl", "manifest.csv") + FORMATS
    stale = [out / name for name in written if (out / name).exists()]
    if stale and not overwrite:
        raise PhantomError(f"{out} already holds a phantom set ({stale[0].name}); choose another folder, "
                           "or overwrite it (--overwrite)")
    for path in stale:
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    (out / "images").mkdir(parents=True, exist_ok=True)

    started = time.perf_counter()
    plan = _patient_plan(patients, seed, sigmoid_fraction)
    val = _validation_patients(plan, seed, val_fraction)
    total = patients * images_per_patient
    writers = {name: factory(out / name) for name, factory in
               (("csxa", _CsxaWriter), ("yolo", _YoloWriter), ("dicom", _DicomWriter)) if name in formats}
    if "dicom" in writers:
        writers["dicom"].photometric = dicom_photometric
    classes: Counter = Counter()
    facings: Counter = Counter()
    hidden = done = 0
    with (out / "labels.jsonl").open("w", encoding="utf-8") as labels, \
            (out / "manifest.csv").open("w", newline="", encoding="utf-8") as manifest_file:
        manifest = csv.writer(manifest_file)
        manifest.writerow(["path", "label", "patient_id", "x1", "y1", "x2", "y2"])
        jobs = [(_derived_seed(seed, p_index, k + 1), size, cls, profile, bit_depth, f"P{p_index + 1:04d}",
                 _derived_seed(seed, p_index), out / "images" / f"P{p_index + 1:04d}_{k + 1:02d}.png", p_index, k)
                for p_index, (cls, profile) in enumerate(plan) for k in range(images_per_patient)]
        for job, case in zip(jobs, _rendered(jobs, workers)):
            _, _, cls, _, _, _, _, image_path, p_index, k = job
            name = image_path.stem
            classes[cls] += 1
            labels.write(json.dumps(case.as_label(f"images/{name}.png")) + "\n")
            manifest.writerow([f"images/{name}.png", case.curvature_class, case.patient_id,
                               *(f"{v:.2f}" for v in case.roi_box)])
            for writer in writers.values():
                writer.add(case, name, image_path, p_index, k, p_index in val)
            facings[case.facing] += 1
            hidden += case.c7_hidden
            done += 1
            if progress is not None:
                progress(done, total, case)
    files = {"images": total}
    for name, writer in writers.items():
        files[name] = writer.finish()
    return {
        "out": str(out), "patients": patients, "images": total, "classes": {c: classes[c] for c in CLASSES},
        "facing": dict(facings), "c7_hidden": hidden, "sigmoid_patients": sum(p != "arc" for _, p in plan),
        "formats": list(formats), "files": files, "size": size, "bit_depth": bit_depth, "seed": seed,
        "seconds": round(time.perf_counter() - started, 2),
    }


class _CsxaWriter:
    """CSXA layout: datasets-PNG/<NNNN>_<age>.png + Labelme JSON, datasets.xlsx and datasets.csv.

    One case number per patient (the importer links rows by number); a patient's further images
    are named <NNNN>_<age>_<k>.png so they stay with their case.
    """

    TITLE = "Cervical Spine X-ray Atlas (CSXA) layout - CerviCurve synthetic phantoms"
    HEADER = ["Number", "Age", "Sex", CSXA_CURVATURE_COLUMN, "Patient ID", "Cobb C2-C7 (deg)"]

    def __init__(self, root: Path):
        self.root = root
        (root / "datasets-PNG").mkdir(parents=True, exist_ok=True)
        self.rows: list[list] = []
        self.count = 0

    def add(self, case: PhantomCase, name: str, image_path: Path, p_index: int, k: int, is_val: bool) -> None:
        number = p_index + 1
        stem = f"{number:04d}_{case.age}" + ("" if k == 0 else f"_{k + 1}")
        target = self.root / "datasets-PNG" / f"{stem}.png"
        shutil.copyfile(image_path, target)
        write_labelme(target.with_suffix(".json"), case.landmarks, target.name, (case.width, case.height))
        if k == 0:
            code = CSXA_SIGMOID_CODE.get(case.profile, CSXA_CODE[case.curvature_class])
            self.rows.append([number, case.age, case.sex, code, case.patient_id, round(case.cobb_c2c7, 2)])
        self.count += 1

    def finish(self) -> int:
        from openpyxl import Workbook

        book = Workbook()
        sheet = book.active
        sheet.title = "Sheet1"
        sheet.append([self.TITLE])
        sheet.append(self.HEADER)
        for row in self.rows:
            sheet.append(row)
        book.save(self.root / "datasets.xlsx")
        with (self.root / "datasets.csv").open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)  # the same sheet: title row, then the header
            writer.writerow([self.TITLE] + [""] * (len(self.HEADER) - 1))
            writer.writerow(self.HEADER)
            writer.writerows(self.rows)
        return self.count


class _YoloWriter:
    """Ultralytics detect layout, one class (cervical_spine), train/val split by patient."""

    def __init__(self, root: Path):
        self.root = root
        for split in ("train", "val"):
            (root / "images" / split).mkdir(parents=True, exist_ok=True)
            (root / "labels" / split).mkdir(parents=True, exist_ok=True)
        self.counts = Counter()

    def add(self, case: PhantomCase, name: str, image_path: Path, p_index: int, k: int, is_val: bool) -> None:
        split = "val" if is_val else "train"
        shutil.copyfile(image_path, self.root / "images" / split / f"{name}.png")
        x1, y1, x2, y2 = case.roi_box
        w, h = case.width, case.height
        line = f"0 {(x1 + x2) / 2 / w:.6f} {(y1 + y2) / 2 / h:.6f} {(x2 - x1) / w:.6f} {(y2 - y1) / h:.6f}\n"
        (self.root / "labels" / split / f"{name}.txt").write_text(line, encoding="utf-8")
        self.counts[split] += 1

    def finish(self) -> int:
        (self.root / "data.yaml").write_text(
            f"path: {self.root.resolve()}\ntrain: images/train\nval: images/val\nnames:\n  0: cervical_spine\n",
            encoding="utf-8")
        return sum(self.counts.values())


class _DicomWriter:
    """CR DICOM files with fake, realistic-looking patient data, to exercise de-identification."""

    photometric = "MONOCHROME2"

    def __init__(self, root: Path):
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.count = 0

    def add(self, case: PhantomCase, name: str, image_path: Path, p_index: int, k: int, is_val: bool) -> None:
        write_dicom(self.root / f"{name}.dcm", case, photometric=self.photometric, instance=k + 1)
        self.count += 1

    def finish(self) -> int:
        return self.count


def write_dicom(path: str | Path, case: PhantomCase, *, photometric: str = "MONOCHROME2", instance: int = 1) -> None:
    """One phantom as a Computed Radiography DICOM file (explicit VR little endian).

    16-bit phantoms are stored as 12-bit values (BitsStored 12) with a window; MONOCHROME1 stores
    inverted values, as many CR/DR systems do. UIDs derive from the phantom's seeds: reruns match.
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ComputedRadiographyImageStorage, ExplicitVRLittleEndian, \
        generate_uid

    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise PhantomError(f"photometric must be MONOCHROME1 or MONOCHROME2, not {photometric!r}")
    if case.bit_depth == 16:
        stored, bits = (case.image >> 4).astype(np.uint16), 12  # a 12-bit detector in a 16-bit word
    else:
        stored, bits = case.image.astype(np.uint8), 8
    peak = (1 << bits) - 1
    if photometric == "MONOCHROME1":
        stored = (peak - stored).astype(stored.dtype)
    rng = np.random.default_rng([case.patient_seed, 0xD1C])
    study_year = 2024
    birth = f"{study_year - case.age}{int(rng.integers(1, 13)):02d}{int(rng.integers(1, 29)):02d}"
    study_date = f"{study_year}{int(rng.integers(1, 13)):02d}{int(rng.integers(1, 29)):02d}"
    number = case.patient_id.lstrip("P") or "0"
    study_uid = generate_uid(entropy_srcs=["cervicurve-phantom-study", str(case.patient_seed)])
    series_uid = generate_uid(entropy_srcs=["cervicurve-phantom-series", str(case.patient_seed), str(case.seed)])
    sop_uid = generate_uid(entropy_srcs=["cervicurve-phantom-image", str(case.patient_seed), str(case.seed)])

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ComputedRadiographyImageStorage
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID, ds.SOPInstanceUID = ComputedRadiographyImageStorage, sop_uid
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = study_date
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = f"{9 + int(rng.integers(0, 8)):02d}{int(rng.integers(0, 60)):02d}00"
    ds.AccessionNumber = f"PH{number}{instance:02d}"
    ds.Modality = "CR"
    ds.Manufacturer = "CerviCurve phantom generator"
    ds.InstitutionName = "Phantom General Hospital"
    ds.InstitutionAddress = "1 Synthetic Way, Nowhere"
    ds.ReferringPhysicianName = "Phantom^Referrer"
    ds.OperatorsName = "Phantom^Radiographer"
    ds.StudyDescription = "C-SPINE LATERAL"
    ds.SeriesDescription = "LAT C-SPINE"
    ds.PatientName = f"Phantom^{case.patient_id}"
    ds.PatientID = case.patient_id
    ds.PatientBirthDate = birth
    ds.PatientSex = case.sex
    ds.PatientAge = f"{case.age:03d}Y"
    ds.PatientAddress = f"{int(rng.integers(1, 200))} Phantom Street, Testville"
    ds.PatientTelephoneNumbers = f"555-{int(rng.integers(0, 10000)):04d}"
    ds.BodyPartExamined = "CSPINE"
    ds.ViewPosition = "LL" if case.facing == "right" else "RL"
    ds.PatientOrientation = ["A", "F"] if case.facing == "right" else ["P", "F"]
    ds.StudyID = number
    ds.SeriesNumber = instance
    ds.InstanceNumber = 1
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.PixelSpacing = ds.ImagerPixelSpacing = [f"{case.pixel_spacing_mm:.6f}"] * 2
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.Rows, ds.Columns = stored.shape
    ds.BitsAllocated = 16 if bits > 8 else 8
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 0
    ds.WindowCenter = f"{(peak + 1) / 2:g}"
    ds.WindowWidth = f"{peak + 1:g}"
    ds.PixelData = np.ascontiguousarray(stored).astype("<u2" if bits > 8 else np.uint8).tobytes()
    ds.save_as(Path(path), enforce_file_format=True)


# --- contact sheet --------------------------------------------------------------------------------------


def contact_sheet(out_png: str | Path, seed: int = 0, size: int = 512) -> Path:
    """One phantom per class (columns) and facing (rows), with ROI box and landmarks drawn."""
    from PIL import ImageFont

    font = ImageFont.load_default()
    cell = size
    sheet = Image.new("RGB", (cell * len(CLASSES), cell * 2), (32, 32, 32))
    for row, facing in enumerate(("right", "left")):
        for column, cls in enumerate(CLASSES):
            case = generate_case(_derived_seed(seed, column, row), size=size, curvature_class=cls, facing=facing)
            tile = Image.fromarray(case.image).convert("RGB")
            draw = ImageDraw.Draw(tile)
            draw.rectangle(case.roi_box, outline=(60, 220, 90), width=2)
            radius = max(2, size // 170)
            for i, (x, y) in enumerate(case.landmarks):
                colour = (255, 200, 0) if i == 0 else (255, 60, 60)
                draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=colour)
            caption = f"{cls}  Cobb {case.cobb_c2c7:+.1f} deg  facing {facing}"
            caption += "  C7 hidden" if case.c7_hidden else ""
            draw.rectangle([0, tile.height - 16, tile.width, tile.height], fill=(0, 0, 0))
            draw.text((4, tile.height - 14), caption, fill=(255, 255, 255), font=font)
            sheet.paste(tile, (column * cell + (cell - tile.width) // 2, row * cell))
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out_png)
    return out_png


# --- command line -----------------------------------------------------------------------------------------


def configure_phantom(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, required=True, help="folder to write (created; must not hold a set)")
    parser.add_argument("--patients", type=int, required=True, help="number of patients (one curvature each)")
    parser.add_argument("--images-per-patient", type=int, default=1, help="images per patient (pose/exposure vary)")
    parser.add_argument("--seed", type=int, default=0, help="same seed, same files")
    parser.add_argument("--size", type=int, default=1024, help="image height in pixels (width is 80-100 %% of it)")
    parser.add_argument("--bit-depth", type=int, choices=(8, 16), default=8)
    parser.add_argument("--format", dest="formats", action="append", choices=FORMATS, default=[],
                        help="extra layout to write (repeatable)")
    parser.add_argument("--sigmoid-fraction", type=float, default=0.0,
                        help="share of patients with an S-shaped curve (CSXA grades 3/4)")
    parser.add_argument("--dicom-photometric", choices=("MONOCHROME2", "MONOCHROME1"), default="MONOCHROME2")
    parser.add_argument("--overwrite", action="store_true", help="replace a phantom set already in --out")
    parser.add_argument("--contact-sheet", type=Path, help="also write a class x facing contact sheet PNG here")


def run_phantom(args: argparse.Namespace) -> int:
    total = args.patients * args.images_per_patient
    every = max(1, total // 20)

    def report(done: int, total: int, case: PhantomCase) -> None:
        if done % every == 0 or done == total:
            print(f"[{done}/{total}] {case.patient_id} {case.curvature_class:<12} Cobb {case.cobb_c2c7:+6.1f} deg "
                  f"facing {case.facing}", flush=True)

    try:
        summary = write_phantoms(args.out, args.patients, args.images_per_patient, args.seed, args.size,
                                 args.formats, args.bit_depth, report, sigmoid_fraction=args.sigmoid_fraction,
                                 dicom_photometric=args.dicom_photometric, overwrite=args.overwrite)
        if args.contact_sheet:
            contact_sheet(args.contact_sheet, args.seed)
    except PhantomError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    classes = ", ".join(f"{cls} {n}" for cls, n in summary["classes"].items())
    print(f"wrote {summary['images']} images of {summary['patients']} patients to {summary['out']} "
          f"in {summary['seconds']} s")
    print(f"classes: {classes}; facing: {summary['facing']}; C7 hidden by shoulders: {summary['c7_hidden']}")
    for name, count in summary["files"].items():
        print(f"  {name}: {count} files")
    return 0
