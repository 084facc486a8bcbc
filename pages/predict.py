"""Predict: upload radiographs (or try a phantom) and see the class, why (Grad-CAM) and the angle.

Thin: reading, detection, landmarks, classification and Grad-CAM are one ``core.inference.pipeline.Predictor``
call (the same as ``python -m core predict``); this page draws the results. Torch is imported only once
there is something to predict, so the page opens at once.
"""
from __future__ import annotations

import hashlib
import json

import pandas as pd
import streamlit as st

from core.runs.promotion import PROMOTED_FILE
from core.settings import CLASSES
from ui.figures import annotated_radiograph, probability_chart, report_png
from ui.frame import NOTICE_PLAIN, engine_errors, frame, selected_runs
from ui.imagery import downscaled, png_bytes, thumbnail_uri
from ui.models import load_predictor, model_files, preload

UPLOAD_TYPES = ["png", "jpg", "jpeg", "tif", "tiff", "dcm", "dicom"]
SAMPLE_SEEDS = {"normal": 11, "straightened": 12, "reversed": 13}
SAMPLE_SIZE = 768
DISPLAY_MAX = 1024  # px: larger films are drawn downscaled (the engine and the numbers use full size)
CAM_LABELS = {"gradcam": "Grad-CAM", "gradcam++": "Grad-CAM++", "eigencam": "Eigen-CAM", "layercam": "LayerCAM"}
KEPT_RESULTS = 6  # per session; a 2048 px result holds ~32 MB (image + heatmap)

frame("Predict")


# ------------------------------------------------------------------ models and results


def predict_cached(predictor, files: tuple, name: str, data: bytes, cam_method: str | None):
    """One prediction per (file content, models, CAM method), kept for this session: changing the opacity
    or reopening a result never recomputes it."""
    key = (hashlib.sha256(data).hexdigest(), files, cam_method)
    results = st.session_state.setdefault("predictions", {})
    if key not in results:
        if len(results) >= KEPT_RESULTS:
            results.pop(next(iter(results)))
        results[key] = predictor.predict(data, name=name, cam_method=cam_method)
    return results[key]


@st.cache_data(show_spinner="Generating a phantom…")
def sample_phantom(curvature_class: str) -> tuple[str, bytes, str]:
    """A synthetic lateral radiograph of the class, with its ground truth for the caption."""
    from core.data.phantom import generate_case

    case = generate_case(SAMPLE_SEEDS[curvature_class], size=SAMPLE_SIZE, curvature_class=curvature_class)
    truth = f"Phantom ground truth: {case.curvature_class}, Cobb C2–C7 {case.cobb_c2c7:+.1f}°"
    return f"phantom_{curvature_class}.png", png_bytes(case.image), truth


# ------------------------------------------------------------------ one result


def measurements_table(prediction) -> pd.DataFrame | None:
    m = prediction.measurements
    if m is None:
        return None
    arc = f"{m.arc_depth_px:.1f} px" + (f" ({m.arc_depth_mm:.1f} mm)" if m.arc_depth_mm is not None else "")
    agreement = {True: "agrees", False: "disagrees", None: "—"}[prediction.agreement]
    rows = [("Cobb C2–C7", f"{m.cobb_c2c7:+.1f}°"), ("Cobb C2–C6", f"{m.cobb_c2c6:+.1f}°"),
            ("Curvature index (CCI)", f"{m.cci:.1f} %"), ("Arc depth", arc),
            ("Rule class (Cobb C2–C7)", m.rule_class),
            ("Network class", f"{prediction.curvature_class} ({agreement})"), ("Patient faces", m.facing)]
    return pd.DataFrame(rows, columns=["measurement", "value"])


def box_label(prediction) -> str:
    if prediction.box_source == "detector" and prediction.box_confidence is not None:
        return f"C2–C7 {prediction.box_confidence:.2f}"
    return f"box from {prediction.box_source}"


