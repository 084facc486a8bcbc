"""One ``predict()`` for the Predict page and ``python -m core predict``.

Stages: read -> detect (ROI box) -> landmarks (23 points: the heatmap model of ``core.training.landmarks`` reads the
window around the detector's box; a YOLO-pose model reads the whole image or, when trained on ROI crops, the
same window) -> crop -> classify
(temperature-calibrated softmax) -> Grad-CAM. The crop is ``core.training.crops.classifier_crop`` with the
checkpoint's ``input_size`` and ``roi_margin`` and ``core.training.crops.normalise`` with its normalisation, so
inference sees exactly what training saw.

Models default to the promoted ones (``core.runs.promotion.promoted_model``). Without a classifier nothing can be
predicted (:class:`ModelMissing`). Without a detector box the ROI comes from the landmarks of a
whole-image landmark model, and failing that the whole image is classified and the result is flagged
low-confidence. Without a landmark model (or, for an ROI-crop one, without a box) there are no measurements.
Loaded models come from ``core.inference.models`` (one locked copy per process and file version), so page sessions
share them and a re-promoted model is picked up. With Grad-CAM asked for, one forward pass gives both the class
probabilities and the map.

Every result carries an out-of-distribution score (``core.evaluation.ood``): the classifier's penultimate features
(read in that same forward pass) and the crop's pixel statistics against the references its training run stored,
the landmark heatmaps' confidence and whether the detector found a spine. A flagged film is low-confidence, its probabilities are marked as not
calibrated for it and capped at 90 %. Landmarks fail soft: unsure points are dropped and named, and a film whose
C7 is hidden is measured from C2 to C6.

Every result has one :class:`~core.inference.verdict.Verdict` (``Prediction.verdict``, computed by
``core.inference.verdict.verdict_of`` from the result's own fields): the class it gives or "not judged", the
line every output leads with (page title, batch table, CSV, JSON, PNG report), why in plain words, what to do next, and whether the angle with its landmarks and the heatmap may be
shown as evidence. A film the detector finds no spine in gets no class at all, and a flagged film's angle is shown
only when its landmarks are all sure.
"""
from __future__ import annotations

import contextlib
import json
import sys
import threading
import traceback
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from core.evaluation import ood
from core.inference import models
from core.inference.models import ModelError
from core.inference.verdict import (NO_SPINE, SURE_LANDMARKS, UNLIKE, Verdict, choose_lead, describe_points,
                                    implausible, verdict_of, which_evidence)
from core.inference.stages import ClassScores, Crop, Film, Judgement, Landmarks, Roi, StageTimer
from core.runs import layout, promotion
from core.data.measure import Facing, read_facing
from core.data.imaging import ImageReadError, Radiograph, read_image, require_usable
from core.data.measure import (LandmarkError, Measurements, measure_landmarks,
                               roi_box_from_landmarks)

LOW_CONFIDENCE = 0.6  # top calibrated probability under this is flagged
DETECTION_THRESHOLD = 0.25  # detector / landmark model confidence below which nothing is found
CANDIDATE_FLOOR = 0.001  # a detector box under DETECTION_THRESHOLD but over this waits for the landmarks' verdict
FRAME_AGREEMENT_IOU = 0.5  # a landmark-implied box this far from the detector's is the landmarks' error, not the box's
STAGES = ("read", "detect", "landmarks", "crop", "classify", "cam")
BOX_SOURCES = ("detector", "landmarks", "whole image")


class ModelMissing(ModelError):
    """No classifier to predict with (nothing promoted, or the given path holds no checkpoint)."""


