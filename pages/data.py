"""Data: import a dataset (zip of a folder tree, CSV + images, YOLO, COCO, CSXA; DICOM files; phantoms),
look at what a dataset holds, make patient-grouped splits, export it as a zip.

The page only moves files: every import, split and export is a ``core.data.importers``, ``core.data.datasets`` or
``core.data.exports`` call (also a CLI command).
"""
from __future__ import annotations

import re
import time
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from core import settings
from core.data.store import check_dataset_name
from ui.frame import engine_errors, frame, store
from ui.imagery import thumbnail_png

workspace = frame("Data")

LAYOUTS = {
    "folder": "Films (zip): unlabeled, or in class folders <class>/<file> (normal / straight / kyphotic ...)",
    "csv": "CSV manifest + films (zip): path,label,patient_id[,x1,y1,x2,y2][,split]",
    "yolo": "YOLO (zip): data.yaml, images/<split>, labels/<split>",
    "coco": "COCO (zip): annotation JSON + films",
    "csxa": "CSXA (zip): datasets-PNG/, Labelme JSON, datasets.xlsx",
    "dicom": "DICOM files (or a zip of them), de-identified on import",
    "phantom": "Generate synthetic phantoms (with class, box and landmarks)",
}
CLASS_COLOURS = {"normal": "#2a9d8f", "straightened": "#e9c46a", "reversed": "#e76f51", "unlabeled": "#adb5bd"}


def default_name(uploads, layout: str) -> str:
    if layout == "phantom":
        return "phantoms"
    if uploads:
        first = uploads[0] if isinstance(uploads, list) else uploads
        return re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(first.name).stem).lstrip(".")[:100] or "dataset"
    return ""


def run_import(layout: str, uploads, dataset: str, phantom_options: dict, progress, actor) -> None:
    """One core call: generate phantoms, or import what was uploaded; the report is kept for the page."""
    from core.data import importers

    def checked(done: int, total: int, _name: str) -> None:
        progress.progress(min(1.0, 0.05 + 0.95 * done / max(1, total)), text=f"Reading and checking: {done}/{total}")

    progress.progress(0.05, text="Preparing the files…")
    started = time.perf_counter()
    if layout == "phantom":
        report = importers.import_phantoms(dataset, store=store(), progress=checked, actor=actor, **phantom_options)
    else:
        files = [(upload.name, upload.getvalue()) for upload in (uploads if isinstance(uploads, list) else [uploads])]
        report = importers.import_uploads(layout, files, dataset=dataset, store=store(), progress=checked, actor=actor)
    progress.progress(1.0, text=f"Done in {time.perf_counter() - started:.1f} s")
    st.session_state["import_report"] = {
        "dataset": report.dataset, "imported": report.imported, "updated": report.updated,
        "unchanged": report.unchanged, "skipped": list(report.skipped), "notes": report.notes,
    }
    st.session_state["overview_choice"] = report.dataset  # the overview shows what was just imported


def show_import_report(report: dict) -> None:
    added = report["imported"] + report["updated"]
    text = (f"Dataset **{report['dataset']}**: {report['imported']} imported, {report['updated']} updated, "
            f"{report['unchanged']} already present, {len(report['skipped'])} skipped.")
    (st.success if added or report["unchanged"] else st.error)(text)
    for note in report.get("notes", []):
        st.warning(note)
    if report["skipped"]:
        st.write("Skipped files and why:")
        st.dataframe(pd.DataFrame(report["skipped"], columns=["file", "reason"]), hide_index=True,
                     width="stretch")


# ------------------------------------------------------------------ import

import_tab, overview_tab, export_tab = st.tabs(["Import", "Overview & splits", "Export"])

with import_tab:
    layout = st.selectbox("What are you importing?", list(LAYOUTS), format_func=LAYOUTS.get, key="import_layout")
    uploads, phantom_options = None, {}
    if layout == "dicom":
        uploads = st.file_uploader("DICOM files (.dcm) or a zip of them", type=["dcm", "dicom", "zip"],
                                   accept_multiple_files=True, key="dicom_upload")
    elif layout == "phantom":
        columns = st.columns(4)
        phantom_options = {
            "patients": int(columns[0].number_input("Patients", 1, 2000, 30, key="phantom_patients")),
            "images_per_patient": int(columns[1].number_input("Films per patient", 1, 10, 1, key="phantom_ipp")),
            "size": int(columns[2].number_input("Film height (px)", 128, 2048, 512, step=64, key="phantom_size")),
            "seed": int(columns[3].number_input("Seed", 0, 2**31 - 1, 0, key="phantom_seed")),
        }
    else:
        uploads = st.file_uploader("Zip archive", type=["zip"], key=f"zip_upload_{layout}")
    suggested = default_name(uploads, layout)
    dataset = st.text_input("Dataset name", placeholder=suggested or "name of the dataset", key=f"dataset_name_{layout}",
                            help="The films of one dataset are split and trained on together. "
                                 "Left empty: the upload's name.").strip() or suggested
    ready = bool(dataset) and (layout == "phantom" or bool(uploads))
    if st.button("Import", type="primary", disabled=not ready, key="import_button"):
        st.session_state.pop("import_report", None)
        progress = st.progress(0.0, text="Starting…")
        with engine_errors("The import"):
            check_dataset_name(dataset)  # before any file is read
            run_import(layout, uploads, dataset, phantom_options, progress, workspace["actor"])
            st.rerun()  # the sidebar counts and the overview show the new images
    if "import_report" in st.session_state:
        show_import_report(st.session_state["import_report"])

