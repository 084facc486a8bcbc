"""Predict: upload radiographs (or try a phantom) and see the verdict, why (Grad-CAM) and the angle.

One verdict per film (``Prediction.verdict``, decided in core): the title, the batch table's first column, the CSV
and the PNG report say the same thing; a film the models cannot judge says so, with what to do next, and nothing
is drawn (landmarks, endplates, heatmap) that the verdict does not rest on.

Thin: reading, detection, landmarks, classification and Grad-CAM are one ``core.inference.pipeline.Predictor``
call (the same as ``python -m core predict``); the PNG report and the models line are ``core.inference.report``'s
(the same as ``predict --report``). The film is read in ``ui.film_viewer`` (zoom, pan, window/level, layers), which
is sent only the layers the verdict shows. Torch is imported only once there is something
to predict, so the page opens at once; then ``pipeline.preload`` loads the models in the background.
"""
from __future__ import annotations

import hashlib

import pandas as pd
import streamlit as st

from core.inference import pipeline, report
from core.inference import table as predictions_table
from core.settings import CLASSES
from ui.figures import probability_bars
from ui.film_viewer import film_viewer, viewer_args, waiting_args
from ui.frame import engine_errors, frame, selected_runs
from ui.imagery import png_bytes, thumbnail_uri

UPLOAD_TYPES = ["png", "jpg", "jpeg", "tif", "tiff", "dcm", "dicom"]
SAMPLE_SEEDS = {"normal": 11, "straightened": 12, "reversed": 13}
SAMPLE_SIZE = 768
CAM_LABELS = {"gradcam": "Grad-CAM", "gradcam++": "Grad-CAM++", "eigencam": "Eigen-CAM", "layercam": "LayerCAM"}
KEPT_RESULTS = 6  # per session; a 2048 px result holds ~32 MB (image + heatmap)

state = frame("Predict")


# ------------------------------------------------------------------ models and results


def predict_cached(predictor, name: str, data: bytes, cam_method: str | None):
    """One prediction per (file content, models, CAM method), kept for this session: changing the opacity
    or reopening a result never recomputes it."""
    key = (hashlib.sha256(data).hexdigest(), model_files(predictor), cam_method)
    results = st.session_state.setdefault("predictions", {})
    if key not in results:
        if len(results) >= KEPT_RESULTS:
            results.pop(next(iter(results)))
        results[key] = predictor.predict(data, name=name, cam_method=cam_method)
    return results[key]


def model_files(predictor) -> tuple:
    """Which model files made a result (a re-promoted model is another file)."""
    return tuple((str(p), p.stat().st_mtime_ns) if p else None
                 for p in (predictor.classifier_path, predictor.detector_path, predictor.landmarks_path))


@st.cache_data(show_spinner="Generating a phantom…")
def sample_phantom(curvature_class: str) -> tuple[str, bytes, str]:
    """A synthetic lateral radiograph of the class, with its ground truth for the caption."""
    from core.data.phantom import generate_case

    case = generate_case(SAMPLE_SEEDS[curvature_class], size=SAMPLE_SIZE, curvature_class=curvature_class)
    truth = f"Phantom ground truth: {case.curvature_class}, Cobb C2–C7 {case.cobb_c2c7:+.1f}°"
    return f"phantom_{curvature_class}.png", png_bytes(case.image), truth


# ------------------------------------------------------------------ one result


def measurements_table(prediction) -> pd.DataFrame | None:
    """The angle and indices, only where the verdict shows them (never a withheld angle)."""
    m, verdict = prediction.measurements, prediction.verdict
    if m is None or not verdict.angle_shown:
        return None
    if m.lowest_level == "C6":  # C7 not seen: only what C2-C6 allow
        rows = [("Cobb C2–C7", "— (C7 not seen)"), ("Cobb C2–C6", f"{m.cobb_c2c6:+.1f}°"),
                ("Rule class (Cobb C2–C6)", m.rule_class)]
    else:
        arc = f"{m.arc_depth_px:.1f} px" + (f" ({m.arc_depth_mm:.1f} mm)" if m.arc_depth_mm is not None else "")
        rows = [("Cobb C2–C7", f"{m.cobb_c2c7:+.1f}°"), ("Cobb C2–C6", f"{m.cobb_c2c6:+.1f}°"),
                ("Curvature index (CCI)", f"{m.cci:.1f} %"), ("Arc depth", arc),
                ("Rule class (Cobb C2–C7)", m.rule_class)]
    if verdict.lead == "network":
        agreement = {True: "agrees", False: "disagrees", None: "—"}[prediction.agreement]
        rows.append(("Network class", f"{prediction.curvature_class} ({agreement})"))
    else:  # the angle is the result: the network's class is not evidence on this film
        rows.append(("Network class", f"{prediction.curvature_class} (not used for this film)"))
    rows.append(("Patient faces", m.facing))
    if prediction.evidence and verdict.lead == "network":
        rows.append(("Evidence favours", prediction.evidence))
    if prediction.missing_landmarks:
        rows.append(("Points left out (unsure)", str(len(prediction.missing_landmarks))))
    return pd.DataFrame(rows, columns=["measurement", "value"])


