"""The Teach page's engine (``python -m core quiz`` uses it too).

Explore: a phantom drawn for a C2–C7 angle, facing, shoulders, exposure and noise, measured on its own
ground-truth landmarks (Cobb four-line construction, Ishihara index with its four distances, arc depth, rule class)
and read by the promoted models (class, probabilities, Grad-CAM, their own angle).
Measure it yourself: a student's four endplate corners give an angle, set against the truth and the models'.
Self-test: quizzes (``core.data.quizzes``) with the models' answer frozen into each film at creation.

What repeats is cached per process, so moving one slider redraws only what it changes: a phantom per
(seed, patient, angle, facing, size), the patient chosen for a seed and shoulder setting, and the models' answer
per (film, model files). Exposure and noise are applied to the drawn film (they cost milliseconds): the phantom
generator draws each film's own exposure and noise from its seed and has no knob for them.
"""
from __future__ import annotations

import functools
import math
import sys
import threading
import time
import traceback
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
from PIL import Image, ImageDraw

from core import settings
from core.data import quizzes
from core.data.imaging import Radiograph, read_image
from core.data.measure import (
    LANDMARK_NAMES,
    LandmarkError,
    Measurements,
    RuleThresholds,
    measure_landmarks,
)
from core.data.phantom import PhantomCase, case_landmarks, generate_case
from core.inference import models, pipeline, report

ANGLE_RANGE_DEG = (-30.0, 40.0)
EXPOSURE_RANGE_STOPS = (-2.0, 2.0)
NOISE_RANGE = (0.0, 0.3)
EXPLORE_SIZE = 512  # px, film height on the page: the size the redraw time is measured at
LAYERS = ("landmarks", "cobb", "ishihara", "arc", "model")
_REFERENCE_ANGLE = 10.0  # the patient for a seed is chosen once, at this angle, so moving the angle keeps them
_PATIENT_TRIES = 40

TRUTH_COLOUR = (0, 220, 255)
COBB_COLOUR = (255, 64, 160)
CHORD_COLOUR = (80, 230, 80)
DISTANCE_COLOUR = (255, 165, 0)
ARC_COLOUR = (255, 60, 60)
MODEL_COLOUR = (255, 235, 0)
STUDENT_COLOUR = (255, 140, 0)


class TeachingError(ValueError):
    """Settings or points the Teach page cannot use; the message says what to change."""


# ------------------------------------------------------------------------------------ films


