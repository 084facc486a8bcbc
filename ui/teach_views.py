"""Views of the Teach page: the rule-class scale, the measurement table, the confusion matrix, canvas points.

No canvas import here (streamlit-drawable-canvas raises outside a running app): the canvas itself is drawn in
pages/teach.py; this module only reads its JSON.
"""
from __future__ import annotations

import math
import pandas as pd
import plotly.graph_objects as go

from core.data.measure import Measurements, RuleThresholds
from core.inference.report import CLASS_COLOURS
from core.settings import CLASSES

_ORIGIN = {"left": 0.0, "top": 0.0, "center": 0.5, "right": 1.0, "bottom": 1.0}


def rule_scale(thresholds: RuleThresholds, limits: tuple[float, float], truth_deg: float | None,
               model_deg: float | None = None, model_class: str | None = None) -> go.Figure:
    """The C2–C7 angle axis cut into the rule's three classes at its thresholds, with the true angle and the
    models' own angle on it (the model's class in the marker's label, to compare with the band it falls in)."""
    low, high = limits
    bands = (("reversed", low, thresholds.reversed_max_deg), ("straightened", thresholds.reversed_max_deg,
             thresholds.normal_min_deg), ("normal", thresholds.normal_min_deg, high))
    figure = go.Figure()
    for name, start, end in bands:
        figure.add_shape(type="rect", x0=start, x1=end, y0=0, y1=1, fillcolor=CLASS_COLOURS[name], opacity=0.55,
                         line_width=0, layer="below")
        figure.add_annotation(x=(start + end) / 2, y=0.82, text=name, showarrow=False, font=dict(size=12))
    for value in (thresholds.reversed_max_deg, thresholds.normal_min_deg):
        figure.add_shape(type="line", x0=value, x1=value, y0=0, y1=1, line=dict(color="#222", width=2))
        figure.add_annotation(x=value, y=1.0, yanchor="bottom", text=f"{value:+g}°", showarrow=False)
    if truth_deg is not None:
        figure.add_trace(go.Scatter(x=[truth_deg], y=[0.5], mode="markers+text", text=[f"truth {truth_deg:+.1f}°"],
                                    textposition="top center", marker=dict(symbol="triangle-up", size=16, color="#000"),
                                    name="true angle"))
    if model_deg is not None:
        label = f"model {model_deg:+.1f}°" + (f" → {model_class}" if model_class else "")
        figure.add_trace(go.Scatter(x=[model_deg], y=[0.32], mode="markers+text", text=[label], textposition="bottom center",
                                    marker=dict(symbol="diamond", size=13, color="#6a3d9a"), name="model's angle"))
    figure.update_layout(height=170, margin=dict(l=10, r=10, t=24, b=10), showlegend=False,
                         xaxis=dict(range=[low, high], title="Cobb C2–C7 (°)", dtick=10),
                         yaxis=dict(range=[0, 1], visible=False))
    return figure


def measurements_frame(m: Measurements) -> pd.DataFrame:
    """The truth's numbers, each named the way the picture labels it."""
    def length(px: float, mm: float | None) -> str:
        return f"{px:+.1f} px" + ("" if mm is None else f" ({mm:+.1f} mm)")

    mm = m.toyama_mm or [None] * len(m.toyama_px)
    rows = [("Cobb C2–C7 (four-line)", f"{m.cobb_c2c7:+.1f}°"), ("Cobb C2–C6", f"{m.cobb_c2c6:+.1f}°"),
            ("Ishihara index (CCI)", f"{m.cci:+.1f} %")]
    rows += [(f"a{i}: C{i + 2} corner to the chord", length(px, d))
             for i, (px, d) in enumerate(zip(m.toyama_px, mm), start=1)]
    rows += [("Arc depth", length(m.arc_depth_px, m.arc_depth_mm)),
             ("Rule class", m.rule_class), ("Patient faces", m.facing)]
    return pd.DataFrame(rows, columns=["measurement", "value"])


def confusion_frame(confusion) -> pd.DataFrame:
    return pd.DataFrame(confusion, index=[f"truth: {c}" for c in CLASSES], columns=[f"answer: {c}" for c in CLASSES])


def canvas_points(json_data: dict | None, scale: float) -> list[tuple[float, float]]:
    """Centres of the canvas's point marks, in film pixels (canvas pixels / ``scale``), in the order placed.

    A point is a fabric Circle whose ``left``/``top`` are at its origin (``originX``/``originY``), the full width
    being the diameter plus the stroke, all times its scale (the edit toggle can move or scale a point)."""
    points = []
    for obj in (json_data or {}).get("objects", []):
        if obj.get("type") not in ("circle", "Circle"):
            continue
        scale_x, scale_y = float(obj.get("scaleX", 1) or 1), float(obj.get("scaleY", 1) or 1)
        stroke = float(obj.get("strokeWidth", 0) or 0)
        width = (2 * float(obj.get("radius", 0)) + stroke) * scale_x
        height = (2 * float(obj.get("radius", 0)) + stroke) * scale_y
        x = float(obj.get("left", 0)) + (0.5 - _ORIGIN.get(obj.get("originX", "left"), 0.0)) * width
        y = float(obj.get("top", 0)) + (0.5 - _ORIGIN.get(obj.get("originY", "top"), 0.0)) * height
        if math.isfinite(x) and math.isfinite(y):
            points.append((x / scale, y / scale))
    return points