@dataclass
class Prediction:
    file: str
    curvature_class: str
    probabilities: dict[str, float]     # class -> calibrated probability
    roi_box: list[float]                # [x1, y1, x2, y2] in original pixels
    box_confidence: float | None        # detector confidence; None unless box_source == "detector"
    box_source: str                     # "detector" | "landmarks" | "whole image" (no box found: flagged)
    low_confidence: bool                # top probability < threshold, or the whole image was classified
    cam: np.ndarray | None              # H x W float32 in [0, 1], original coordinates; None if not asked/possible
    cam_method: str | None
    landmarks: np.ndarray | None        # (23, 2) original pixels
    measurements: Measurements | None
    agreement: bool | None              # network class == rule class from the landmarks' Cobb angle
    radiograph: Radiograph
    timings: dict[str, float]           # ms per stage (STAGES)
    notes: list[str] = field(default_factory=list)
    model: str = ""                     # classifier registry name
    ood_score: float | None = None      # core.evaluation.ood: over 1 = unlike the training films; None: not scored
    out_of_distribution: bool = False   # then low_confidence too, and probabilities capped at 90 %
    ood_components: dict[str, float] = field(default_factory=dict)
    ood_reasons: list[str] = field(default_factory=list)
    calibrated: bool = True             # False when flagged: the temperature was fitted on films unlike this one
    missing_landmarks: list[str] = field(default_factory=list)  # points the landmark model was unsure of
    evidence: str | None = None         # when class and angle disagree: which one the evidence favours, and why
    crop_box: list[float] | None = None  # what the classifier read: the landmarks' box when all points are sure,
                                         # else roi_box; None for the whole image
    facing: Facing | None = None        # which way the patient faces, and how that was known (with landmarks)
    lead: str = "network"               # what the result leads with (LEADS): the network's class; on a film unlike
                                        # the training films the measured angle when its landmarks are sure, or
                                        # nothing ("none": these models cannot judge this film)
    spine_found: bool | None = None     # did the detector find a cervical spine; None: no detector in the setup
    angle_missing: str | None = None    # when there are no measurements: why, in plain words

    @property
    def verdict(self) -> Verdict:
        """The one result every output carries (see :func:`verdict_of`)."""
        return verdict_of(self)

    @property
    def headline(self) -> str:
        """One line for a title, a table row or a report: the verdict's title."""
        return self.verdict.title

    @property
    def confidence(self) -> float:
        return float(max(self.probabilities.values()))

    def to_json(self, cam_path: str | Path | None = None) -> dict:
        """The ``predict --json`` object (README, "Command line"). ``class`` and ``probabilities`` are the network's own answer;
        ``verdict`` is the result (``verdict.class`` None: not judged), the same as the page, table and report."""
        verdict = self.verdict
        measurements = None
        if self.measurements is not None:
            measurements = self.measurements.as_dict()
            measurements["agrees_with_class"] = self.agreement
            measurements["withheld"] = not verdict.angle_shown  # not shown anywhere: not sure enough to rest on
        return {
            "file": self.file,
            "class": self.curvature_class,
            "probabilities": {k: round(float(v), 4) for k, v in self.probabilities.items()},
            "box": [round(float(v), 1) for v in self.roi_box],
            "box_confidence": None if self.box_confidence is None else round(float(self.box_confidence), 4),
            "low_confidence": bool(self.low_confidence),
            "measurements": measurements,
            "cam": None if cam_path is None else str(cam_path),
            "ood_score": self.ood_score,
            "out_of_distribution": bool(self.out_of_distribution),
            "ood_components": dict(self.ood_components),
            "ood_reasons": list(self.ood_reasons),
            "probabilities_calibrated": bool(self.calibrated),
            "missing_landmarks": list(self.missing_landmarks),
            "evidence": self.evidence,
            "facing": None if self.facing is None else {"side": self.facing.facing, "source": self.facing.source,
                                                        "score": self.facing.score},
            "lead": self.lead,
            "headline": verdict.title,
            "verdict": verdict.to_json(),
        }


@dataclass
class PredictFailure:
    """One file of a batch that could not be predicted; the batch goes on."""

    file: str
    reason: str

    def to_json(self) -> dict:
        return {"file": self.file, "error": self.reason}


# ------------------------------------------------------------------------------------ model files
def checkpoint_path(value: str | Path, what: str = "classifier") -> Path:
    """A checkpoint file from a .pt path, a run or promoted folder, or a run id."""
    path = Path(value).expanduser()
    if path.is_file():
        return path
    candidates = [path] if path.is_dir() else []
    try:
        candidates.append(layout.resolve_run(value))
    except layout.JobError:
        pass
    for folder in candidates:
        if (folder / "best.pt").is_file():
            return folder / "best.pt"
    where = "a folder without best.pt" if candidates else "no such file, folder or run id"
    raise ModelMissing(f"{what} {value}: {where}")


