"""Label: a queue of films, box + 23 landmarks + class on the canvas, pre-annotation, review, team agreement, export.

Each action is one core call (``core.data.labels``, ``core.inference.drafts``, ``core.evaluation.agreement``), and
each is also ``python -m core labels ...``. The drawing lives in ``ui.canvas.Annotation`` objects kept per image in
session state; the canvas only edits them.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import streamlit as st
from streamlit_drawable_canvas import st_canvas
from streamlit_shortcuts import add_shortcuts

from core import settings
from core.data import labels
from core.data.imaging import read_image
from core.data.measure import LANDMARK_NAMES
from core.settings import CLASSES
from ui import canvas
from ui.frame import engine_errors, frame, store

ROOT = Path(__file__).resolve().parents[1]
CANVAS = "label_canvas"
SECTIONS = ("Annotate", "Review", "Team", "Export")
SHORTCUTS = {"label_save": "alt+s", "label_next": "alt+n", "label_previous": "alt+p",
             "label_class_normal": "alt+1", "label_class_straightened": "alt+2", "label_class_reversed": "alt+3"}

state = frame("Label")
session = st.session_state


@st.cache_data(max_entries=16, show_spinner=False)
def film(path: str, modified: float) -> np.ndarray:
    """The film's pixels (float [0, 1]); ``modified`` makes a replaced file read again."""
    return read_image(path).pixels


def pixels_of(image) -> np.ndarray:
    path = settings.home() / image.path
    return film(str(path), path.stat().st_mtime)


@st.cache_data(max_entries=64, show_spinner=False)
def _background_jpeg(path: str, modified: float, view: canvas.View, settings_now: canvas.ViewSettings,
                     lines: tuple) -> bytes:
    import io

    picture = canvas.background(film(path, modified), view, settings_now, lines)
    buffer = io.BytesIO()
    picture.save(buffer, format="JPEG", quality=92)
    return buffer.getvalue()


def background_jpeg(image, view: canvas.View, settings_now: canvas.ViewSettings, lines: tuple) -> bytes:
    """The canvas background as JPEG bytes, made once per view: it travels to the browser on every rerun, and a
    JPEG is a fraction of the PNG's size."""
    path = settings.home() / image.path
    return _background_jpeg(str(path), path.stat().st_mtime, view, settings_now, lines)


def view_settings() -> canvas.ViewSettings:
    return session.setdefault("label_view", canvas.ViewSettings())


def view_for(work: canvas.Annotation) -> canvas.View:
    size = work.image_size
    if view_settings().zoom and work.roi_box is not None:
        return canvas.zoom_view(size, work.roi_box)
    return canvas.full_view(size)


# ------------------------------------------------------------------ who and what

if state["team_mode"]:
    session["label_annotator"] = state["user"].name  # signed in: no free-typed name
if "label_annotator" not in session:
    st.write("Choose the name recorded on every label you save in this session.")
    name = st.text_input("Annotator", key="label_annotator_input", placeholder="e.g. your initials")
    if st.button("Start labeling", type="primary", key="label_start"):
        if name.strip():
            session["label_annotator"] = name.strip()
            st.rerun()
        st.error("Enter a name first: every save records who made it.")
    st.stop()
annotator = session["label_annotator"]

if not state["datasets"]:
    st.info("No films yet: import some on the **Data** page (or build the demo), then label them here.")
    st.stop()
dataset = st.selectbox("Dataset", state["datasets"], key="label_dataset")
st.caption(f"Labeling as **{annotator}** (recorded on every save).")
if "label_goto" in session:  # a button below asked for another section (a widget's key is set before it is drawn)
    session["label_section"] = session.pop("label_goto")
section = st.radio("Section", SECTIONS, horizontal=True, key="label_section", label_visibility="collapsed")
annotation_store = store()


# ------------------------------------------------------------------ annotate


