"""Run widgets shared by the Train and Runs pages: the settings form, the live view of one run, the queue and the
hardware panel.

Everything is read from the run folders (``core.runs.layout``) on each poll, so a reload, a closed tab or a
restarted server loses nothing. Each button is one ``core.runs.launch`` / ``core.runs.queue`` call. A run's state is
put in words once (``core.runs.reports.run_state``) and shown the same in the run chooser, the live view and the Runs
table; the live view reruns the page when what it reads no longer matches what the page shows.
"""
from __future__ import annotations

import datetime as _dt
import sys
import typing
from dataclasses import MISSING, dataclass, fields
from pathlib import Path
from typing import Mapping

import streamlit as st

from core.runs import hardware, launch, layout, queue, reports
from core.runs.promotion import when
from ui import charts
from ui import frame
from ui.frame import engine_errors

POLL = "2s"        # a running run's live view re-reads its folder this often (an open tab's only cost)
LOG_LINES = 12
ACTIVE = ("queued", "running")


# ------------------------------------------------------------------ the settings form
@dataclass(frozen=True)
class Setting:
    """How one config key is asked for: the words people read, and the widget's bounds or choices."""

    label: str
    help: str
    low: float | None = None
    high: float | None = None
    step: float | None = None
    choices: Mapping[str, str] | None = None  # an enumeration: value -> what it means


SETTINGS: dict[str, Setting] = {
    "epochs": Setting("Epochs", "How many passes over the training films. A run can stop earlier (patience, time "
                      "limit).", 1, 10_000, 1),
    "batch_size": Setting("Batch size", "Films per training step. Larger is faster on a GPU and needs more memory.",
                          1, 4096, 1),
    "batch": Setting("Batch size", "Films per training step. Larger is faster on a GPU and needs more memory.",
                     1, 4096, 1),
    "lr": Setting("Learning rate", "How big each optimiser step is. Too high: the loss jumps about; too low: it "
                  "learns slowly.", 1e-7, 1.0, 1e-4),
    "input_size": Setting("Input size (px)", "Side of the square crop around C2-C7 that the network sees.",
                          16, 2048, 16),
    "imgsz": Setting("Image size (px)", "Side of the square image YOLO trains on, in pixels.", 32, 4096, 32),
    "patience": Setting("Patience (epochs)", "Stop early after this many epochs without a better validation score. "
                        "0 = never stop early.", 0, 10_000, 1),
    "weight_decay": Setting("Weight decay", "Pulls the weights towards zero to curb overfitting. 0 = off.",
                            0.0, 1.0, 1e-4),
    "warmup_epochs": Setting("Warm-up epochs", "Epochs over which the learning rate climbs from zero before it "
                             "slowly decays.", 0, 1000, 1),
    "time_limit_s": Setting("Time limit (s)", "Stop before an epoch would overrun this many seconds of training. "
                            "0 = no limit.", 0.0, 30 * 86_400.0, 60.0),
    "class_weighting": Setting("Class balance", "How the rarer curvature classes are given their share.",
                               choices={"balanced": "weigh the loss by class rarity",
                                        "sampler": "draw rare classes more often", "none": "no correction"}),
    "augment": Setting("Augment training films", "Random rotation, scale, shift, brightness, contrast, noise and "
                       "film artefacts on the training crops (never on validation or test films)."),
    "amp": Setting("Mixed precision", "Half-precision arithmetic on a CUDA GPU: faster and lighter, same results "
                   "within noise.", choices={"auto": "auto (on for a CUDA GPU)", "true": "on", "false": "off"}),
    "device": Setting("Device", "Where the run trains. A busy device queues the run until it is free.",
                      choices={"auto": "auto (GPU if any, else CPU)", "cpu": "CPU"}),
    "seed": Setting("Random seed", "Fixes the random draws: the same seed on the same machine gives the same run.",
                    0, 2 ** 31 - 1, 1),
    "folds": Setting("Cross-validation folds", "A number of 2 or more: k-fold cross-validation grouped by patient.",
                     2, 50, 1),
    "n_boot": Setting("Bootstrap resamples", "Patient-bootstrap resamples behind the 95 % intervals of the test "
                      "scores. 0 = no intervals.", 0, 100_000, 100),
}
# Where a key means something else for one config class.
CLASS_SETTINGS: dict[tuple[str, str], Setting] = {
    ("HeatmapConfig", "input_size"): Setting("Input size (px)", "Side of the square window around C2-C7 that the "
                                             "landmark network sees; a multiple of 32.", 32, 2048, 32),
    ("CompareConfig", "epochs"): Setting("Epochs per model", "Passes over the training films for each model.",
                                         1, 10_000, 1),
    ("CompareConfig", "batch_size"): Setting("Batch size", "Films per training step for each model.", 1, 4096, 1),
    ("CompareConfig", "input_size"): Setting("Input size (px)", "Side of the square crop every model sees.",
                                             16, 2048, 16),
}
_TRUE_WORDS = {"true": "on", "false": "off"}


