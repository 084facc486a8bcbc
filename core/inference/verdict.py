"""The verdict: what a prediction's own fields let it say about a film, in the words every output leads with.

From a :class:`core.inference.pipeline.Prediction` (read, never changed): the class it gives or "not judged",
the title line (page, batch table, CSV, JSON, PNG report), why in plain words, what to do next, and whether the
angle with its landmarks and the heatmap may be shown as evidence (:func:`verdict_of`). The rules the pipeline's
``judge`` stage applies live here too: an angle no spine has (:func:`implausible`), which evidence leads
(:func:`choose_lead`) and why (:func:`which_evidence`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from core.data.measure import Measurements, RuleThresholds

# A C2-C7 angle beyond this means the points are wrong, not the spine: adult lordosis rarely passes 60 deg
# and kyphosis 40 deg. Keypoint confidences do not catch it (an undertrained pose model reports ~0.9 for
# points 180 deg off), so the angle itself is the check.
PLAUSIBLE_COBB_DEG = 80.0
# Which evidence wins when the network and the angle's rule class differ: the angle, when its landmarks are all
# sure and it lies at least this far from the nearest class threshold (landmark errors move it ~2 deg).
ANGLE_MARGIN_DEG = 3.0
SURE_LANDMARKS = 0.5  # mean heatmap confidence of a set of points the angle can rest on
LEADS = ("network", "angle", "none")


def implausible(measurements: Measurements | None) -> str | None:
    """Why measurements from predicted landmarks cannot be right, or None when they may be."""
    if measurements is None:
        return None
    level, angle = _lowest_angle(measurements)
    if abs(angle) > PLAUSIBLE_COBB_DEG:
        return (f"the landmarks give an implausible C2-{level} angle ({angle:.0f} deg, beyond "
                f"+/-{PLAUSIBLE_COBB_DEG:.0f}), so the points are wrong")
    return None


def _lowest_angle(measurements: Measurements) -> tuple[str, float]:
    """("C7", Cobb C2-C7), or ("C6", Cobb C2-C6) for a partial measurement: the angle the rule class comes from."""
    if measurements.lowest_level == "C6":
        return "C6", measurements.cobb_c2c6
    return "C7", measurements.cobb_c2c7


def describe_points(names: list[str]) -> str:
    """"C7 (all 4 corners), C6 bottom left": missing landmarks grouped by vertebra."""
    by_level: dict[str, list[str]] = {}
    for name in names:
        level, _, corner = name.partition(" ")
        by_level.setdefault(level, []).append(corner)
    parts = []
    for level, corners in by_level.items():
        whole = 4 if level != "C2" else 3
        parts.append(f"{level} (all {whole} points)" if len(corners) == whole else
                     ", ".join(f"{level} {corner}" for corner in corners))
    return ", ".join(parts)


def choose_lead(flagged: bool, measurements: Measurements | None, missing: list[str], landmark_confidence,
                spine_found: bool | None = None) -> str:
    """What a result leads with (``LEADS``). On a film unlike the training films the classifier's answer is not
    evidence, but landmarks that are all sure still give an angle to measure: it leads then; otherwise nothing
    does ("none": no confident answer on a film the models cannot judge). When the setup's detector found no
    cervical spine (``spine_found`` False) nothing is judged, whatever else there is: the class is withheld, not
    only capped."""
    if spine_found is False:
        return "none"
    if not flagged:
        return "network"
    sure = (measurements is not None and not missing and landmark_confidence is not None
            and float(np.mean(landmark_confidence)) >= SURE_LANDMARKS)
    return "angle" if sure else "none"


# ------------------------------------------------------------------------------------ the verdict
# What makes a film unlike the training films, in words a reader of films uses (core.evaluation.ood's components;
# the numbers stay in ood_components / ood_reasons and the page's details), in the order a person checks them.
NO_SPINE_REASON = "the detector found no cervical spine in it"
PLAIN_REASONS = (
    ("detector", NO_SPINE_REASON),
    ("landmarks", "the landmark model could not place most of the vertebral corners"),
    ("image", "its contrast, edges and texture differ from theirs"),
    ("features", "the classifier has seen no films like it"),
)
UNLIKE = "unlike the training films"
NO_SPINE = "no cervical spine found"
ADVICE_MEASURE = ("measure its angle by hand: import the film on the Data page and place its landmarks on the Label "
                  "page, which measures the angle as you place them.")
ADVICE_FINETUNE = ("If your films often look like this, label some films like it and fine-tune from the promoted "
                   "model on the Train page.")
NOT_JUDGED_TITLE = "not judged — check this film by eye"


@dataclass(frozen=True)
class Verdict:
    """The one result of a prediction, as every output shows it (page, batch table, CSV, JSON, PNG report)."""

    lead: str                     # LEADS: what the result rests on
    curvature_class: str | None   # the class given: the network's, or the measured angle's rule class; None: not judged
    title: str                    # the one line: "normal (84%)", "normal by its measured angle (...)", "not judged ..."
    status: str                   # "judged" | "judged by its measured angle" | "not judged"
    reason: str                   # why not judged by the network: UNLIKE | NO_SPINE | "" (judged by it)
    why: str                      # plain words: why the result is what it is ("" for a plain confident answer)
    advice: str                   # plain words: what to do next ("" when nothing needs doing)
    angle_shown: bool             # the angle, its landmarks and endplate lines are shown (drawn, reported)
    angle_note: str | None        # when they are not: why, in plain words
    heatmap_shown: bool           # the network's heatmap is evidence for the class given
    low_confidence: bool = False

    @property
    def judged(self) -> bool:
        return self.curvature_class is not None

    @property
    def warns(self) -> bool:
        """Whether the result needs a warning beside it (not judged, judged by the angle, or low confidence)."""
        return bool(self.why) and (self.lead != "network" or self.low_confidence)

    @property
    def flag(self) -> str:
        """The status with its reason: "not judged (unlike the training films)"; the batch summary counts these."""
        return f"{self.status} ({self.reason})" if self.reason else self.status

    def to_json(self) -> dict:
        return {"title": self.title, "class": self.curvature_class, "judged": self.judged, "status": self.status,
                "reason": self.reason or None, "flag": self.flag, "lead": self.lead, "why": self.why,
                "advice": self.advice, "angle_shown": self.angle_shown, "angle_note": self.angle_note,
                "heatmap_shown": self.heatmap_shown, "low_confidence": self.low_confidence}


def plain_reasons(components: dict[str, float]) -> list[str]:
    """The OOD components over their threshold, in plain words (``PLAIN_REASONS``)."""
    return [text for name, text in PLAIN_REASONS if float(components.get(name, 0.0) or 0.0) > 1.0]


def angle_text(measurements: Measurements) -> str:
    """"Cobb C2-C7 +25.7 deg" (or C2-C6 when C7 was not seen): the angle the rule class comes from."""
    level, angle = _lowest_angle(measurements)
    return f"Cobb C2-{level} {angle:+.1f} deg"


def verdict_of(prediction: Any) -> Verdict:  # a pipeline.Prediction (this module sits below pipeline)
    """The verdict of a prediction, from its own fields: the one place the result's words are decided."""
    m, lead = prediction.measurements, prediction.lead
    spine_missing = prediction.spine_found is False
    reasons = plain_reasons(prediction.ood_components)
    if spine_missing and NO_SPINE_REASON not in reasons:
        reasons.insert(0, NO_SPINE_REASON)
    unlike = "This film is unlike the films the models were trained on" + (f" ({'; '.join(reasons)})" if reasons
                                                                            else "")
    if m is None:
        missing = prediction.angle_missing or "no landmark model, or no usable vertebrae"
        angle_note = f"No angle: {missing}."
    else:
        angle_note = None
    if lead == "angle" and m is not None:
        return Verdict(
            lead, m.rule_class, f"{m.rule_class} by its measured angle ({angle_text(m)})",
            "judged by its measured angle", UNLIKE,
            f"{unlike}, so the network's class is not used. Every landmark is sure, so the result is the class of the "
            f"measured angle ({angle_text(m)}).",
            "Check that the dots sit on the vertebral corners before relying on the angle, or " + ADVICE_MEASURE
            + " " + ADVICE_FINETUNE,
            True, None, False, True)
    if lead != "network" or spine_missing:
        if m is not None:
            angle_note = ("The landmarks and their angle are withheld: " + (
                "the detector found no cervical spine, so they may lie on something else." if spine_missing else
                "on a film unlike the training films, some of them are too unsure to rest on."))
        if spine_missing:
            why = ("The detector found no cervical spine in this image, so no class is given. It may not be a "
                   "lateral neck film, or it is unlike the films the models were trained on"
                   + (f" ({'; '.join(others)})" if (others := [r for r in reasons if r != NO_SPINE_REASON]) else "")
                   + ".")
            advice = "Check that this is a lateral cervical radiograph. If it is, read it yourself, or "
        else:
            why = f"{unlike}, so no class is given." + (
                " Its landmarks are not all sure, so no angle is given either." if m is not None else
                " There is no measured angle to go on either.")
            advice = "Read the film yourself, or "
        return Verdict("none", None, NOT_JUDGED_TITLE, "not judged", NO_SPINE if spine_missing else UNLIKE, why,
                       advice + ADVICE_MEASURE + " " + ADVICE_FINETUNE, False, angle_note, False, True)
    cls, probability = prediction.curvature_class, prediction.confidence
    title = f"{cls} ({probability:.0%}" + (", low confidence)" if prediction.low_confidence else ")")
    why = advice = ""
    if prediction.low_confidence:
        found = "No detector is in use" if prediction.spine_found is None else "No box around the spine was found"
        why = (f"{found}, so the network read the whole image (less reliable); its top probability is "
               f"{probability:.0%}." if prediction.box_source == "whole image" else
               f"Low confidence: the network's top probability is only {probability:.0%}.")
        advice = "Read this result with extra care and check it against the film."
    return Verdict("network", cls, title, "judged", "", why, advice, m is not None, angle_note,
                   prediction.cam is not None, bool(prediction.low_confidence))


def which_evidence(measurements: Measurements, landmark_confidence, missing: list[str], probability: float,
                   flagged: bool) -> str:
    """When the network's class and the angle's rule class differ, which the evidence favours and why."""
    if flagged:
        return ("neither: the film is unlike the training films, so both the class and the angle may be wrong; "
                "check the landmarks by eye")
    level, angle = _lowest_angle(measurements)
    limits = RuleThresholds.from_env()
    margin = min(abs(angle - limits.normal_min_deg), abs(angle - limits.reversed_max_deg))
    sure = (landmark_confidence is not None and not missing
            and float(np.mean(landmark_confidence)) >= SURE_LANDMARKS)
    if sure and margin >= ANGLE_MARGIN_DEG:
        return (f"the angle: every landmark is sure and Cobb C2-{level} is {margin:.1f} deg from the nearest class "
                f"threshold, more than landmark errors move it")
    if margin < ANGLE_MARGIN_DEG:
        return (f"the network, slightly: Cobb C2-{level} is only {margin:.1f} deg from a class threshold, where a "
                f"small landmark error changes the rule class (network {probability:.0%})")
    return ("neither clearly: some landmarks are unsure; check them on the picture before trusting the angle or "
            "the class")
