"""Plotly figures of runs: per-epoch curves (one run or several overlaid), confusion matrix, one-vs-rest ROC,
reliability diagram and the study-layout bars with the published row. Data comes from ``core.runs.reports``."""
from __future__ import annotations

from typing import Sequence

import pandas as pd
import plotly.graph_objects as go

# Per task: (panel title, metrics.csv columns plotted together). Panels whose columns are all empty are skipped.
CURVES = {
    "classify": (("Loss", ("train_loss", "val_loss")), ("Validation accuracy and macro-F1", ("val_acc", "val_macro_f1")),
                 ("Learning rate", ("lr",))),
    "landmarks": (("Loss", ("train_loss", "val_loss", "train_pose_loss", "val_pose_loss")),
                  ("Point error (px)", ("val_mean_error_px",)), ("Cobb C2–C7 error (°)", ("val_cobb_mae_deg",)),
                  ("Pose mAP50", ("pose_mAP50", "pose_mAP50_95")), ("Learning rate", ("lr",))),
    "detect": (("Loss", ("train_box_loss", "val_box_loss", "train_cls_loss", "val_cls_loss")),
               ("mAP50", ("mAP50", "mAP50_95")), ("Precision and recall", ("precision", "recall")),
               ("Learning rate", ("lr",))),
    "compare": (("Test scores per model", ("accuracy", "mean_one_vs_rest_accuracy", "macro_f1", "macro_recall")),),
}
HEIGHT = 260


def _layout(figure: go.Figure, title: str, x_title: str = "epoch") -> go.Figure:
    figure.update_layout(title=title, height=HEIGHT, margin=dict(l=10, r=10, t=40, b=10), xaxis_title=x_title,
                         legend=dict(orientation="h", y=-0.25))
    return figure


def run_curves(metrics: pd.DataFrame, task: str) -> list[go.Figure]:
    """One figure per panel of ``CURVES[task]`` with data (a compare run: one bar group per model)."""
    figures = []
    if metrics.empty:
        return figures
    for title, columns in CURVES.get(task, CURVES["classify"]):
        present = [c for c in columns if c in metrics and pd.to_numeric(metrics[c], errors="coerce").notna().any()]
        if not present:
            continue
        figure = go.Figure()
        for column in present:
            values = pd.to_numeric(metrics[column], errors="coerce")
            if task == "compare":
                figure.add_trace(go.Bar(x=metrics.get("model", metrics["epoch"]), y=values, name=column))
            else:
                figure.add_trace(go.Scatter(x=metrics["epoch"], y=values, mode="lines+markers", name=column))
        figures.append(_layout(figure, title, "model" if task == "compare" else "epoch"))
    return figures


def overlaid(curves: pd.DataFrame, column: str, title: str | None = None) -> go.Figure | None:
    """One line per run of ``column`` over epochs (the compare view)."""
    if column not in curves or pd.to_numeric(curves[column], errors="coerce").isna().all():
        return None
    figure = go.Figure()
    for run, rows in curves.groupby("run", sort=False):
        figure.add_trace(go.Scatter(x=rows["epoch"], y=pd.to_numeric(rows[column], errors="coerce"),
                                    mode="lines+markers", name=str(run)))
    return _layout(figure, title or column)


def confusion(matrix: Sequence[Sequence[int]], classes: Sequence[str]) -> go.Figure:
    figure = go.Figure(go.Heatmap(z=matrix, x=list(classes), y=list(classes), colorscale="Blues", showscale=False,
                                  text=matrix, texttemplate="%{text}"))
    figure.update_layout(title="Confusion matrix (test)", height=320, margin=dict(l=10, r=10, t=40, b=10),
                         xaxis_title="predicted", yaxis_title="true", yaxis_autorange="reversed")
    return figure


def roc(curves: dict) -> go.Figure:
    figure = go.Figure()
    for name, curve in curves.items():
        figure.add_trace(go.Scatter(x=curve["fpr"], y=curve["tpr"], mode="lines",
                                    name=f"{name} (AUC {curve['auc']:.2f})"))
    figure.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line=dict(dash="dot", color="#999"),
                                name="chance"))
    figure.update_layout(title="One-vs-rest ROC (test)", height=320, margin=dict(l=10, r=10, t=40, b=10),
                         xaxis_title="false positive rate", yaxis_title="true positive rate")
    return figure


