"""Agreement statistics against values computed here by their textbook formulas, on small hand-made examples."""
from __future__ import annotations

import numpy as np
import pytest

from core.evaluation.agreement import (agreement, bland_altman, icc, landmark_distance, quadratic_kappa,
                                       reading_pairs, team_report)
from core.settings import CLASSES


def kappa_by_hand(a, b, k=3):
    """Cohen's kappa with quadratic weights: 1 - sum(w * observed) / sum(w * expected)."""
    observed = np.zeros((k, k))
    for i, j in zip(a, b):
        observed[i, j] += 1
    observed /= observed.sum()
    expected = np.outer(observed.sum(1), observed.sum(0))
    weights = np.array([[(i - j) ** 2 for j in range(k)] for i in range(k)], dtype=float)
    return 1 - (weights * observed).sum() / (weights * expected).sum()


def anova_iccs(x):
    """ICC(1,1) and ICC(A,1) from the one- and two-way ANOVA mean squares (Shrout & Fleiss; McGraw & Wong)."""
    n, k = x.shape
    grand = x.mean()
    ms_rows = k * ((x.mean(1) - grand) ** 2).sum() / (n - 1)
    ms_cols = n * ((x.mean(0) - grand) ** 2).sum() / (k - 1)
    ms_within = ((x - x.mean(1, keepdims=True)) ** 2).sum() / (n * (k - 1))
    ss_error = ((x - x.mean(1, keepdims=True) - x.mean(0, keepdims=True) + grand) ** 2).sum()
    ms_error = ss_error / ((n - 1) * (k - 1))
    icc1 = (ms_rows - ms_within) / (ms_rows + (k - 1) * ms_within)
    icc_a1 = (ms_rows - ms_error) / (ms_rows + (k - 1) * ms_error + k / n * (ms_cols - ms_error))
    return icc1, icc_a1


def test_quadratic_kappa_matches_the_formula():
    a = ["normal", "normal", "straightened", "straightened", "reversed", "reversed", "normal", "reversed"]
    b = ["normal", "straightened", "straightened", "reversed", "reversed", "normal", "normal", "reversed"]
    expected = kappa_by_hand([CLASSES.index(c) for c in a], [CLASSES.index(c) for c in b])
    assert quadratic_kappa(a, b) == pytest.approx(expected, abs=1e-12)
    assert quadratic_kappa(a, a) == pytest.approx(1.0)
    assert quadratic_kappa([], []) is None
    assert quadratic_kappa(["normal"] * 3, ["normal"] * 3) is None  # 0/0: undefined, not a number


def test_icc_matches_the_anova_formulas():
    ratings = np.array([[12.0, 14.0], [3.0, 1.5], [-6.0, -4.0], [20.0, 17.5], [8.0, 9.0]])
    icc1, icc_a1 = anova_iccs(ratings)
    assert icc(ratings, "ICC(1,1)") == pytest.approx(icc1, abs=1e-9)
    assert icc(ratings, "ICC(A,1)") == pytest.approx(icc_a1, abs=1e-9)
    assert icc(ratings[:1]) is None and icc(np.ones((4, 2))) is None
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # two annotators who agree exactly: no 'divide by zero' on the CLI either
        assert icc(np.array([[10.0, 10.0], [20.0, 20.0], [-5.0, -5.0]])) == 1.0


def test_bland_altman_and_landmark_distance():
    result = bland_altman([10.0, 4.0, -2.0, 7.0], [8.0, 5.0, -3.0, 4.0])
    differences = np.array([2.0, -1.0, 1.0, 3.0])
    assert result.n == 4 and result.bias == pytest.approx(1.25)
    assert result.sd == pytest.approx(np.sqrt(((differences - 1.25) ** 2).sum() / 3))
    assert result.upper == pytest.approx(1.25 + 1.96 * result.sd)
    first = np.zeros((23, 2))
    second = first + [3.0, 4.0]
    second[5] = [30.0, 40.0]
    second[22] = np.nan  # a point the second reader marked not visible is left out
    assert landmark_distance(first, second) == pytest.approx((21 * 5 + 50) / 22)
    assert landmark_distance(first, None) is None


def test_team_report_on_two_readers_in_a_real_store(workspace):
    from tests.helpers.films import unlabeled_phantoms

    from core.data.store import AnnotationStore

    cases = unlabeled_phantoms(workspace, 4)
    store = AnnotationStore()
    ids = [image.image_id for image in store.images("films")]
    ana = ["normal", "straightened", "reversed", "normal"]
    ben = ["normal", "reversed", "reversed", "straightened"]
    for image_id, case, a, b in zip(ids, cases, ana, ben):
        store.save_reading(image_id, annotator="ana", curvature_class=a, roi_box=case.roi_box,
                           landmarks=case.landmarks, seconds=20)
        # ben's points are ana's moved by (3, 4): 5 px each, and the same angles
        store.save_reading(image_id, annotator="ben", curvature_class=b, roi_box=case.roi_box,
                           landmarks=case.landmarks + [3.0, 4.0], seconds=40)
    store.save_reading(ids[0], annotator="cat", curvature_class="normal", landmarks=cases[0].landmarks)
    report = team_report("films", store=store)
    pairs = [p for p in reading_pairs(store.readings("films")) if {p.first.annotator, p.second.annotator} == {"ana", "ben"}]
    two = agreement(pairs)
    assert two.kappa == pytest.approx(kappa_by_hand([CLASSES.index(c) for c in ana], [CLASSES.index(c) for c in ben]))
    assert two.icc_kind == "ICC(A,1)" and two.icc == pytest.approx(1.0) and two.icc_n == 4
    assert two.landmark_px == pytest.approx(5.0) and two.landmark_px_n == 4
    assert two.bland_altman.bias == pytest.approx(0.0, abs=1e-9) and two.bland_altman.n == 4
    # the whole team: image 0 was read three times (3 pairs), the others twice
    assert report.agreement.images == 4 and report.agreement.pairs == 6
    assert report.agreement.icc_kind == "ICC(A,1)" and report.agreement.icc_n == 4  # one pair per image: ana/ben
    stats = {s.annotator: s for s in report.annotators}
    assert stats["ana"].images == 4 and stats["ana"].median_seconds == 20 and stats["cat"].median_seconds is None
    assert {d.image_id for d in report.disagreements} == {ids[1], ids[3]}
    assert "kappa" in report.format() and report.as_dict()["agreement"]["pairs"] == 6
