"""Train: pick a task, data, model(s) and the main hyper-parameters, start a background run, watch it learn.

Thin: each field is checked by its task's config class (``core.runs.registry.resolve_config``); Start is one
``core.runs.launch.start_run`` call (the same as ``python -m core runs start``), which queues the run when its
device is busy. The live view (``ui.run_views``) reads the run folder on each poll, so nothing is lost when the
tab closes, the page reloads or the server restarts.
"""
from __future__ import annotations

from dataclasses import MISSING, fields

import pandas as pd
import streamlit as st

from core.data.datasets import SPLITS
from core.runs import hardware, launch
from core.runs import registry
from core.runs.configs import ConfigError, read_config_source
from core.runs.registry import config_class, resolve_config
from models.registry import MODELS
from ui.frame import engine_errors, frame, promoted_info, store
from ui.run_views import hardware_panel, live_view, queue_panel

TASK_LABELS = {"classify": "Classify (curvature class)", "detect": "Detect (C2–C7 box)",
               "landmarks": "Landmarks (23 points)", "compare": "Compare / ablation (the study's models)"}
LANDMARK_MODELS = ("landmark-unet", "yolov8n-pose.yaml", "yolo11n-pose.yaml")
DETECT_MODELS = ("yolov8n.yaml", "yolo11n.yaml", "yolov3-tinyu.yaml", "yolov3u.yaml")
# The main knobs per config class, in form order; every other key goes in "Other keys".
MAIN_FIELDS = {
    "ClassifyConfig": ("epochs", "batch_size", "lr", "input_size", "patience", "weight_decay", "warmup_epochs",
                       "time_limit_s", "class_weighting", "augment", "device", "seed"),
    "HeatmapConfig": ("epochs", "batch_size", "lr", "input_size", "patience", "weight_decay", "device", "seed"),
    "YoloConfig": ("epochs", "imgsz", "batch", "patience", "device", "seed"),
    "CompareConfig": ("epochs", "input_size", "batch_size", "folds", "n_boot", "seed"),
}

state = frame("Train")


def default_text(field) -> str:
    value = field.default if field.default is not MISSING else field.default_factory()
    return "" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


def field_error(base: dict, key: str, text: str) -> str | None:
    """The config class's message for one field's value on top of the chosen task/model/data, or None."""
    try:
        resolve_config(read_config_source(base, [f"{key}={text}"]))
    except ConfigError as exc:
        return str(exc)
    return None


# ------------------------------------------------------------------ what to train
left, right = st.columns([3, 2])
with left:
    task = st.selectbox("Task", list(TASK_LABELS), format_func=TASK_LABELS.get, key="train_task")
    datasets = state["datasets"]
    if not datasets and task != "compare":
        st.info("No dataset yet: import one on the **Data** page, or build the demo from the sidebar's offer.")
        st.stop()
    base: dict = {"task": task}
    if task == "compare":
        kind = st.radio("Comparison", ["The study's models", "Ablation: S-ResNet-34 variants vs ResNet-34"],
                        horizontal=True, key="train_compare_kind")
        base["ablation"] = kind.startswith("Ablation")
        source = st.selectbox("Data", ["the 240-patient phantom benchmark (quick profile)", *datasets],
                              key="train_compare_data")
        if source.startswith("the 240"):
            base["quick"] = True
        else:
            base["dataset"] = source
        if not base["ablation"]:
            chosen = st.multiselect("Models (none = all seven)", list(MODELS), key="train_models",
                                    format_func=lambda m: f"{m} — {MODELS[m].description}")
            base["models"] = chosen
    else:
        dataset = st.selectbox("Dataset", datasets, key="train_dataset")
        base["dataset"] = dataset
        if task == "classify":
            model = st.selectbox("Model", list(MODELS), key="train_model",
                                 format_func=lambda m: f"{m} — {MODELS[m].description}")
            split_columns = st.columns(3)
            for column, key in zip(split_columns, ("train_split", "val_split", "test_split")):
                base[key] = column.selectbox(key.replace("_", " "), SPLITS, index=SPLITS.index(key.split("_")[0]),
                                             key=f"train_{key}")
        else:
            model = st.selectbox("Model", LANDMARK_MODELS if task == "landmarks" else DETECT_MODELS,
                                 key=f"train_model_{task}")
        base["model"] = model
        promoted = promoted_info(task) if task in registry.FINE_TUNABLE else None
        if promoted and promoted.get("model") in (None, model):
            start = st.radio("Start from", ["scratch", "the promoted model: fine-tune on this dataset"],
                             horizontal=True, key=f"train_init_{task}")
            if start != "scratch":
                base["init_from"] = "promoted"
                st.caption(f"Starts from the promoted {task} model (run {promoted.get('run_id', '?')}); the films it "
                           "learned from are mixed into each epoch (mix_with, mix_share), so your films teach their "
                           "look without the rest being forgotten. A few epochs at a lower lr are usually enough: "
                           "see the README, Real films.")

