"""Run widgets shared by the Train and Runs pages: the live view of one run, the queue and the hardware panel.

Everything is read from the run folders (``core.runs.layout``) on each poll, so a reload, a closed tab or a
restarted server loses nothing. Each button is one ``core.runs.launch`` / ``core.runs.queue`` call.
"""
from __future__ import annotations

import datetime as _dt
from pathlib import Path

import streamlit as st

from core.runs import hardware, launch, layout, queue
from ui import charts
from ui import frame
from ui.frame import engine_errors

POLL = "2s"        # a running run's live view re-reads its folder this often (an open tab's only cost)
LOG_LINES = 12
ACTIVE = ("queued", "running")


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


def progress(status: dict, estimate: float | None = None) -> None:
    """Progress bar over epochs, with the whole run's remaining time (the recorder's mean epoch x epochs left;
    before the first epoch ends, the hardware panel's estimate)."""
    epoch, epochs = int(status.get("epoch") or 0), max(1, int(status.get("epochs") or 1))
    eta = status.get("eta_s")
    basis = "from its epochs so far"
    if eta is None and estimate is not None and status.get("state") == "running":
        eta, basis = estimate * (epochs - epoch), "estimated from earlier runs here"
    text = f"epoch {epoch}/{epochs}"
    if status.get("state") == "running" and isinstance(eta, (int, float)):
        ends = _dt.datetime.now() + _dt.timedelta(seconds=float(eta))
        text += (f" · whole run: about {format_seconds(eta)} left ({basis}; ends about {ends:%H:%M}"
                 ", or earlier if it stops early)")
    st.progress(min(1.0, epoch / epochs), text=text)


def state_banner(status: dict) -> None:
    state, message = status.get("state"), status.get("message") or ""
    if state == layout.INTERRUPTED:
        st.error(f"**Dead** — {message}. Its last finished epoch is kept: Resume continues from there.")
    elif state == "failed":
        st.error(f"**Failed** — {message}")
    elif state == "queued" and queue.is_waiting(status):
        st.info(f"**Waiting in the queue** for {status.get('device')} (since {status.get('queued_at')}); it starts "
                "by itself when the device is free.")
    elif state == "queued":
        st.info(f"**Starting** — {message}")
    elif state == "running":
        st.success(f"**Running** on {status.get('device') or 'its device'} — {message}")
    elif state == "cancelled":
        st.warning(f"**Cancelled** — {message}")
    else:
        st.success(f"**Done** — {message}")


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


def _live(run_id: str, estimate: float | None = None) -> None:
    queue.advance()  # the page's poll also moves the queue (see core.runs.queue)
    try:
        run_dir = layout.resolve_run(run_id)
    except layout.JobError as exc:
        st.warning(str(exc))
        return
    status = layout.read_status(run_dir)
    config = layout.read_config(run_dir)
    task = config.get("task", "classify")
    st.markdown(f"#### {run_dir.name}")
    st.caption(f"{task} · {config.get('model') or ', '.join(config.get('models') or []) or 'study models'} · "
               f"dataset {config.get('dataset') or '–'}")
    state_banner(status)
    progress(status, estimate)
    metrics = layout.read_metrics(run_dir)
    figures = charts.run_curves(metrics, task)
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
    if st.session_state.get(f"live_was_active_{run_id}") and status.get("state") not in ACTIVE:
        st.session_state[f"live_was_active_{run_id}"] = False
        st.rerun(scope="app")  # finished: stop polling, refresh the sidebar and the run list
    st.session_state[f"live_was_active_{run_id}"] = status.get("state") in ACTIVE


_live_polling = st.fragment(run_every=POLL)(_live)
_live_still = st.fragment(_live)


def live_view(run_id: str, estimate: float | None = None) -> None:
    """The live view of a run: polls while it waits or trains, stays still once it has ended."""
    state = layout.read_status(run_id).get("state")
    (_live_polling if state in ACTIVE else _live_still)(run_id, estimate)


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


def hardware_panel(snapshot: dict, estimate: hardware.EpochEstimate | None, epochs: int | None) -> None:
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
    if estimate is None:
        return
    if estimate.seconds is None:
        st.caption(f"Time per epoch: {estimate.basis}.")
    else:
        whole = f"; {epochs} epochs ≈ {format_seconds(estimate.whole_run(epochs))}" if epochs else ""
        st.markdown(f"Time per epoch: about **{format_seconds(estimate.seconds)}**{whole}")
        st.caption(estimate.basis)
