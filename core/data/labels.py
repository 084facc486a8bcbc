"""Labeling: the annotator's queue, progress, saving readings and reviewing them (the Label page's engine).

Model-free: "most uncertain first" takes precomputed scores (``core.inference.drafts.uncertainty_scores``), and a
reading that started from a model draft passes the draft in, so this module records how far each point moved.
The statistics of agreement live in ``core.evaluation.agreement``; the ``labels`` command in
``core.inference.drafts`` (the lowest layer that sees the store, the statistics and the models).
"""
from __future__ import annotations

import math
import statistics
from collections import Counter, defaultdict
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from core.data.measure import LANDMARK_NAMES, Facing, LandmarkError, RuleThresholds, measure_landmarks, read_facing
from core.data.store import AnnotationStore, Reading, validate_landmarks
from core.settings import CLASSES

FILTERS: dict[str, str] = {
    "unlabeled": "Unlabeled",
    "mine": "Labeled by me",
    "others": "Labeled by others only",
    "disagreements": "Disagreements between annotators",
    "rejected": "Rejected in review (mine)",
    "all": "All images",
}
# Two readings disagree when their classes differ or their C2-C7 angles differ by this much: about twice the
# 2.5-3.3 deg error of published automatic readers, so measurement noise alone rarely trips it.
DISAGREE_COBB_DEG = 5.0


@contextmanager
def _opened(store: AnnotationStore | None) -> Iterator[AnnotationStore]:
    own = store is None
    store = store or AnnotationStore()
    try:
        yield store
    finally:
        if own:
            store.close()


# ---------------------------------------------------------------- measurements while labeling


@dataclass(frozen=True)
class RuleCheck:
    """What the points say about the class: the angle, the index, the rule class and whether the chosen class
    contradicts it (flagged, never blocked)."""

    cobb_c2c7: float | None
    cci: float | None
    rule_class: str | None
    contradicts: bool
    message: str | None
    facing: Facing | None = None  # how the angle was signed, when a film was given


def rule_check(curvature_class: str | None, landmarks: Any, thresholds: RuleThresholds | None = None,
               film: np.ndarray | None = None) -> RuleCheck:
    """Cobb C2-C7, CCI and the rule class from the points (``core.data.measure``): once all 23 are placed, or all
    but C7's (hidden behind the shoulders: the rule then reads Cobb C2-C6); None before that. With the ``film``'s
    pixels the angle is signed by the facing read from it (``measure.read_facing``), else by the neck's lean."""
    if landmarks is None:
        return RuleCheck(None, None, None, False, None)
    try:
        points = validate_landmarks(landmarks)
        facing = read_facing(film, points) if film is not None else None
        measured = measure_landmarks(points, facing=None if facing is None else facing.facing, thresholds=thresholds,
                                     partial=True)
    except (LandmarkError, ValueError):
        return RuleCheck(None, None, None, False, None)
    cobb = float(measured.cobb_c2c7) if math.isfinite(measured.cobb_c2c7) else None
    cci = float(measured.cci) if math.isfinite(measured.cci) else None
    rule = measured.rule_class
    contradicts = bool(curvature_class and rule and curvature_class != rule)
    message = None
    if contradicts:
        angle = f"C2–C7 angle {cobb:+.1f}°" if cobb is not None else f"C2–C6 angle {measured.cobb_c2c6:+.1f}°"
        message = (f"The chosen class '{curvature_class}' contradicts the measured {angle} (rule class "
                   f"'{rule}'). Saving is allowed: say why in the note if you keep it.")
    return RuleCheck(cobb, cci, rule, contradicts, message, facing)


def cobb_of(landmarks: Any) -> float | None:
    return rule_check(None, landmarks).cobb_c2c7


def point_moves(draft_landmarks: Any, landmarks: Any) -> list[float | None]:
    """Per landmark, how far (px) the saved point lies from the draft's; None where either is missing."""
    before = np.asarray(draft_landmarks, dtype=float).reshape(len(LANDMARK_NAMES), 2)
    after = np.asarray(landmarks, dtype=float).reshape(len(LANDMARK_NAMES), 2)
    distance = np.hypot(*(after - before).T)
    return [None if not math.isfinite(d) else round(float(d), 3) for d in distance]


# ---------------------------------------------------------------- saving and review