def work_for(image) -> canvas.Annotation:
    """This session's annotation of ``image``: kept from earlier visits, else the annotator's saved reading, else a
    model draft (when asked for), else empty."""
    works = session.setdefault("label_work", {})
    if image.image_id in works:
        return works[image.image_id]
    mine = [r for r in annotation_store.readings(image_id=image.image_id) if r.annotator == annotator]
    if mine:
        reading = mine[-1]
        work = canvas.Annotation.from_reading(image.image_id, (image.width, image.height),
                                              curvature_class=reading.curvature_class, roi_box=reading.roi_box,
                                              landmarks=reading.landmarks, note=reading.note)
    else:
        work = canvas.Annotation(image.image_id, (image.width, image.height))
        if session.get("label_auto_draft"):
            pre_annotate(work)
    works[image.image_id] = work
    return work


def pre_annotate(work: canvas.Annotation) -> None:
    with engine_errors("Pre-annotating with the promoted models"):
        from core.inference import drafts

        draft = drafts.draft_for_image(work.image_id, annotator_box=work.roi_box, store=annotation_store)
        work.apply_draft(draft.record())
        if draft.notes:
            session["label_flash"] = "Model draft: " + "; ".join(draft.notes)


def build_queue(filter_name: str, uncertain: bool) -> None:
    scores = None
    if uncertain:
        with st.spinner("Scoring the films with the promoted models..."):
            with engine_errors("Ordering by the models' uncertainty"):
                from core.inference import drafts

                scores = drafts.uncertainty_scores(dataset, store=annotation_store)
    with engine_errors("Reading the queue"):
        items = labels.queue(dataset, annotator, filter_name, scores=scores, store=annotation_store)
        session["label_queue"] = [item.image_id for item in items]
        session["label_queue_items"] = {item.image_id: item for item in items}
        session["label_position"] = 0


def move(step: int, skip: bool = False) -> None:
    """Go ``step`` places through the queue; ``skip`` also sends the current film to the end of it."""
    queue = session["label_queue"]
    position = session.get("label_position", 0)
    current = session["label_work"].get(queue[position]) if queue else None
    if current is not None:
        current.leave()
    if skip and queue:
        queue.append(queue.pop(position))
        step = 0 if position < len(queue) - 1 else -position
    session["label_position"] = max(0, min(len(queue) - 1, position + step))
    session.pop("label_pending", None)


def request_move(work: canvas.Annotation, step: int, skip: bool = False) -> None:
    """Move on, unless the film has unsaved edits: then ask first (never drop them silently)."""
    if work.dirty:
        session["label_pending"] = {"step": step, "skip": skip, "image_id": work.image_id}
    else:
        move(step, skip)
    st.rerun()


def save(work: canvas.Annotation) -> bool:
    saved = False
    with engine_errors("Saving the label"):
        fix = session.get("label_fix")
        if fix is not None and fix["image_id"] == work.image_id:
            labels.review(fix["label_id"], reviewer=annotator, verdict="fix", curvature_class=work.curvature_class,
                          roi_box=work.roi_box, landmarks=work.saved_landmarks(), seconds=round(work.elapsed(), 2),
                          store=annotation_store, actor=state["actor"])
            session.pop("label_fix")
            session["label_flash"] = f"Fixed and accepted {fix['annotator']}'s label."
        else:
            label_id = labels.save(work.image_id, annotator=annotator, curvature_class=work.curvature_class,
                                   roi_box=work.roi_box, landmarks=work.saved_landmarks(), note=work.note or None,
                                   seconds=round(work.elapsed(), 2), draft=work.draft, store=annotation_store,
                                   actor=state["actor"])
            session["label_flash"] = f"Saved label {label_id} (image {work.image_id})."
        work.saved()
        saved = True
    return saved


