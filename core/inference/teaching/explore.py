"""The models' answer on a film (cached per film and model files), one Explore redraw (film, construction,
models' answer, pictures, timings, then the neighbouring angles prefetched) and a "Measure it yourself" attempt
(a student's four points against the truth and the models)."""
from __future__ import annotations

import functools
import time
from dataclasses import dataclass, replace
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw

from core.data.measure import RuleThresholds
from core.inference import models, pipeline, report
from core.inference.verdict import Verdict
from core.inference.teaching.drawing import (
    LAYERS,
    MODEL_COLOUR,
    STUDENT_COLOUR,
    TRUTH_COLOUR,
    endplate_lines,
    rgb,
    draw_exploration,
)
from core.inference.teaching.films import (
    ANGLE_RANGE_DEG,
    Film,
    FilmSettings,
    TeachingError,
    Prefetcher,
    Recent,
    phantom_film,
)
from core.inference.teaching.geometry import Construction, construction, endplate_cobb, truth_endplates


# ------------------------------------------------------------------------------------ the models' answer


@dataclass
class ModelAnswer:
    """The models' answer on a film, as Predict gives it: one verdict (``verdict.verdict_of``) decides the class
    shown, whether the angle and the models' landmarks are shown, and whether the heatmap is evidence."""

    prediction: pipeline.Prediction
    provenance: str
    agrees_with_rule: bool | None  # the verdict's class == the film's true class (None: no truth, or not judged)

    @property
    def verdict(self) -> Verdict:
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


_answers = Recent(48)  # a prediction holds the film and its map: ~2.5 MB at 512 px, ~120 MB in all


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


_prefetcher = Prefetcher()


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
    image = rgb(film.pixels)
    draw = ImageDraw.Draw(image)
    k = max(1.0, max(image.size) / 512)
    width = max(1, round(2 * k))
    if film.landmarks is not None:
        endplate_lines(draw, truth_endplates(film.landmarks), TRUTH_COLOUR, width, 14 * k)
    if model_points is not None:
        endplate_lines(draw, truth_endplates(model_points), MODEL_COLOUR, width, 14 * k)
    endplate_lines(draw, student, STUDENT_COLOUR, width, 14 * k)
    r = 3 * k
    for x, y in student:
        draw.ellipse([x - r, y - r, x + r, y + r], outline=STUDENT_COLOUR, width=width)
    truth = None if film.truth is None else film.truth.cobb_c2c7
    return Attempt(student_cobb, truth, model_cobb, missing, image)
