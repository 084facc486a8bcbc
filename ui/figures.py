"""The class probabilities of a prediction as plain bars, one ``st.progress`` per class in the fixed order.

Not a plotly chart: in a browser on the 2-core machine plotly's first draw on a page held a warm 2048 px
Predict result back by about a second (benchmarks/results/app_latency.md). The pictures and the PNG report are
``core.inference.report``'s, shared with the CLI."""
from __future__ import annotations

from typing import Mapping

import streamlit as st

from core.settings import CLASSES


def probability_bars(probabilities: Mapping[str, float], predicted: str | None = None) -> None:
    """One bar per class; the predicted one's label in bold."""
    for name in (name for name in CLASSES if name in probabilities):
        value = min(max(float(probabilities[name]), 0.0), 1.0)
        label = f"{name}: {value:.0%}"
        st.progress(value, text=f"**{label}** (the answer)" if name == predicted else label)