def verdict_warning(verdict) -> str:
    """The verdict's plain warning and what to do next (core.inference.verdict.verdict_of words both)."""
    return verdict.why + (f"\n\n**What to do:** {verdict.advice}" if verdict.advice else "")


def unlike_details(prediction) -> None:
    """The numbers behind "unlike the training films", for those who want them (the JSON has the same)."""
    st.write(f"Out-of-distribution score **{prediction.ood_score:.2f}** (over 1: unlike the films the models were "
             "trained on; each part below is a ratio to its own limit).")
    names = {"features": "classifier features", "image": "pixel statistics", "landmarks": "unsure landmarks",
             "detector": "detector found no spine"}
    st.dataframe(pd.DataFrame([(names.get(k, k), v) for k, v in prediction.ood_components.items()],
                              columns=["part", "ratio"]), hide_index=True)
    for reason in prediction.ood_reasons:
        st.caption(f"• {reason}")


def show_result(predictor, name: str, data: bytes, truth: str | None = None, places=None) -> None:
    """The verdict (title, warning, what to do) | radiograph | heatmap | numbers and report, all from one verdict.
    ``places``: the page's (head, reading view, tail) containers, so the reading view takes the place (and the
    iframe) of the empty one drawn before the upload; new ones below whatever is drawn already without it."""
    from core.inference.explain import CAM_METHODS

    head, view, tail = places or (st.container(), st.container(), st.container())
    with head:
        method_column, opacity_column, _ = st.columns([5, 5, 4], gap="medium")
        method = method_column.selectbox("Heatmap method", list(CAM_METHODS),
                                         format_func=lambda m: CAM_LABELS.get(m, m), key="cam_method")
        alpha = opacity_column.slider("Heatmap opacity", 0.0, 1.0, 0.5, 0.05, key="cam_alpha")
        with st.spinner(f"Analysing {name}…"):
            prediction = predict_cached(predictor, name, data, method)
        verdict = prediction.verdict
        provenance = report.provenance(predictor)
        st.subheader(f"{name}: {verdict.title}")
        if truth:
            st.caption(truth)
        if verdict.warns:  # across the page, under the title: the first thing read after it
            st.warning(verdict_warning(verdict), icon="⚠️")
        if prediction.out_of_distribution or verdict.lead != "network":
            with st.expander("Details: how unlike the training films, and the network's own answer"):
                if prediction.ood_score is not None:
                    unlike_details(prediction)
                if verdict.lead != "network":
                    st.write("The network's own answer (**not the result** for this film):")
                    probability_bars(prediction.probabilities)
                if not prediction.calibrated:
                    st.caption("Probabilities not calibrated for this film.")

    # The reading view: the film large, zoom, pan, window/level and layers (ui.film_viewer sends only what the
    # verdict shows: no landmarks or endplates without the angle, no heatmap without the network's class). It spans
    # the page: beside a numbers column it would be under half the window at 1024 px wide (the sidebar takes ~380 px);
    # the numbers follow it, in two columns.
    cam_label = f"{CAM_LABELS.get(method, method)} heatmap for '{prediction.curvature_class}'"
    with view:
        film_viewer(viewer_args(prediction, alpha, cam_label), key="film_viewer")
        drawn = "ROI box, landmarks and the C2/C7 endplates" \
            if verdict.angle_shown and prediction.landmarks is not None \
            else "ROI box" + ("" if prediction.box_source == "detector" else f" ({prediction.box_source})") + \
            " — no landmarks drawn"
        st.caption(drawn)
        if prediction.cam is not None and verdict.heatmap_shown:
            st.caption(cam_label)
            if float(prediction.cam.max()) < 0.05:
                st.caption("The map is flat for this image: no region stands out to the model.")
        elif prediction.cam is not None:
            st.info("No heatmap: the network's class is not the result for this film, so a map of where it "
                    "looked is no evidence.")
        else:
            st.info("No heatmap for this model.")

    with tail:
        numbers_column, about_column = st.columns([1, 1], gap="medium")
    with numbers_column:
        if verdict.lead == "network":
            probability_bars(prediction.probabilities, prediction.curvature_class)
        table = measurements_table(prediction)
        if table is not None:
            st.dataframe(table, hide_index=True, width="stretch")
        elif prediction.measurements is None and predictor.landmark_model is None:
            st.info("No landmark model is promoted, so there is no angle: train one on the Train page "
                    "or build the demo.")
        else:
            st.info(verdict.angle_note or "No angle.")
    with about_column:
        st.download_button("Download the PNG report",  # composed only when clicked
                           lambda: report.report_png(prediction, provenance, quality=predictor.quality, truth=truth,
                                                     images=report.pictures(prediction, alpha, evidence_only=True)),
                           file_name=f"{name.rsplit('.', 1)[0]}_report.png", mime="image/png",
                           on_click="ignore", key="report_download")
        dicom = prediction.radiograph.meta.get("dicom")
        if dicom:
            with st.expander("DICOM header (de-identified: no names, IDs, dates or institutions)"):
                st.json(dicom)
        for note in prediction.notes:
            st.caption(f"Note: {note}")
        st.caption("Time per stage (ms): " + ", ".join(f"{k} {v:.0f}" for k, v in prediction.timings.items()))
        st.caption("Models: " + provenance)


