"""The frame every page draws first: the research-use notice, the workspace sidebar and the demo builder.

Every page script starts with ``frame()``. It is drawn by the pages rather than by app.py because
Streamlit runs a file of ``pages/`` directly (without app.py) on the first run of a server process
and in AppTest reruns, whenever a ``pages/`` folder sits next to the entry script.

Kept free of torch: the first page must render before any model loads, so everything heavy is imported
inside the function that needs it.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import traceback
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import streamlit as st

from core import settings

NOTICE = ("**Research and teaching use only — not a diagnosis.** CerviCurve's outputs are not validated for "
          "clinical decisions; a qualified clinician must read every radiograph.")
NOTICE_PLAIN = "Research and teaching use only — not a diagnosis."
TASKS = (("classify", "Classifier"), ("detect", "Detector"), ("landmarks", "Landmarks"))
ROOT = Path(__file__).resolve().parents[1]
_demo_start_lock = threading.Lock()


def frame() -> dict | None:
    """Page config, notice, sidebar and (on an empty workspace) the demo offer; returns the workspace state."""
    st.set_page_config(page_title="CerviCurve", page_icon="🦴", layout="wide")
    show_notice()
    state = None
    with engine_errors("Reading the workspace"):
        state = workspace_state()
    if state is not None:
        sidebar(state)
        demo_panel(state)
    return state


def show_notice() -> None:
    st.warning(NOTICE, icon="⚠️")


# ------------------------------------------------------------------ errors


def _engine_error_types() -> tuple[type[BaseException], ...]:
    """The engine's own error types (all ValueError subclasses) plus OS errors from file handling."""
    return (ValueError, OSError, KeyError)


@contextmanager
def engine_errors(action: str) -> Iterator[None]:
    """Show a failure of ``action`` as ``st.error`` with its reason; never a traceback on the page.

    The engine raises ValueError subclasses with messages written for people (ImageReadError,
    ArchiveError, ModelMissing, ...): those are shown as they are. Anything else is a bug: the page
    says so briefly and the traceback goes to the server log, where a developer can read it.
    """
    try:
        yield
    except _engine_error_types() as exc:
        st.error(f"{action} failed: {exc}")
    except Exception as exc:  # a bug, not bad input: keep the page alive, log the details
        traceback.print_exc(file=sys.stderr)
        st.error(f"{action} failed with an unexpected {type(exc).__name__}: {exc}. "
                 "Details are in the server log.")


# ------------------------------------------------------------------ workspace


@st.cache_resource(show_spinner=False)
def _store_for(url: str):
    from core.store import AnnotationStore

    return AnnotationStore(url)


def store():
    """The workspace's annotation store (one per database URL per server process)."""
    return _store_for(settings.db_url())


def workspace_state() -> dict:
    """Images, datasets and runs in the workspace: cheap reads, done on every rerun."""
    annotation_store = store()
    datasets = annotation_store.datasets()
    images = len(annotation_store.images())
    runs = list_runs()
    return {"images": images, "datasets": datasets, "runs": len(runs),
            "models": {task: promoted_info(task) for task, _ in TASKS}}


def list_runs() -> list[dict]:
    """Every run folder's status, newest first (empty when core.jobs cannot read the workspace)."""
    from core import jobs

    return [_as_dict(run) for run in jobs.list_runs()]


def promoted_info(task: str) -> dict | None:
    """What Predict uses for ``task``: the promoted model's metadata, or None when there is none."""
    from core import jobs

    return jobs.promoted_info(task) if jobs.promoted_model(task) is not None else None


def _as_dict(value) -> dict:
    if isinstance(value, dict):
        return value
    if hasattr(value, "__dataclass_fields__"):
        from dataclasses import asdict

        return asdict(value)
    return dict(vars(value))


def workspace_is_empty(state: dict) -> bool:
    return state["images"] == 0 and not any(state["models"].values())


def sidebar(state: dict) -> None:
    """Active models, a choice of classifier run, and what the workspace holds."""
    with st.sidebar:
        st.subheader("Models")
        for task, title in TASKS:
            info = state["models"][task]
            if info is None:
                st.caption(f"**{title}:** none promoted")
            else:
                st.caption(f"**{title}:** {model_line(info)}")
        choices = classifier_choices()
        if choices:
            labels = list(choices)
            st.selectbox("Classifier used by Predict", labels, key="classifier_choice",
                         help="The promoted model, or any finished classification run in this workspace.")
        st.subheader("Workspace")
        st.caption(f"{state['images']} images · {len(state['datasets'])} datasets · {state['runs']} runs")
        if state["datasets"]:
            st.caption("Datasets: " + ", ".join(state["datasets"]))
        st.caption(f"Folder: `{settings.home()}`")
        st.caption(NOTICE_PLAIN)


