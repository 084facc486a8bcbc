"""Train: pick a task, data, model(s) and the main hyper-parameters, start a background run, watch it learn.

Thin: each setting is the widget its config type calls for, with a plain label, help and default
(``ui.run_views.setting_input``), and is checked by its task's config class (``core.runs.registry.resolve_config``)
with the message beside the field; the config keys underneath are unchanged. Start is one
``core.runs.launch.start_run`` call (the same as ``python -m core runs start``), which queues the run when its
device is busy. The live view (``ui.run_views``) reads the run folder on each poll, so nothing is lost when the
tab closes, the page reloads or the server restarts.
"""
from __future__ import annotations

import pandas as pd
import streamlit as st

from core.data.datasets import SPLITS
from core.runs import hardware, launch, reports
from core.runs import registry
from core.runs.configs import ConfigError, read_config_source
from core.runs.registry import config_class, resolve_config
from models.registry import MODELS
from ui.frame import engine_errors, frame, promoted_info, store
from ui.run_views import hardware_panel, live_view, queue_panel, setting_input

LANDMARK_MODELS = ("landmark-unet", "yolov8n-pose.yaml", "yolo11n-pose.yaml")
DETECT_MODELS = ("yolov8n.yaml", "yolo11n.yaml", "yolov3-tinyu.yaml", "yolov3u.yaml")
# The main knobs per config class, in form order; every other key goes in "Other keys".
MAIN_FIELDS = {
    "ClassifyConfig": ("epochs", "batch_size", "lr", "input_size", "patience", "weight_decay", "warmup_epochs",
                       "time_limit_s", "class_weighting", "augment", "device", "amp", "seed"),
    "HeatmapConfig": ("epochs", "batch_size", "lr", "input_size", "patience", "weight_decay", "device", "seed"),
    "YoloConfig": ("epochs", "imgsz", "batch", "patience", "device", "seed"),
    "CompareConfig": ("epochs", "input_size", "batch_size", "folds", "n_boot", "seed"),
}

state = frame("Train")


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
    offered = [name for name, spec in registry.TASKS.items() if spec.offered]  # the demo has its own panel
    task = st.selectbox("Task", offered, key="train_task",
                        format_func=lambda name: f"{registry.TASKS[name].title}: {registry.TASKS[name].description}")
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
            for column, key, label in zip(split_columns, ("train_split", "val_split", "test_split"),
                                          ("Train on split", "Validate on split", "Test on split")):
                base[key] = column.selectbox(label, SPLITS, index=SPLITS.index(key.split("_")[0]), key=f"train_{key}")
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
st.subheader("Settings")
st.caption("Each value is checked by the run's config as you change it; hover over the ? beside a field for what it "
           "does and its default.")
# what "default" means for the settings that may be left to the model or the profile
DEFAULT_WORDS = {"input_size": (f"the model's own size ({MODELS[base['model']].default_input_size} px for "
                                f"{base['model']})" if base.get("model") in MODELS else "the profile's own size"),
                 "epochs": "the profile's own number", "batch_size": "the profile's own number",
                 "folds": "one train/validation/test split"}
values: dict[str, str] = {}
errors: dict[str, str] = {}
grid = st.columns(4)
for index, name in enumerate(MAIN_FIELDS[config_type.__name__]):
    with grid[index % 4]:
        text = setting_input(config_type, name, key=f"train_{config_type.__name__}_{name}",
                             default_words=DEFAULT_WORDS.get(name, ""))
        values[name] = text
        problem = field_error(base, name, text)
        if problem:
            errors[name] = problem
            st.error(problem, icon=":material/error:")
extra = st.text_area("Other settings (advanced: one config key=value per line)",
                     key=f"train_extra_{config_type.__name__}", placeholder="e.g. aug_hflip=true", height=80,
                     help=f"Any key of configs/{task}.yaml that is not above, e.g. aug_rotation_deg=5 or "
                          "label_smoothing=0.1; the file says what each does.")
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
    hardware_panel(hardware.snapshot(), estimate, (config or {}).get("epochs"), task)
if st.button("Start", type="primary", disabled=config is None, key="train_start", icon=":material/play_arrow:",
             help="Fix the fields marked in red first" if config is None else "Train in the background"):
    with engine_errors("Starting the run"):
        run_dir = launch.start_run(config, actor=state["actor"])
        st.session_state.update(train_run=run_dir.name, train_follow=True)
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
labels = {run_id: state.label for run_id, state in reports.run_states(runs).items()}  # as the Runs table words them
active = [r.run_id for r in runs if r.state in ("queued", "running")]
chosen = st.session_state.get("train_run")
default = chosen if chosen in ids else (active[0] if active else ids[0])
if st.session_state.pop("train_follow", False) and chosen in ids:
    st.session_state["train_watch"] = chosen  # a run just started here: watch it
elif st.session_state.get("train_watch") not in ids:
    st.session_state["train_watch"] = default
else:
    # The same run again, set anew: the browser keeps showing the option's words from when it was picked unless
    # the value is sent again (measured: "starting" stayed after the run was running); this redraws them.
    st.session_state["train_watch"] = st.session_state["train_watch"]
watched = st.selectbox("Run", ids, key="train_watch", format_func=lambda rid: f"{rid} — {labels[rid]}")
if watched != chosen:
    st.session_state["train_run"] = watched
live_view(watched, labels[watched])