_NO_CLASSIFIER = ("no classifier to predict with: nothing is promoted in this workspace. Run `python -m core demo` "
                  "to build demo models on synthetic phantoms, or train one (`python -m core train --config ...`) "
                  "and promote it (`python -m core promote RUN`), or pass --model RUN_OR_CHECKPOINT.")


# ------------------------------------------------------------------------------------ stages without a model
def read_film(source: Any, name: str | None) -> Film:
    """A path, bytes, a binary file object or an already read Radiograph, as a film to predict on."""
    if isinstance(source, Radiograph):
        return Film(source, name or str(source.meta.get("name", "image")))
    # a file that decodes but cannot be a film (1 x 1, blank, a colour DICOM) is refused, not classified
    radiograph = require_usable(read_image(source, name=name), name or "the image")
    return Film(radiograph, name or (str(source) if isinstance(source, (str, Path)) else "the uploaded data"))


def confirm_box(roi: Roi, landmarks: Landmarks) -> tuple[Roi, Landmarks]:
    """A provisional detector box counts only when the landmarks placed in it give an angle and are sure; otherwise
    the detector found no spine, and the landmarks, placed on whatever the box held, are dropped."""
    if roi.provisional and (landmarks.measurements is None
                            or float(np.mean(landmarks.confidence)) < SURE_LANDMARKS):
        return Roi(unconfirmed=roi.confidence), landmarks.unconfirm()
    return roi, landmarks


def frame_from_landmarks(roi: Roi, landmarks: Landmarks, film: Film) -> Roi:
    """Without a box, the one the sure landmarks of a whole-image landmark model frame."""
    if roi.box is not None or landmarks.points is None:
        return roi
    try:
        return replace(roi, box=roi_box_from_landmarks(landmarks.points, film.size), source="landmarks")
    except LandmarkError:
        return roi


def _landmark_notes(landmarks: Landmarks) -> list[str]:
    notes = []
    if landmarks.outcome == "no box":
        notes.append("the landmark model reads the detector's crop and there is no box: no measurements")
    elif landmarks.outcome == "none found":
        notes.append("the landmark model found no vertebrae: no measurements")
    elif landmarks.outcome == "placed" and landmarks.missing:
        notes.append(f"the landmark model was unsure of {describe_points(landmarks.missing)}: those points are "
                     "left out")
    if landmarks.facing is not None and landmarks.facing.source == "lean":
        notes.append(f"the patient {landmarks.facing.describe()}")
    if landmarks.unmeasured is not None:
        notes.append(f"no measurements: {landmarks.unmeasured}")
    return notes


def place_cam(scores: ClassScores, crop: Crop, film: Film) -> np.ndarray | None:
    """The class activation map on the film, in original pixels."""
    if scores.crop_map is None:
        return None
    from core.training import crops
    from core.inference import explain

    width, height = film.size
    return explain.cam_to_image(scores.crop_map, crops.crop_box(crop.region, film.size, crop.margin), (height, width))


