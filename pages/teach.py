"""Teach: explore how the angle makes the class, measure it yourself, and self-test with quizzes.

Thin: every action is one ``core.inference.teaching`` call (Explore's redraw, a measurement attempt, creating,
answering and scoring a quiz — the last three are also ``python -m core quiz ...``). The canvas is drawn here
(streamlit-drawable-canvas cannot be imported outside a running page); ui/canvas.py did not exist when this page
was written, so the small point canvas it needs lives below.
"""
from __future__ import annotations

import hashlib

import pandas as pd
import streamlit as st

from core.inference import report
from core.inference.teaching import drawing, explore, films, quiz
from core.settings import CLASSES
from ui.figures import probability_bars
from ui.frame import engine_errors, frame, selected_runs, store
from ui.imagery import as_pil, thumbnail_png
from ui.teach_views import canvas_points, confusion_frame, measurements_frame, rule_scale

PARTS = ("Explore", "Measure it yourself", "Self-test")
LAYER_LABELS = {"landmarks": "23 landmarks", "cobb": "Cobb four-line", "ishihara": "Ishihara chord and a1–a4",
                "arc": "arc depth", "model": "model's landmarks"}
CANVAS_WIDTH = 440  # px on screen
POINT_COLOUR = "rgba(255, 140, 0, 0.9)"

state = frame("Teach")
runs = selected_runs(state)
part = st.radio("Part", PARTS, horizontal=True, key="teach_part", label_visibility="collapsed")


def film_settings() -> films.FilmSettings:
    """The Explore sliders' current values (their defaults before Explore was opened)."""
    defaults = films.FilmSettings()
    get = st.session_state.get
    return films.FilmSettings(cobb_c2c7=get("explore_angle", defaults.cobb_c2c7),
                              facing=get("explore_facing", defaults.facing),
                              c7_hidden=get("explore_c7_hidden", defaults.c7_hidden),
                              exposure_stops=get("explore_exposure", defaults.exposure_stops),
                              noise=get("explore_noise", defaults.noise), seed=int(get("explore_seed", defaults.seed)))


# ------------------------------------------------------------------ 1. Explore


def explore_part() -> None:
    controls, picture_column, facts = st.columns([3, 5, 4], gap="medium")
    defaults = films.FilmSettings()
    low, high = films.ANGLE_RANGE_DEG
    with controls:
        st.slider("C2–C7 angle (°, lordosis positive)", int(low), int(high), int(defaults.cobb_c2c7), 1,
                  key="explore_angle", persist_state="session")
        st.radio("Patient faces", ["right", "left"], horizontal=True, key="explore_facing", persist_state="session")
        st.toggle("C7 hidden by the shoulders", key="explore_c7_hidden", persist_state="session")
        st.slider("Exposure (stops: + darker, − lighter)", *films.EXPOSURE_RANGE_STOPS, 0.0, 0.25,
                  key="explore_exposure", persist_state="session")
        st.slider("Extra noise", *films.NOISE_RANGE, 0.0, 0.01, key="explore_noise", persist_state="session")
        st.number_input("Film seed (the same settings give the same film)", 0, 2**31 - 1, defaults.seed,
                        key="explore_seed", persist_state="session")
        # one checkbox a line: five pills do not fit this column and the last ones were cut off
        st.markdown("**Draw**")
        layers = [layer for layer in drawing.LAYERS
                  if st.checkbox(LAYER_LABELS[layer], True, key=f"explore_layer_{layer}", persist_state="session")]
    result = None
    with engine_errors("Drawing the film"), st.spinner("Drawing…"):
        result = explore.explore(film_settings(), layers or (), runs)
    if result is None:
        return
    truth = result.film.truth
    picture_column.image(report.as_jpeg(result.picture), width="stretch",
                         caption="Cyan: the 23 landmarks · magenta: C2 and C7 inferior endplates and their "
                                 "perpendiculars · green: the C2–C7 posterior chord, orange a1–a4 · red: arc depth · "
                                 "yellow: the model's landmarks")
    for note in result.film.notes:
        picture_column.caption(f"Note: {note}")
    with facts:
        st.markdown(f"#### Rule class: **{truth.rule_class}** (Cobb C2–C7 {truth.cobb_c2c7:+.1f}°)")
        t = result.thresholds
        st.caption(f"Rule on Cobb C2–C7: normal ≥ {t.normal_min_deg:g}°, reversed ≤ {t.reversed_max_deg:g}°, "
                   "straightened between (the thresholds this workspace is set to).")
        model = result.model
        st.plotly_chart(rule_scale(t, films.ANGLE_RANGE_DEG, truth.cobb_c2c7,
                                   None if model is None else model.cobb_c2c7,
                                   None if model is None else model.curvature_class),
                        key="explore_scale")
        st.dataframe(measurements_frame(truth), hide_index=True, width="stretch")
    model_column, heatmap_column, _ = st.columns([4, 4, 3], gap="medium")
    with model_column:
        st.markdown("#### The models' answer")
        if model is None:
            st.info("No model is promoted, so there is no model answer. "
                    "The film and its measurements above are complete without one.")
        else:
            models_answer(model, truth)
    if model is not None and result.heatmap is not None:
        heatmap_column.image(report.as_jpeg(result.heatmap), width="stretch",
                             caption=f"Grad-CAM heatmap for '{model.curvature_class}'")
    elif model is not None and model.prediction.cam is not None:
        heatmap_column.info("No heatmap: the network's class is not the models' answer on this film, so a map of "
                            "where it looked is no evidence.")
    timings = ", ".join(f"{k} {v:.0f}" for k, v in result.timings_ms.items())
    st.caption(f"Redrawn at {truth.cobb_c2c7:+.1f}° in {result.redraw_ms:.0f} ms ({timings})")  # the page's last line