def setting_for(config_type: type, name: str) -> Setting:
    return (CLASS_SETTINGS.get((config_type.__name__, name)) or SETTINGS.get(name)
            or Setting(name.replace("_", " ").capitalize(), ""))


def _default_of(config_type: type, name: str):
    field = {f.name: f for f in fields(config_type)}[name]
    return field.default if field.default is not MISSING else field.default_factory()


def _kind(hint) -> str:
    args = typing.get_args(hint)
    if hint is bool:
        return "bool"
    if bool in args and str in args:
        return "tristate"
    if type(None) in args:
        return "optional"
    if hint in (int, float):
        return "number"
    return "text"


def device_choices() -> dict[str, str]:
    """auto, CPU, and each GPU NVML sees (cuda:N); mps on a Mac."""
    choices = dict(SETTINGS["device"].choices or {})
    found = hardware.gpus()
    if found:
        choices["cuda"] = "cuda (the first GPU)"
        choices.update({f"cuda:{g.index}": f"cuda:{g.index} ({g.name})" for g in found})
    if sys.platform == "darwin":
        choices["mps"] = "mps (Apple GPU)"
    return choices


def setting_input(config_type: type, name: str, key: str, default_words: str = "") -> str:
    """One config key as the widget its type calls for (checkbox, number box with bounds, choice list, or a box that
    takes a number or "default"); returns the value as the right side of a ``key=value`` override."""
    spec, default = setting_for(config_type, name), _default_of(config_type, name)
    kind = _kind(typing.get_type_hints(config_type)[name])
    choices = device_choices() if name == "device" else spec.choices
    if kind == "bool":
        value = st.checkbox(spec.label, value=bool(default), key=key,
                            help=f"{spec.help} Default: {'on' if default else 'off'}.")
        if value != bool(default):
            st.caption(f"default: {'on' if default else 'off'}")
        return str(value).lower()
    if kind == "tristate" or choices:
        options = dict(choices or {"auto": "auto", "true": "on", "false": "off"})
        current = str(default).lower()
        options.setdefault(current, current)
        value = st.selectbox(spec.label, list(options), index=list(options).index(current), key=key,
                             format_func=options.get, help=f"{spec.help} Default: {options[current]}.")
        return value
    if kind == "optional":
        means = default_words or "the usual value"
        text = st.text_input(spec.label, value="default" if default is None else str(default), key=key,
                             help=f'{spec.help} Type a number, or "default" (the default) for {means}.')
        if text.strip().lower() not in ("", "default"):
            st.caption(f"default: {means}")
            return text
        return "null"
    if kind == "number":
        whole = isinstance(default, int)
        cast = int if whole else float
        value = st.number_input(
            spec.label, key=key, value=cast(default), format="%d" if whole else "%g",
            min_value=None if spec.low is None else cast(spec.low),
            max_value=None if spec.high is None else cast(spec.high),
            step=cast(spec.step or 1), help=f"{spec.help} Default: {default:g}.")
        if value != default:
            st.caption(f"default: {default:g}")
        return repr(value)
    text = st.text_input(spec.label, value=str(default), key=key, help=f"{spec.help} Default: {default}.")
    return text