def annotate() -> None:
    controls = st.columns([2, 2, 1])
    filter_name = controls[0].selectbox("Queue", list(labels.FILTERS), format_func=labels.FILTERS.get,
                                        key="label_filter")
    uncertain = controls[1].toggle("Most uncertain first (promoted models)", key="label_uncertain",
                                   help="Active learning: the films the promoted classifier and landmark model are "
                                        "least sure about come first.")
    refresh = controls[2].button("Refresh queue", key="label_refresh")
    queue_key = (dataset, filter_name, uncertain, annotator)
    if refresh or session.get("label_queue_key") != queue_key or "label_queue" not in session:
        session["label_queue_key"] = queue_key
        build_queue(filter_name, uncertain)
    done = labels.progress(dataset, store=annotation_store)
    st.progress(done.fraction, text=f"{done.labeled} / {done.total} labeled · "
                + " · ".join(f"{name} {count}" for name, count in done.per_class.items()))
    queue = session.get("label_queue") or []
    if not queue:
        st.info(f"Nothing in the queue “{labels.FILTERS[filter_name]}”. Choose another queue or refresh.")
        return
    position = min(session.get("label_position", 0), len(queue) - 1)
    image = annotation_store.image(queue[position])
    work = work_for(image)
    work.touch()
    view = view_for(work)
    raw = canvas.canvas_state(session, work, view, CANVAS)
    if raw is not None:
        work.sync(raw, view)
        view = view_for(work)  # a first box drawn can turn the zoom on

    item = session["label_queue_items"].get(image.image_id)
    st.markdown(f"**Film {position + 1} of {len(queue)}** · image {image.image_id} · patient `{image.patient_id}`"
                + (f" · uncertainty {item.uncertainty:.2f}" if item and item.uncertainty is not None else "")
                + (f" · read by {', '.join(item.annotators)}" if item and item.annotators else ""))
    # Messages come and go inside one container: the elements after it keep their places, so the canvas is not
    # remounted (a remounted canvas would show the drawing it started from, not the annotation).
    notices = st.container()
    if item and item.rejection:
        notices.error(f"Your label was {item.rejection}")
    fix = session.get("label_fix")
    if fix is not None and fix["image_id"] == image.image_id:
        notices.info(f"Fixing {fix['annotator']}'s label {fix['label_id']}: saving accepts your corrected copy.")
    if "label_flash" in session:
        notices.success(session.pop("label_flash"))

    pending = session.get("label_pending")
    if pending is not None and pending["image_id"] == image.image_id:
        with notices.container(border=True):
            st.warning("This film has unsaved changes. Save them before moving on?")
            ask = st.columns(3)
            if ask[0].button("Save and go on", type="primary", key="label_pending_save"):
                if save(work):
                    move(pending["step"], pending["skip"])
                st.rerun()
            if ask[1].button("Discard changes and go on", key="label_pending_discard"):
                session["label_work"].pop(image.image_id, None)
                move(pending["step"], pending["skip"])
                st.rerun()
            if ask[2].button("Stay on this film", key="label_pending_stay"):
                session.pop("label_pending")
                st.rerun()

    left, right = st.columns([3, 2])
    settings_now = view_settings()
    with left:
        top = st.columns([3, 2])
        mode = top[0].radio("Draw", ["box", "points"], horizontal=True, key="label_mode",
                            format_func={"box": "C2–C7 box (drag)", "points": "Landmarks (click)"}.get,
                            help="The canvas toolbar's edit toggle selects, moves and resizes the box and any point.")
        zoom = top[1].toggle("Zoom to the box", settings_now.zoom, key="label_zoom", disabled=work.roi_box is None,
                             help="Shows the C2–C7 box region large, for precise points. Draw the box first.")
        picture = background_jpeg(image, view, settings_now, tuple(work.endplate_lines()))
        x0, y0, x1, y1 = view.region
        st.caption(f"Zoomed to the box: x {x0:.0f}–{x1:.0f}, y {y0:.0f}–{y1:.0f} (× {view.scale:.2f}); clicks land "
                   "in full-image pixels." if view.zoomed else f"Whole film (× {view.scale:.2f}).")
        st_canvas(**canvas.canvas_arguments(work, view, picture, mode, CANVAS))
        with st.expander("View: brightness, contrast, invert", expanded=False):
            window = st.slider("Contrast (window width)", 0.05, 1.0, settings_now.window, 0.05, key="label_window")
            level = st.slider("Brightness (window level)", 0.0, 1.0, settings_now.level, 0.05, key="label_level",
                              help="Higher shows the film darker.")
            invert = st.checkbox("Invert", settings_now.invert, key="label_invert")
            chosen = canvas.ViewSettings(window, level, invert, zoom)
            if chosen != settings_now:
                session["label_view"] = chosen  # kept from film to film
                st.rerun()

    with right:
        tools(work, image)

    nav = st.columns(4)
    if nav[0].button("← Previous", key="label_previous", disabled=position == 0):
        request_move(work, -1)
    if nav[1].button("Next →", key="label_next", disabled=position >= len(queue) - 1):
        request_move(work, 1)
    if nav[2].button("Skip (later)", key="label_skip", disabled=len(queue) < 2):
        request_move(work, 1, skip=True)
    add_shortcuts(**SHORTCUTS)
    nav[3].caption("Keys: Alt+S save · Alt+N next · Alt+P previous · Alt+1/2/3 class")