def show_result(predictor, files: tuple, name: str, data: bytes, truth: str | None = None) -> None:
    """Radiograph | heatmap (with its method and opacity) | class, probabilities, measurements, report."""
    from core.inference.explain import CAM_METHODS, overlay

    method_column, opacity_column, _ = st.columns([5, 5, 4], gap="medium")
    method = method_column.selectbox("Heatmap method", list(CAM_METHODS),
                                     format_func=lambda m: CAM_LABELS.get(m, m), key="cam_method")
    alpha = opacity_column.slider("Heatmap opacity", 0.0, 1.0, 0.5, 0.05, key="cam_alpha")
    with st.spinner(f"Analysing {name}…"):
        prediction = predict_cached(predictor, files, name, data, method)
    probability = prediction.probabilities[prediction.curvature_class]
    st.subheader(f"{name}: {prediction.curvature_class} ({probability:.0%})")
    if truth:
        st.caption(truth)

    # Drawn at display size (coordinates scaled): full-size films are only needed by the engine.
    pixels, scale = downscaled(prediction.radiograph.pixels, DISPLAY_MAX)
    box = [v * scale for v in prediction.roi_box]
    landmarks = None if prediction.landmarks is None else prediction.landmarks * scale
    annotated = annotated_radiograph(pixels, box, landmarks, box_label(prediction))
    image_column, heatmap_column, numbers_column = st.columns([5, 5, 4], gap="medium")
    image_column.image(annotated, caption="ROI box, landmarks and the C2/C7 endplates", width="stretch",
                       output_format="JPEG")
    heatmap = None
    if prediction.cam is not None:
        heatmap = annotated_radiograph(overlay(pixels, prediction.cam, alpha), box)
        heatmap_column.image(heatmap, caption=f"{CAM_LABELS.get(method, method)} heatmap for "
                                              f"'{prediction.curvature_class}'", width="stretch", output_format="JPEG")
        if float(prediction.cam.max()) < 0.05:
            heatmap_column.caption("The map is flat for this image: no region stands out to the model.")
    else:
        heatmap_column.info("No heatmap for this model.")

    with numbers_column:
        if prediction.low_confidence:
            reason = (" and no ROI box was found, so the whole image was classified"
                      if prediction.box_source == "whole image" else "")
            st.warning(f"Low confidence: the top probability is {probability:.0%}{reason}. "
                       "Read this result with extra care.", icon="⚠️")
        st.plotly_chart(probability_chart(prediction.probabilities, prediction.curvature_class), key="probabilities")
        table = measurements_table(prediction)
        if table is None and predictor.landmark_model is None:
            st.info("No landmark model is promoted, so there is no angle: train one on the Train page "
                    "or build the demo.")
        elif table is None:
            st.info("The landmark model found no usable vertebrae in this image, so there is no angle.")
        else:
            st.dataframe(table, hide_index=True, width="stretch")
        st.download_button("Download the PNG report",  # composed only when clicked
                           lambda: report(predictor, prediction, annotated, heatmap, name, truth),
                           file_name=f"{name.rsplit('.', 1)[0]}_report.png", mime="image/png",
                           on_click="ignore", key="report_download")
        dicom = prediction.radiograph.meta.get("dicom")
        if dicom:
            with st.expander("DICOM header (de-identified: no names, IDs, dates or institutions)"):
                st.json(dicom)
        for note in prediction.notes:
            st.caption(f"Note: {note}")
        st.caption("Time per stage (ms): " + ", ".join(f"{k} {v:.0f}" for k, v in prediction.timings.items()))
        st.caption("Models: " + models_used(predictor))


def models_used(predictor) -> str:
    """``classifier run A (promoted) · detector run B · landmarks none``: which runs made this result."""
    parts = []
    for what, path in (("classifier", predictor.classifier_path), ("detector", predictor.detector_path),
                       ("landmarks", predictor.landmarks_path)):
        if path is None:
            parts.append(f"{what} none")
            continue
        try:
            record = json.loads((path.parent / PROMOTED_FILE).read_text(encoding="utf-8"))
            parts.append(f"{what} run {record.get('run_id', '?')} (promoted)")
        except (OSError, ValueError):
            parts.append(f"{what} run {path.parent.name}")
    return " · ".join(parts)


def report(predictor, prediction, annotated, heatmap, name: str, truth: str | None) -> bytes:
    m = prediction.measurements
    lines = [f"Cobb C2–C7 {m.cobb_c2c7:+.1f}° (rule class {m.rule_class}, "
             f"{'agrees' if prediction.agreement else 'disagrees'} with the network); CCI {m.cci:.1f} %"
             if m is not None else "No landmark model: no angle measured.",
             f"ROI box from the {prediction.box_source}; model {prediction.model} "
             f"(run {predictor.meta.get('run_id', '?')})"
             + (f", demo quality: {predictor.quality}" if predictor.quality else ""),
             *([truth] if truth else [])]
    return report_png(radiograph=annotated, heatmap=heatmap,
                      title=f"CerviCurve — {name}", curvature_class=prediction.curvature_class,
                      probabilities=prediction.probabilities, lines=lines, notice=NOTICE_PLAIN)


