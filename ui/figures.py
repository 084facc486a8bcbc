"""The class-probability chart of a prediction (plotly). The pictures and the PNG report are
``core.inference.report``'s, shared with the CLI."""
from __future__ import annotations

from typing import Mapping

import plotly.graph_objects as go

from core.inference.report import CLASS_COLOURS
from core.settings import CLASSES


def probability_chart(probabilities: Mapping[str, float], predicted: str | None = None) -> go.Figure:
    """Horizontal bars, one per class in the fixed order, the predicted class outlined."""
    names = [name for name in CLASSES if name in probabilities]
    values = [float(probabilities[name]) for name in names]
    figure = go.Figure(go.Bar(
        x=values, y=names, orientation="h", text=[f"{v:.0%}" for v in values], textposition="auto",
        marker_color=[CLASS_COLOURS.get(name, "#888") for name in names],
        marker_line_width=[3 if name == predicted else 0 for name in names], marker_line_color="#222",
    ))
    figure.update_layout(height=170, margin=dict(l=10, r=10, t=10, b=10), xaxis=dict(range=[0, 1], tickformat=".0%"),
                         yaxis=dict(autorange="reversed"), showlegend=False)
    return figure