def tools(work: canvas.Annotation, image) -> None:
    placed = len(work.placed)
    if work.next_name is not None:
        st.markdown(f"**Next point:** {work.next_name} ({placed + 1} of {len(LANDMARK_NAMES)})")
    else:
        st.markdown(f"**All {len(LANDMARK_NAMES)} points placed** (or marked not visible).")
    if work.hidden:
        st.caption("Not visible (stored as missing): " + ", ".join(LANDMARK_NAMES[i] for i in sorted(work.hidden)))
    row = st.columns(4)
    if row[0].button("Not visible", key="label_hidden", disabled=work.next_index is None,
                     help="The next point cannot be seen (e.g. C7 behind the shoulders): stored as missing."):
        work.mark_not_visible()
        st.rerun()
    if row[1].button("Undo last point", key="label_undo", disabled=not work.placed):
        work.undo()
        st.rerun()
    if row[2].button("Clear points", key="label_clear", disabled=not work.placed,
                     help="Take every point off (e.g. a poor model draft) and place them afresh."):
        work.clear_points()
        st.rerun()
    if row[3].button("Pre-annotate", key="label_draft", help="Fill box, points and class from the promoted models "
                                                              "(the points in your box when the detector finds none); "
                                                              "accept or edit. The store records the draft."):
        pre_annotate(work)
        st.rerun()
    st.toggle("Start each new film from the models' draft", key="label_auto_draft")
    if work.draft is not None:
        st.caption("Started from a model draft: the store will record how far you move each point.")

    check = labels.rule_check(work.curvature_class, work.saved_landmarks(), film=pixels_of(image))
    metrics = st.columns(3)
    metrics[0].metric("Cobb C2–C7", "—" if check.cobb_c2c7 is None else f"{check.cobb_c2c7:+.1f}°")
    metrics[1].metric("CCI", "—" if check.cci is None else f"{check.cci:.1f} %")
    metrics[2].metric("Rule class", check.rule_class or "—")
    if check.facing is not None:
        st.caption(f"The patient {check.facing.describe()}.")
    st.write("**Curvature class**" + (f" — suggested from the points: *{check.rule_class}*" if check.rule_class else ""))
    buttons = st.columns(3)
    for column, name in zip(buttons, CLASSES):
        label = name.capitalize() + (" (suggested)" if name == check.rule_class else "")
        if column.button(label, key=f"label_class_{name}", type="primary" if work.curvature_class == name else "secondary"):
            work.choose_class(name)
            st.rerun()
    if check.contradicts:
        st.warning(check.message, icon="⚠️")
    note = st.text_input("Note", work.note, key=f"label_note_{image.image_id}")
    if note != work.note:
        work.note = note
        work.dirty = True
    box = "—" if work.roi_box is None else ", ".join(f"{v:.0f}" for v in work.roi_box)
    st.caption(f"Box (image px): {box} · points placed: {len(work.placed_points)} · "
               f"{'unsaved changes' if work.dirty else 'saved'} · {work.elapsed():.0f} s on this film")
    if st.button("Save", type="primary", key="label_save"):
        save(work)
        st.rerun()


# ------------------------------------------------------------------ review