# ------------------------------------------------------------------ many results


def results_table(results, thumbnails: dict[str, str]) -> pd.DataFrame:
    """One row per file, the verdict first (the page title's words); the angle and the network's probabilities only
    where the verdict rests on them."""
    rows = []
    for result in results:
        if hasattr(result, "reason"):  # PredictFailure
            rows.append({"verdict": "could not be read", "file": result.file, "image": None, "class": None,
                         "error": result.reason})
            continue
        verdict = result.verdict
        m = result.measurements if verdict.angle_shown else None
        rows.append({
            "verdict": verdict.title, "file": result.file, "image": thumbnails.get(result.file),
            "class": {"angle": f"{verdict.curvature_class} (by angle)", "none": "not judged"}.get(
                verdict.lead, verdict.curvature_class),
            # the network's probabilities only where its class is the result: "not judged" beside "normal 0.90" reads
            # as normal (the single result's details and predict --json keep them)
            **{f"p_{c}": round(result.probabilities.get(c, float("nan")), 3) if verdict.lead == "network" else None
               for c in CLASSES},
            "low_confidence": result.low_confidence, "box_source": result.box_source,
            "cobb_c2c7": None if m is None else round(m.cobb_c2c7, 1), "cci": None if m is None else round(m.cci, 1),
            "rule_class": None if m is None else m.rule_class,
            "agreement": result.agreement if m is not None and verdict.lead == "network" else None,
            "out_of_distribution": result.out_of_distribution, "ood_score": result.ood_score,
            "why": verdict.why, "error": None,
        })
    return pd.DataFrame(rows)


