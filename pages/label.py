"""Label: a queue of films, box + 23 landmarks + class in the browser, pre-annotation, review, team agreement, export.

Each action is one core call (``core.data.labels``, ``core.inference.drafts``, ``core.evaluation.agreement``), and
each is also ``python -m core labels ...``. The film is edited in the keypoints component (``ui.canvas.keypoints``):
clicks, drags, undo, zoom and window/level stay in the browser, and the component sends the whole film once, when
the annotator saves or moves on. ``ui.label_workflow`` holds the rules (the reading, the queue, what a message
does); this page only wires them to widgets and the store.
"""
from __future__ import annotations

import hashlib
import time
from pathlib import Path

import numpy as np
import streamlit as st

from core import settings
from core.data import exports, labels
from core.data.imaging import read_image
from core.settings import CLASSES
from ui import canvas, label_workflow
from ui.frame import ENGINE_ERRORS, engine_errors, frame, store
from ui.label_workflow import Annotation, LabelQueue

ROOT = Path(__file__).resolve().parents[1]
KEYPOINTS = "label_keypoints"
SECTIONS = ("Annotate", "Review", "Team", "Export")

state = frame("Label")
session = st.session_state


@st.cache_data(max_entries=16, show_spinner=False)
def film(path: str, modified: float) -> np.ndarray:
    """The film's pixels (float [0, 1]); ``modified`` makes a replaced file read again."""
    return read_image(path).pixels


def pixels_of(image) -> np.ndarray:
    path = settings.home() / image.path
    return film(str(path), path.stat().st_mtime)


@st.cache_data(max_entries=8, show_spinner=False)
def _film_for_browser(path: str, modified: float) -> tuple[str, str]:
    url, _size = canvas.film_data_url(film(path, modified))
    return url, hashlib.sha1(f"{path}:{modified}".encode()).hexdigest()[:16]


def film_for_browser(image) -> tuple[str, str]:
    """(data URL, a key naming it): the film as the component gets it, made once per file."""
    path = settings.home() / image.path
    return _film_for_browser(str(path), path.stat().st_mtime)


def view_settings() -> canvas.ViewSettings:
    """Brightness/contrast from the component's sliders (sent with each of its messages), kept from film to film."""
    return session.setdefault("label_view", canvas.ViewSettings())


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


def flash(text: str | None, kind: str = "success") -> None:
    """A line shown above the film on the next drawing of the Annotate section."""
    if text:
        session.setdefault("label_flash", []).append((kind, text))


def work_for(image) -> Annotation:
    """This session's annotation of ``image``: kept from earlier visits, else the annotator's saved reading, else a
    model draft (when asked for), else empty."""
    works = session.setdefault("label_work", {})
    if image.image_id in works:
        return works[image.image_id]
    mine = [r for r in annotation_store.readings(image_id=image.image_id) if r.annotator == annotator]
    if mine:
        reading = mine[-1]
        work = Annotation.from_reading(image.image_id, (image.width, image.height),
                                       curvature_class=reading.curvature_class, roi_box=reading.roi_box,
                                       landmarks=reading.landmarks, note=reading.note)
    else:
        work = Annotation(image.image_id, (image.width, image.height))
        if session.get("label_auto_draft"):
            with engine_errors("Pre-annotating with the promoted models"):
                flash(pre_annotate(work), "info")
    works[image.image_id] = work
    return work


def pre_annotate(work: Annotation) -> str:
    """Fill the film from the promoted models (the landmark model reads the annotator's box when there is one)."""
    from core.inference import drafts

    draft = drafts.draft_for_image(work.image_id, annotator_box=work.roi_box, store=annotation_store)
    work.apply_draft(draft.record())
    return "Model draft" + (": " + "; ".join(draft.notes) if draft.notes else " applied: check every point.")