@dataclass(frozen=True)
class FilmSettings:
    """What the Explore sliders set. The same settings always give the same film."""

    cobb_c2c7: float = 20.0
    facing: str = "right"
    c7_hidden: bool = False
    exposure_stops: float = 0.0
    noise: float = 0.0
    seed: int = 1
    size: int = EXPLORE_SIZE

    def checked(self) -> "FilmSettings":
        def within(name: str, value, limits) -> float:
            try:
                number = float(value)
            except (TypeError, ValueError):
                raise TeachingError(f"{name} must be a number, not {value!r}") from None
            if not (math.isfinite(number) and limits[0] <= number <= limits[1]):
                raise TeachingError(f"{name} must lie between {limits[0]:g} and {limits[1]:g}, not {value!r}")
            return number

        if self.facing not in ("left", "right"):
            raise TeachingError(f"facing must be 'left' or 'right', not {self.facing!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer)) or not 0 <= self.seed < 2**31:
            raise TeachingError(f"the seed must be a whole number from 0 to {2**31 - 1}, not {self.seed!r}")
        if isinstance(self.size, bool) or not isinstance(self.size, (int, np.integer)) or not 128 <= self.size <= 2048:
            raise TeachingError(f"the film size must be 128 to 2048 px, not {self.size!r}")
        return replace(self, cobb_c2c7=within("the C2–C7 angle", self.cobb_c2c7, ANGLE_RANGE_DEG),
                       exposure_stops=within("exposure", self.exposure_stops, EXPOSURE_RANGE_STOPS),
                       noise=within("noise", self.noise, NOISE_RANGE), c7_hidden=bool(self.c7_hidden),
                       seed=int(self.seed), size=int(self.size))


@dataclass
class Film:
    """A film to teach on: its pixels (float32 [0, 1]) and, when known, its ground truth."""

    name: str
    pixels: np.ndarray
    key: tuple  # what identifies this exact film (for caches)
    landmarks: np.ndarray | None = None
    facing: str | None = None
    truth: Measurements | None = None
    truth_class: str | None = None  # the rule class for a phantom, the label for a dataset image
    pixel_spacing_mm: float | None = None
    c7_hidden: bool | None = None
    notes: list[str] = field(default_factory=list)

    def radiograph(self) -> Radiograph:
        spacing = None if self.pixel_spacing_mm is None else (self.pixel_spacing_mm, self.pixel_spacing_mm)
        height, width = self.pixels.shape
        return Radiograph(pixels=self.pixels, source_bit_depth=8, pixel_spacing_mm=spacing,
                          photometric="MONOCHROME2", original_size=(width, height), meta={"name": self.name})


class _Recent:
    """A small thread-safe LRU (Streamlit sessions and the prefetcher are threads of one process). A value being
    made is made once: a second caller for the same key waits for the first instead of repeating the work."""

    def __init__(self, size: int):
        self.size, self.items, self.lock = size, OrderedDict(), threading.Lock()
        self.making: dict[Any, threading.Event] = {}

    def get(self, key, make: Callable[[], Any]):
        while True:
            with self.lock:
                if key in self.items:
                    self.items.move_to_end(key)
                    return self.items[key]
                busy = self.making.get(key)
                if busy is None:
                    self.making[key] = threading.Event()
                    break
            busy.wait()  # made by another thread; if it failed, the loop makes it here
        try:
            value = make()
            with self.lock:
                self.items[key] = value
                while len(self.items) > self.size:
                    self.items.popitem(last=False)
            return value
        finally:
            with self.lock:
                self.making.pop(key).set()


class _Prefetcher:
    """One background thread that makes the Explore films one degree either side of the one just shown, with the
    models' answer on them, so the next slider step usually finds both ready. A newer request replaces the
    jobs not yet started (only the neighbours of the latest film matter)."""

    def __init__(self):
        self.lock, self.wake = threading.Lock(), threading.Event()
        self.jobs: list[Callable[[], Any]] = []
        self.thread: threading.Thread | None = None

    def want(self, jobs: list[Callable[[], Any]]) -> None:
        with self.lock:
            self.jobs = list(jobs)
            if self.thread is None:
                self.thread = threading.Thread(target=self._run, name="cervicurve-teach-prefetch", daemon=True)
                self.thread.start()
        self.wake.set()

    def _run(self) -> None:
        while True:
            self.wake.wait()
            with self.lock:
                self.wake.clear()
                job = self.jobs.pop(0) if self.jobs else None
                if self.jobs:
                    self.wake.set()
            if job is None:
                continue
            try:
                job()
            except Exception:  # a prefetch is only a guess; the redraw itself reports any real problem
                traceback.print_exc(file=sys.stderr)


_prefetcher = _Prefetcher()


def _seed_for(*keys: int) -> int:
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(1)[0] >> 1)


@functools.lru_cache(maxsize=256)
def patient_for(seed: int, c7_hidden: bool) -> int:
    """The first patient of the seed's sequence whose shoulders hide C7 (or leave it clear), as asked.

    Whether the shoulders cover C7 is the phantom's own anatomy (about a third of patients); it is checked on a
    small film at a reference angle, so the patient stays the same while the angle moves."""
    for attempt in range(_PATIENT_TRIES):
        patient = _seed_for(seed, attempt, 0x7EAC)
        if generate_case(seed, size=64, cobb_c2c7=_REFERENCE_ANGLE, patient_seed=patient).c7_hidden == c7_hidden:
            return patient
    raise TeachingError(f"no patient for seed {seed} with C7 {'hidden' if c7_hidden else 'visible'} "
                        f"in {_PATIENT_TRIES} tries; pick another seed")