# ------------------------------------------------------------------ the live view
def format_seconds(seconds: float | None) -> str:
    if seconds is None:
        return "unknown"
    seconds = float(seconds)
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def last_log_lines(run_dir: Path, lines: int = LOG_LINES) -> str:
    path = run_dir / layout.LOG_FILE
    if not path.exists():
        return ""
    with open(path, "rb") as handle:
        handle.seek(max(0, path.stat().st_size - 8192))
        text = handle.read().decode("utf-8", errors="replace")
    return "\n".join(text.splitlines()[-lines:])


def run_estimate(run_dir: Path, config: dict) -> hardware.EpochEstimate:
    """Seconds per epoch from earlier runs here (core.runs.hardware), for a run that has not finished an epoch."""
    data = reports.data_record(run_dir)
    images = ((data.get("splits") or {}).get(data.get("train_split") or "train") or {}).get("images")
    return hardware.estimate_epoch(config, int(images) if images else None)


def progress(status: dict, state: reports.RunState, estimate: hardware.EpochEstimate | None = None) -> None:
    """One bar over epochs, its words from the same status fields (``4 of 6 epochs done``), with the whole run's
    remaining time: the recorder's mean epoch x epochs left, or before the first epoch ends the estimate from
    earlier runs here."""
    text = state.progress
    eta = status.get("eta_s")
    if state.state == "running" and state.final_step:
        text += " · final step"
    elif state.state == "running" and isinstance(eta, (int, float)) and eta > 0:
        ends = _dt.datetime.now() + _dt.timedelta(seconds=float(eta))
        text += (f" · about {format_seconds(eta)} left (from its epochs so far; ends about {ends:%H:%M}, or earlier "
                 "if it stops early)")
    elif state.state in ACTIVE and state.epoch == 0 and estimate is not None and estimate.seconds is not None:
        whole = estimate.whole_run(max(1, state.epochs))
        text += (f" · about {format_seconds(whole)} in all, estimated before its first epoch from "
                 f"{estimate.runs} earlier run(s) here")
    elif state.state in ACTIVE and state.epoch == 0:
        text += " · time left: known when the first epoch ends"
    st.progress(state.fraction, text=text)


def curves(metrics, task: str) -> list:
    """The run's curves (``ui.charts.run_curves``) with each line named in plain words (``reports.metric_name``)."""
    figures = charts.run_curves(metrics, task)
    for figure in figures:
        figure.for_each_trace(lambda trace: trace.update(name=reports.metric_name(trace.name)))
    return figures


def bold_headline(state: reports.RunState) -> str:
    """The headline with its state words in bold: ``**Running** on cpu — training``."""
    words = len(state.label)
    return f"**{state.headline[:words]}**{state.headline[words:]}"


def state_banner(status: dict, state: reports.RunState) -> None:
    text = bold_headline(state)
    if state.state == layout.INTERRUPTED:
        st.error(f"{text}. Its last finished epoch is kept: Resume continues from there.")
    elif state.state == "failed":
        st.error(text)
    elif state.label == "waiting in the queue":
        since = when(status.get("queued_at"))
        st.info(f"{text}{f' since {since}' if since else ''}; it starts by itself when the device is free.")
    elif state.state == "queued":
        st.info(text)
    elif state.state == "running":
        st.success(text)
    elif state.state == "cancelled":
        st.warning(text)
    else:
        st.success(text)


def _gpu_memory(status: dict) -> None:
    device = str(status.get("device") or "")
    if not device.startswith("cuda"):
        return
    index = int(device.partition(":")[2] or 0)
    found = [g for g in hardware.gpus() if g.index == index]
    if found:
        gpu = found[0]
        st.caption(f"GPU {index} memory {gpu.memory_used_mb / 1024:.1f} / {gpu.memory_total_mb / 1024:.1f} GiB "
                   f"(whole device) · utilisation {gpu.utilisation_pct if gpu.utilisation_pct is not None else '–'} %")


