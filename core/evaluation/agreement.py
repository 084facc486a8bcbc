"""Agreement between annotators on images read by two or more of them.

- class: quadratic-weighted Cohen's kappa (scikit-learn), the classes being ordered normal < straightened < reversed;
- C2-C7 angle: intraclass correlation (pingouin) and Bland-Altman bias with 95 % limits of agreement;
- landmarks: mean distance between the two readings' points (px, and mm where the pixel spacing is known).

Every number comes with the count it rests on. Pairs: each pair of annotators (name order) on each image; the ICC
uses one pair per image (the first two annotators by name) because it needs the same number of readings per image,
and it is ICC(A,1) (two-way, absolute agreement) when those pairs all come from the same two annotators, else ICC(1,1)
(one-way: a different pair of raters per image).
"""
from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from core.data.labels import AnnotatorStats, Disagreement, annotator_stats, by_image, cobb_of, disagreements
from core.data.store import AnnotationStore, Reading
from core.settings import CLASSES


def quadratic_kappa(first: Sequence[str], second: Sequence[str]) -> float | None:
    """Quadratic-weighted Cohen's kappa of two class lists; None when undefined (no pairs, or one class only)."""
    from sklearn.metrics import cohen_kappa_score

    if len(first) == 0:
        return None
    a = [CLASSES.index(c) for c in first]
    b = [CLASSES.index(c) for c in second]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # 0/0 when both lists hold one class: reported as None
        value = float(cohen_kappa_score(a, b, labels=list(range(len(CLASSES))), weights="quadratic"))
    return value if math.isfinite(value) else None