# ------------------------------------------------------------------ overview


@st.cache_data(max_entries=2000, show_spinner=False)
def thumbnail(relative_path: str, size: int = 128) -> bytes | None:
    """A small PNG of a workspace image (None when it cannot be read any more)."""
    from core.data.imaging import ImageReadError, read_image

    try:
        return thumbnail_png(read_image(settings.home() / relative_path).pixels, size)
    except ImageReadError:
        return None


def class_balance_chart(summary: dict) -> go.Figure:
    counts = {**summary["classes"], "unlabeled": summary["unlabeled"]}
    figure = go.Figure(go.Bar(x=list(counts), y=list(counts.values()), text=list(counts.values()),
                              marker_color=[CLASS_COLOURS[name] for name in counts]))
    figure.update_layout(height=260, margin=dict(l=10, r=10, t=30, b=10), title="Class balance",
                         yaxis_title="films")
    return figure


with overview_tab:
    names = store().datasets()
    if not names:
        st.info("No dataset yet: import one, or generate phantoms, in the Import tab.")
    else:
        if st.session_state.get("overview_choice") not in names:
            st.session_state.pop("overview_choice", None)
        chosen = st.selectbox("Dataset", names, key="overview_choice")
        summary = store().summary(chosen)
        metrics = st.columns(5)
        metrics[0].metric("Films", summary["images"])
        metrics[1].metric("Patients", summary["patients"])
        metrics[2].metric("Labeled class", summary["images"] - summary["unlabeled"])
        metrics[3].metric("Boxes", summary["boxes"])
        metrics[4].metric("Landmarks", summary["landmarks"])
        chart_column, split_column = st.columns([3, 2])
        chart_column.plotly_chart(class_balance_chart(summary), key="class_balance")
        with split_column:
            st.write("**Splits** (grouped by patient, stratified by class)")
            st.dataframe(pd.DataFrame([summary["splits"]], index=["films"]), width="stretch")
            fractions = st.columns(3)
            train = fractions[0].number_input("train", 0.0, 1.0, 0.7, 0.05, key="split_train")
            val = fractions[1].number_input("val", 0.0, 1.0, 0.15, 0.05, key="split_val")
            test = fractions[2].number_input("test", 0.0, 1.0, 0.15, 0.05, key="split_test")
            seed = st.number_input("Seed", 0, 2**31 - 1, 0, key="split_seed")
            if summary["test_frozen_at"] is not None:
                st.caption(f"Test split frozen since {summary['test_frozen_at']:%Y-%m-%d %H:%M} UTC: "
                           "new splits keep it as it is.")
            freeze = st.checkbox("Freeze the test split", value=summary["test_frozen_at"] is not None,
                                 disabled=summary["test_frozen_at"] is not None, key="freeze_test",
                                 help="Later splits never reshuffle a frozen test split.")
            if st.button("Make splits", key="make_splits"):
                from core.data.datasets import make_splits

                with engine_errors("Making splits"):
                    counts = make_splits(chosen, (train, val, test), seed=int(seed), store=store(), freeze=freeze,
                                         actor=workspace["actor"])
                    st.session_state["split_counts"] = (chosen, counts)
                    st.rerun()
            if st.session_state.get("split_counts", (None,))[0] == chosen:
                st.dataframe(pd.DataFrame(st.session_state["split_counts"][1]).T, width="stretch")

        items = store().current_labels(chosen)
        st.write(f"**Films** (first {min(len(items), 24)} of {len(items)})")
        shown = items[:24]
        for start in range(0, len(shown), 8):
            for column, item in zip(st.columns(8), shown[start:start + 8]):
                png = thumbnail(item.path)
                caption = f"{item.curvature_class or 'unlabeled'} · {item.patient_id}"
                if png is None:
                    column.caption(f"(unreadable) {caption}")
                else:
                    column.image(png, caption=caption, width="stretch")

# ------------------------------------------------------------------ export

EXPORTS = {"folder": "Class folders", "csv": "CSV manifest + films", "yolo-detect": "YOLO detect (box)",
           "yolo-pose": "YOLO pose (box + 23 points)", "coco": "COCO", "labelme": "CSXA-style Labelme JSON"}

with export_tab:
    names = store().datasets()
    if not names:
        st.info("Nothing to export yet.")
    else:
        columns = st.columns(2)
        chosen = columns[0].selectbox("Dataset", names, key="export_dataset")
        kind = columns[1].selectbox("Format", list(EXPORTS), format_func=EXPORTS.get, key="export_kind")
        if st.button("Prepare the zip", key="export_button"):
            from core.data import exports

            with engine_errors("The export"):
                with st.spinner("Exporting…"):
                    archive, report = exports.export_archive(kind, chosen, store=store(), actor=workspace["actor"])
                st.session_state["export_ready"] = (str(archive), report.format().replace(str(report.out), archive.name))
        if "export_ready" in st.session_state:
            archive, summary_text = st.session_state["export_ready"]
            if Path(archive).exists():
                st.text(summary_text)
                with open(archive, "rb") as handle:
                    st.download_button("Download " + Path(archive).name, handle, file_name=Path(archive).name,
                                       mime="application/zip", key="export_download")