_phantoms = _Recent(48)  # a 512 px phantom is ~0.3 MB


def _phantom(seed: int, patient: int, cobb_c2c7: float, facing: str, size: int) -> PhantomCase:
    return _phantoms.get((seed, patient, cobb_c2c7, facing, size),
                         lambda: _aimed_phantom(seed, patient, cobb_c2c7, facing, size))


def _aimed_phantom(seed: int, patient: int, cobb_c2c7: float, facing: str, size: int) -> PhantomCase:
    """The phantom whose landmarks measure ``cobb_c2c7``: the generator lands within ~0.003° of its aim, which at
    a threshold (10° exactly) would fall on the wrong side, so the aim is corrected on the cheap geometry and
    nudged a millionth of a degree away from zero (thresholds are inclusive on the side away from zero)."""
    aim = cobb_c2c7
    for _ in range(4):  # each step shrinks the error about a hundredfold
        landmarks, _, _, drawn_facing = case_landmarks(seed, size=size, cobb_c2c7=aim, facing=facing,
                                                       patient_seed=patient)
        error = measure_landmarks(landmarks, facing=drawn_facing).cobb_c2c7 - cobb_c2c7
        if abs(error) < 1e-8:
            break
        aim -= error
    return generate_case(seed, size=size, cobb_c2c7=aim + math.copysign(1e-6, cobb_c2c7), facing=facing,
                         patient_seed=patient)


def expose_film(pixels: np.ndarray, exposure_stops: float, noise: float, seed: int) -> np.ndarray:
    """Exposure as a film curve (each stop over darkens the mid-tones, each stop under lightens them) and extra
    quantum-like noise (standard deviation ``noise`` on the [0, 1] scale, seeded)."""
    film = np.asarray(pixels, dtype=np.float32) / np.float32(np.iinfo(pixels.dtype).max if pixels.dtype.kind == "u" else 1)
    if exposure_stops:
        film = film ** np.float32(2.0 ** (0.5 * exposure_stops))
    if noise:
        rng = np.random.default_rng([int(seed), 0x401])
        film = film + np.float32(noise) * rng.standard_normal(film.shape, dtype=np.float32)
    return np.clip(film, 0.0, 1.0)


def phantom_film(film_settings: FilmSettings, thresholds: RuleThresholds | None = None) -> Film:
    """The Explore film for these settings, with its ground truth."""
    s = film_settings.checked()
    thresholds = thresholds or RuleThresholds.from_env()
    case = _phantom(s.seed, patient_for(s.seed, s.c7_hidden), round(s.cobb_c2c7, 3), s.facing, s.size)
    truth = measure_landmarks(case.landmarks, facing=case.facing, pixel_spacing_mm=case.pixel_spacing_mm,
                              thresholds=thresholds)
    notes = []
    if case.c7_hidden != s.c7_hidden:  # the patient was chosen at the reference angle; this angle moved C7
        notes.append(f"at this angle the shoulders {'cover' if case.c7_hidden else 'clear'} C7")
    return Film(name=f"phantom seed {s.seed}, {s.cobb_c2c7:+g}°", key=("phantom", s),
                pixels=expose_film(case.image, s.exposure_stops, s.noise, s.seed), landmarks=case.landmarks,
                facing=case.facing, truth=truth, truth_class=truth.rule_class,
                pixel_spacing_mm=case.pixel_spacing_mm, c7_hidden=case.c7_hidden, notes=notes)


