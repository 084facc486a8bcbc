"""The frame every page draws first: the research-use notice, the workspace sidebar and the demo builder,
and the navigation (app.py and the pages share one list).

Every page script starts with ``frame(title)``. Streamlit runs a file of ``pages/`` directly, without
app.py, when a ``pages/`` folder sits next to the entry script and a server's first run (or an AppTest
rerun) asks for that page. ``frame`` notices (app.py leaves a mark each run) and, on a session's first
run, installs the app's navigation and reruns through app.py, so the menu is the app's own.

Kept free of torch: the first page must render before any model loads, so everything heavy is imported
inside the function that needs it.
"""
from __future__ import annotations

import functools
import sys
import traceback
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import streamlit as st

from core import demo, settings
from core.runs import launch, registry, reports
from core.inference.report import NOTICE as NOTICE_PLAIN

NOTICE = ("**Research and teaching use only — not a diagnosis.** CerviCurve's outputs are not validated for "
          "clinical decisions; a qualified clinician must read every film.")
# The models Predict uses, in its order (core.runs.registry): (task, the word people see)
TASKS = tuple((name, registry.TASKS[name].title) for name in registry.PROMOTABLE)
ROOT = Path(__file__).resolve().parents[1]


# Pages in menu order; a page file that does not exist (yet) is not listed.
PAGES = (
    ("predict", "Predict", ":material/radiology:"),
    ("data", "Data", ":material/folder_open:"),
    ("label", "Label", ":material/edit:"),
    ("train", "Train", ":material/model_training:"),
    ("runs", "Runs", ":material/history:"),
    ("compare", "Compare", ":material/leaderboard:"),
    ("teach", "Teach", ":material/school:"),
)
# The browser tab's icon. Set before every st.navigation call: a navigation message that reaches the browser before
# any page icon makes Streamlit's frontend use the current page's menu icon as the favicon, and for a
# ":material/...:" icon that is an SVG fetched from fonts.gstatic.com (the menu's own icons use the bundled font).
PAGE_ICON = "🦴"
_VIA_APP = "_cervicurve_via_app"
_SEEN = "_cervicurve_session_started"


def navigation(position: str = "sidebar"):
    """st.navigation over the pages that exist; app.py runs the page it returns. Sets the page icon first (PAGE_ICON)."""
    st.set_page_config(page_icon=PAGE_ICON)
    available = [page for page in PAGES if (ROOT / "pages" / f"{page[0]}.py").exists()]
    st.session_state[_VIA_APP] = True
    return st.navigation([st.Page(str(ROOT / "pages" / f"{stem}.py"), title=title, icon=icon, default=index == 0)
                          for index, (stem, title, icon) in enumerate(available)], position=position)


def frame(title: str) -> dict:
    """Page config, notice, title, sidebar and (on an empty workspace) the demo offer; returns the workspace state
    (``workspace_state``: read once per rerun, pass it on rather than reading again).

    When the workspace cannot be read, the reason is shown and the page stops there.
    """
    via_app = st.session_state.pop(_VIA_APP, False)
    if not via_app and _SEEN not in st.session_state:
        # A session's first run came straight from pages/: st.navigation switches Streamlit's pages-folder
        # mode off for this server, and the rerun goes through app.py. Later direct runs (AppTest runs
        # every rerun this way) are left alone: a rerun there would drop a button click.
        st.session_state[_SEEN] = True
        navigation(position="hidden")
        st.rerun()
    st.session_state[_SEEN] = True
    st.set_page_config(page_title=f"{title} · CerviCurve", page_icon=PAGE_ICON, layout="wide")
    show_notice()
    try:
        settings.check()
    except settings.SettingsError as exc:
        st.error(f"CerviCurve cannot start with these settings. {exc}")
        st.stop()
    st.title(title)
    state = None
    with engine_errors("Reading the workspace"):
        state = workspace_state()
    if state is None:
        st.stop()  # the page itself would only fail the same way
    state.update(session())
    sidebar(state)
    demo_panel(state)
    return state


