"""Cervical sagittal alignment from the 23 CSXA landmarks: Cobb angles, Ishihara index, arc depth, rule class.

Landmark order (CSXA): C2 centroid, C2 bottom left, C2 bottom right, then for C3..C7 top left, top right,
bottom left, bottom right. "left"/"right" are image sides, so which corner is anterior depends on which way
the patient faces; every signed quantity here is normalised so that lordosis is positive.

Definitions (adapted to the landmarks CSXA provides):
- Cobb C2–C7 / C2–C6: angle between the C2 inferior endplate and the C7 (C6) inferior endplate.
- Ishihara curvature index (CCI): chord from the posterior-inferior corner of C2 to that of C7; a1..a4 are the
  signed distances of the posterior-inferior corners of C3..C6 from the chord (anterior positive);
  CCI = (a1 + a2 + a3 + a4) / |chord| x 100 %. The a_i are also Toyama's distances.
- Arc depth (after Borden): the deepest point of the posterior body line (posterior corners of C3..C6) from the
  same chord. Borden's chord starts at the dens tip, which CSXA does not mark, so values run smaller than
  Borden's 12 +/- 5 mm norm.
- Rule class from Cobb C2–C7 (``RuleThresholds``): normal >= 10 deg (asymptomatic adults average 12.7 deg,
  95 % CI 6.6–18.8), reversed <= -4 deg (kyphosis beyond the +/-4 deg band commonly called straight),
  straightened in between. Both are settings: ``CERVICURVE_NORMAL_MIN_DEG`` and ``CERVICURVE_REVERSED_MAX_DEG``.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage

LEVELS = ("C3", "C4", "C5", "C6", "C7")
CORNERS = ("top left", "top right", "bottom left", "bottom right")
LANDMARK_NAMES: tuple[str, ...] = ("C2 centroid", "C2 bottom left", "C2 bottom right") + tuple(
    f"{level} {corner}" for level in LEVELS for corner in CORNERS
)
_INDEX = {name: i for i, name in enumerate(LANDMARK_NAMES)}


def landmark_flip_index() -> list[int]:
    """For each landmark, the index it becomes in a mirrored image: CSXA names left/right by image side, so a
    horizontal flip turns "C4 top left" into "C4 top right" (the C2 centroid stays itself)."""
    swap = {"left": "right", "right": "left"}
    return [_INDEX[" ".join(swap.get(word, word) for word in name.split(" "))] for name in LANDMARK_NAMES]


class LandmarkError(ValueError):
    """Landmarks that cannot be measured (wrong count, missing points, unreadable file)."""


@dataclass(frozen=True)
class RuleThresholds:
    normal_min_deg: float = 10.0
    reversed_max_deg: float = -4.0

    def __post_init__(self):
        if not self.reversed_max_deg < self.normal_min_deg:
            raise ValueError(
                f"reversed_max_deg ({self.reversed_max_deg}) must be below normal_min_deg ({self.normal_min_deg})"
            )

    @classmethod
    def from_env(cls) -> "RuleThresholds":
        from core import settings  # a bad value is a SettingsError naming the variable, not a float() crash

        normal_min_deg, reversed_max_deg = settings.rule_thresholds_deg()
        return cls(normal_min_deg=normal_min_deg, reversed_max_deg=reversed_max_deg)


@dataclass
class Measurements:
    cobb_c2c7: float
    cobb_c2c6: float
    cci: float
    toyama_px: list[float]
    arc_depth_px: float
    rule_class: str
    facing: str
    arc_depth_mm: float | None = None
    toyama_mm: list[float] | None = None
    notes: list[str] = field(default_factory=list)
    lowest_level: str = "C7"  # "C6" for a partial measurement (C7 not seen): C2-C7 values are nan

    def as_dict(self) -> dict:
        """Plain values; a value that could not be measured (nan) is None, so the dict is valid JSON."""
        def plain(v):
            if isinstance(v, float):
                return round(v, 3) if math.isfinite(v) else None
            if isinstance(v, list):
                return [x if not isinstance(x, float) or math.isfinite(x) else None for x in v]
            return v

        return {k: plain(v) for k, v in asdict(self).items()}


def classify_cobb(cobb_c2c7: float, thresholds: RuleThresholds | None = None) -> str:
    t = thresholds or RuleThresholds.from_env()
    if cobb_c2c7 >= t.normal_min_deg:
        return "normal"
    if cobb_c2c7 <= t.reversed_max_deg:
        return "reversed"
    return "straightened"


def _as_landmarks(landmarks) -> np.ndarray:
    points = np.asarray(landmarks, dtype=float)
    if points.shape != (len(LANDMARK_NAMES), 2):
        raise LandmarkError(f"expected {len(LANDMARK_NAMES)} landmarks as (x, y), got shape {points.shape}")
    return points


def _point(points: np.ndarray, name: str) -> np.ndarray:
    return points[_INDEX[name]]


def infer_facing(landmarks) -> str:
    """The side the face is on, from the forward lean of the neck.

    In upright lateral films C2 sits anterior of C7 in nearly every adult (a positive C2–C7 sagittal vertical
    axis, normally 15–20 mm), so the image side C2's centroid lies on, relative to C7, is the anterior side.
    This assumes an upright film: a film rotated by more than the forward lean (~10 deg) can fool it, and
    projecting onto the endplates instead fails on lordotic necks, whose endplates fan out.
    Pass ``facing`` explicitly when it is known (DICOM orientation, phantom ground truth).
    """
    points = _as_landmarks(landmarks)
    c7_mid = points[[_INDEX["C7 bottom left"], _INDEX["C7 bottom right"]]].mean(axis=0)
    return "right" if float(_point(points, "C2 centroid")[0] - c7_mid[0]) >= 0 else "left"


# ------------------------------------------------------------------------------------ facing from the film
# Why not from the landmarks alone: the C2-over-C7 forward lean (``infer_facing``) flips on necks held in extension
# or leaning back. On 2 of 21 real CSXA films it gave the wrong side (case 0005035: official Cobb +34.4 deg read as
# -34.4, "reversed"), and a sign error turns a lordotic neck into a kyphotic one.
#
# The anatomy: posterior of each vertebral body lie the pedicles, articular pillars and laminae (dense bone,
# bright); anterior of it a few millimetres of prevertebral soft tissue and then the pharynx or trachea (air, dark).
# So for C3-C6 ``film_facing_score`` compares the film in a band just beyond each side of the body, along the
# body's own left-right axis (a tilted neck is followed): the brighter side is posterior, the face on the other.
# C7 is left out (the shoulders cover it in many films), and so is C2 (the dens and C1 sit behind it). The cue is
# scored in units of the film's own contrast around the spine; under FACING_MIN_SCORE it is a guess and the lean
# decides, saying so. Measured: right on the 6 real CSXA dev films (scores 0.47-0.87; the lean is wrong on one)
# and on 160 phantoms facing either way in flexion and extension (scores >= 0.43).
FACING_LEVELS = ("C3", "C4", "C5", "C6")
# The band beside a body, in body widths from its centre: past the cortex (0.5) and before the spinous processes
# or the far wall of the airway.
FACING_BAND = (0.65, 1.5)
FACING_MIN_SCORE = 0.25
FACING_SOURCES = ("film", "lean", "user")


@dataclass(frozen=True)
class Facing:
    facing: str          # "left" | "right": the image side the face is on
    source: str          # "film" (read beside the bodies) | "lean" (C2 over C7: the film was unclear) | "user"
    score: float | None  # film cue: > 0 the face is on the left; None when not read from the film

    def describe(self) -> str:
        if self.source == "user":
            return f"faces {self.facing} (given)"
        if self.source == "film":
            return f"faces {self.facing} (read from the film beside C3-C6, strength {abs(self.score):.2f})"
        return (f"faces {self.facing} (guessed from the C2-over-C7 lean: the film did not show which side the "
                "airway and the posterior elements are on; set it by hand if wrong)")


def _side_means(pixels: np.ndarray, points: np.ndarray) -> list[tuple[float, float]]:
    """(mean brightness of the band left of the body, right of it) for each level with all four corners."""
    means = []
    for level in FACING_LEVELS:
        corners = points[[_INDEX[f"{level} {c}"] for c in ("top left", "top right", "bottom left", "bottom right")]]
        if not np.all(np.isfinite(corners)):
            continue
        left, right = corners[[0, 2]].mean(axis=0), corners[[1, 3]].mean(axis=0)
        top, bottom = corners[[0, 1]].mean(axis=0), corners[[2, 3]].mean(axis=0)
        width, height = float(np.linalg.norm(right - left)), float(np.linalg.norm(bottom - top))
        if width < 2 or height < 2:
            continue
        across = (right - left) / width  # image-left to image-right along the endplates
        down = (bottom - top) / height
        centre = corners.mean(axis=0)
        offsets = np.linspace(*FACING_BAND, 8)[:, None] * width
        rows = np.linspace(-0.35, 0.35, 7)[None, :] * height
        sides = []
        for sign in (-1.0, 1.0):
            xy = centre + (sign * offsets)[..., None] * across + rows[..., None] * down  # (8, 7, 2)
            values = ndimage.map_coordinates(pixels, [xy[..., 1].ravel(), xy[..., 0].ravel()], order=1,
                                             mode="constant", cval=np.nan)
            inside = ((xy[..., 0] >= 0) & (xy[..., 0] <= pixels.shape[1] - 1) & (xy[..., 1] >= 0)
                      & (xy[..., 1] <= pixels.shape[0] - 1)).ravel()
            sides.append(float(np.mean(values[inside])) if inside.mean() > 0.5 else np.nan)
        means.append((sides[0], sides[1]))
    return means


def film_facing_score(pixels: np.ndarray, landmarks) -> float | None:
    """> 0: the band right of the bodies is brighter (posterior on the right: the face is on the left); < 0 the
    reverse; in units of the spine region's interquartile range. None when no level can be read."""
    pixels = np.asarray(pixels, dtype=np.float32)
    points = np.asarray(landmarks, dtype=np.float64)
    if pixels.ndim != 2 or points.shape != (len(LANDMARK_NAMES), 2):
        return None
    means = [(a, b) for a, b in _side_means(pixels, points) if np.isfinite(a) and np.isfinite(b)]
    if not means:
        return None
    finite = points[np.all(np.isfinite(points), axis=1)]
    (x1, y1), (x2, y2) = finite.min(axis=0), finite.max(axis=0)
    grow = 0.5 * max(x2 - x1, y2 - y1)
    region = pixels[max(0, int(y1 - grow)):int(y2 + grow) + 1, max(0, int(x1 - grow)):int(x2 + grow) + 1]
    spread = float(np.subtract(*np.percentile(region, [75, 25]))) if region.size else 0.0
    difference = float(np.median([right - left for left, right in means]))
    return difference / max(spread, 1e-3)