def review() -> None:
    readings = [r for r in annotation_store.readings(dataset) if r.annotator != annotator]
    show = st.radio("Show", ["Not reviewed", "Rejected", "All"], horizontal=True, key="label_review_filter")
    wanted = {"Not reviewed": lambda r: r.status is None, "Rejected": lambda r: r.status == "reject",
              "All": lambda r: True}[show]
    readings = [r for r in readings if wanted(r)]
    if not readings:
        st.info("No readings by others to review here.")
        return
    by_id = {r.label_id: r for r in readings}  # options are ids: readings hold arrays, which do not compare
    choice = by_id[st.selectbox("Reading", list(by_id), key="label_review_choice",
                                format_func=lambda i: f"image {by_id[i].image_id} · {by_id[i].annotator} · "
                                                      f"{by_id[i].curvature_class or 'no class'}"
                                                      + (f" · {by_id[i].status}" if by_id[i].status else ""))]
    image = annotation_store.image(choice.image_id)
    check = labels.rule_check(choice.curvature_class, choice.landmarks, film=pixels_of(image))
    picture = canvas.background(pixels_of(image), canvas.full_view((image.width, image.height)), view_settings(),
                                readings=[(choice.roi_box, choice.landmarks, canvas.POINT_COLOUR)])
    columns = st.columns([3, 2])
    columns[0].image(picture, caption=f"{choice.annotator}'s reading")
    with columns[1]:
        st.write(f"Class **{choice.curvature_class or '—'}** · rule class **{check.rule_class or '—'}**"
                 + ("" if check.cobb_c2c7 is None else f" · Cobb C2–C7 {check.cobb_c2c7:+.1f}°"))
        if check.contradicts:
            st.warning(check.message)
        if choice.status:
            st.caption(f"{choice.status} by {choice.reviewer}" + (f": {choice.review_comment}" if choice.review_comment else ""))
        comment = st.text_input("Comment (needed to reject)", key="label_review_comment")
        row = st.columns(3)
        if row[0].button("Accept", type="primary", key="label_accept"):
            with engine_errors("Accepting"):
                labels.review(choice.label_id, reviewer=annotator, verdict="accept", comment=comment or None,
                              store=annotation_store, actor=state["actor"])
                st.rerun()
        if row[1].button("Fix", key="label_fix_button", help="Edit the reading on the Annotate canvas; saving "
                                                           "accepts your corrected copy."):
            session["label_fix"] = {"label_id": choice.label_id, "image_id": choice.image_id,
                                    "annotator": choice.annotator}
            session.setdefault("label_work", {})[choice.image_id] = canvas.Annotation.from_reading(
                choice.image_id, (image.width, image.height), curvature_class=choice.curvature_class,
                roi_box=choice.roi_box, landmarks=choice.landmarks, note=choice.note)
            session["label_queue"] = [choice.image_id]
            session["label_queue_items"] = {}
            session["label_position"] = 0
            session["label_queue_key"] = ("fix", choice.label_id)
            session["label_goto"] = "Annotate"
            st.rerun()
        if row[2].button("Reject", key="label_reject"):
            with engine_errors("Rejecting"):
                labels.review(choice.label_id, reviewer=annotator, verdict="reject", comment=comment,
                              store=annotation_store, actor=state["actor"])
                st.rerun()


# ------------------------------------------------------------------ team