# ------------------------------------------------------------------------------------ predictor
class Predictor:
    """The models of one prediction setup. Paths default to the promoted models of the workspace.

    ``detector=False`` / ``landmarks=False`` switch a stage off even when a model is promoted.
    ``threshold``: top probability under which a result is low-confidence; ``detection_threshold``: the
    confidence a box (or the landmark set) needs to count as found.
    """

    def __init__(self, classifier: str | Path | None = None, detector: str | Path | bool | None = None,
                 landmarks: str | Path | bool | None = None, threshold: float = LOW_CONFIDENCE,
                 detection_threshold: float = DETECTION_THRESHOLD):
        if classifier is None:
            promoted = promotion.promoted_model("classify")
            if promoted is None:
                raise ModelMissing(_NO_CLASSIFIER)
            classifier = promoted
        self.classifier_path = checkpoint_path(classifier, "classifier")
        self.model, self.meta = models.load("classify", self.classifier_path)
        self.threshold = float(threshold)
        self.detection_threshold = float(detection_threshold)
        self.detector_path = self._optional("detect", detector)
        self.landmarks_path = self._optional("landmarks", landmarks)
        self.detector = models.load("detect", self.detector_path) if self.detector_path else None
        self.landmark_model = models.load("landmarks", self.landmarks_path) if self.landmarks_path else None
        self.classes = tuple(self.meta["classes"])
        self.quality = self._quality()
        self.ood_reference = ood.FeatureReference.from_meta(self.meta.get("ood_reference"))
        self.image_reference = ood.FeatureReference.from_meta(self.meta.get("ood_image_reference"))

    @staticmethod
    def _optional(task: str, value) -> Path | None:
        if value is False:
            return None
        if value is None or value is True:
            return promotion.promoted_model(task)
        return checkpoint_path(value, {"detect": "detector", "landmarks": "landmark model"}[task])

    def _quality(self) -> str | None:
        """``demo_quality`` of the promoted classifier ("quick", "full", ...), None for a trained model."""
        info_path = self.classifier_path.parent / promotion.PROMOTED_FILE
        try:
            return json.loads(info_path.read_text(encoding="utf-8")).get("demo_quality")
        except (OSError, ValueError):
            return None

    @property
    def model_name(self) -> str:
        return str(self.meta.get("model", ""))

    def predict(self, source: Any, name: str | None = None, cam_method: str | None = "gradcam",
                facing: str | None = None) -> Prediction:
        """Predict one radiograph: a path, bytes, a binary file object or an already read Radiograph.

        ``facing`` ("left"/"right"): the side the patient faces, when the user knows it; otherwise it is read from
        the film beside the vertebral bodies (``core.data.measure.read_facing``), and only failing that from the
        neck's lean."""
        timer = StageTimer(STAGES)
        with timer("read"):
            film = read_film(source, name)
        with timer("detect"):
            roi = self.find_spine(film)
        with timer("landmarks"):
            landmarks = self.place_landmarks(film, roi, facing)
            roi, landmarks = confirm_box(roi, landmarks)
            roi = frame_from_landmarks(roi, landmarks, film)
        with timer("crop"):
            crop = self.crop(film, roi, landmarks)
        with timer("classify"):
            scores = self.classify(crop, cam_method)
        with timer("cam"):
            cam = place_cam(scores, crop, film)
        unlike = self.assess(crop, scores, landmarks, roi)
        judgement = self.judge(roi, landmarks, scores, unlike)
        measured = landmarks.measurements is not None
        return Prediction(
            file=film.name, curvature_class=scores.curvature_class, probabilities=judgement.probabilities,
            roi_box=roi.box if roi.box is not None else film.whole_box, box_confidence=roi.confidence,
            box_source=roi.source, low_confidence=judgement.low_confidence, cam=cam,
            cam_method=cam_method if cam is not None else None, landmarks=landmarks.points,
            measurements=landmarks.measurements, agreement=judgement.agreement, radiograph=film.radiograph,
            timings=timer.timings, notes=self.notes(film, roi, landmarks, scores), model=self.model_name,
            ood_score=unlike.score, out_of_distribution=unlike.flagged, ood_components=unlike.components,
            ood_reasons=unlike.reasons, calibrated=not unlike.flagged, missing_landmarks=list(landmarks.missing),
            evidence=judgement.evidence, crop_box=crop.region, facing=landmarks.facing if measured else None,
            lead=judgement.lead, spine_found=judgement.spine_found, angle_missing=None if measured else landmarks.no_angle,
        )

    # -------------------------------------------------------------------------------- the stages
    def find_spine(self, film: Film) -> Roi:
        """The detector's box around the cervical spine.

        A lateral film holds one cervical spine, so the detector's best box is a candidate even at a low score:
        a detector trained briefly often places it well but scores it low (full demo: 5 of 60 held-out films
        at 0.007-0.19, IoU 0.75-0.88). With a landmark model to confirm it, such a box is provisional and counts only
        when the landmarks in it are sure (:func:`confirm_box`); without one, the threshold alone decides."""
        if self.detector is None:
            return Roi()
        confirmable = self.landmark_model is not None and self.landmark_model.needs_box
        found = self.detector.detect(film.pixels, CANDIDATE_FLOOR if confirmable else self.detection_threshold)
        if found is None:
            return Roi(detector_missed=True)
        confidence = float(found[1])
        return Roi(_clip_box(found[0], *film.size), "detector", confidence,
                   provisional=confidence < self.detection_threshold)

    def place_landmarks(self, film: Film, roi: Roi, facing: str | None) -> Landmarks:
        """The 23 points, fail soft (unsure ones dropped and named), the facing and the angle measured from them."""
        if self.landmark_model is None:
            return Landmarks("no model", no_angle="no landmark model is in use")
        if self.landmark_model.needs_box and roi.source != "detector":
            return Landmarks("no box", no_angle="the landmark model reads the area the detector finds, and it found none"
                             if self.detector is not None else
                             "the landmark model needs a detector's box, and no detector is in use")
        from core.training.landmarks import visible_points

        # every point with its confidence (threshold 0), then only the unsure ones dropped: fail soft
        found = self.landmark_model.locate(film.pixels, roi.box, 0.0)
        if found is None:
            return Landmarks("none found", no_angle="the landmark model found no vertebrae")
        placed, confidence = found[0], np.asarray(found[1], dtype=np.float64)
        points, missing = visible_points(placed, confidence, self.detection_threshold)
        if np.all(np.isfinite(points), axis=1).sum() < 3:
            return Landmarks("none found", placed, confidence, missing=tuple(missing),
                             no_angle="the landmark model found no vertebrae")
        # the facing sets the angle's sign: read beside every point found, unsure ones included
        facing_found = read_facing(film.pixels, placed, facing)
        landmarks = Landmarks("placed", placed, confidence, points, tuple(missing), facing_found)
        try:
            measurements = measure_landmarks(points, facing=facing_found.facing,
                                             pixel_spacing_mm=film.radiograph.pixel_spacing_mm, partial=True)
        except LandmarkError as error:
            return replace(landmarks, unmeasured=str(error),
                           no_angle=f"the points found are not enough to measure ({error})")
        problem = implausible(measurements)
        if problem:
            return replace(landmarks, unmeasured=problem, no_angle=problem)
        return replace(landmarks, measurements=measurements)

    def crop(self, film: Film, roi: Roi, landmarks: Landmarks) -> Crop:
        """The window the classifier reads, cut and sized as its training run cut its films.

        It is the box the landmark model's points imply: training boxes follow that rule
        (measure.roi_box_from_landmarks), and a detector box a few pixels off frames the crop differently
        (quick demo: test accuracy 0.97 on such boxes, 0.38 on the detector's at mean IoU 0.63). Unsure points
        (C7 behind the shoulders) count with their guessed places: still closer than the detector's box."""
        from core.training import crops

        region = roi.box
        if roi.source == "detector" and landmarks.measurements is not None and landmarks.placed is not None:
            region = _landmark_frame(landmarks.placed, roi.box, *film.size) or roi.box
        margin = float(self.meta.get("roi_margin", 0.05))
        return Crop(region, margin, crops.classifier_crop(film.pixels, region, int(self.meta["input_size"]), margin))

    def classify(self, crop: Crop, cam_method: str | None) -> ClassScores:
        """The calibrated class probabilities, the class activation map on the crop when asked for, and the
        penultimate features the OOD score compares with the training films'.

        With a map asked for, the CAM's own forward pass classifies too (its target: the top class), so the network
        runs once; the features come from whichever pass classifies."""
        from core.training import checkpoints, crops
        from core.inference import explain

        probs = crop_map = no_cam = None
        # the lock is re-entrant: explain takes it again inside
        with explain.model_lock(self.model), self._features() as features:
            if cam_method and self.meta.get("kind") == "sklearn":
                no_cam = f"{self.model_name} is not a neural network"
            elif cam_method:
                try:
                    tensor = crops.normalise(crop.pixels[None], self.meta)
                    crop_map, logits = explain.explain_with_logits(self.model, tensor, None, cam_method,
                                                                   model_name=self.model_name)
                    probs = checkpoints.calibrated(logits, self.meta)[0]
                except explain.ExplainUnavailable as error:
                    no_cam = str(error)
            if probs is None:
                probs = checkpoints.classify_crops(self.model, self.meta, crop.pixels[None])[0]
        if self.ood_reference is not None and self.meta.get("kind") == "sklearn":
            features = [self.model.features(crop.pixels.numpy())]  # the SVM's own features: the HOG it classifies
        return ClassScores(self.classes[int(np.argmax(probs))], {c: float(p) for c, p in zip(self.classes, probs)},
                           crop_map, no_cam, features[0] if features else None)

    def _features(self):
        """Collects the classifier's penultimate features while open, when there is a reference to score them."""
        if self.ood_reference is None or self.meta.get("kind") == "sklearn":
            return contextlib.nullcontext([])
        from core.training.classify import capture_features

        return capture_features(self.model)

    def assess(self, crop: Crop, scores: ClassScores, landmarks: Landmarks, roi: Roi) -> ood.OodResult:
        """How unlike the training films this film is (``core.evaluation.ood``)."""
        feature_ratio = (float(self.ood_reference.ratio(scores.features)[0]) if scores.features is not None
                         else None)
        image_ratio = (float(self.image_reference.ratio(ood.crop_statistics(crop.pixels[0].numpy()))[0])
                       if self.image_reference is not None else None)
        return ood.assess(feature_ratio, landmarks.confidence,
                          None if landmarks.confidence is None else self.detection_threshold,
                          detector_in_setup=self.detector is not None, box_found=roi.source == "detector",
                          image_ratio=image_ratio)

    def judge(self, roi: Roi, landmarks: Landmarks, scores: ClassScores, unlike: ood.OodResult) -> Judgement:
        """What the result rests on (``choose_lead``), and the network's class weighed against the angle's."""
        probabilities = ood.cap_probabilities(scores.probabilities) if unlike.flagged else scores.probabilities
        probability, measurements = probabilities[scores.curvature_class], landmarks.measurements
        low = probability < self.threshold or roi.source == "whole image" or unlike.flagged
        agreement = None if measurements is None else measurements.rule_class == scores.curvature_class
        # a detector in the setup that found no spine (its box unconfirmed counts as none): no class is given
        spine_found = None if self.detector is None else roi.source == "detector"
        lead = choose_lead(unlike.flagged, measurements, landmarks.missing, landmarks.confidence, spine_found)
        evidence = None
        if agreement is False:
            evidence = which_evidence(measurements, landmarks.confidence, landmarks.missing, probability,
                                      unlike.flagged)
        return Judgement(probabilities, bool(low), agreement, spine_found, lead, evidence)

    def notes(self, film: Film, roi: Roi, landmarks: Landmarks, scores: ClassScores) -> list[str]:
        """The result's notes, in the order the stages met what they say."""
        notes = list(film.radiograph.notes)
        if roi.detector_missed:
            notes.append("the detector found no cervical spine")
        notes += _landmark_notes(landmarks)
        if roi.unconfirmed is not None:
            notes.append(f"the detector found no cervical spine (its best box scored {roi.unconfirmed:.2f}, and the "
                         "landmark model did not confirm it)")
        if roi.box is None:
            notes.append("no ROI box: the whole image was classified (less reliable)")
        if scores.no_cam is not None:
            notes.append(f"no Grad-CAM: {scores.no_cam}")
        if self.ood_reference is None:
            notes.append("this classifier carries no out-of-distribution reference (trained before it existed): "
                         "retrain it to learn whether a film is unlike its training films")
        return notes

    def predict_many(self, sources: Iterable[Any], progress: Callable[[int, int, str], None] | None = None,
                     cam_method: str | None = "gradcam", facing: str | None = None
                     ) -> Iterator[Prediction | PredictFailure]:
        """Predict each source in turn; an unreadable or unusable file becomes a PredictFailure and the batch goes on.

        ``sources`` are paths, or ``(name, data)`` pairs (uploads); ``progress(done, total, file)`` is called
        before each file.
        """
        sources = list(sources)
        for number, source in enumerate(sources):
            name, data = (source if isinstance(source, tuple) else (str(source), source))
            if progress is not None:
                progress(number, len(sources), name)
            try:
                result = self.predict(data, name=name, cam_method=cam_method, facing=facing)
            except (ImageReadError, LandmarkError, ValueError) as error:
                result = PredictFailure(name, str(error))
            except Exception as error:  # one odd file must not end a batch; the type helps a bug report
                result = PredictFailure(name, f"{name}: prediction failed ({type(error).__name__}: {error})")
            yield result


    def warm_up(self) -> None:
        """One prediction on a blank film, so the first real one pays no first-call costs (Grad-CAM's import,
        torch's first allocations, the landmark model's first pass)."""
        side = 256
        blank = Radiograph(pixels=np.zeros((side, side), dtype=np.float32), source_bit_depth=8, pixel_spacing_mm=None,
                           photometric="MONOCHROME2", original_size=(side, side))
        self.predict(blank, name="warm-up", cam_method="gradcam" if self.meta.get("kind") != "sklearn" else None)
        if self.landmark_model is not None:
            self.landmark_model.locate(blank.pixels, [0.0, 0.0, float(side), float(side)], 1.0)