# ------------------------------------------------------------------ sign-in (team mode)

_TOKEN = "_cervicurve_session_token"


@st.cache_resource(show_spinner=False)
def _accounts_for(url: str):
    from core.data.accounts import Accounts

    return Accounts(url)


def accounts():
    return _accounts_for(settings.db_url())


def actor() -> str | None:
    """The session token core checks for every action (None in single-user mode); core validates it, so a
    forged value grants nothing."""
    return st.session_state.get(_TOKEN)


def session() -> dict:
    """``{"actor", "user", "team_mode"}``: who acts on this page. In team mode the page stops at a sign-in form until
    a user signs in; ``actor`` is the session token that every core action checks (so a role typed into session
    state grants nothing). In single-user mode ``actor`` is None and core lets the one local user do everything."""
    team = accounts().team_mode()
    if not team:
        return {"actor": None, "user": None, "team_mode": False}
    token = st.session_state.get(_TOKEN)
    user = accounts().user_for(token)
    if user is None:
        st.session_state.pop(_TOKEN, None)
        sign_in_form()
        st.stop()
    return {"actor": token, "user": user, "team_mode": True}


_PASSWORD = "sign_in_password"
_SIGN_IN_ANSWER = "_cervicurve_sign_in_answer"


def sign_in_form() -> None:
    from core.data.accounts import SignInRefused

    answer = st.session_state.pop(_SIGN_IN_ANSWER, None)
    # clear_on_submit: the browser forgets the typed password once it is sent
    with st.form("sign_in", clear_on_submit=True):
        st.markdown("#### Sign in")
        st.caption("This CerviCurve server is shared by a team: sign in with the account an admin gave you.")
        name = st.text_input("User name", key="sign_in_name")
        password = st.text_input("Password", type="password", key=_PASSWORD)
        submitted = st.form_submit_button("Sign in", type="primary")
    if answer:
        st.error(answer)
    if not submitted:
        return
    # and the server forgets it too: session state outlives the run. The rerun below draws the form empty.
    st.session_state.pop(_PASSWORD, None)
    try:
        token = accounts().sign_in(name, password)
    except SignInRefused as exc:  # locked after failures, or too many sign-ins at once: it says when to retry
        token, st.session_state[_SIGN_IN_ANSWER] = None, f"Sign-in refused: {exc}."
    del password
    if token is not None:
        st.session_state[_TOKEN] = token
    elif _SIGN_IN_ANSWER not in st.session_state:  # the same words for an unknown name and a wrong password
        st.session_state[_SIGN_IN_ANSWER] = "Wrong user name or password."
    st.rerun()


def show_notice() -> None:
    st.warning(NOTICE, icon="⚠️")


# ------------------------------------------------------------------ errors


# The engine's own error types are all ValueError subclasses; OS errors come from file handling.
ENGINE_ERRORS = (ValueError, OSError, KeyError)


@contextmanager
def engine_errors(action: str) -> Iterator[None]:
    """Show a failure of ``action`` as ``st.error`` with its reason; never a traceback on the page.

    The engine raises ValueError subclasses with messages written for people (ImageReadError,
    ArchiveError, ModelMissing, ...): those are shown as they are. Anything else is a bug: the page
    says so briefly and the traceback goes to the server log, where a developer can read it.
    """
    from sqlalchemy.exc import SQLAlchemyError

    try:
        yield
    except ENGINE_ERRORS as exc:
        st.error(f"{action} failed: {exc}")
    except SQLAlchemyError as exc:
        from sqlalchemy.engine import make_url

        where = make_url(settings.db_url()).render_as_string(hide_password=True)
        st.error(f"{action} failed: the annotation database {where} cannot be used "
                 f"({getattr(exc, 'orig', None) or exc}). Ask whoever runs this server to check its database "
                 "and workspace settings.")
    except Exception as exc:  # a bug, not bad input: keep the page alive, log the details
        traceback.print_exc(file=sys.stderr)
        st.error(f"{action} failed with an unexpected {type(exc).__name__}: {exc}. "
                 "Details are in the server log.")


