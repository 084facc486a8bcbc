"""What the stages of a prediction (``core.inference.pipeline.Predictor.predict``) hand on to each other.

Each stage takes and returns these values, never shared mutable state: read -> :class:`Film`; detect -> :class:`Roi`;
landmarks -> :class:`Landmarks` (and the :class:`Roi` they confirm or frame); crop -> :class:`Crop`; classify ->
:class:`ClassScores`; then the out-of-distribution score and the :class:`Judgement` that the result is made of.
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Any, Iterable, Iterator

import numpy as np

from core.data.imaging import Radiograph
from core.data.measure import Facing, Measurements


@dataclass(frozen=True)
class Film:
    """A radiograph that decoded and can be a film, with the name its result carries."""

    radiograph: Radiograph
    name: str

    @property
    def pixels(self) -> np.ndarray:
        return self.radiograph.pixels

    @property
    def size(self) -> tuple[int, int]:
        """(width, height)"""
        height, width = self.radiograph.pixels.shape
        return width, height

    @property
    def whole_box(self) -> list[float]:
        width, height = self.size
        return [0.0, 0.0, float(width), float(height)]


@dataclass(frozen=True)
class Roi:
    """Where the cervical spine is: the box, where it came from and how sure the detector was of it."""

    box: list[float] | None = None     # [x1, y1, x2, y2] in original pixels; None: no box, the whole image is read
    source: str = "whole image"        # pipeline.BOX_SOURCES
    confidence: float | None = None    # the detector's score; None unless source == "detector"
    provisional: bool = False          # a detector box scored under the threshold: it waits for the landmarks
    detector_missed: bool = False      # the setup's detector found nothing at all
    unconfirmed: float | None = None   # the score of a provisional box the landmarks did not confirm (dropped)


LANDMARK_OUTCOMES = ("no model", "no box", "none found", "placed", "unconfirmed")


@dataclass(frozen=True)
class Landmarks:
    """What the landmark model placed on the film, and the angle measured from it."""

    outcome: str                               # LANDMARK_OUTCOMES
    placed: np.ndarray | None = None           # (23, 2) every point placed, unsure ones too (they still frame a box)
    confidence: np.ndarray | None = None       # (23,) each point's confidence
    points: np.ndarray | None = None           # (23, 2) the sure points, nan for the unsure; None: under 3 points
    missing: tuple[str, ...] = ()              # names of the unsure points
    facing: Facing | None = None               # read beside the placed points; it sets the angle's sign
    measurements: Measurements | None = None
    unmeasured: str | None = None              # why the points found gave no angle (too few, or implausible)
    no_angle: str | None = None                # why there is no angle, in plain words (Prediction.angle_missing)

    def unconfirm(self) -> Landmarks:
        """These landmarks once the box they sit in is not confirmed: placed on whatever the box held, so nothing
        placed is kept. Why their points gave no angle (and the facing read from them) stays for the notes: it is
        why the box was not confirmed."""
        return Landmarks("unconfirmed", facing=self.facing, unmeasured=self.unmeasured,
                         no_angle="the detector found no cervical spine to place the landmarks on")


@dataclass(frozen=True)
class Crop:
    """What the classifier reads: the region of the film, cut and sized as its training run cut films."""

    region: list[float] | None   # the box the crop widens by ``margin``; None: the whole image (Prediction.crop_box)
    margin: float
    pixels: Any                  # torch.Tensor 1 x S x S in [0, 1], not normalised


@dataclass(frozen=True)
class ClassScores:
    """The network's answer on the crop."""

    curvature_class: str
    probabilities: dict[str, float]   # class -> temperature-calibrated probability
    crop_map: np.ndarray | None       # the class activation map on the crop; None: not asked for, or not possible
    no_cam: str | None                # why there is no map although one was asked for
    features: Any                     # penultimate features (1 x D) for the OOD score; None: no reference to compare


@dataclass(frozen=True)
class Judgement:
    """The network's class weighed against the film's oddness and the measured angle."""

    probabilities: dict[str, float]   # capped at 90 % on a film unlike the training films
    low_confidence: bool
    agreement: bool | None            # the network's class == the angle's rule class; None: no angle
    spine_found: bool | None          # None: no detector in the setup
    lead: str                         # verdict.LEADS
    evidence: str | None              # when class and angle disagree: which the evidence favours


class StageTimer:
    """Milliseconds per stage: ``with timer("detect"): ...``; a stage that did not run reads 0."""

    def __init__(self, stages: Iterable[str]):
        self.timings = {stage: 0.0 for stage in stages}

    @contextlib.contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        start = time.perf_counter()
        yield
        self.timings[stage] = round((time.perf_counter() - start) * 1000.0, 2)
