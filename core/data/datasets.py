"""Datasets of the annotation store: class vocabulary, splits and the labelled items a trainer reads. Importing is
``core.data.importers``, exporting ``core.data.exports``.

Splits are grouped by patient (no patient in two splits) and stratified by class. The train/val/test
split deals each class's patients (shuffled by the seed) to the splits in proportion, at least one
patient per split, so a small set still gets every class in every split; k folds use scikit-learn's
``StratifiedGroupKFold``. A set too small for that is a ``DatasetError`` that says what is missing.

A frozen test split (``split --freeze-test``) is kept as it is by every later ``split``: only the other
patients are dealt, to train and val. The trainer reads ``training_items``, which refuses a dataset where a
patient is in two splits and leaves unsplit images out, logging how many (``check_splits`` says it up front).
"""
from __future__ import annotations

import logging
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from core import settings
from core.settings import CLASSES
from core.data.store import SPLITS, AnnotationStore, LabeledImage

# A child of the trainer's logger, so what training_items leaves out lands in the run's train.log.
log = logging.getLogger("cervicurve.run.datasets")

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".dcm", ".dicom")
SPINE_NAME = "cervical_spine"  # the one detector class

# Folder and category names people use for the three classes (lower case, "_" for spaces and dashes).
CLASS_SYNONYMS: dict[str, str] = {
    **{name: "normal" for name in ("normal", "lordotic", "lordosis", "lordotic_curve", "physiological")},
    **{name: "straightened" for name in ("straightened", "straight", "straightening", "hypolordotic",
                                         "hypolordosis", "loss_of_lordosis", "flat", "flattened")},
    **{name: "reversed" for name in ("reversed", "reverse", "reversal", "kyphotic", "kyphosis", "inverted")},
}


class DatasetError(ValueError):
    """A source or request that cannot be used as a whole (missing folder, unreadable sheet, too few patients)."""


@dataclass
class TrainingItem:
    path: Path  # absolute
    label: int | None  # index into CLASSES; None only with need_class=False
    roi_box: list[float] | None
    landmarks: np.ndarray | None
    patient_id: str
    image_id: int


@dataclass
class SplitCheck:
    dataset: str
    unsplit: int  # labeled images without a split: not trained on, not evaluated
    conflicts: dict[str, list[str]]  # patient -> the splits its images are in (more than one)
    test_frozen: bool

    def problem(self) -> str | None:
        """Why training or evaluation must not start, or None."""
        if not self.conflicts:
            return None
        listed = "; ".join(f"{patient} in {' and '.join(splits)}" for patient, splits in list(self.conflicts.items())[:5])
        more = f" and {len(self.conflicts) - 5} more" if len(self.conflicts) > 5 else ""
        return (f"dataset {self.dataset!r} has {len(self.conflicts)} patients in two splits ({listed}{more}); "
                f"a patient's images must share one split: run python -m core split --dataset {self.dataset}")


@dataclass
class Fold:
    train: list[int]  # image ids
    val: list[int]


def parse_class(name: Any) -> str | None:
    """A class name or synonym (``lordotic``, ``Straight``, ``kyphotic``...) -> a name in CLASSES, else None."""
    key = re.sub(r"[\s\-]+", "_", str(name).strip().lower())
    return CLASS_SYNONYMS.get(key)


def labeled_images(dataset: str, store: AnnotationStore | None) -> list[LabeledImage]:
    """The dataset's images with their current labels; DatasetError when it has none."""
    own = store is None
    store = store or AnnotationStore()
    try:
        items = store.current_labels(dataset)
    finally:
        if own:
            store.close()
    if not items:
        raise DatasetError(f"dataset {dataset!r} has no images")
    return items


def image_path(item: LabeledImage) -> Path:
    """The stored image's file (the store keeps paths relative to the workspace)."""
    return settings.home() / item.path


# ---------------------------------------------------------------- splits and training items


def _patients_by_class(labeled: Sequence[LabeledImage]) -> dict[str, list[str]]:
    """Class -> its patients (sorted), each patient under the class most of its images have (ties: CLASSES order)."""
    per_patient: dict[str, Counter] = {}
    for item in labeled:
        per_patient.setdefault(item.patient_id, Counter())[item.curvature_class] += 1
    strata: dict[str, list[str]] = {name: [] for name in CLASSES}
    for patient, counts in sorted(per_patient.items()):
        strata[max(CLASSES, key=lambda name: (counts[name], -CLASSES.index(name)))].append(patient)
    return {name: patients for name, patients in strata.items() if patients}