def dataset_film(image_id: int, store=None) -> Film:
    """An image of the annotation store with its current label (class, landmarks) as the truth."""
    from core.data.store import AnnotationStore

    store = store or AnnotationStore()
    labeled = {item.image_id: item for item in store.current_labels()}
    try:
        image = labeled[int(image_id)]
    except (KeyError, TypeError, ValueError):
        raise TeachingError(f"no film {image_id!r} in this workspace") from None
    radiograph = read_image(settings.home() / image.path)
    film = Film(name=Path(image.path).name, pixels=radiograph.pixels, key=("image", image.image_id, image.sha256),
                truth_class=image.curvature_class, notes=list(radiograph.notes),
                pixel_spacing_mm=None if radiograph.pixel_spacing_mm is None else float(np.mean(radiograph.pixel_spacing_mm)))
    if image.landmarks is not None:
        try:
            film.truth = measure_landmarks(image.landmarks, pixel_spacing_mm=radiograph.pixel_spacing_mm)
            film.landmarks, film.facing = image.landmarks, film.truth.facing
        except LandmarkError as error:
            film.notes.append(f"no true angle: {error}")
    else:
        film.notes.append("this film has no landmarks, so there is no true angle")
    return film


# ------------------------------------------------------------------------------------ geometry


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


# ------------------------------------------------------------------------------------ pictures


def _rgb(pixels: np.ndarray) -> Image.Image:
    return Image.fromarray(np.round(np.clip(pixels, 0, 1) * 255).astype(np.uint8)).convert("RGB")


def _extended(a: np.ndarray, b: np.ndarray, reach: float) -> list[tuple[float, float]]:
    d = (b - a) / max(float(np.hypot(*(b - a))), 1e-9)
    return [tuple(a - d * reach), tuple(b + d * reach)]


def _endplate_lines(draw: ImageDraw.ImageDraw, corners: np.ndarray, colour, width: int, reach: float) -> None:
    for a, b in ((corners[0], corners[1]), (corners[2], corners[3])):
        draw.line(_extended(a, b, reach), fill=colour, width=width)


def draw_exploration(film: Film, cons: Construction | None, layers: Sequence[str],
                     model_landmarks: np.ndarray | None = None) -> Image.Image:
    """The film with the layers asked for (``LAYERS``) drawn over it."""
    image = _rgb(film.pixels)
    draw = ImageDraw.Draw(image)
    k = max(1.0, max(image.size) / 512)
    width, font = max(1, round(2 * k)), report._font(round(13 * k))
    if cons is not None and "cobb" in layers:
        _endplate_lines(draw, cons.endplates, COBB_COLOUR, width, 0.8 * float(np.hypot(*(cons.endplates[1] - cons.endplates[0]))))
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
        _endplate_lines(draw, truth_endplates(model_landmarks), MODEL_COLOUR, max(1, width - 1), 10 * k)
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


# ------------------------------------------------------------------------------------ the models' answer


@dataclass
class ModelAnswer:
    """The models' answer on a film, as Predict gives it: one verdict (``pipeline.verdict_of``) decides the class
    shown, whether the angle and the models' landmarks are shown, and whether the heatmap is evidence."""

    prediction: pipeline.Prediction
    provenance: str
    agrees_with_rule: bool | None  # the verdict's class == the film's true class (None: no truth, or not judged)

    @property
    def verdict(self) -> pipeline.Verdict:
        return self.prediction.verdict

    @property
    def curvature_class(self) -> str | None:
        """The class the verdict gives (the network's, or its measured angle's); None: not judged."""
        return self.verdict.curvature_class

    @property
    def cobb_c2c7(self) -> float | None:
        """The models' own angle, where the verdict shows it (never a withheld one)."""
        m = self.prediction.measurements
        return None if m is None or not self.verdict.angle_shown else m.cobb_c2c7

    @property
    def landmarks(self) -> np.ndarray | None:
        """The models' 23 points, where the verdict shows the angle they give."""
        return self.prediction.landmarks if self.verdict.angle_shown else None

    @property
    def angle_missing(self) -> str | None:
        """Why there is no model angle, one sentence in plain words (None when there is one)."""
        if self.cobb_c2c7 is not None:
            return None
        if self.prediction.measurements is not None:  # measured, but the verdict withholds it
            return self.verdict.angle_note or "The models' angle is withheld on this film."
        why = self.prediction.angle_missing or "no landmark model, or no usable vertebrae"
        return f"The models give no angle of their own: {why.rstrip('.')}."

    @functools.cached_property
    def heatmap(self) -> Image.Image | None:
        """The Grad-CAM picture where it explains the class the verdict gives (as on Predict), drawn once per answer
        (a revisited angle reuses it); None for a film the models do not judge by the network's class."""
        return report.pictures(self.prediction, evidence_only=True)[1]