def models_answer(model: explore.ModelAnswer, truth) -> None:
    """The models' answer as Predict gives it (one verdict): its class beside the rule's, or "not judged" and why;
    the network's probabilities only where its class is the answer."""
    verdict = model.verdict
    relation = {True: "It **agrees** with", False: "It **disagrees** with", None: "No class to set beside"}[
        model.agrees_with_rule]
    st.markdown(f"Model's answer: **{verdict.title}**. {relation} the rule's **{truth.rule_class}**.")
    if verdict.warns:
        st.warning(verdict.why, icon="⚠️")
    if verdict.lead == "network":
        probability_bars(model.prediction.probabilities, verdict.curvature_class)
    if model.cobb_c2c7 is None:
        st.caption(model.angle_missing)
    else:
        st.markdown(f"Model's own angle: **{model.cobb_c2c7:+.1f}°** (truth {truth.cobb_c2c7:+.1f}°, "
                    f"off by {model.cobb_c2c7 - truth.cobb_c2c7:+.1f}°)")
    st.caption("Models: " + model.provenance)


# ------------------------------------------------------------------ 2. Measure it yourself


def point_canvas(film: films.Film) -> list[tuple[float, float]]:
    """The film on a canvas in point mode; returns the points placed, in film pixels."""
    from streamlit_drawable_canvas import st_canvas

    height, width = film.pixels.shape
    scale = CANVAS_WIDTH / width
    digest = hashlib.sha1(repr(film.key).encode()).hexdigest()[:10]
    resets = st.session_state.setdefault("measure_resets", 0)
    drawn = st_canvas(fill_color=POINT_COLOUR, stroke_width=1, stroke_color=POINT_COLOUR,
                      background_image=as_pil(film.pixels).resize((CANVAS_WIDTH, round(height * scale))),
                      height=round(height * scale), width=CANVAS_WIDTH, drawing_mode="point", point_display_radius=4,
                      key=f"measure_canvas_{digest}_{resets}")
    return canvas_points(drawn.json_data, scale)


def measure_part() -> None:
    source = st.radio("Film", ["The Explore phantom", "A film of a dataset"], horizontal=True,
                      key="measure_source")
    film = None
    with engine_errors("Loading the film"):
        if source == "The Explore phantom":
            film = films.phantom_film(film_settings())
            st.caption("The phantom of the Explore settings: change the angle there and come back.")
        elif not state["datasets"]:
            st.info("No dataset in this workspace yet: import one on the Data page, or use the Explore phantom.")
        else:
            dataset = st.selectbox("Dataset", state["datasets"], key="measure_dataset")
            images = {f"{i.image_id}: {i.path.rsplit('/', 1)[-1]}"
                     + (f" ({i.curvature_class})" if i.curvature_class else ""): i.image_id
                     for i in store().current_labels(dataset)}
            choice = st.selectbox("Which film", list(images), key="measure_image")
            film = films.dataset_film(images[choice], store())
    if film is None:
        return
    for note in film.notes:
        st.caption(f"Note: {note}")
    facing = film.facing
    if facing is None:
        facing = st.radio("Patient faces (this film has no landmarks to tell)", ["right", "left"], horizontal=True,
                          key="measure_facing")
    canvas_column, result_column = st.columns([5, 5], gap="medium")
    with canvas_column:
        st.markdown("Click **two corners of the C2 inferior endplate**, then **two corners of the C7 inferior "
                    "endplate** (in either order within each endplate).")
        points = point_canvas(film)
        if st.button("Clear my points", key="measure_clear"):
            st.session_state["measure_resets"] += 1
            st.rerun()
    with result_column:
        if len(points) < 4:
            st.info(f"{len(points)} of 4 points placed.")
            return
        if len(points) > 4:
            st.warning("Only the first four points count: clear them to start again.")
        attempt = None
        with engine_errors("Measuring your angle"):
            attempt = explore.measure_attempt(film, points[:4], facing, runs)
        if attempt is None:
            return
        your, truth, model = st.columns(3)
        your.metric("Your angle", f"{attempt.student_cobb:+.1f}°")
        if attempt.truth_cobb is None:
            truth.metric("True angle", "—")
        else:
            truth.metric("True angle", f"{attempt.truth_cobb:+.1f}°", f"you {attempt.error_deg:+.1f}°",
                         delta_color="off")
        model.metric("Model's angle", "—" if attempt.model_cobb is None else f"{attempt.model_cobb:+.1f}°")
        if attempt.model_missing:
            st.caption(attempt.model_missing)
        st.image(report.as_jpeg(attempt.picture), width="stretch",
                 caption="Orange: your endplates · cyan: the true endplates · yellow: the model's")