def read_facing(pixels: np.ndarray | None, landmarks, given: str | None = None) -> Facing:
    """The patient's facing: ``given`` (the user's) when set, else read from the film, else from the lean."""
    if given is not None:
        if given not in ("left", "right"):
            raise ValueError(f"facing must be 'left' or 'right', not {given!r}")
        return Facing(given, "user", None)
    score = None if pixels is None else film_facing_score(pixels, landmarks)
    if score is not None and abs(score) >= FACING_MIN_SCORE:
        return Facing("left" if score > 0 else "right", "film", round(score, 3))
    return Facing(_lean(landmarks), "lean", None if score is None else round(score, 3))


def _lean(landmarks) -> str:
    """``infer_facing``, from C6 when C7 is hidden."""
    points = np.asarray(landmarks, dtype=np.float64)
    if np.all(np.isfinite(points[[_INDEX["C7 bottom left"], _INDEX["C7 bottom right"]]])):
        return infer_facing(points)
    c6 = points[[_INDEX["C6 bottom left"], _INDEX["C6 bottom right"]]].mean(axis=0)
    return "right" if float(points[_INDEX["C2 centroid"], 0] - c6[0]) >= 0 else "left"


def _endplate_angle(posterior: np.ndarray, anterior: np.ndarray, anterior_sign: float) -> float:
    """Tilt of an endplate in degrees: positive when its anterior end is higher (image y grows downwards)."""
    dx, dy = (anterior - posterior)
    return math.degrees(math.atan2(-dy, dx * anterior_sign))