_answers = _Recent(48)  # a prediction holds the film and its map: ~2.5 MB at 512 px, ~120 MB in all


def predictor_for(runs: Sequence[str | None] = (None, None, None)) -> tuple[pipeline.Predictor | None, str | None]:
    """The models (promoted, or the runs chosen), or None and the reason there are none."""
    try:
        return pipeline.Predictor(*runs), None
    except pipeline.ModelMissing as missing:
        return None, str(missing)


def model_answer(film: Film, predictor: pipeline.Predictor) -> ModelAnswer:
    files = tuple(models.model_key(kind, path) if path else None for kind, path in
                  zip(models.KINDS, (predictor.classifier_path, predictor.detector_path, predictor.landmarks_path)))

    def run() -> ModelAnswer:
        prediction = predictor.predict(film.radiograph(), name=film.name)
        given = prediction.verdict.curvature_class
        agrees = None if film.truth_class is None or given is None else given == film.truth_class
        return ModelAnswer(prediction, report.provenance(predictor), agrees)

    return _answers.get((film.key, files), run)


# ------------------------------------------------------------------------------------ Explore


@dataclass
class Exploration:
    settings: FilmSettings
    film: Film
    construction: Construction
    thresholds: RuleThresholds
    picture: Image.Image
    model: ModelAnswer | None
    model_missing: str | None  # why there is no model answer
    heatmap: Image.Image | None
    timings_ms: dict[str, float]

    @property
    def redraw_ms(self) -> float:
        return float(sum(self.timings_ms.values()))