def _live(run_id: str, shown: str | None = None) -> None:
    queue.advance()  # the page's poll also moves the queue (see core.runs.queue)
    try:
        run_dir = layout.resolve_run(run_id)
    except layout.JobError as exc:
        st.warning(str(exc))
        return
    status = layout.read_status(run_dir)
    config = layout.read_config(run_dir)
    task = config.get("task", "classify")
    state = reports.run_state(status, task)
    st.markdown(f"#### {run_dir.name}")
    st.caption(f"{task} · {config.get('model') or ', '.join(config.get('models') or []) or 'study models'} · "
               f"dataset {config.get('dataset') or '–'}")
    state_banner(status, state)
    estimate = None
    if state.state in ACTIVE and state.epoch == 0 and status.get("eta_s") is None:
        cached = st.session_state.setdefault("run_estimates", {})
        if run_id not in cached:
            cached[run_id] = run_estimate(run_dir, config)
        estimate = cached[run_id]
    progress(status, state, estimate)
    if state.state in ACTIVE and not state.final_step:
        st.caption(f"After the last epoch comes a short final step ({reports.final_step_note(task)}); the run is "
                   "done when it ends.")
    if isinstance(status.get("best_metric"), (int, float)) and status.get("metric"):
        name = reports.metric_name(status["metric"])
        st.caption(f"{name[:1].upper() + name[1:] if name.startswith('best ') else 'Best ' + name} so far: "
                   f"{status['best_metric']:.3f}")
    metrics = layout.read_metrics(run_dir)
    if state.state in ACTIVE and "epoch" in metrics:
        # a trainer appends an epoch's row before its status: the curves stop at the bar's count, so a poll
        # between the two writes never shows a point beside "0 of N epochs done"
        metrics = metrics[metrics["epoch"] <= state.epoch]
    figures = curves(metrics, task)
    if figures:
        columns = st.columns(min(3, len(figures)))
        for index, figure in enumerate(figures):
            columns[index % len(columns)].plotly_chart(figure, key=f"curve_{run_dir.name}_{index}")
    else:
        st.caption("The curves appear when the first epoch ends.")
    _gpu_memory(status)
    controls(run_dir, status, task)
    with st.expander("Last log lines", expanded=status.get("state") in (layout.INTERRUPTED, "failed")):
        st.code(last_log_lines(run_dir) or "(empty)", language="text")
    # The page around this view (run chooser, Runs table, sidebar) shows the state it read when it last ran; when
    # the run has moved on (queued -> running -> done), rerun the page once so every view says the same.
    guard = f"live_resync_{run_id}"
    if shown is None or state.label == shown:
        st.session_state.pop(guard, None)
    elif st.session_state.get(guard) != (shown, state.label):
        st.session_state[guard] = (shown, state.label)
        st.rerun(scope="app")


_live_polling = st.fragment(run_every=POLL)(_live)
_live_still = st.fragment(_live)


def live_view(run_id: str, shown: str | None = None) -> None:
    """The live view of a run: polls while it waits or trains, stays still once it has ended. ``shown``: the state
    words the page shows for this run elsewhere (read now when not given); the page reruns when they go stale."""
    status = layout.read_status(run_id)
    if shown is None:
        shown = reports.run_state(status).label
    (_live_polling if status.get("state") in ACTIVE else _live_still)(run_id, shown)