def model_line(info: dict) -> str:
    """``s_resnet34 · run `...` · val 0.81 · demo`` — what a user needs to judge the model in use."""
    line = f"{info.get('model') or 'model'} · run `{info.get('run_id', '?')}`"
    if info.get("best_metric") is not None:
        line += f" · val {float(info['best_metric']):.2f}"
    if info.get("demo") or "demo" in str(info.get("run_id", "")):
        line += " · demo quality (phantoms only)"
    return line


def classifier_choices() -> dict[str, str | None]:
    """Label -> run id (None = the promoted model) for the classifier selector."""
    choices: dict[str, str | None] = {}
    promoted = promoted_info("classify")
    if promoted is not None:
        choices[f"Promoted: {model_line(promoted)}"] = None
    for run in list_runs():
        if run.get("task", "classify") == "classify" and run.get("state") == "done":
            run_id = run.get("run_id") or run.get("id")
            choices[f"Run {run_id} ({run.get('model', '?')})"] = run_id
    return choices


def selected_classifier_run() -> str | None:
    """The run chosen in the sidebar; None means the promoted model."""
    label = st.session_state.get("classifier_choice")
    return classifier_choices().get(label) if label else None


# ------------------------------------------------------------------ demo builder


def demo_status_path() -> Path:
    return settings.home() / "demo_status.json"


def demo_pid_path() -> Path:
    return settings.home() / "demo.pid"


def read_demo_status() -> dict | None:
    try:
        return json.loads(demo_status_path().read_text())
    except (OSError, ValueError):
        return None


def demo_process_alive() -> bool:
    """Whether the demo process this workspace started is still running (reaping it if it ended)."""
    try:
        pid = int(demo_pid_path().read_text())
    except (OSError, ValueError):
        return False
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)  # our child: reap it once it exits
        if done:
            return False
    except ChildProcessError:  # started by an earlier server process, or already reaped
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass
    try:  # a recycled pid belongs to some other program
        return b"demo" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True


def demo_running(status: dict | None) -> bool:
    """A demo is being built: our process is alive, or (started from the command line) its status says so."""
    if demo_process_alive():
        return True
    return bool(status and status.get("state") == "running" and not demo_pid_path().exists())


def start_demo(quick: bool) -> int:
    """Start ``python -m core demo`` in its own process group; it outlives reruns and page reloads."""
    with _demo_start_lock:
        if demo_process_alive():
            return int(demo_pid_path().read_text())
        home = settings.home()
        env = dict(os.environ, CERVICURVE_HOME=str(home))
        # Torch in the child would otherwise take every core from the server answering the page.
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 2) - 1)))
        demo_status_path().unlink(missing_ok=True)
        command = [sys.executable, "-m", "core", "demo"] + (["--quick"] if quick else [])
        with open(home / "demo.log", "ab") as log:
            process = subprocess.Popen(command, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=log,
                                       stderr=subprocess.STDOUT, start_new_session=True)
        demo_pid_path().write_text(str(process.pid))
        return process.pid


def demo_panel(state: dict) -> None:
    """The first-launch offer to build the demo, and its progress while it runs."""
    status = read_demo_status()
    if demo_running(status):
        demo_progress()
        return
    if not workspace_is_empty(state) and (status is None or status.get("state") == "done"):
        return
    with st.container(border=True):
        if status and status.get("state") in ("failed", "running"):
            reason = status.get("message") or "the process ended without a message"
            st.error(f"The last demo build did not finish: {reason}. Its log is `{settings.home() / 'demo.log'}`.")
        st.markdown("#### This workspace is empty")
        st.write("Build the demo: synthetic lateral radiographs (phantoms) and small models trained on them, "
                 "so Predict works at once. Or import your own data on the **Data** page.")
        mode = st.radio("Demo size", ["Quick (a few minutes)", "Full (longer, better demo models)"],
                        horizontal=True, key="demo_mode")
        if st.button("Build the demo", type="primary", key="build_demo"):
            start_demo(quick=mode.startswith("Quick"))
            time.sleep(0.3)
            st.rerun()


@st.fragment(run_every="1s")
def demo_progress() -> None:
    """Polls demo_status.json; reruns the whole app when the build ends so the sidebar updates."""
    status = read_demo_status() or {}
    if not demo_running(status):
        st.rerun(scope="app")  # finished or died: the app shows the new models or the failure
    step, steps = int(status.get("step") or 0), max(1, int(status.get("steps") or 1))
    label = f"Building the demo — {status.get('stage', 'starting')}: {status.get('message', '')}".rstrip(": ")
    st.progress(min(1.0, step / steps), text=f"{label} ({step}/{steps})")