# ------------------------------------------------------------------ many results


def results_table(results, thumbnails: dict[str, str]) -> pd.DataFrame:
    rows = []
    for result in results:
        if hasattr(result, "reason"):  # PredictFailure
            rows.append({"image": None, "file": result.file, "class": None, "error": result.reason})
            continue
        m = result.measurements
        rows.append({
            "image": thumbnails.get(result.file), "file": result.file, "class": result.curvature_class,
            **{f"p_{c}": round(result.probabilities.get(c, float("nan")), 3) for c in CLASSES},
            "low_confidence": result.low_confidence, "box_source": result.box_source,
            "cobb_c2c7": None if m is None else round(m.cobb_c2c7, 1), "cci": None if m is None else round(m.cci, 1),
            "rule_class": None if m is None else m.rule_class, "agreement": result.agreement, "error": None,
        })
    return pd.DataFrame(rows)


def show_batch(predictor, files: tuple, sources: list[tuple[str, bytes]]) -> None:
    key = (tuple(hashlib.sha256(data).hexdigest() for _, data in sources), files)
    cached = st.session_state.get("batch")
    if cached is None or cached[0] != key:
        progress = st.progress(0.0, text="Starting…")

        def step(done: int, total: int, name: str) -> None:
            progress.progress(done / total, text=f"{done}/{total}: {name}")

        results = list(predictor.predict_many(sources, progress=step, cam_method=None))
        progress.empty()
        thumbnails = {r.file: thumbnail_uri(r.radiograph.pixels, 96) for r in results if hasattr(r, "radiograph")}
        st.session_state["batch"] = cached = (key, results_table(results, thumbnails))
    table = cached[1]
    failed = table[table["error"].notna()]
    if len(failed):  # the reasons already start with the file name
        st.error(f"{len(failed)} of {len(table)} files could not be analysed: " + "; ".join(failed["error"]))
    done = table[table["error"].isna()]
    st.subheader(f"{len(done)} results")
    st.dataframe(table, hide_index=True, width="stretch", key="results_table", column_config={
        "image": st.column_config.ImageColumn("image", width="small"),
        **{f"p_{c}": st.column_config.ProgressColumn(f"p({c})", min_value=0.0, max_value=1.0, format="%.2f")
           for c in CLASSES},
        "cobb_c2c7": st.column_config.NumberColumn("Cobb C2–C7 (°)", format="%+.1f"),
    })
    st.download_button("Download the table (CSV)", table.drop(columns=["image"]).to_csv(index=False),
                       file_name="cervicurve_predictions.csv", mime="text/csv", key="csv_download")
    if len(done):
        chosen = st.selectbox("Show one result in detail", list(done["file"]), key="detail_choice")
        data = dict(sources)[chosen]
        show_result(predictor, files, chosen, data)


# ------------------------------------------------------------------ page

uploads = st.file_uploader("Lateral cervical radiographs (PNG, JPEG, TIFF or DICOM; one or many)", type=UPLOAD_TYPES,
                           accept_multiple_files=True, key="predict_upload")
samples = st.container(horizontal=True, vertical_alignment="center")
samples.write("Or try a synthetic sample:")
for curvature_class in CLASSES:
    if samples.button(curvature_class, key=f"sample_{curvature_class}"):
        st.session_state["sample_class"] = curvature_class

sources, truth = [], None
if uploads:
    sources = [(upload.name, upload.getvalue()) for upload in uploads]
elif st.session_state.get("sample_class"):
    with engine_errors("Generating the sample"):
        name, data, truth = sample_phantom(st.session_state["sample_class"])
        sources = [(name, data)]
runs = selected_runs()
files = model_files(runs)
if not sources:
    preload(runs, files)  # the page is drawn: load the models while the user picks a file
    st.stop()
if files[0] is None:
    st.info("No classifier yet. Build the demo (above), or train a model on the Train page and promote it.")
    st.stop()
predictor = None
with engine_errors("Loading the models"):
    predictor = load_predictor(runs, files)
if predictor is None:
    st.stop()
with engine_errors("The prediction"):
    if len(sources) == 1:
        show_result(predictor, files, *sources[0], truth=truth)
    else:
        show_batch(predictor, files, sources)