# ------------------------------------------------------------------ workspace


@st.cache_resource(show_spinner=False)
def _store_for(url: str):
    from core.data.archive import sweep_scratch
    from core.data.importers import sweep_partial_images
    from core.data.store import AnnotationStore

    store = AnnotationStore(url)
    # once per server process and database: raw uploads and half-written images a killed import left behind go
    # at start, not only at the next import
    sweep_scratch()
    sweep_partial_images(store)
    return store


def store():
    """The workspace's annotation store (one per database URL per server process)."""
    return _store_for(settings.db_url())


def workspace_state() -> dict:
    """What the frame shows, read once per rerun: the image count (one ``count(*)``), the datasets, the run list
    (``core.runs.layout.RunInfo``, newest first) and each task's promoted model."""
    from core.runs import layout

    annotation_store = store()
    return {"images": annotation_store.count_images(), "datasets": annotation_store.datasets(),
            "runs": layout.list_runs(), "models": {task: promoted_info(task) for task, _ in TASKS}}


def promoted_info(task: str) -> dict | None:
    """What Predict uses for ``task``: the promoted model's metadata, or None when there is none."""
    from core.runs import promotion

    return promotion.promoted_info(task) if promotion.promoted_model(task) is not None else None


def workspace_is_empty(state: dict) -> bool:
    return state["images"] == 0 and not any(state["models"].values())


def sidebar(state: dict) -> None:
    """Active models, a choice of run per model, and what the workspace holds."""
    with st.sidebar:
        st.subheader("Models")
        for task, title in TASKS:
            info = state["models"][task]
            if info is None:
                st.caption(f"**{title}:** none promoted")
            else:
                st.caption(f"**{title}:** {model_line(info)}", help=model_help(info))
        for task, title in TASKS:
            choices = run_choices(task, state)
            # the classifier choice is always shown; the others once there is a run besides the promoted one
            if choices and (task == "classify" or any(run is not None for run in choices.values())):
                st.selectbox(f"{title} used by Predict", list(choices), key=f"choice_{task}",
                             help=f"The promoted {title.lower()}, or any finished {task} run in this "
                                  "workspace, to compare them on the same films.")
        if state.get("team_mode"):
            user = state["user"]
            st.caption(f"Team mode · signed in as **{user.name}** ({user.role})")
            if st.button("Sign out", key="sign_out"):
                accounts().sign_out(state["actor"])
                st.session_state.pop(_TOKEN, None)
                st.rerun()
        else:
            st.caption("Single-user mode · no sign-in (this server answers on loopback only unless told otherwise)")
        st.subheader("Workspace")
        st.caption(f"{state['images']} images · {len(state['datasets'])} datasets · {len(state['runs'])} runs")
        if state["datasets"]:
            st.caption("Datasets: " + ", ".join(state["datasets"]))
        st.caption(f"Folder: `{settings.home()}`")
        st.caption(NOTICE_PLAIN)


# The Runs page's headline test score of each model (core.runs.reports.headline, which names it): a plain gloss
# for the jargon ones, and what the number means (the sidebar line's help). Keyed by (task, higher is better): a
# landmark model is scored by its mean error in pixels (heatmap) or by pose mAP50-95 (YOLO-pose).
SCORE_WORDS = {
    ("classify", True): ("class score",
                         "macro-F1 is the F1 score of each class (normal, straightened, reversed) averaged, from 0 to "
                         "1; 1 = every film classed right."),
    ("detect", True): ("box score",
                       "mAP50-95 says how well the ROI boxes found overlap the labeled ones, averaged over overlap "
                       "thresholds from 50 % to 95 %, from 0 to 1; higher is better."),
    ("landmarks", True): ("landmark score",
                          "pose mAP50-95 says how closely the 23 landmarks found match the labeled ones, averaged "
                          "over strict to loose tolerances, from 0 to 1; higher is better."),
    ("landmarks", False): (None,
                           "The mean distance between the 23 landmarks found and the labeled ones, in pixels of the "
                           "film; lower is better."),
}
SYNTHETIC = "synthetic, not real films"