def team() -> None:
    import pandas as pd
    import plotly.graph_objects as go

    from core.evaluation.agreement import team_report

    report = None
    with engine_errors("Computing the team's agreement"):
        report = team_report(dataset, store=annotation_store)
    if report is None:
        return
    if not report.annotators:
        st.info("Nobody has labeled this dataset yet.")
        return
    st.dataframe(pd.DataFrame([{
        "annotator": s.annotator, "images": s.images,
        "median s / image": None if s.median_seconds is None else round(s.median_seconds, 1),
        "from model draft": s.from_draft,
        "model points moved (px)": None if s.mean_point_move_px is None else round(s.mean_point_move_px, 2),
        **{k: v for k, v in s.statuses.items()}} for s in report.annotators]), hide_index=True)
    a = report.agreement
    st.subheader(f"Agreement on {a.images} films read by two or more")
    if a.images == 0:
        st.info("No film has two readings yet: agreement needs at least two annotators on the same films.")
        return

    def shown(value, digits=2):
        return "n/a" if value is None else f"{value:.{digits}f}"

    cards = st.columns(4)
    cards[0].metric("Class: weighted kappa", shown(a.kappa), help="Quadratic-weighted Cohen's kappa (scikit-learn)")
    cards[0].caption(f"n = {a.kappa_n} pairs")
    cards[1].metric(f"C2–C7 angle: {a.icc_kind or 'ICC'}", shown(a.icc), help="Intraclass correlation (pingouin)")
    cards[1].caption(f"n = {a.icc_n} films")
    ba = a.bland_altman
    cards[2].metric("Angle bias (Bland–Altman)", "n/a" if ba is None else f"{ba.bias:+.1f}°")
    cards[2].caption("n/a" if ba is None else f"limits {ba.lower:+.1f}° to {ba.upper:+.1f}° · n = {ba.n} pairs")
    cards[3].metric("Landmark distance", "n/a" if a.landmark_px is None else f"{a.landmark_px:.1f} px")
    cards[3].caption(f"n = {a.landmark_px_n} pairs" + ("" if a.landmark_mm is None else
                                                        f" · {a.landmark_mm:.2f} mm (n = {a.landmark_mm_n})"))
    if ba is not None:
        figure = go.Figure(go.Scatter(x=ba.means, y=ba.differences, mode="markers", name="pairs"))
        for value, name in ((ba.bias, "bias"), (ba.lower, "−1.96 SD"), (ba.upper, "+1.96 SD")):
            figure.add_hline(y=value, line_dash="dash" if name != "bias" else "solid", annotation_text=name)
        figure.update_layout(title="Bland–Altman: C2–C7 angle", xaxis_title="mean of the two readings (°)",
                             yaxis_title="first − second (°)", height=340, margin=dict(t=40, b=40))
        st.plotly_chart(figure)
    if a.by_pair:
        st.dataframe(pd.DataFrame(a.by_pair), hide_index=True)
    st.subheader(f"Disagreements ({len(report.disagreements)})")
    if not report.disagreements:
        st.caption("None: every pair of readings agrees on the class and within "
                   f"{labels.DISAGREE_COBB_DEG:.0f}° on the angle.")
        return
    found = report.disagreements
    chosen = found[st.selectbox("Disagreement", range(len(found)), key="label_disagreement",
                                format_func=lambda i: f"image {found[i].image_id}: {found[i].first.annotator} / "
                                                      f"{found[i].second.annotator} — {found[i].reason}")]
    image = annotation_store.image(chosen.image_id)
    picture = canvas.background(pixels_of(image), canvas.full_view((image.width, image.height)), view_settings(),
                                readings=[(chosen.first.roi_box, chosen.first.landmarks, canvas.POINT_COLOUR),
                                          (chosen.second.roi_box, chosen.second.landmarks, canvas.OTHER_COLOUR)])
    st.image(picture, caption=f"red: {chosen.first.annotator} ({chosen.first.curvature_class}) · yellow: "
                              f"{chosen.second.annotator} ({chosen.second.curvature_class})")


# ------------------------------------------------------------------ export and train


def export() -> None:
    names = {"yolo-detect": "YOLO detect (box)", "yolo-pose": "YOLO pose (box + 23 points)",
             "coco": "COCO keypoints", "csv": "CSV manifest", "labelme": "CSXA-style Labelme JSON",
             "folder": "Class folders (ROI crops)"}
    kind = st.selectbox("Format", labels.EXPORT_KINDS, format_func=names.get, key="label_export_kind")
    if st.button("Export", type="primary", key="label_export"):
        out = settings.home() / "exports" / f"{dataset}-{kind}-{time.strftime('%Y%m%d-%H%M%S')}"
        with engine_errors("Exporting"):
            report = labels.export(kind, dataset, out, store=annotation_store, actor=state["actor"])
            st.success(report.format())
    st.divider()
    st.write("Train a model on the current labels (reviewed ones first, else the newest).")
    if st.button("Train on these labels", key="label_train"):
        session["train_dataset"] = dataset
        if (ROOT / "pages" / "train.py").exists():
            st.switch_page("pages/train.py")
        st.info(f"No Train page in this installation: run `python -m core train --config configs/detect.yaml "
                f"dataset={dataset}`.")


{"Annotate": annotate, "Review": review, "Team": team, "Export": export}[section]()