_preloaded: set[tuple] = set()
_preload_lock = threading.Lock()


def preload(classifier: str | Path | None = None, detector: str | Path | bool | None = None,
            landmarks: str | Path | bool | None = None) -> "ModelPreload | None":
    """Load and warm up the models of a prediction setup in a daemon thread, once per set of model files.

    Returns the thread, or None when there is nothing (new) to load or ``CERVICURVE_PRELOAD=0`` (a server short
    of memory). A prediction asking for a model while the thread loads it waits for that load (see
    ``core.inference.models``) instead of loading it a second time."""
    import os

    if os.environ.get("CERVICURVE_PRELOAD", "1") == "0":
        return None
    try:
        classifier_path = checkpoint_path(classifier) if classifier is not None else promotion.promoted_model("classify")
        paths = (classifier_path, Predictor._optional("detect", detector), Predictor._optional("landmarks", landmarks))
        files = tuple(models.model_key(kind, path) if path else None for kind, path in zip(models.KINDS, paths))
    except (ModelError, OSError):
        return None  # the prediction itself will say what is wrong
    if files[0] is None:
        return None
    with _preload_lock:
        if files in _preloaded:
            return None
        _preloaded.add(files)

    thread = ModelPreload(classifier_path, paths[1] or False, paths[2] or False)
    thread.start()
    return thread