def promoted_score(info: dict) -> tuple[dict | None, str, bool]:
    """``(headline, what it was measured on, on phantoms)`` of a promoted model: the Runs page's headline test score
    (``core.runs.reports.headline`` of the promoted copy of the run) and its held-out films in words."""
    from core.runs import layout, reports

    task = str(info.get("task") or "classify")
    folder = settings.promoted_dir() / task
    report = folder / layout.TEST_REPORT
    stat = report.stat() if report.exists() else None
    score = _headline(str(folder), task, stat and (stat.st_mtime_ns, stat.st_size))
    config = layout.read_config(folder) if (folder / layout.CONFIG_FILE).exists() else {}
    dataset = reports.data_record(folder).get("dataset") or config.get("dataset") or info.get("dataset")
    phantoms = bool(info.get("demo_quality") or config.get("quick") or config.get("full"))
    split = (score or {}).get("split") or "test"
    where = "held-out phantoms" if phantoms else (f"held-out films of {dataset}" if dataset else "held-out films")
    if split != "test":
        where += f" ({split} split)"
    return score, where, phantoms


@functools.lru_cache(maxsize=16)
def _headline(folder: str, task: str, version) -> dict | None:
    """reports.headline, read again only when the test report changes (the sidebar draws on every rerun)."""
    from core.runs import layout, reports

    config_task = layout.read_config(folder).get("task", task) if (Path(folder) / layout.CONFIG_FILE).exists() else task
    return None if version is None else reports.headline(folder, config_task)


def model_line(info: dict) -> str:
    """``s_resnet34 · demo (full) · held-out phantoms: class score (macro-F1) 0.981 (synthetic, not real films)``:
    one number per model — the Runs page's headline test score — named in plain words, with what it was measured
    on."""
    name = str(info.get("model") or "model").removesuffix(".yaml").removesuffix(".pt")
    line = f"{name} · " + (f"demo ({info['demo_quality']})" if info.get("demo_quality") else
                           f"run {info.get('run_id', '?')}")
    score, where, phantoms = promoted_score(info)
    if not score or score.get("value") is None:
        return f"{line} · no held-out test score (its run had no test films)"
    higher = bool(score.get("higher_is_better", True))
    gloss = SCORE_WORDS.get((info.get("task"), higher), (None, ""))[0]
    value = float(score["value"])
    number = f"{value:.3f}" if higher else f"{value:.2f}"
    named = f"{gloss} ({score['name']})" if gloss else score["name"]
    return f"{line} · {where}: {named} {number}" + (f" ({SYNTHETIC})" if phantoms else "")


def model_help(info: dict) -> str:
    """The sidebar line's help: what the number means, what it was measured on, which run."""
    score, where, phantoms = promoted_score(info)
    parts = [f"Run {info.get('run_id')}, promoted {info.get('promoted_at', '')}."]
    if score and score.get("value") is not None:
        parts.append(SCORE_WORDS.get((info.get("task"), bool(score.get("higher_is_better", True))),
                                     (None, ""))[1])
        parts.append(f"Measured on {where}: films kept out of its training, the same score the Runs page shows.")
        if phantoms:
            parts.append("Phantoms are synthetic films drawn by CerviCurve: a score on them says little about how "
                         "the model does on real films.")
    else:
        parts.append("Its run had no held-out test films, so there is no score to judge it by.")
    return " ".join(parts)


def run_choices(task: str, state: dict) -> dict[str, str | None]:
    """Label -> run id (None = the promoted model) for one task's model selector."""
    choices: dict[str, str | None] = {}
    promoted = state["models"][task]
    if promoted is not None:
        choices[f"Promoted: {promoted.get('model')} ({promoted.get('run_id')})"] = None
    for run in state["runs"]:
        if run.task == task and run.state == "done" and run.run_id != (promoted or {}).get("run_id"):
            choices[f"Run {run.run_id} ({run.model})"] = run.run_id
    return choices