def save(image_id: int, *, annotator: str, curvature_class: str | None, roi_box: Sequence[float] | None,
         landmarks: Any, note: str | None = None, seconds: float | None = None,
         draft: Mapping[str, Any] | None = None, store: AnnotationStore | None = None, actor=None) -> int:
    """Save ``annotator``'s reading as one new history row; returns its label id.

    ``draft`` (from ``core.inference.drafts``: ``models``, ``curvature_class``, ``roi_box``, ``landmarks``) records
    that the reading started from a model draft, and each point's move from it in px. In team mode the reading is
    the signed-in user's whatever name the page sends (``actor`` is the session token)."""
    annotator = _acting_as(actor, "label", annotator, image_id, store)
    moves = None
    if draft is not None and draft.get("landmarks") is not None and landmarks is not None:
        moves = point_moves(draft["landmarks"], landmarks)
    with _opened(store) as opened:
        return opened.save_reading(image_id, annotator=annotator, curvature_class=curvature_class, roi_box=roi_box,
                                   landmarks=landmarks, note=note, seconds=seconds, draft=draft, point_moves_px=moves)


def review(label_id: int, *, reviewer: str, verdict: str, comment: str | None = None,
           curvature_class: str | None = None, roi_box: Sequence[float] | None = None, landmarks: Any = None,
           seconds: float | None = None, store: AnnotationStore | None = None, actor=None) -> int:
    """Accept, fix (edit and accept) or reject a label row with a comment; returns the review id (a reviewer's).

    A review is a second person's check: nobody reviews a reading of their own (PermissionDenied, audited)."""
    from core.data.accounts import Accounts, PermissionDenied

    reviewer = _acting_as(actor, "review", reviewer, label_id, store)
    with _opened(store) as opened:
        reading = opened.label(label_id)
        if reading.annotator == reviewer:
            with Accounts(opened.url) as accounts:
                accounts.record(reviewer, "review", f"review {label_id}: own reading", allowed=False)
            raise PermissionDenied(f"review: label {label_id} is {reviewer}'s own reading; another reviewer "
                                   "checks it")
        return opened.review(label_id, reviewer=reviewer, verdict=verdict, comment=comment,
                             curvature_class=curvature_class, roi_box=roi_box, landmarks=landmarks, seconds=seconds)


def _acting_as(actor, action: str, name: str, target: int, store: AnnotationStore | None) -> str:
    """The name recorded: the signed-in user's in team mode (role checked), the page's choice otherwise."""
    from core.data.accounts import OWNER, SHELL, authorize

    user = authorize(actor, action, f"{action} {target}", url=store.url if store is not None else None)
    return name if user in (OWNER, SHELL) else user.name


# ---------------------------------------------------------------- disagreement


def disagreement(a: Reading, b: Reading) -> str | None:
    """Why two readings of one image disagree (class, or C2-C7 angle by DISAGREE_COBB_DEG or more), else None."""
    reasons = []
    if a.curvature_class and b.curvature_class and a.curvature_class != b.curvature_class:
        reasons.append(f"class {a.curvature_class} vs {b.curvature_class}")
    cobb_a, cobb_b = cobb_of(a.landmarks), cobb_of(b.landmarks)
    if cobb_a is not None and cobb_b is not None and abs(cobb_a - cobb_b) >= DISAGREE_COBB_DEG:
        reasons.append(f"C2–C7 {cobb_a:+.1f}° vs {cobb_b:+.1f}°")
    return "; ".join(reasons) or None


def by_image(readings: Sequence[Reading]) -> dict[int, list[Reading]]:
    grouped: dict[int, list[Reading]] = defaultdict(list)
    for reading in readings:
        grouped[reading.image_id].append(reading)
    return dict(grouped)


@dataclass(frozen=True)
class Disagreement:
    image_id: int
    first: Reading
    second: Reading
    reason: str


def disagreements(readings: Sequence[Reading]) -> list[Disagreement]:
    """Every pair of readings (annotators in name order) of one image that disagree."""
    found = []
    for image_id, group in sorted(by_image(readings).items()):
        group = sorted(group, key=lambda r: r.annotator)
        for i, first in enumerate(group):
            for second in group[i + 1:]:
                reason = disagreement(first, second)
                if reason:
                    found.append(Disagreement(image_id, first, second, reason))
    return found


# ---------------------------------------------------------------- queue and progress


@dataclass(frozen=True)
class QueueItem:
    image_id: int
    path: str
    patient_id: str
    split: str | None
    annotators: tuple[str, ...]       # who has a reading of it
    mine: Reading | None              # this annotator's reading
    uncertainty: float | None = None  # the models' score when ordered "most uncertain first"

    @property
    def rejection(self) -> str | None:
        """The reviewer's comment when this annotator's reading was rejected."""
        if self.mine is not None and self.mine.status == "reject":
            return f"rejected by {self.mine.reviewer}: {self.mine.review_comment}"
        return None