def show_batch(predictor, sources: list[tuple[str, bytes]]) -> None:
    key = (tuple(hashlib.sha256(data).hexdigest() for _, data in sources), model_files(predictor))
    cached = st.session_state.get("batch")
    if cached is None or cached[0] != key:
        progress = st.progress(0.0, text="Starting…")

        def step(done: int, total: int, name: str) -> None:
            progress.progress(done / total, text=f"{done}/{total}: {name}")

        results = list(predictor.predict_many(sources, progress=step, cam_method=None))
        progress.empty()
        thumbnails = {r.file: thumbnail_uri(r.radiograph.pixels, 96) for r in results if hasattr(r, "radiograph")}
        advice = next((r.verdict.advice for r in results if hasattr(r, "verdict") and not r.verdict.judged), None)
        st.session_state["batch"] = cached = (key, results_table(results, thumbnails),
                                              pipeline.batch_summary(results), advice,
                                              predictions_table.csv_text(map(predictions_table.row, results)))
    _, table, summary, advice, csv_text = cached
    failed = table[table["error"].notna()]
    if len(failed):  # the reasons already start with the file name
        st.error(f"{len(failed)} of {len(table)} files could not be analysed: " + "; ".join(failed["error"]))
    done = table[table["error"].isna()]
    st.markdown(f"**{summary}**")
    if advice:
        st.caption(f"Not judged: {advice}")
    shown = [c for c in table.columns if c != "why"]  # the CSV keeps it; the table's first column says enough
    st.dataframe(table, hide_index=True, width="stretch", key="results_table", column_order=shown, column_config={
        "verdict": st.column_config.TextColumn("verdict", width="large", pinned=True,
                                               help="the result, as the page title and the PNG report say it"),
        "file": st.column_config.TextColumn("file", pinned=True),
        "image": st.column_config.ImageColumn("image", width="small"),
        **{f"p_{c}": st.column_config.ProgressColumn(f"network p({c})", min_value=0.0, max_value=1.0, format="%.2f")
           for c in CLASSES},
        "cobb_c2c7": st.column_config.NumberColumn("Cobb C2–C7 (°)", format="%+.1f"),
        "out_of_distribution": st.column_config.CheckboxColumn(
            "unlike training films", help="the network's class is not used; probabilities capped at 90 %"),
        "ood_score": st.column_config.NumberColumn("OOD score", format="%.2f", help="over 1: unlike the training films"),
    })
    st.download_button("Download the table (CSV)", csv_text,  # predict --out's predictions.csv, row for row
                       file_name="cervicurve_predictions.csv", mime="text/csv", key="csv_download")
    if len(done):
        chosen = st.selectbox("Show one result in detail", list(done["file"]), key="detail_choice")
        data = dict(sources)[chosen]
        show_result(predictor, chosen, data)


# ------------------------------------------------------------------ page

def distinct_names(sources: list[tuple[str, bytes]]) -> list[tuple[str, bytes]]:
    """Two uploads named IM0001.dcm (two studies) stay two results: the second is "IM0001.dcm (2)"."""
    seen: dict[str, int] = {}
    named = []
    for name, data in sources:
        seen[name] = seen.get(name, 0) + 1
        named.append((name if seen[name] == 1 else f"{name} ({seen[name]})", data))
    return named


uploads = st.file_uploader("Lateral cervical radiographs (PNG, JPEG, TIFF or DICOM; one or many)", type=UPLOAD_TYPES,
                           accept_multiple_files=True, key="predict_upload")
samples = st.container(horizontal=True, vertical_alignment="center")
samples.write("Or try a synthetic sample:")
for curvature_class in CLASSES:
    if samples.button(curvature_class, key=f"sample_{curvature_class}"):
        st.session_state["sample_class"] = curvature_class
# Made in every run, in this order: the reading view is at the same place on the empty page and with one result,
# so the browser keeps the viewer it made while the user picked a file.
head, view, tail = st.container(), st.container(), st.container()

sources, truth = [], None
if uploads:
    sources = distinct_names([(upload.name, upload.getvalue()) for upload in uploads])
elif st.session_state.get("sample_class"):
    with head, engine_errors("Generating the sample"):
        name, data, truth = sample_phantom(st.session_state["sample_class"])
        sources = [(name, data)]
runs = selected_runs(state)
if runs[0] is None and state["models"]["classify"] is None:
    if sources:
        head.info("No classifier yet. Build the demo (above), or train a model on the Train page and promote it.")
    st.stop()
if not sources:
    with view:
        film_viewer(waiting_args("Your film is read here: zoom, pan, window/level and the layers the result rests "
                                 "on."), key="film_viewer")
    with head, engine_errors("Loading the models"):
        pipeline.preload(*runs)  # the page is drawn: load the models while the user picks a file
    st.stop()
predictor = None
with head, engine_errors("Loading the models"), st.spinner("Loading the models (once per server)…"):
    predictor = pipeline.Predictor(*runs)  # from the process-wide model cache: cheap once loaded
if predictor is None:
    st.stop()
with engine_errors("The prediction"):
    if len(sources) == 1:
        show_result(predictor, *sources[0], truth=truth, places=(head, view, tail))
    else:
        with tail:
            show_batch(predictor, sources)