def _require_patients(strata: dict[str, list[str]], needed: int, what: str, advice: str) -> None:
    short = [f"{name} has {len(patients)}" for name, patients in strata.items() if len(patients) < needed]
    if short:
        listed = ", ".join(short[:-1]) + (" and " if len(short) > 1 else "") + short[-1]
        have = "" if len(short) == len(strata) else " (patients per class: " + ", ".join(
            f"{name} {len(patients)}" for name, patients in strata.items()) + ")"
        raise DatasetError(f"too few patients for {what}: every class needs at least {needed} patients, "
                           f"but {listed}{have}. {advice}")


def _deal(n: int, fractions: Sequence[float]) -> list[int]:
    """Patients of one class per split: proportional (largest remainder), at least one for every split with
    a share. Needs ``n`` >= the number of such splits."""
    wanted = [f * n for f in fractions]
    counts = [int(np.floor(w)) for w in wanted]
    for i in sorted(range(len(counts)), key=lambda i: counts[i] - wanted[i])[:n - sum(counts)]:
        counts[i] += 1
    for i, fraction in enumerate(fractions):
        if fraction > 0 and counts[i] == 0:
            counts[int(np.argmax(counts))] -= 1
            counts[i] += 1
    return counts


def make_splits(dataset: str, fractions: Sequence[float] = (0.7, 0.15, 0.15), seed: int = 0, *,
                store: AnnotationStore | None = None, freeze: bool = False, actor=None,
                stratify: bool = True) -> dict[str, dict[str, int]]:
    """Assign train/val/test: grouped by patient (no patient in two splits), stratified by class.

    ``stratify=False`` deals every patient, with a class or not, as one group: a team's few films labeled for
    landmarks (CSXA's sheet leaves many grades blank) cannot give every class a patient in every split.

    ``freeze`` then freezes the test split. ``actor``: who asks (``core.data.accounts.authorize``; an admin in team
    mode, anyone in single-user mode).

    Each class's patients are shuffled (by ``seed``) and dealt to the splits in proportion to ``fractions``,
    at least one to every split with a share, so every class is in every split: a class needs as many
    patients as there are splits (3 for train/val/test, 2 with a zero val or test fraction), else
    DatasetError says which class is short. A patient counts under the class most of its images have.
    Images without a class follow their patient (train when the patient has no labeled image).
    When the test split is frozen, its patients keep it and the others are dealt to train and val only
    (by the train and val fractions). Written to the store; returns split -> class -> count.
    """
    from core.data.accounts import authorize

    authorize(actor, "import", f"split {dataset}", url=store.url if store is not None else None)
    if (len(fractions) != 3 or any(f < 0 for f in fractions) or not np.isclose(sum(fractions), 1.0)
            or fractions[0] <= 0):
        raise DatasetError("fractions are (train, val, test), each >= 0, summing to 1, with train above 0; "
                           f"got {tuple(fractions)}")
    fractions = [float(f) for f in fractions]
    own = store is None
    store = store or AnnotationStore()
    try:
        items = store.current_labels(dataset)
        frozen_test = set()
        if store.test_frozen_at(dataset) is not None:
            frozen_test = {item.patient_id for item in items if item.split == "test"}
            fractions = [fractions[0] / (fractions[0] + fractions[1]), fractions[1] / (fractions[0] + fractions[1]), 0.0]
        used = [name for name, f in zip(SPLITS, fractions) if f > 0]
        labeled = [item for item in items if (item.curvature_class is not None or not stratify)
                   and item.patient_id not in frozen_test]
        if not labeled:
            raise DatasetError(f"dataset {dataset!r} has no labeled images to split"
                               + (" outside its frozen test split" if frozen_test else ""))
        if stratify:
            strata = _patients_by_class(labeled)
            _require_patients(strata, len(used), f"a {'/'.join(used)} split",
                              f"A class needs one patient in each of {', '.join(used)}: label more patients"
                              + (", or set the val or test fraction to 0" if len(used) == 3 else "")
                              + ", or split by patient alone (--no-stratify) for a landmark set.")
        else:
            strata = {"all": sorted({item.patient_id for item in labeled})}
            if len(strata["all"]) < len(used):
                raise DatasetError(f"too few patients for a {'/'.join(used)} split: {len(strata['all'])}")
        rng = np.random.default_rng(seed)
        patient_split: dict[str, str] = {}
        for patients in strata.values():
            shuffled = [patients[i] for i in rng.permutation(len(patients))]
            start = 0
            for split, count in zip(SPLITS, _deal(len(patients), fractions)):
                patient_split.update((patient, split) for patient in shuffled[start:start + count])
                start += count
        patient_split.update((patient, "test") for patient in frozen_test)
        assignment = {item.image_id: patient_split.get(item.patient_id, "train") for item in items}
        try:
            store.set_splits(assignment)
        except ValueError as error:  # the store's own guard (a patient in two splits, a frozen test changed)
            raise DatasetError(str(error)) from None
        if freeze and store.test_frozen_at(dataset) is None:
            store.freeze_test(dataset)
    finally:
        if own:
            store.close()
    counts: dict[str, dict[str, int]] = {name: {c: 0 for c in (*CLASSES, "unlabeled")} for name in SPLITS}
    for item in items:
        counts[assignment[item.image_id]][item.curvature_class or "unlabeled"] += 1
    return counts