# ------------------------------------------------------------------ 3. Self-test
# Who sees what: a student sees their own answers only; the class's answers are for the quiz's teacher — in team
# mode a reviewer or an admin (the role is checked in core), in single-user mode whoever gives the quiz's teacher
# key (shown once, when the quiz is set). A name typed on a shared page proves nothing, so a student's own result
# there is the one their browser session submitted, kept in session state, never looked up by name.

_SCORED = "quiz_scored"  # (quiz id, StudentResult) of this session's last submission


def take_quiz(quizzes) -> None:
    labels = {q.label: q for q in quizzes}
    chosen = labels[st.selectbox("Quiz", list(labels), key="quiz_choice")]
    if state["team_mode"]:  # the answers are the signed-in user's (core refuses another name)
        student = state["user"].name
        st.caption(f"Answering as **{student}**")
    else:
        student = st.text_input("Your name", key="quiz_student", max_chars=200, persist_state="session")
    films = None
    with engine_errors("Loading the films"), st.spinner("Drawing the films…"):
        films = quiz.quiz_films(chosen)
    if films is None:
        return
    answers = {}
    columns = st.columns(min(5, len(chosen.items)))
    for index, (item, pixels) in enumerate(zip(chosen.items, films)):
        with columns[index % len(columns)]:
            caption = f"Film {item.position}"
            if chosen.show_angle and item.truth_cobb is not None:
                caption += f" · Cobb C2–C7 {item.truth_cobb:+.1f}°"
            st.image(thumbnail_png(pixels, 320), caption=caption, width="stretch")
            answers[item.position] = st.radio(f"Film {item.position}", CLASSES, index=None,
                                              key=f"quiz_{chosen.quiz_id}_answer_{item.position}")
    if st.button("Submit my answers", type="primary", key="quiz_submit"):
        with engine_errors("Submitting"):
            scored = quiz.submit_answers(chosen.quiz_id, student, answers, actor=state["actor"])
            st.session_state[_SCORED] = (chosen.quiz_id, scored)
    show_own_score(chosen, films)


def show_own_score(chosen, films) -> bool:
    """This session's own result for the quiz, when it submitted one; returns whether there was one."""
    scored = st.session_state.get(_SCORED)
    if not scored or scored[0] != chosen.quiz_id:
        return False
    show_score(scored[1], films)
    return True


def show_score(result, films) -> None:
    st.markdown(f"### Score: {result.correct}/{result.total} ({result.score:.0%})")
    st.caption(f"{result.student}, answered {result.answered_at:%Y-%m-%d %H:%M} UTC")
    st.dataframe(confusion_frame(result.confusion), width="stretch", key="quiz_confusion")
    if not result.missed:
        st.success("No film missed.")
        return
    st.markdown("#### The films you missed")
    columns = st.columns(4)  # the quiz's thumbnail size, however few were missed
    for index, (item, answer) in enumerate(result.missed):
        angle = "" if item.truth_cobb is None else f" ({item.truth_cobb:+.1f}°)"
        said = quiz.model_said(item)
        model = f"model: {said}" if item.model_name else said
        columns[index % len(columns)].image(thumbnail_png(films[item.position - 1], 320), width="stretch",
                                            caption=f"Film {item.position}: you said {answer}; truth "
                                                    f"{item.truth_class}{angle}; {model}")