def queue(dataset: str, annotator: str, filter: str = "unlabeled", *, scores: Mapping[int, float] | None = None,
          store: AnnotationStore | None = None) -> list[QueueItem]:
    """The images ``annotator`` works through, in dataset order or, with ``scores`` (image id -> uncertainty),
    most uncertain first (unscored images last, in dataset order)."""
    if filter not in FILTERS:
        raise ValueError(f"unknown queue filter {filter!r}; expected one of {', '.join(FILTERS)}")
    if not annotator or not str(annotator).strip():
        raise ValueError("choose an annotator name first: every save records who made it")
    with _opened(store) as opened:
        images = opened.current_labels(dataset)
        readings = by_image(opened.readings(dataset))
    if not images:
        raise ValueError(f"dataset {dataset!r} has no images")
    disagreeing = {d.image_id for d in disagreements([r for group in readings.values() for r in group])}
    items = []
    for image in images:
        group = readings.get(image.image_id, [])
        mine = next((r for r in group if r.annotator == annotator), None)
        others = [r for r in group if r.annotator != annotator]
        keep = {
            "all": True,
            "unlabeled": image.label_id is None,
            "mine": mine is not None,
            "others": mine is None and bool(others),
            "disagreements": image.image_id in disagreeing,
            "rejected": mine is not None and mine.status == "reject",
        }[filter]
        if keep:
            items.append(QueueItem(image.image_id, image.path, image.patient_id, image.split,
                                   tuple(sorted(r.annotator for r in group)), mine,
                                   None if scores is None else scores.get(image.image_id)))
    if scores is not None:
        items.sort(key=lambda item: (item.uncertainty is None, -(item.uncertainty or 0.0), item.image_id))
    return items


@dataclass(frozen=True)
class Progress:
    dataset: str
    total: int
    labeled: int                     # images whose current label has a class
    per_class: dict[str, int]
    boxes: int
    landmarks: int                   # images whose current label has all 23 points or marks them missing

    @property
    def fraction(self) -> float:
        return self.labeled / self.total if self.total else 0.0


def progress(dataset: str, *, store: AnnotationStore | None = None) -> Progress:
    with _opened(store) as opened:
        items = opened.current_labels(dataset)
    classes = Counter(item.curvature_class for item in items if item.curvature_class)
    return Progress(dataset, len(items), sum(classes.values()), {name: classes.get(name, 0) for name in CLASSES},
                    sum(1 for item in items if item.roi_box is not None),
                    sum(1 for item in items if item.landmarks is not None))


@dataclass
class AnnotatorStats:
    annotator: str
    images: int
    median_seconds: float | None
    from_draft: int                          # readings that started from a model draft
    mean_point_move_px: float | None         # over their draft readings: how far the model's points were moved
    statuses: dict[str, int] = field(default_factory=dict)  # review verdicts of their readings


def annotator_stats(readings: Sequence[Reading]) -> list[AnnotatorStats]:
    """Per annotator: images read, median seconds per image, draft use and the model's point error on them."""
    grouped: dict[str, list[Reading]] = defaultdict(list)
    for reading in readings:
        grouped[reading.annotator].append(reading)
    found = []
    for annotator, group in sorted(grouped.items()):
        seconds = [r.seconds for r in group if r.seconds is not None]
        moves = [m for r in group if r.point_moves_px for m in r.point_moves_px if m is not None]
        statuses = Counter(r.status or "unreviewed" for r in group)
        found.append(AnnotatorStats(annotator, len(group), statistics.median(seconds) if seconds else None,
                                    sum(1 for r in group if r.from_draft),
                                    float(np.mean(moves)) if moves else None, dict(statuses)))
    return found


# ---------------------------------------------------------------- export

def export(kind: str, dataset: str, out: str | Path, *, store: AnnotationStore | None = None, actor=None):
    """The Label page's export buttons (``core.data.exports``); returns its ExportReport. ``actor``: who asks (an
    admin in team mode: an export writes every label, and the films, to a folder on the server)."""
    from core.data import exports
    from core.data.accounts import authorize

    if kind not in exports.EXPORT_KINDS:
        raise ValueError(f"unknown export {kind!r}; expected one of {', '.join(exports.EXPORT_KINDS)}")
    authorize(actor, "export", f"{kind} {dataset} -> {out}", url=store.url if store is not None else None)
    return exports.export_to(kind, dataset, out, store=store)