def explore(film_settings: FilmSettings, layers: Sequence[str] = LAYERS,
            runs: Sequence[str | None] = (None, None, None), prefetch: bool = True) -> Exploration:
    """One Explore redraw: the film, its measurements and construction, the models' answer and the pictures.

    ``prefetch``: then make the films one degree either side (and the models' answer on them) in the background."""
    unknown = [layer for layer in layers if layer not in LAYERS]
    if unknown:
        raise TeachingError(f"unknown layer {', '.join(unknown)}; choose from {', '.join(LAYERS)}")
    timings, clock = {}, time.perf_counter()

    def lap(stage: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        timings[stage] = round((now - clock) * 1000.0, 1)
        clock = now

    thresholds = RuleThresholds.from_env()
    film = phantom_film(film_settings, thresholds)
    cons = construction(film.landmarks, film.facing, film.truth, film.pixels.shape[0])
    lap("film")
    predictor, missing = predictor_for(runs)
    answer = None if predictor is None else model_answer(film, predictor)
    lap("model")
    model_points = None if answer is None else answer.landmarks
    picture = draw_exploration(film, cons, layers, model_points)
    heatmap = None if answer is None else answer.heatmap
    lap("drawing")
    if prefetch:
        _prefetcher.want([functools.partial(_prepare, neighbour, thresholds, predictor)
                          for neighbour in _neighbours(film_settings.checked())])
    return Exploration(film_settings.checked(), film, cons, thresholds, picture, answer, missing, heatmap, timings)


def _neighbours(film_settings: FilmSettings) -> list[FilmSettings]:
    low, high = ANGLE_RANGE_DEG
    return [replace(film_settings, cobb_c2c7=angle) for angle in
            (film_settings.cobb_c2c7 - 1, film_settings.cobb_c2c7 + 1) if low <= angle <= high]


def _prepare(film_settings: FilmSettings, thresholds: RuleThresholds, predictor: pipeline.Predictor | None) -> None:
    film = phantom_film(film_settings, thresholds)
    if predictor is not None:
        model_answer(film, predictor).heatmap


# ------------------------------------------------------------------------------------ Measure it yourself


@dataclass
class Attempt:
    student_cobb: float
    truth_cobb: float | None
    model_cobb: float | None
    model_missing: str | None  # why there is no model angle
    picture: Image.Image

    @property
    def error_deg(self) -> float | None:
        return None if self.truth_cobb is None else self.student_cobb - self.truth_cobb


def measure_attempt(film: Film, points, facing: str | None = None,
                    runs: Sequence[str | None] = (None, None, None)) -> Attempt:
    """A student's four endplate corners (film pixels) against the truth and the models, with all three drawn."""
    facing = facing or film.facing
    if facing is None:
        raise TeachingError("this film has no landmarks to tell which way the patient faces: choose it")
    student = np.asarray(points, dtype=float).reshape(-1, 2) if len(points) else np.empty((0, 2))
    if len(student) != 4:
        raise TeachingError(f"place four points (two on the C2 inferior endplate, then two on C7's); "
                            f"{len(student)} placed")
    student_cobb = endplate_cobb(student, facing)
    predictor, missing = predictor_for(runs)
    model_cobb = model_points = None
    if predictor is not None:
        answer = model_answer(film, predictor)
        model_points, model_cobb = answer.landmarks, answer.cobb_c2c7
        if predictor.landmark_model is None:
            missing = "no landmark model is promoted, so the models give no angle"
        elif model_cobb is None:
            missing = answer.angle_missing
            model_points = None
    image = _rgb(film.pixels)
    draw = ImageDraw.Draw(image)
    k = max(1.0, max(image.size) / 512)
    width = max(1, round(2 * k))
    if film.landmarks is not None:
        _endplate_lines(draw, truth_endplates(film.landmarks), TRUTH_COLOUR, width, 14 * k)
    if model_points is not None:
        _endplate_lines(draw, truth_endplates(model_points), MODEL_COLOUR, width, 14 * k)
    _endplate_lines(draw, student, STUDENT_COLOUR, width, 14 * k)
    r = 3 * k
    for x, y in student:
        draw.ellipse([x - r, y - r, x + r, y + r], outline=STUDENT_COLOUR, width=width)
    truth = None if film.truth is None else film.truth.cobb_c2c7
    return Attempt(student_cobb, truth, model_cobb, missing, image)


# ------------------------------------------------------------------------------------ quizzes


@functools.lru_cache(maxsize=4)
def quiz_store(url: str) -> quizzes.QuizStore:
    return quizzes.QuizStore(url)


def _store() -> quizzes.QuizStore:
    return quiz_store(settings.db_url())


def create_quiz(*, title: str, teacher: str, films: int, seed: int = 0, dataset: str | None = None,
                show_angle: bool = False, with_model: bool = True,
                runs: Sequence[str | None] = (None, None, None), actor=None) -> quizzes.Quiz:
    """A quiz of ``films`` phantoms of ``seed`` (or labeled images of ``dataset``); each film carries the models'
    answer when a classifier is promoted. ``actor``: the session token (team mode: a reviewer's or an admin's)."""
    from core.data.store import AnnotationStore

    teacher = _store().teacher_for(actor, teacher)  # before the films are drawn
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**31:
        raise TeachingError(f"the quiz seed must be a whole number from 0 to {2**31 - 1}, not {seed!r}")
    if dataset:
        source, items = "dataset", quizzes.dataset_items(films, seed, dataset, AnnotationStore())
    else:
        source, items = "phantom", quizzes.phantom_items(films, seed)
    draft = quizzes.Quiz(0, title, teacher, None, source, seed, dataset, show_angle, quizzes.FILM_SIZE, tuple(items))
    predictor = predictor_for(runs)[0] if with_model else None
    if predictor is not None:
        answered = []
        for item in items:
            film = Film(name=f"film {item.position}", pixels=_as_float(quizzes.film_pixels(draft, item)),
                        key=("quiz-item", source, item.phantom_seed, item.image_id))
            prediction = predictor.predict(film.radiograph(), name=film.name, cam_method=None)
            verdict = prediction.verdict  # the class Predict would give: None for a film it does not judge
            m = prediction.measurements
            cobb = None if m is None or not verdict.angle_shown else m.cobb_c2c7
            answered.append(item.with_model(verdict.curvature_class, prediction.probabilities, cobb,
                                            predictor.model_name))
        items = answered
    # single-user mode: the key that makes its holder this quiz's teacher on a shared page (team mode: the role)
    key = None if _store().team_mode() else quizzes.new_teacher_key()
    quiz_id = _store().create(title=title, teacher=teacher, source=source, seed=seed, items=items, dataset=dataset,
                              show_angle=show_angle, actor=actor, teacher_key=key)
    return replace(_store().quiz(quiz_id), teacher_key=key)


def model_said(item: quizzes.QuizItem) -> str:
    """The models' answer frozen into a quiz film, in words: its class, "not judged", or "no model answer"."""
    if item.model_class:
        return item.model_class
    return "not judged" if item.model_name else "no model answer"


def _as_float(pixels: np.ndarray) -> np.ndarray:
    if pixels.dtype.kind == "u":
        return pixels.astype(np.float32) / np.float32(np.iinfo(pixels.dtype).max)
    return np.asarray(pixels, dtype=np.float32)


def list_quizzes() -> list[quizzes.Quiz]:
    return _store().quizzes()


def quiz(quiz_id: int) -> quizzes.Quiz:
    return _store().quiz(quiz_id)


@functools.lru_cache(maxsize=64)
def _quiz_film(quiz_id: int, position: int, source: str, phantom_seed, image_path, truth_class: str,
               film_size: int) -> np.ndarray:
    draft = quizzes.Quiz(quiz_id, "", "", None, source, 0, None, False, film_size)
    item = quizzes.QuizItem(position=position, truth_class=truth_class, phantom_seed=phantom_seed, image_path=image_path)
    return _as_float(quizzes.film_pixels(draft, item))


def quiz_films(the_quiz: quizzes.Quiz) -> list[np.ndarray]:
    """Every film of a quiz, in order (phantoms are redrawn once per process)."""
    return [_quiz_film(the_quiz.quiz_id, item.position, the_quiz.source, item.phantom_seed, item.image_path,
                       item.truth_class, the_quiz.film_size) for item in the_quiz.items]


def submit_answers(quiz_id: int, student: str | None, answers: Mapping[int, str],
                   actor=None) -> quizzes.StudentResult:
    """Store a student's answers and return their score, confusion matrix and missed films (team mode: the
    signed-in user's, ``actor`` being the session token)."""
    _store().answer(quiz_id, student, answers, actor=actor)
    return _store().results(quiz_id).student(_store().student_for(actor, student))


def quiz_results(quiz_id: int) -> quizzes.QuizResults:
    """Everyone's answers, unchecked: the shell and the engine's own use. A page asks :func:`class_results`."""
    return _store().results(quiz_id)


def class_results(quiz_id: int, actor=None, teacher_key: str | None = None) -> quizzes.QuizResults:
    """What the page's viewer may see of a quiz's answers (``QuizStore.results_for``): everyone's for its teacher
    (team mode: a reviewer or an admin; single-user mode: whoever gives the quiz's teacher key), else their own."""
    return _store().results_for(quiz_id, actor=actor, teacher_key=teacher_key)


def new_teacher_key(quiz_id: int, actor=None) -> str:
    """A new teacher key for a quiz, from the shell only (``python -m core quiz key N``)."""
    return _store().issue_teacher_key(quiz_id, actor=actor)

