"""The predictions table: one row per film, written by ``python -m core predict --out`` as predictions.csv and
downloaded from the Predict page's batch table as the same CSV, so a film gives the same row either way.

The verdict first (what the page's table and title, the JSON and the PNG report say), then the evidence. ``class``
and ``p_*`` are the network's own answer, as in the JSON; the angle columns stay empty where the verdict withholds
it. A file that could not be read is a row too: its verdict says so and ``error`` says why.
"""
from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Iterable, Mapping

from core.data.exports import spreadsheet_safe
from core.inference.pipeline import Prediction, PredictFailure
from core.settings import CLASSES

COLUMNS = ("file", "verdict", "judged", "verdict_class", "status", "lead", "class", "p_normal", "p_straightened",
           "p_reversed", "x1", "y1", "x2", "y2", "box_confidence", "box_source", "low_confidence", "cobb_c2c7",
           "cci", "rule_class", "agreement", "ood_score", "out_of_distribution", "why", "cam", "error")
UNREAD = "could not be read"  # the verdict of a file that could not be read, as the page's table says it


def row(result: Prediction | PredictFailure, cam_path: Path | None = None) -> dict:
    """One film's row (``cam_path``: where its Grad-CAM overlay was written, if it was)."""
    if isinstance(result, PredictFailure):
        return {"file": result.file, "verdict": UNREAD, "error": result.reason}
    verdict = result.verdict
    m = result.measurements if verdict.angle_shown else None
    return {
        "file": result.file, "verdict": verdict.title, "judged": verdict.judged,
        "verdict_class": verdict.curvature_class or "", "status": verdict.flag, "lead": verdict.lead,
        "class": result.curvature_class,
        **{f"p_{c}": round(result.probabilities.get(c, math.nan), 4) for c in CLASSES},
        **dict(zip(("x1", "y1", "x2", "y2"), (round(v, 1) for v in result.roi_box))),
        "box_confidence": "" if result.box_confidence is None else round(result.box_confidence, 4),
        "box_source": result.box_source, "low_confidence": result.low_confidence,
        "cobb_c2c7": "" if m is None or not math.isfinite(m.cobb_c2c7) else round(m.cobb_c2c7, 2),
        "cci": "" if m is None or not math.isfinite(m.cci) else round(m.cci, 2),
        "rule_class": "" if m is None else m.rule_class,
        "agreement": "" if result.agreement is None else result.agreement,
        "ood_score": "" if result.ood_score is None else result.ood_score,
        "out_of_distribution": result.out_of_distribution, "why": verdict.why,
        "cam": "" if cam_path is None else str(cam_path), "error": "",
    }


def csv_text(rows: Iterable[Mapping]) -> str:
    """The rows as CSV text in ``COLUMNS`` order; file names and notes are user text, so never a formula in the
    spreadsheet that opens it."""
    buffer = io.StringIO(newline="")
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS)
    writer.writeheader()
    writer.writerows({k: spreadsheet_safe(r.get(k, "")) for k in COLUMNS} for r in rows)
    return buffer.getvalue()