def selected_runs(state: dict) -> tuple[str | None, ...]:
    """The runs chosen in the sidebar, in ``TASKS`` order (classifier, detector, landmarks); None = promoted."""
    chosen = []
    for task, _ in TASKS:
        label = st.session_state.get(f"choice_{task}")
        chosen.append(run_choices(task, state).get(label) if label else None)
    return tuple(chosen)


# ------------------------------------------------------------------ demo builder


def demo_panel(state: dict) -> None:
    """The first-launch offer to build the demo, and its progress while it waits or runs."""
    status = demo.latest_build()
    if demo.building(status):
        demo_progress()
        return
    if not workspace_is_empty(state) and (status is None or status.get("state") == "done"):
        return
    with st.container(border=True):
        if status and status.get("state") in ("failed", "interrupted"):
            step = status.get("step")
            where = f" at step {step} of {len(demo.STEPS)} ({status.get('stage')})" if step else ""
            reason = reports.run_state(status, "demo").detail or "the process ended without a message"
            st.error(f"The last demo build did not finish{where}: {reason}. Its log is "
                     f"`{settings.runs_dir() / status['run_id'] / 'train.log'}`.")
        st.markdown("#### This workspace is empty" if workspace_is_empty(state) else "#### Build the demo")
        st.write("Build the demo: synthetic lateral neck films (phantoms) and small models trained on them, "
                 "so Predict works at once. Or import your own data on the **Data** page.")
        # Full first: the quick models are too weak to judge the tool by
        measured = demo.measured_builds()
        quality = st.radio("Demo size", ["full", "quick"], horizontal=True, key="demo_mode",
                           format_func=lambda q: f"{q.capitalize()} ({demo_build_figures(measured.get(q))})")
        if st.button("Build the demo", type="primary", key="build_demo"):
            with engine_errors("Starting the demo"):
                demo.start_build(quality, actor=actor())
                st.rerun()


def demo_build_figures(entry: dict | None) -> str:
    """A measured build's time and held-out scores (benchmarks/results/demo_build.json), as the offer says them."""
    if not entry:
        return "not yet timed"
    busy = entry.get("mean_load") is not None and entry["mean_load"] > 1.5 * entry.get("cpu_count", 1)
    # on a busy machine the wall time mostly measures the other work: the CPU time says what the build itself needs
    cpu = f" ({entry['cpu_s'] / 60:.0f} min of CPU time)" if busy and entry.get("cpu_s") else ""
    return (f"{entry['wall_s'] / 60:.0f} min on a {entry.get('cpu_count')}-core CPU{' that was busy' if busy else ''}"
            f"{cpu}; "
            f"on held-out phantoms the class was right on {entry['class_accuracy']:.0%}, the angle off by "
            f"{entry['cobb_mae_deg']:.1f}° on average")


@st.fragment(run_every="1s")
def demo_progress() -> None:
    """Polls the demo run's status; reruns the whole app when the build ends so the sidebar updates."""
    status = demo.latest_build()
    if not demo.building(status):
        st.rerun(scope="app")  # finished or died: the app shows the new models or the failure
    run = reports.run_state(status, "demo")
    step, steps = int(status.get("step") or 0), len(demo.STEPS)
    if run.label == "waiting in the queue":
        text = f"The demo build is waiting in the queue {run.detail}: it starts when the run training there ends"
    else:
        label = f"Building the demo — {status.get('stage') or 'starting'}: {status.get('message', '')}".rstrip(": ")
        text = f"{label} (step {max(step, 1)} of {steps})"
    with st.container(border=True):
        # The step in progress is not done yet: the bar shows the finished ones.
        st.progress(min(1.0, max(0, step - 1) / steps), text=text)
        st.caption("It runs in the background: keep using the app, reload the page or come back later. "
                   "It is listed on the Runs page with the three models it trains.")
        if st.button("Cancel the build", key="cancel_demo"):
            with engine_errors("Cancelling the demo"):
                launch.cancel_run(status["run_id"], actor=actor())
                st.rerun(scope="app")