def save_reading(work: Annotation) -> tuple[int, str]:
    """Store the reading (or, when fixing someone's label from Review, the corrected copy); returns (id, line)."""
    fix = session.get("label_fix")
    if fix is not None and fix["image_id"] == work.image_id:
        saved = labels.review(fix["label_id"], reviewer=annotator, verdict="fix", curvature_class=work.curvature_class,
                              roi_box=work.roi_box, landmarks=work.saved_landmarks(), seconds=round(work.elapsed(), 2),
                              store=annotation_store, actor=state["actor"])
        session.pop("label_fix")
        text = f"Fixed and accepted {fix['annotator']}'s label."
    else:
        saved = labels.save(work.image_id, annotator=annotator, curvature_class=work.curvature_class,
                            roi_box=work.roi_box, landmarks=work.saved_landmarks(), note=work.note or None,
                            seconds=round(work.elapsed(), 2), draft=work.draft, store=annotation_store,
                            actor=state["actor"])
        text = f"Saved label {saved} (image {work.image_id})."
    check = labels.rule_check(work.curvature_class, work.saved_landmarks(),
                              film=pixels_of(annotation_store.image(work.image_id)))
    if check.contradicts:
        flash(f"Image {work.image_id}: {check.message}", "warning")
    return saved, text


def open_queue(dataset_name: str) -> None:
    """Opening a dataset: show a queue with films in it (the annotator's queue first), and say when that is not the
    one asked for. Sets the Queue widget's value before it is drawn."""
    if session.get("label_opened") == dataset_name:
        return
    session["label_opened"] = dataset_name
    wanted = session.get("label_filter", label_workflow.OPENING_QUEUES[0])
    order = (wanted,) + tuple(name for name in label_workflow.OPENING_QUEUES if name != wanted)
    chosen = None
    with engine_errors("Reading the queue"):
        chosen, _items, note = label_workflow.opening_queue(
            lambda name: labels.queue(dataset_name, annotator, name, store=annotation_store), labels.FILTERS, order)
        flash(note, "info")
    if chosen is not None:
        session["label_filter"] = chosen


def build_queue(filter_name: str, uncertain: bool) -> None:
    scores = None
    if uncertain:
        with st.spinner("Scoring the films with the promoted models..."):
            with engine_errors("Ordering by the models' uncertainty"):
                from core.inference import drafts

                scores = drafts.uncertainty_scores(dataset, store=annotation_store)
    session["label_queue"] = LabelQueue([])
    with engine_errors("Reading the queue"):
        items = labels.queue(dataset, annotator, filter_name, scores=scores, store=annotation_store)
        session["label_queue"] = LabelQueue([item.image_id for item in items])
        session["label_queue_items"] = {item.image_id: item for item in items}


def take_message(queue: LabelQueue) -> None:
    """The component's newest message (save, move, draft), carried out before anything is drawn."""
    value = session.get(KEYPOINTS)
    try:
        message = label_workflow.read_message(value, session.get("label_ack"))
    except (ValueError, TypeError) as exc:
        session["label_ack"] = value.get("nonce")
        session["label_notice"] = {"text": f"Not understood: {exc}", "kind": "error"}
        return
    if message is None:
        return
    session["label_ack"] = message.nonce
    sliders = value.get("view")
    if isinstance(sliders, dict):
        try:
            session["label_view"] = canvas.ViewSettings.from_sliders(**{k: sliders[k] for k in
                                                                        ("brightness", "contrast", "invert")})
        except (KeyError, TypeError, ValueError):
            pass
    if message.edit.get("facing") in label_workflow.FACINGS:
        session["label_facing"] = message.edit["facing"]
    works = session.setdefault("label_work", {})
    if message.image_id in works and f"label_note_{message.image_id}" in session:
        works[message.image_id].set_note(session[f"label_note_{message.image_id}"])  # typed, not yet sent
    outcome = None
    with engine_errors("Labeling"):
        outcome = label_workflow.handle(message, works, queue, classes=CLASSES, save=save_reading,
                                        draft=pre_annotate, errors=ENGINE_ERRORS)
    if outcome is None:
        session["label_notice"] = {"text": "That failed: the reason is shown above the film.", "kind": "error"}
        return
    if message.action == "move" and message.discard:
        session.pop(f"label_note_{message.image_id}", None)  # the typed note goes with the other changes
    if outcome.error:
        flash(outcome.error, "error")
        session["label_notice"] = {"text": outcome.error, "kind": "error"}
        return
    flash(outcome.flash, "info" if message.action == "draft" else "success")
    session["label_notice"] = {"text": outcome.flash or "Done.", "kind": "ok"}