def reliability(bins: Sequence[dict]) -> go.Figure:
    """Accuracy against confidence per bin (the diagonal is perfect calibration); marker size = films."""
    figure = go.Figure()
    figure.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line=dict(dash="dot", color="#999"),
                                name="perfectly calibrated"))
    figure.add_trace(go.Scatter(x=[b["confidence"] for b in bins], y=[b["accuracy"] for b in bins],
                                mode="lines+markers", name="model",
                                marker=dict(size=[6 + min(20, b["images"]) for b in bins]),
                                text=[f"{b['images']} films" for b in bins]))
    figure.update_layout(title="Reliability diagram (test)", height=320, margin=dict(l=10, r=10, t=40, b=10),
                         xaxis_title="confidence (top class)", yaxis_title="accuracy",
                         xaxis_range=[0, 1], yaxis_range=[0, 1])
    return figure


def study_bars(table: Sequence[dict], paper: dict, metrics: Sequence[tuple[str, str]]) -> go.Figure:
    """The study's three numbers per run as bars, the published S-ResNet-34 values as dashed reference lines."""
    figure = go.Figure()
    shown = [(key, title) for key, title in metrics if key in paper]
    for row in table:
        if str(row.get("run", "")).startswith(paper["run"]):
            continue
        values = [_point(row.get(title)) for _, title in shown]
        figure.add_trace(go.Bar(x=[title for _, title in shown], y=values, name=str(row["run"])))
    for index, (key, _) in enumerate(shown):
        figure.add_shape(type="line", x0=index - 0.45, x1=index + 0.45, y0=paper[key], y1=paper[key],
                         line=dict(dash="dash", color="#c0392b", width=2))
    figure.add_trace(go.Scatter(x=[None], y=[None], mode="lines", line=dict(dash="dash", color="#c0392b"),
                                name=paper["run"]))
    figure.update_layout(barmode="group", title="Test scores in the study's layout", height=340,
                         margin=dict(l=10, r=10, t=40, b=10), yaxis_range=[0, 1],
                         legend=dict(orientation="h", y=-0.2))
    return figure


def _point(text) -> float | None:
    try:
        return float(str(text).split(" ")[0])
    except ValueError:
        return None


def per_landmark(rows: Sequence[dict]) -> go.Figure:
    figure = go.Figure(go.Bar(x=[r["landmark"] for r in rows], y=[r["mean_error_px"] for r in rows]))
    figure.update_layout(title="Mean error per landmark (px)", height=320, margin=dict(l=10, r=10, t=40, b=10))
    return figure


def bland_altman(data: dict) -> go.Figure:
    """Predicted minus labeled C2–C7 angle against their mean, with the bias and the 95 % limits of agreement."""
    figure = go.Figure(go.Scatter(x=data["mean_deg"], y=data["difference_deg"], mode="markers", name="films"))
    for value, label, dash in ((data["bias_deg"], "bias", "solid"), (data["lower_deg"], "-1.96 SD", "dash"),
                               (data["upper_deg"], "+1.96 SD", "dash")):
        figure.add_hline(y=value, line_dash=dash, annotation_text=f"{label} {value:+.1f}°")
    figure.update_layout(title="Bland–Altman: C2–C7 Cobb angle", height=320, margin=dict(l=10, r=10, t=40, b=10),
                         xaxis_title="mean of predicted and labeled (°)", yaxis_title="predicted − labeled (°)")
    return figure


def iou_histogram(values: Sequence[float]) -> go.Figure:
    figure = go.Figure(go.Histogram(x=list(values), xbins=dict(start=0, end=1.0001, size=0.05)))
    figure.add_vline(x=0.5, line_dash="dash", annotation_text="IoU 0.5")
    figure.update_layout(title="IoU of the best box with the labeled box", height=300,
                         margin=dict(l=10, r=10, t=40, b=10), xaxis_title="IoU", yaxis_title="films")
    return figure