def icc(ratings: np.ndarray, kind: str = "ICC(1,1)") -> float | None:
    """The ICC of ``kind`` (pingouin's names: ICC(1,1), ICC(A,1), ...) for an images x raters matrix."""
    import pandas as pd
    import pingouin

    ratings = np.asarray(ratings, dtype=float)
    if ratings.ndim != 2 or ratings.shape[0] < 2 or ratings.shape[1] < 2 or not np.isfinite(ratings).all():
        return None
    if np.ptp(ratings) == 0:
        return None  # no variance at all: the ICC is 0/0
    if np.all(np.ptp(ratings, axis=1) == 0):
        return 1.0  # every rater gave every image the same value: no error variance, perfect agreement (pingouin: x/0)
    frame = pd.DataFrame([(i, j, v) for i, row in enumerate(ratings) for j, v in enumerate(row)],
                         columns=["image", "rater", "value"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # its F-test intervals divide by a near-zero error term
        table = pingouin.intraclass_corr(frame, targets="image", raters="rater", ratings="value")
    value = float(table.set_index("Type").loc[kind, "ICC"])
    return value if math.isfinite(value) else None


@dataclass(frozen=True)
class BlandAltman:
    n: int
    bias: float              # mean of first - second
    sd: float                # sample SD of the differences
    lower: float             # bias - 1.96 sd
    upper: float             # bias + 1.96 sd
    means: list[float]
    differences: list[float]


def bland_altman(first: Sequence[float], second: Sequence[float]) -> BlandAltman | None:
    a, b = np.asarray(first, dtype=float), np.asarray(second, dtype=float)
    if len(a) < 2:
        return None
    diff = a - b
    bias, sd = float(diff.mean()), float(diff.std(ddof=1))
    return BlandAltman(len(a), bias, sd, bias - 1.96 * sd, bias + 1.96 * sd, ((a + b) / 2).tolist(), diff.tolist())


def landmark_distance(first: Any, second: Any) -> float | None:
    """Mean Euclidean distance (px) over the points both readings have; None when they share none."""
    if first is None or second is None:
        return None
    a, b = np.asarray(first, dtype=float), np.asarray(second, dtype=float)
    both = np.isfinite(a).all(axis=1) & np.isfinite(b).all(axis=1)
    if not both.any():
        return None
    return float(np.hypot(*(a[both] - b[both]).T).mean())


@dataclass(frozen=True)
class ReadingPair:
    image_id: int
    first: Reading
    second: Reading
    pixel_spacing_mm: float | None = None


def reading_pairs(readings: Sequence[Reading], spacing: Mapping[int, float | None] | None = None) -> list[ReadingPair]:
    """Every pair of annotators' readings of the same image (annotators in name order)."""
    pairs = []
    for image_id, group in sorted(by_image(readings).items()):
        group = sorted(group, key=lambda r: r.annotator)
        for i, first in enumerate(group):
            for second in group[i + 1:]:
                pairs.append(ReadingPair(image_id, first, second, (spacing or {}).get(image_id)))
    return pairs


@dataclass
class Agreement:
    images: int                                   # images read by two or more annotators
    pairs: int
    kappa: float | None = None
    kappa_n: int = 0                              # pairs where both gave a class
    icc: float | None = None
    icc_kind: str | None = None
    icc_n: int = 0                                # images in the ICC
    bland_altman: BlandAltman | None = None       # on the C2-C7 angle, n = pairs with both angles
    landmark_px: float | None = None
    landmark_px_n: int = 0
    landmark_mm: float | None = None
    landmark_mm_n: int = 0
    by_pair: list[dict] = field(default_factory=list)  # annotator pair -> images, kappa

    def as_dict(self) -> dict:
        out = asdict(self)
        if self.bland_altman is not None:
            out["bland_altman"] = {k: v for k, v in asdict(self.bland_altman).items() if k not in ("means", "differences")}
        return out


def agreement(pairs: Sequence[ReadingPair]) -> Agreement:
    result = Agreement(images=len({p.image_id for p in pairs}), pairs=len(pairs))
    classed = [p for p in pairs if p.first.curvature_class and p.second.curvature_class]
    result.kappa = quadratic_kappa([p.first.curvature_class for p in classed], [p.second.curvature_class for p in classed])
    result.kappa_n = len(classed)

    angles = [(p, cobb_of(p.first.landmarks), cobb_of(p.second.landmarks)) for p in pairs]
    angles = [(p, a, b) for p, a, b in angles if a is not None and b is not None]
    result.bland_altman = bland_altman([a for _, a, _ in angles], [b for _, _, b in angles])
    one_per_image: dict[int, tuple] = {}
    for p, a, b in angles:
        one_per_image.setdefault(p.image_id, (p, a, b))
    if len(one_per_image) >= 2:
        raters = {(p.first.annotator, p.second.annotator) for p, _, _ in one_per_image.values()}
        result.icc_kind = "ICC(A,1)" if len(raters) == 1 else "ICC(1,1)"
        result.icc = icc(np.array([[a, b] for _, a, b in one_per_image.values()]), result.icc_kind)
        result.icc_n = len(one_per_image)

    px, mm = [], []
    for p in pairs:
        distance = landmark_distance(p.first.landmarks, p.second.landmarks)
        if distance is None:
            continue
        px.append(distance)
        if p.pixel_spacing_mm:
            mm.append(distance * float(p.pixel_spacing_mm))
    result.landmark_px, result.landmark_px_n = (float(np.mean(px)) if px else None), len(px)
    result.landmark_mm, result.landmark_mm_n = (float(np.mean(mm)) if mm else None), len(mm)

    for names in sorted({(p.first.annotator, p.second.annotator) for p in classed}):
        mine = [p for p in classed if (p.first.annotator, p.second.annotator) == names]
        result.by_pair.append({"annotators": f"{names[0]} / {names[1]}", "images": len(mine),
                               "kappa": quadratic_kappa([p.first.curvature_class for p in mine],
                                                        [p.second.curvature_class for p in mine])})
    return result


@dataclass
class TeamReport:
    dataset: str
    annotators: list[AnnotatorStats]
    agreement: Agreement
    disagreements: list[Disagreement]

    def format(self) -> str:
        lines = [f"dataset {self.dataset}: {len(self.annotators)} annotators"]
        for s in self.annotators:
            seconds = "-" if s.median_seconds is None else f"{s.median_seconds:.1f} s"
            move = "" if s.mean_point_move_px is None else f", model points moved {s.mean_point_move_px:.1f} px"
            lines.append(f"  {s.annotator}: {s.images} images, median {seconds} per image, "
                         f"{s.from_draft} from a model draft{move}")
        a = self.agreement
        lines.append(f"read by two or more: {a.images} images ({a.pairs} pairs)")

        def number(value, digits=3):
            return "n/a" if value is None else f"{value:.{digits}f}"

        lines.append(f"  class, quadratic-weighted kappa: {number(a.kappa)} (n = {a.kappa_n} pairs)")
        lines.append(f"  C2-C7 angle, {a.icc_kind or 'ICC'}: {number(a.icc)} (n = {a.icc_n} images)")
        if a.bland_altman is not None:
            ba = a.bland_altman
            lines.append(f"  C2-C7 angle, Bland-Altman: bias {ba.bias:+.2f} deg, limits {ba.lower:+.2f} to "
                         f"{ba.upper:+.2f} deg (n = {ba.n} pairs)")
        lines.append(f"  landmarks, mean distance: {number(a.landmark_px, 2)} px (n = {a.landmark_px_n} pairs)"
                     + (f", {a.landmark_mm:.2f} mm (n = {a.landmark_mm_n})" if a.landmark_mm is not None else ""))
        lines.append(f"disagreements: {len(self.disagreements)}")
        lines += [f"  image {d.image_id}: {d.first.annotator} / {d.second.annotator}: {d.reason}"
                  for d in self.disagreements]
        return "\n".join(lines)

    def as_dict(self) -> dict:
        return {"dataset": self.dataset, "annotators": [asdict(s) for s in self.annotators],
                "agreement": self.agreement.as_dict(),
                "disagreements": [{"image_id": d.image_id, "annotators": [d.first.annotator, d.second.annotator],
                                   "label_ids": [d.first.label_id, d.second.label_id], "reason": d.reason}
                                  for d in self.disagreements]}


def team_report(dataset: str, *, store: AnnotationStore | None = None) -> TeamReport:
    """Per-annotator counts and times, agreement on the images read twice or more, and the disagreements."""
    own = store is None
    store = store or AnnotationStore()
    try:
        readings = store.readings(dataset)
        spacing = {image.image_id: _spacing(image.meta) for image in store.images(dataset)}
    finally:
        if own:
            store.close()
    return TeamReport(dataset, annotator_stats(readings), agreement(reading_pairs(readings, spacing)),
                      disagreements(readings))


def _spacing(meta: Mapping[str, Any]) -> float | None:
    """Mean mm per pixel from an image's meta (``pixel_spacing_mm``: a number or [row, col]), when recorded."""
    value = (meta or {}).get("pixel_spacing_mm")
    try:
        spacing = float(np.mean(np.asarray(value, dtype=float))) if value is not None else None
    except (TypeError, ValueError):
        return None
    return spacing if spacing and math.isfinite(spacing) and spacing > 0 else None
