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

import sys
import time
import traceback
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import streamlit as st

from core import demo, settings
from core.runs import registry
from core.inference.report import NOTICE as NOTICE_PLAIN

NOTICE = ("**Research and teaching use only — not a diagnosis.** CerviCurve's outputs are not validated for "
          "clinical decisions; a qualified clinician must read every radiograph.")
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
_VIA_APP = "_cervicurve_via_app"
_SEEN = "_cervicurve_session_started"


def navigation(position: str = "sidebar"):
    """st.navigation over the pages that exist; app.py runs the page it returns."""
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
    st.set_page_config(page_title=f"{title} · CerviCurve", page_icon="🦴", layout="wide")
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
                 f"({getattr(exc, 'orig', None) or exc}). Check CERVICURVE_DB / CERVICURVE_HOME.")
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
                st.caption(f"**{title}:** {model_line(info)}", help=f"Run {info.get('run_id')}, promoted "
                           f"{info.get('promoted_at', '')}; best validation score {info.get('best_metric')}")
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


def model_line(info: dict) -> str:
    """``s_resnet34 · demo (quick, phantoms only) · held-out accuracy 0.83``: enough to judge the model in use."""
    name = str(info.get("model") or "model").removesuffix(".yaml").removesuffix(".pt")
    if info.get("demo_quality"):
        line = f"{name} · demo ({info['demo_quality']}, phantoms only)"
        check = info.get("demo_check") or {}
        # each model with the held-out number that judges it (the demo's last step)
        if info.get("task") == "landmarks" and check.get("cobb_mae_deg") is not None:
            line += f" · held-out angle error {float(check['cobb_mae_deg']):.1f}°"
        elif info.get("task") == "detect" and check.get("box_iou50_rate") is not None:
            line += f" · held-out boxes found {float(check['box_iou50_rate']):.0%}"
        elif check.get("class_accuracy") is not None:
            line += f" · held-out accuracy {float(check['class_accuracy']):.2f}"
        return line
    line = f"{name} · run {info.get('run_id', '?')}"
    if info.get("best_metric") is not None:
        line += f" · best val {float(info['best_metric']):.2f}"
    return line


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
    """The first-launch offer to build the demo, and its progress while it runs."""
    status = demo.read_demo_status()
    if demo.demo_running(status):
        demo_progress()
        return
    if not workspace_is_empty(state) and (status is None or status.get("state") == "done"):
        return
    with st.container(border=True):
        if status and status.get("state") in ("failed", "running"):
            reason = status.get("message") or "the process ended without a message"
            st.error(f"The last demo build did not finish: {reason}. Its log is `{settings.home() / demo.LOG_FILE}`.")
        st.markdown("#### This workspace is empty" if workspace_is_empty(state) else "#### Build the demo")
        st.write("Build the demo: synthetic lateral radiographs (phantoms) and small models trained on them, "
                 "so Predict works at once. Or import your own data on the **Data** page.")
        # Full first: the quick models are too weak to judge the tool by (60 held-out phantoms: class right on 85 %,
        # angle off by 3.5 deg on average, against 98 % and 1.7 deg for the full ones)
        mode = st.radio("Demo size", ["Full (about 14 min on a 2-core CPU; the models the README measures)",
                                      "Quick (about 5 min; weaker: class right on 85 % of phantoms, angle off by "
                                      "3.5° on average)"], horizontal=True, key="demo_mode")
        if st.button("Build the demo", type="primary", key="build_demo"):
            with engine_errors("Starting the demo"):
                demo.start_demo(quick=mode.startswith("Quick"), actor=actor())
                time.sleep(0.3)
                st.rerun()


@st.fragment(run_every="1s")
def demo_progress() -> None:
    """Polls demo_status.json; reruns the whole app when the build ends so the sidebar updates."""
    status = demo.read_demo_status() or {}
    if not demo.demo_running(status):
        st.rerun(scope="app")  # finished or died: the app shows the new models or the failure
    step, steps = int(status.get("step") or 0), max(1, int(status.get("steps") or 1))
    label = f"Building the demo — {status.get('stage', 'starting')}: {status.get('message', '')}".rstrip(": ")
    with st.container(border=True):
        # The step in progress is not done yet: the bar shows the finished ones.
        st.progress(min(1.0, max(0, step - 1) / steps), text=f"{label} (step {step} of {steps})")
        st.caption("It runs in the background: keep using the app, reload the page or come back later.")