def annotate() -> None:
    open_queue(dataset)
    controls = st.columns([3, 3, 2], vertical_alignment="bottom")
    filter_name = controls[0].selectbox("Queue", list(labels.FILTERS), format_func=labels.FILTERS.get,
                                        key="label_filter")
    uncertain = controls[1].toggle("Uncertain first", key="label_uncertain",
                                   help="Active learning: the films the promoted classifier and landmark model are "
                                        "least sure about come first.")
    refresh = controls[2].button("Refresh", key="label_refresh", help="Read the queue again from the database.")
    wanted = (dataset, filter_name, uncertain, annotator)
    queue = session.get("label_queue")
    if session.get("label_queue_wanted") == "fix":  # Review's Fix made a queue of one film: keep it
        session["label_queue_wanted"] = wanted
    if refresh or not isinstance(queue, LabelQueue) or session.get("label_queue_wanted") != wanted:
        session["label_queue_wanted"] = wanted
        build_queue(filter_name, uncertain)
        queue = session["label_queue"]
    # Everything that comes and goes sits inside this one container: the component after it keeps its place (a
    # remounted component would start again from Python's copy of the film).
    notices = st.container()
    with notices:
        take_message(queue)
    done = labels.progress(dataset, store=annotation_store)
    notices.progress(done.fraction, text=f"{done.labeled} / {done.total} labeled · "
                     + " · ".join(f"{name} {count}" for name, count in done.per_class.items()))
    for kind, text in session.pop("label_flash", []):
        getattr(notices, kind)(text)
    if queue.current is None:
        notices.info(f"Nothing in the queue “{labels.FILTERS[filter_name]}”. Choose another queue or refresh.")
        return
    image = annotation_store.image(queue.current)
    with notices:  # a failed model draft says so there
        work = work_for(image)
    work.touch()
    if f"label_note_{image.image_id}" in session:  # a note typed: an unsaved change before the component is drawn
        work.set_note(session[f"label_note_{image.image_id}"])
    item = session.get("label_queue_items", {}).get(image.image_id)
    notices.markdown(f"**Film {queue.position + 1} of {len(queue.ids)}** · image {image.image_id} · patient "
                     f"`{image.patient_id}`"
                     + (f" · uncertainty {item.uncertainty:.2f}" if item and item.uncertainty is not None else "")
                     + (f" · read by {', '.join(item.annotators)}" if item and item.annotators else ""))
    if item and item.rejection:
        notices.error(f"Your label was {item.rejection}")
    fix = session.get("label_fix")
    if fix is not None and fix["image_id"] == image.image_id:
        notices.info(f"Fixing {fix['annotator']}'s label {fix['label_id']}: saving accepts your corrected copy.")

    check = labels.rule_check(work.curvature_class, work.saved_landmarks(), film=pixels_of(image))
    picture, picture_key = film_for_browser(image)
    facing = check.facing.facing if check.facing is not None else session.get("label_facing")
    with st.container(key="label_keypoints_box"):
        canvas.keypoints(
            key=KEYPOINTS, film=picture, film_key=picture_key, image_size=work.image_size,
            state=label_workflow.component_state(work, facing),
            names=label_workflow.component_names(),
            sides=[label_workflow.image_side(i) for i in range(label_workflow.N_POINTS)],
            colours=label_workflow.point_colours(),
            vertebrae=[label_workflow.vertebra_of(i) for i in range(label_workflow.N_POINTS)],
            diagram=label_workflow.diagram_points(), classes=CLASSES,
            suggested=check.rule_class,
            nav={"can_previous": queue.position > 0, "can_next": not queue.at_end, "can_skip": len(queue.ids) > 1},
            view=view_settings().sliders(), ack=session.get("label_ack"), notice=session.pop("label_notice", None))
    tools(work, image, check)