class ModelPreload(threading.Thread):
    """Loads and warms the models of one prediction setup; once it is done, ``error`` is why it failed, or None."""

    def __init__(self, *paths):
        super().__init__(name="cervicurve-preload", daemon=True)
        self.paths, self.error = paths, None

    def run(self) -> None:
        try:
            Predictor(*self.paths).warm_up()
        except Exception as exc:  # a prediction loads the models again and shows the reason; the log keeps details
            self.error = exc
            traceback.print_exc(file=sys.stderr)


def batch_summary(results: Iterable["Prediction | PredictFailure"]) -> str:
    """One line over a batch: "3 films: 1 judged, 2 not judged (unlike the training films)"."""
    results = list(results)
    counts: dict[str, int] = {}
    low = failed = 0
    for result in results:
        if isinstance(result, PredictFailure):
            failed += 1
            continue
        verdict = result.verdict
        counts[verdict.flag] = counts.get(verdict.flag, 0) + 1
        low += verdict.lead == "network" and verdict.low_confidence
    order = ["judged", f"judged by its measured angle ({UNLIKE})", f"not judged ({UNLIKE})", f"not judged ({NO_SPINE})"]
    parts = []
    for flag in sorted(counts, key=lambda f: order.index(f) if f in order else len(order)):
        parts.append(f"{counts[flag]} {flag}" + (f" ({low} with low confidence)" if flag == "judged" and low else ""))
    if failed:
        parts.append(f"{failed} could not be read")
    total = len(results)
    return f"{total} film{'s' if total != 1 else ''}: " + (", ".join(parts) if parts else "none")


def _landmark_frame(points, detector_box, width: int, height: int) -> list[float] | None:
    """The ROI box the landmark model's points imply (unsure ones included: a guess for a hidden C7 still places
    it), or None when the points are not all finite or disagree with the detector's box."""
    import torch
    from torchvision.ops import box_iou

    points = np.asarray(points, dtype=np.float64)
    if not np.all(np.isfinite(points)):
        return None
    try:
        frame = roi_box_from_landmarks(points, (width, height))
    except LandmarkError:
        return None
    overlap = float(box_iou(torch.tensor([frame]), torch.tensor([list(detector_box)], dtype=torch.float64))[0, 0])
    return frame if overlap >= FRAME_AGREEMENT_IOU else None


def _clip_box(box, width: int, height: int) -> list[float]:
    x1, y1, x2, y2 = (float(v) for v in box)
    return [max(0.0, x1), max(0.0, y1), min(float(width), x2), min(float(height), y2)]


def predict(source: Any, name: str | None = None, cam_method: str | None = "gradcam", **models) -> Prediction:
    """One prediction with the promoted models (or ``classifier=``, ``detector=``, ``landmarks=`` paths)."""
    return Predictor(**models).predict(source, name=name, cam_method=cam_method)