def controls(run_dir: Path, status: dict, task: str) -> None:
    """Cancel while active; Resume when stopped; 'continue for N more epochs' as a new run from the last epoch."""
    state, key = status.get("state"), run_dir.name
    if state in ACTIVE:
        label = "Take out of the queue" if queue.is_waiting(status) else "Cancel"
        if st.button(label, key=f"cancel_{key}", icon=":material/stop:"):
            with engine_errors("Cancelling"), st.spinner("Stopping the run…"):
                launch.cancel_run(run_dir, actor=frame.actor())
                st.rerun(scope="app")
        return
    left, right = st.columns(2)
    if state in (layout.INTERRUPTED, "cancelled", "failed"):
        if left.button("Resume", key=f"resume_{key}", icon=":material/play_arrow:",
                       help="Continue this run from its last finished epoch, same schedule"):
            with engine_errors("Resuming"):
                launch.resume_run(run_dir, actor=frame.actor())
                st.rerun(scope="app")
    checkpoints = (run_dir / "last.pt", run_dir / "best.pt", run_dir / "ultralytics" / "weights" / "last.pt")
    if task != "compare" and any(path.exists() for path in checkpoints):
        with right.container(border=True):
            more = st.number_input("More epochs", min_value=1, max_value=10_000, value=5, key=f"more_{key}")
            if st.button("Continue as a new run", key=f"continue_{key}", icon=":material/fast_forward:",
                         help="A new run that starts from this run's last checkpoint with a fresh schedule"):
                with engine_errors("Continuing"):
                    new = launch.continue_run(run_dir, int(more), actor=frame.actor())
                    st.session_state.update(train_run=new.name, train_follow=True)
                    st.rerun(scope="app")


def queue_panel() -> None:
    """The waiting runs in order, each movable to the front or out of the queue."""
    order = queue.waiting()
    busy = queue.occupied()
    st.caption(f"{queue.slots()} run(s) per device at a time · busy: "
               + (", ".join(f"{device} ({count})" for device, count in busy.items()) or "none"))
    if not order:
        st.caption("No run is waiting.")
        return
    for number, (run_dir, status) in enumerate(order, start=1):
        row = st.columns([6, 1, 1])
        row[0].markdown(f"{number}. `{run_dir.name}` · waits for {status.get('device')}")
        if number > 1 and row[1].button("Up", key=f"up_{run_dir.name}", help="Move one place up"):
            with engine_errors("Moving"):
                queue.move(run_dir, number - 1, actor=frame.actor())
                st.rerun()
        if row[2].button("Cancel", key=f"dequeue_{run_dir.name}"):
            with engine_errors("Cancelling"):
                launch.cancel_run(run_dir, actor=frame.actor())
                st.rerun()


def hardware_panel(snapshot: dict, estimate: hardware.EpochEstimate | None, epochs: int | None,
                   task: str = "classify") -> None:
    if snapshot["gpus"]:
        for gpu in snapshot["gpus"]:
            st.markdown(f"**GPU {gpu['index']}: {gpu['name']}**")
            st.caption(f"memory {gpu['memory_used_mb'] / 1024:.1f} / {gpu['memory_total_mb'] / 1024:.1f} GiB · "
                       f"utilisation {gpu['utilisation_pct'] if gpu['utilisation_pct'] is not None else '–'} % · "
                       f"{gpu['temperature_c'] if gpu['temperature_c'] is not None else '–'} °C")
    else:
        cpu = snapshot["cpu"]
        st.markdown(f"**No CUDA GPU: CPU** {cpu['name']}")
        st.caption(f"{cpu['logical_cores']} cores ({cpu['physical_cores']} physical) · load {cpu['load_pct']:.0f} % · "
                   f"memory {cpu['memory_used_gb']:.1f} / {cpu['memory_total_gb']:.1f} GiB")
    final = f"then a short final step: {reports.final_step_note(task)}"
    if estimate is None:
        return
    if estimate.seconds is None:
        st.caption(f"Time: no estimate yet ({estimate.basis}); {final}.")
    else:
        whole = f", so about **{format_seconds(estimate.whole_run(epochs))}** for {epochs} epochs" if epochs else ""
        st.markdown(f"Time: about **{format_seconds(estimate.seconds)} per epoch**{whole}, {final}.")
        st.caption(f"Estimated from this workspace: {estimate.basis}. Early stopping can end it sooner.")