def freeze_test(dataset: str, *, store: AnnotationStore | None = None):
    """Freeze the dataset's test split (later ``make_splits`` keep it); returns when it was frozen."""
    own = store is None
    store = store or AnnotationStore()
    try:
        return store.freeze_test(dataset)
    except ValueError as error:
        raise DatasetError(str(error)) from None
    finally:
        if own:
            store.close()


def kfold_splits(dataset: str, k: int = 5, seed: int = 0, *, include_test: bool = False,
                 store: AnnotationStore | None = None) -> list[Fold]:
    """k patient-grouped, class-stratified folds over the labeled images (the test split held out
    unless ``include_test``), by scikit-learn's ``StratifiedGroupKFold``. Not written to the store: a
    fold is a training choice, not a label.

    Every class must be in every fold's train and val part, so when a class has fewer than ``k`` patients
    the folds are fewer: as many as the smallest class has patients (check ``len()`` of the result).
    A class with under 2 patients is a DatasetError.
    """
    from sklearn.model_selection import StratifiedGroupKFold

    if k < 2:
        raise DatasetError(f"k-fold needs k >= 2, got {k}")
    labeled = [item for item in labeled_images(dataset, store)
               if item.curvature_class is not None and (include_test or item.split != "test")]
    if not labeled:
        raise DatasetError(f"dataset {dataset!r} has no labeled images outside the test split to fold")
    strata = _patients_by_class(labeled)
    _require_patients(strata, 2, "k-fold cross-validation" + ("" if include_test else " (test split excluded)"),
                      "Each fold trains and validates on every class: label more patients.")
    k = min(k, min(len(patients) for patients in strata.values()))
    y = np.array([item.class_index for item in labeled])
    groups = np.array([item.patient_id for item in labeled])
    ids = np.array([item.image_id for item in labeled])
    folds = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    return [Fold(train=ids[tr].tolist(), val=ids[va].tolist()) for tr, va in folds.split(np.zeros((len(ids), 1)), y, groups)]


def _split_check(dataset: str, items: Sequence[LabeledImage], test_frozen: bool) -> SplitCheck:
    found: dict[str, set] = {}
    for item in items:
        if item.split is not None:
            found.setdefault(item.patient_id, set()).add(item.split)
    conflicts = {p: [s for s in SPLITS if s in splits] for p, splits in sorted(found.items()) if len(splits) > 1}
    unsplit = sum(1 for item in items if item.curvature_class is not None and item.split is None)
    return SplitCheck(dataset=dataset, unsplit=unsplit, conflicts=conflicts, test_frozen=test_frozen)


def check_splits(dataset: str, *, store: AnnotationStore | None = None) -> SplitCheck:
    """What a trainer must know before it starts: unsplit labeled images, patients in two splits."""
    own = store is None
    store = store or AnnotationStore()
    try:
        return _split_check(dataset, labeled_images(dataset, store), store.test_frozen_at(dataset) is not None)
    finally:
        if own:
            store.close()


def training_items(dataset: str, split: str | None = None, *, image_ids: Iterable[int] | None = None,
                   store: AnnotationStore | None = None, need_class: bool = True) -> list[TrainingItem]:
    """Labeled images for the trainer and the evaluator; ``image_ids`` picks a fold. ``need_class=False`` keeps
    images without a class too (a landmark or box set: CSXA leaves many grades blank).

    DatasetError when a patient of the dataset is in two splits (training on it would leak into the
    test). With a ``split``, images without one are left out, never trained on silently: a warning on the
    ``cervicurve.train`` log says how many (``check_splits(dataset).unsplit``).
    """
    if split is not None and split not in SPLITS:
        raise DatasetError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    wanted = None if image_ids is None else set(image_ids)
    items = labeled_images(dataset, store)
    check = _split_check(dataset, items, test_frozen=False)
    if check.problem():
        raise DatasetError(check.problem())
    if split is not None and check.unsplit:
        log.warning("%d labeled images of dataset %r have no split and are left out of %s; "
                    "give them one with: python -m core split --dataset %s", check.unsplit, dataset, split, dataset)
    out = []
    for item in items:
        if (need_class and item.curvature_class is None) or (wanted is not None and item.image_id not in wanted):
            continue
        if split is not None and item.split != split:
            continue
        out.append(TrainingItem(path=image_path(item), label=item.class_index, roi_box=item.roi_box,
                                landmarks=item.landmarks, patient_id=item.patient_id, image_id=item.image_id))
    return out