def _corners(points: np.ndarray, level: str, edge: str, facing: str) -> tuple[np.ndarray, np.ndarray]:
    """(posterior, anterior) corners of one endplate."""
    left, right = _point(points, f"{level} {edge} left"), _point(points, f"{level} {edge} right")
    return (left, right) if facing == "right" else (right, left)


def _signed_distance(point: np.ndarray, a: np.ndarray, b: np.ndarray, anterior: np.ndarray) -> float:
    """Distance of ``point`` from line a-b, positive on the anterior side."""
    chord = b - a
    normal = np.array([-chord[1], chord[0]]) / np.linalg.norm(chord)
    if np.dot(normal, anterior) < 0:
        normal = -normal
    return float(np.dot(point - a, normal))


def measure_landmarks(
    landmarks,
    facing: str | None = None,
    pixel_spacing_mm: float | tuple[float, float] | None = None,
    thresholds: RuleThresholds | None = None,
    partial: bool = False,
) -> Measurements:
    """All angles and indices from one set of 23 landmarks (pixels, original image).

    ``partial``: when only C7's corners are missing (hidden behind the shoulders), measure what C2-C6 allow:
    Cobb C2-C6 and the rule class from it (a note says so); the C2-C7 values are nan. Any other gap still raises.
    """
    points = _as_landmarks(landmarks)
    needed = [i for i, name in enumerate(LANDMARK_NAMES) if name != "C2 centroid" or facing is None]
    missing = [LANDMARK_NAMES[i] for i in needed if not np.all(np.isfinite(points[i]))]
    if missing and partial and all(name.startswith("C7 ") for name in missing):
        return _measure_to_c6(points, facing, thresholds)
    if missing:
        raise LandmarkError(f"landmarks missing: {', '.join(missing)}")
    notes = []
    if facing is None:
        facing = infer_facing(points)
        notes.append(f"facing inferred as {facing} from the C2-C7 forward lean")
    if facing not in ("left", "right"):
        raise LandmarkError(f"facing must be 'left' or 'right', not {facing!r}")
    sign = 1.0 if facing == "right" else -1.0

    c2_tilt = _endplate_angle(*_corners(points, "C2", "bottom", facing), sign)
    cobb_c2c7 = c2_tilt - _endplate_angle(*_corners(points, "C7", "bottom", facing), sign)
    cobb_c2c6 = c2_tilt - _endplate_angle(*_corners(points, "C6", "bottom", facing), sign)

    c2_post, c2_ant = _corners(points, "C2", "bottom", facing)
    c7_post, c7_ant = _corners(points, "C7", "bottom", facing)
    anterior = ((c2_ant - c2_post) + (c7_ant - c7_post)) / 2
    chord_length = float(np.linalg.norm(c7_post - c2_post))
    if chord_length == 0:
        raise LandmarkError("C2 and C7 posterior corners coincide")
    toyama = [_signed_distance(_corners(points, lvl, "bottom", facing)[0], c2_post, c7_post, anterior)
              for lvl in ("C3", "C4", "C5", "C6")]
    cci = sum(toyama) / chord_length * 100.0
    posterior_line = [_corners(points, lvl, edge, facing)[0] for lvl in ("C3", "C4", "C5", "C6") for edge in ("top", "bottom")]
    depths = [_signed_distance(p, c2_post, c7_post, anterior) for p in posterior_line]
    # The deepest point keeps its sign: a posterior bulge (kyphosis) gives a negative depth.
    arc_depth_px = max(depths, key=abs)

    spacing = None
    if pixel_spacing_mm is not None:
        spacing = float(np.mean(pixel_spacing_mm))
    return Measurements(
        cobb_c2c7=float(cobb_c2c7),
        cobb_c2c6=float(cobb_c2c6),
        cci=float(cci),
        toyama_px=[float(t) for t in toyama],
        arc_depth_px=float(arc_depth_px),
        rule_class=classify_cobb(cobb_c2c7, thresholds),
        facing=facing,
        arc_depth_mm=None if spacing is None else float(arc_depth_px * spacing),
        toyama_mm=None if spacing is None else [float(t * spacing) for t in toyama],
        notes=notes,
    )


