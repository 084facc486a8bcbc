"""One image's framing and film look: pixel spacing, rotation, crop and frame shape, exposure, noise, blur,
processing, collimation, borders, markers, burned-in text, JPEG. Drawn per image from the image's seed; the
patient's habitual pose (``patient_pose``) comes from the patient's seed."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from core.data.phantom.anatomy import Anatomy

# Pixel spacing at 1024 px image height (mm/px); other sizes scale it so the field of view stays a neck.
SPACING_AT_1024_MM = (0.165, 0.205)
MAX_ROTATION_DEG = 12.0
_MIN_SVA_MM = 5.0  # C2 centroid at least this far anterior of the C7 inferior endplate's centre, image x


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


def patient_pose(rng: np.random.Generator) -> dict:
    return dict(
        aspect=float(rng.choice([rng.uniform(0.65, 1.0), rng.uniform(1.0, 1.35)], p=[0.8, 0.2])),  # width / height
        spacing_1024=rng.uniform(*SPACING_AT_1024_MM),
        rotation=rng.uniform(-9.0, 9.0),
        x_frac=rng.uniform(0.44, 0.58),
        y_frac=rng.uniform(0.57, 0.66),
    )
