"""One phantom case: the plan (anatomy from the patient's seed, view from the image's seed, landmarks in pixels,
mirrored for ``facing="left"``), its rendering, and its ground truth measured by :mod:`core.data.measure`, so
labels and measurements agree by construction."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from core.data.measure import LANDMARK_NAMES, RuleThresholds, measure_landmarks, roi_box_from_landmarks
from core.data.phantom.anatomy import Anatomy, sample_target, build_anatomy
from core.data.phantom.render import draw_marker, draw_text, jpeg_artifacts, shoulder_top, attenuation, expose
from core.data.phantom.view import View, patient_pose, build_view
from core.settings import CLASSES

PROFILES = ("arc", "sigmoid1", "sigmoid2")  # sigmoid1: upper lordotic, lower kyphotic; sigmoid2: the reverse
COBB_LIMITS_DEG = (-45.0, 60.0)
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


def check_size(size: int) -> int:
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
    size = check_size(size)
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
        target = sample_target(np.random.default_rng([patient_seed, 0xC6]), curvature_class or drawn_class, thresholds)
    else:
        target = float(cobb_c2c7)
    profile = profile or "arc"
    pose = patient_pose(prng)
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
        image = jpeg_artifacts(image, view.params["jpeg_quality"])
    probes = _probes(anatomy, view)
    if plan.facing == "left":
        image = image[:, ::-1]
        probes = {k: np.stack([view.width - 1 - v[:, 0], v[:, 1]], 1) for k, v in probes.items()}
    roi_box = roi_box_from_landmarks(landmarks, (view.width, view.height))
    if view.params["marker"]:
        draw_marker(image, view.params["marker_corner"], 1.0 / view.spacing, roi_box)
    for line, (text, corner, height_frac, bright) in enumerate(view.params["text"]):  # after mirroring: readable
        draw_text(image, text, corner, height_frac, bright, roi_box, line)
    scale = 255 if bit_depth == 8 else 65535
    pixels = np.ascontiguousarray(np.round(image * scale).astype(np.uint8 if bit_depth == 8 else np.uint16))

    measured = measure_landmarks(landmarks, facing=plan.facing, pixel_spacing_mm=view.spacing,
                                 thresholds=plan.thresholds)
    if curvature_class is not None and measured.rule_class != curvature_class:  # cannot happen by design
        raise RuntimeError(f"phantom aimed at {curvature_class} but measures {measured.rule_class}")
    c7 = anatomy.column.local(sum(anatomy.levels["C7"]) / 2, [0, 0])[0]
    c7_hidden = bool(shoulder_top(c7[:1], anatomy, view.params["shoulder_shift"], 0)[0] < c7[1])
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