def set_quiz() -> None:
    with st.form("quiz_form"):
        title = st.text_input("Title", "Curvature quiz", key="quiz_title")
        if state["team_mode"]:
            teacher = state["user"].name
            st.caption(f"Teacher: **{teacher}**")
        else:
            teacher = st.text_input("Teacher", key="quiz_teacher")
        films = st.number_input("Films", 1, 50, 5, key="quiz_films")
        source = st.radio("Films from", ["Phantoms", "A labeled dataset"], horizontal=True, key="quiz_source")
        dataset = st.selectbox("Dataset (for a dataset quiz)", state["datasets"], key="quiz_dataset")
        seed = st.number_input("Seed (which phantoms or films)", 0, 2**31 - 1, 0, key="quiz_seed")
        show_angle = st.checkbox("Show each film's true angle", key="quiz_show_angle")
        submitted = st.form_submit_button("Create the quiz", type="primary")
    if submitted and source == "A labeled dataset" and not dataset:
        st.error("There is no dataset to draw films from: import one on the Data page, or use phantoms.")
    elif submitted:
        made = None
        with engine_errors("Creating the quiz"), st.spinner("Drawing the films and asking the models…"):
            made = quiz.create_quiz(title=title, teacher=teacher, films=int(films), seed=int(seed),
                                    dataset=dataset if source == "A labeled dataset" else None,
                                    show_angle=show_angle, runs=runs, actor=state["actor"])
        if made is not None:
            st.success(f"Created {made.label}. Students pick it under **Take a quiz**.")
            if made.teacher_key:
                st.info(f"Teacher key of this quiz: **{made.teacher_key}**. Note it now: it is shown only once, and "
                        "**Class results** shows the class's answers only to whoever gives it (students see their "
                        f"own). A lost key is replaced from the shell: `python -m core quiz key {made.quiz_id}`.")


def class_results(quizzes) -> None:
    labels = {q.label: q for q in quizzes}
    chosen = labels[st.selectbox("Quiz", list(labels), key="results_choice")]
    key = None
    if not state["team_mode"]:
        key = st.text_input("Teacher key (shown when the quiz was set)", type="password", key="results_key",
                            help="Only the quiz's teacher sees every student's answers; without the key you see "
                                 "your own.")
    results = None
    with engine_errors("Reading the results"):
        results = quiz.class_results(chosen.quiz_id, actor=state["actor"], teacher_key=key)
    if results is None:
        return
    if not results.everyone:
        own_results(chosen, results)
        return
    if not results.students:
        st.info("No answers to this quiz yet.")
        return
    st.markdown("#### Per student")
    st.dataframe(pd.DataFrame([{"student": s.student, "correct": s.correct, "films": s.total, "score": s.score,
                                "missed films": ", ".join(str(i.position) for i, _ in s.missed),
                                "answered": s.answered_at} for s in results.students]),
                 hide_index=True, width="stretch", key="results_students",
                 column_config={"score": st.column_config.ProgressColumn(min_value=0.0, max_value=1.0, format="percent")})
    st.markdown("#### Per film")
    per_film = [{**row, "model": quiz.model_said(item)} for row, item in zip(results.per_film(), chosen.items)]
    st.dataframe(pd.DataFrame(per_film), hide_index=True, width="stretch", key="results_films",
                 column_config={"correct_rate": st.column_config.ProgressColumn(min_value=0.0, max_value=1.0,
                                                                                format="percent")})
    st.download_button("Download all answers (CSV)", results.csv(), file_name=f"quiz_{chosen.quiz_id}_answers.csv",
                       mime="text/csv", key="results_csv")


def own_results(chosen, results) -> None:
    """A student's view of the results: their own answers, never a classmate's."""
    if state["team_mode"]:
        st.caption("The class's answers are for its teachers (reviewers and admins). Your own:")
        if not results.students:
            st.info("You have not answered this quiz yet: answer it under **Take a quiz**.")
            return
        films = None
        with engine_errors("Loading the films"):
            films = quiz.quiz_films(chosen)
        if films is not None:
            show_score(results.students[0], films)
        return
    st.caption("The class's answers are for the quiz's teacher, who gives its teacher key above. Without it you see "
               "only the answers this browser session submitted.")
    films = None
    with engine_errors("Loading the films"):
        films = quiz.quiz_films(chosen)
    if films is not None and not show_own_score(chosen, films):
        st.info("This session has not answered this quiz yet: answer it under **Take a quiz**.")


def self_test_part() -> None:
    role = st.radio("Role", ["Take a quiz", "Set a quiz", "Class results"], horizontal=True, key="quiz_role")
    if role == "Set a quiz":
        set_quiz()
        return
    quizzes = None
    with engine_errors("Reading the quizzes"):
        quizzes = quiz.list_quizzes()
    if not quizzes:
        st.info("No quiz yet: a teacher sets one under **Set a quiz**.")
    elif role == "Take a quiz":
        take_quiz(quizzes)
    else:
        class_results(quizzes)


{"Explore": explore_part, "Measure it yourself": measure_part, "Self-test": self_test_part}[part]()