def tools(work: Annotation, image, check) -> None:
    """Below the film: what the saved points measure, the note, drafts for new films, the film's state."""
    metrics = st.columns(4)
    metrics[0].metric("Cobb C2–C7", "—" if check.cobb_c2c7 is None else f"{check.cobb_c2c7:+.1f}°")
    metrics[1].metric("CCI", "—" if check.cci is None else f"{check.cci:.1f} %")
    metrics[2].metric("Rule class", check.rule_class or "—",
                      help="From the points as last saved or drafted; ★ marks it among the class buttons.")
    metrics[3].caption("Measured from the points as last saved or drafted."
                       + (f" The patient {check.facing.describe()}." if check.facing is not None else ""))
    if check.contradicts:
        st.warning(check.message, icon="⚠️")
    row = st.columns([3, 2], vertical_alignment="bottom")
    note = row[0].text_input("Note", work.note, key=f"label_note_{image.image_id}",
                             help="Saved with the label, e.g. why a class contradicts the measured angle.")
    work.set_note(note)
    row[1].toggle("Draft new films", key="label_auto_draft",
                  help="Start each new film from the promoted models' draft (box, points, class); the store records "
                       "how far you move each point.")
    if work.draft is not None:
        st.caption("Started from a model draft: the store will record how far you move each point.")
    box = "—" if work.roi_box is None else ", ".join(f"{v:.0f}" for v in work.roi_box)
    st.caption(f"As last saved or drafted: box (image px) {box} · {len(work.placed_points)} points · "
               f"{len(work.hidden)} hidden · {work.elapsed():.0f} s on this film. Keys in the film: Z undo, H hidden, "
               "B box, P points, +/− zoom, 0 fit, X to box, arrows move, 1/2/3 class, S save, Enter save & next.")


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
        row = st.container(horizontal=True)  # content-wide buttons that wrap: no label cut in a narrow column
        if row.button("Accept", type="primary", key="label_accept"):
            with engine_errors("Accepting"):
                labels.review(choice.label_id, reviewer=annotator, verdict="accept", comment=comment or None,
                              store=annotation_store, actor=state["actor"])
                st.rerun()
        if row.button("Fix", key="label_fix_button", help="Edit the reading on the Annotate canvas; saving "
                                                           "accepts your corrected copy."):
            session["label_fix"] = {"label_id": choice.label_id, "image_id": choice.image_id,
                                    "annotator": choice.annotator}
            session.setdefault("label_work", {})[choice.image_id] = Annotation.from_reading(
                choice.image_id, (image.width, image.height), curvature_class=choice.curvature_class,
                roi_box=choice.roi_box, landmarks=choice.landmarks, note=choice.note)
            session["label_work"][choice.image_id].dirty = True  # saving the copy as it is accepts it
            # a queue of this one film, until the annotator picks a queue or refreshes
            session["label_queue"] = LabelQueue([choice.image_id], key=("fix", choice.label_id))
            session["label_queue_items"] = {}
            session["label_queue_wanted"] = "fix"
            session["label_goto"] = "Annotate"
            st.rerun()
        if row.button("Reject", key="label_reject"):
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

    cards = st.columns(4)  # short labels (a narrow column cuts long ones), the full names in the help
    cards[0].metric("Class kappa", shown(a.kappa), help="Class: quadratic-weighted Cohen's kappa (scikit-learn)")
    cards[0].caption(f"n = {a.kappa_n} pairs")
    cards[1].metric("Angle ICC", shown(a.icc), help=f"C2–C7 angle: intraclass correlation {a.icc_kind or ''} "
                                                    "(pingouin)")
    cards[1].caption(f"n = {a.icc_n} films")
    ba = a.bland_altman
    cards[2].metric("Angle bias", "n/a" if ba is None else f"{ba.bias:+.1f}°",
                    help="C2–C7 angle: Bland–Altman bias, first reading minus second")
    cards[2].caption("n/a" if ba is None else f"limits {ba.lower:+.1f}° to {ba.upper:+.1f}° · n = {ba.n} pairs")
    cards[3].metric("Point distance", "n/a" if a.landmark_px is None else f"{a.landmark_px:.1f} px",
                    help="Mean distance between two readings' landmarks")
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
    kind = st.selectbox("Format", list(exports.EXPORT_KINDS), format_func=names.get, key="label_export_kind")
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