def _measure_to_c6(points: np.ndarray, facing: str | None, thresholds: RuleThresholds | None) -> Measurements:
    """C2-C6 only (C7 not seen). The forward lean that tells the facing is read from C6 instead of C7."""
    notes = []
    if facing is None:
        c6_mid = points[[_INDEX["C6 bottom left"], _INDEX["C6 bottom right"]]].mean(axis=0)
        facing = "right" if float(_point(points, "C2 centroid")[0] - c6_mid[0]) >= 0 else "left"
        notes.append(f"facing inferred as {facing} from the C2-C6 forward lean")
    if facing not in ("left", "right"):
        raise LandmarkError(f"facing must be 'left' or 'right', not {facing!r}")
    sign = 1.0 if facing == "right" else -1.0
    cobb_c2c6 = (_endplate_angle(*_corners(points, "C2", "bottom", facing), sign)
                 - _endplate_angle(*_corners(points, "C6", "bottom", facing), sign))
    notes.append("C7 not seen: measured C2-C6 only; the rule class comes from Cobb C2-C6, which reads a few "
                 "degrees below C2-C7 in most necks")
    nan = float("nan")
    return Measurements(cobb_c2c7=nan, cobb_c2c6=float(cobb_c2c6), cci=nan, toyama_px=[nan] * 4, arc_depth_px=nan,
                        rule_class=classify_cobb(cobb_c2c6, thresholds), facing=facing, notes=notes,
                        lowest_level="C6")


# The landmark models' window: the ROI box widened by this fraction of its size on each side.
LANDMARK_CROP_MARGIN = 0.1