with right:
    summary = None
    if base.get("dataset"):
        with engine_errors("Reading the dataset"):
            summary = store().summary(base["dataset"])
    if summary:
        st.markdown(f"**{summary['dataset']}**: {summary['images']} images of {summary['patients']} patients")
        balance = pd.DataFrame({"images": summary["classes"]})
        balance["share"] = (balance["images"] / max(1, balance["images"].sum())).map("{:.0%}".format)
        st.dataframe(balance, width="stretch")
        st.caption("Splits: " + ", ".join(f"{k} {v}" for k, v in summary["splits"].items())
                   + f" · boxes {summary['boxes']} · landmarks {summary['landmarks']}")
    elif task == "compare" and base.get("quick"):
        st.caption("Built on first use: 240 synthetic patients, one film each, split 70/15/15 by patient.")

# ------------------------------------------------------------------ hyper-parameters, checked field by field
try:
    config_type = config_class(base)
except ConfigError as exc:
    st.error(str(exc))
    st.stop()
defaults = {f.name: f for f in fields(config_type)}
st.subheader("Hyper-parameters")
st.caption(f"Defaults are those of configs/{ {'compare': 'compare', 'detect': 'detect'}.get(task, task) }.yaml; "
           "each value is checked as you type.")
values: dict[str, str] = {}
errors: dict[str, str] = {}
grid = st.columns(4)
for index, name in enumerate(MAIN_FIELDS[config_type.__name__]):
    with grid[index % 4]:
        text = st.text_input(name, value=default_text(defaults[name]), key=f"train_{config_type.__name__}_{name}")
        values[name] = text
        problem = field_error(base, name, text)
        if problem:
            errors[name] = problem
            st.error(problem, icon=":material/error:")
extra = st.text_area("Other keys (one key=value per line)", key=f"train_extra_{config_type.__name__}",
                     placeholder="e.g. aug_hflip=true", height=80)
overrides = [f"{k}={v}" for k, v in values.items()] + [line.strip() for line in extra.splitlines() if line.strip()]
config, problem = None, None
try:
    config = resolve_config(read_config_source(base, overrides))
except ConfigError as exc:
    problem = str(exc)
if problem and not errors:
    st.error(problem, icon=":material/error:")

# ------------------------------------------------------------------ hardware and start
with st.container(border=True):
    estimate = None
    if config is not None and task != "compare":
        train_images = (summary or {}).get("splits", {}).get(config.get("train_split", "train"))
        estimate = hardware.estimate_epoch(config, train_images)
    hardware_panel(hardware.snapshot(), estimate, (config or {}).get("epochs"))
if st.button("Start", type="primary", disabled=config is None, key="train_start", icon=":material/play_arrow:",
             help="Fix the fields marked in red first" if config is None else "Train in the background"):
    with engine_errors("Starting the run"):
        run_dir = launch.start_run(config, actor=state["actor"])
        st.session_state.update(train_run=run_dir.name, train_follow=True,
                                train_estimate=estimate.seconds if estimate else None)
        st.rerun()

with st.expander("Queue", expanded=True):
    queue_panel()

# ------------------------------------------------------------------ live view
st.subheader("Live view")
runs = state["runs"]
if not runs:
    st.caption("No run yet in this workspace.")
    st.stop()
ids = [r.run_id for r in runs]
active = [r.run_id for r in runs if r.state in ("queued", "running")]
chosen = st.session_state.get("train_run")
default = chosen if chosen in ids else (active[0] if active else ids[0])
if st.session_state.pop("train_follow", False) and chosen in ids:
    st.session_state["train_watch"] = chosen  # a run just started here: watch it
watched = st.selectbox("Run", ids, index=ids.index(default), key="train_watch",
                       format_func=lambda rid: f"{rid} ({next(r.state for r in runs if r.run_id == rid)})")
if watched != chosen:
    st.session_state["train_run"] = watched
live_view(watched, st.session_state.get("train_estimate") if watched == chosen else None)