def roi_box_from_landmarks(landmarks, image_size: tuple[int, int] | None = None, margin: float = 0.12) -> list[float]:
    """Box around C2–C7, grown by ``margin`` of its size on each side and clipped to the image.

    Every ROI box in the project (phantom truth, CSXA import, detector targets) comes from here,
    so they agree by construction.
    """
    points = _as_landmarks(landmarks)
    points = points[np.all(np.isfinite(points), axis=1)]
    if len(points) < 3:
        raise LandmarkError("too few landmarks for a box")
    (x1, y1), (x2, y2) = points.min(axis=0), points.max(axis=0)
    grow = margin * max(x2 - x1, y2 - y1)
    x1, y1, x2, y2 = x1 - grow, y1 - grow, x2 + grow, y2 + grow
    if image_size is not None:
        width, height = image_size
        x1, y1, x2, y2 = max(0.0, x1), max(0.0, y1), min(float(width), x2), min(float(height), y2)
    return [float(x1), float(y1), float(x2), float(y2)]


@dataclass
class LabelmeRecord:
    landmarks: np.ndarray
    image_path: str | None
    image_size: tuple[int, int] | None
    unknown_labels: list[str] = field(default_factory=list)


def landmark_errors(pairs) -> dict:
    """How far predicted landmarks are from the truth, over ``(predicted, truth)`` or ``(predicted, truth, facing)``.

    Mean point error over visible points, in pixels and in % of each image's C2–C7 length (C2 centroid to the
    middle of the C7 lower endplate); Cobb C2–C7 mean absolute error and the share within 5 deg. The facing comes
    from the truth (given or inferred) and is used for both, so a Cobb error is never a facing disagreement.
    """
    errors_px, errors_pct, cobb = [], [], []
    for pair in pairs:
        predicted, truth = np.asarray(pair[0], dtype=float), np.asarray(pair[1], dtype=float)
        distance = np.linalg.norm(predicted - truth, axis=1)
        visible = distance[np.isfinite(distance)]
        errors_px.extend(visible)
        span = np.linalg.norm(truth[0] - (truth[21] + truth[22]) / 2)
        if np.isfinite(span) and span > 0:
            errors_pct.extend(visible / span * 100.0)
        try:
            facing = (pair[2] if len(pair) > 2 else None) or infer_facing(truth)
            cobb.append(abs(measure_landmarks(predicted, facing=facing).cobb_c2c7
                            - measure_landmarks(truth, facing=facing).cobb_c2c7))
        except LandmarkError:
            pass  # a truth without every corner has no Cobb angle to compare

    def mean(values):
        return float(np.mean(values)) if len(values) else None

    return {"mean_error_px": mean(errors_px), "mean_error_pct_c2c7": mean(errors_pct), "cobb_mae_deg": mean(cobb),
            "cobb_within_5deg": mean(np.asarray(cobb) <= 5.0), "images": len(pairs)}


def read_labelme(path: str | Path) -> LabelmeRecord:
    """Landmarks from a Labelme JSON with CSXA label names; absent points are nan."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        shapes = data["shapes"]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as error:
        raise LandmarkError(f"{path.name}: not a Labelme JSON file ({error})") from error
    points = np.full((len(LANDMARK_NAMES), 2), np.nan)
    unknown = []
    for shape in shapes:
        label = " ".join(str(shape.get("label", "")).split())
        match = next((name for name in LANDMARK_NAMES if name.lower() == label.lower()), None)
        if match is None or not shape.get("points"):
            unknown.append(label)
            continue
        points[_INDEX[match]] = [float(v) for v in shape["points"][0][:2]]
    size = None
    if data.get("imageWidth") and data.get("imageHeight"):
        size = (int(data["imageWidth"]), int(data["imageHeight"]))
    return LabelmeRecord(points, data.get("imagePath"), size, unknown)


def write_labelme(path: str | Path, landmarks, image_path: str, image_size: tuple[int, int]) -> None:
    points = _as_landmarks(landmarks)
    shapes = [
        {"label": name, "points": [[float(x), float(y)]], "group_id": None, "shape_type": "point", "flags": {}}
        for name, (x, y) in zip(LANDMARK_NAMES, points)
        if np.isfinite(x) and np.isfinite(y)
    ]
    document = {
        "version": "5.2.1",
        "flags": {},
        "shapes": shapes,
        "imagePath": image_path,
        "imageData": None,
        "imageWidth": int(image_size[0]),
        "imageHeight": int(image_size[1]),
    }
    Path(path).write_text(json.dumps(document, indent=1), encoding="utf-8")
