"""Train the study's models on the same patient-grouped splits and compare them, every score with its interval.

The ``compare`` task: ``python -m core compare [--quick] [--models a,b,...] [--folds K] [--dataset NAME]
[--ablation]`` or ``runs start`` with ``task: compare`` writes a run folder like any task's (status, metrics.csv with
one row per model, train.log) plus ``compare.md``, ``compare.csv`` and ``compare.html`` (a plotly bar chart with
error bars, plotly.js inlined so it opens offline). Each model is a normal classify run under ``runs/`` (its
``last.pt`` dropped once done); a resumed comparison keeps the models already finished.

Evaluation: without ``--folds``, every model trains on the dataset's train split, stops early and is
calibrated on val, and is scored on the test split. With ``--folds K``, the non-test images are cut into
K patient-grouped, class-stratified folds (``core.data.datasets.kfold_splits``); for each fold a model trains on
the other folds (an inner patient-grouped 1/6 of them for early stopping and calibration) and predicts the
held-out fold; the pooled out-of-fold predictions are scored once, so each image counts once. Intervals
are 95 % patient-level bootstrap intervals from ``core.evaluation.metrics.evaluate_predictions``.

``--quick`` builds (once) a dataset of ~240 synthetic phantom patients at 256 px and trains small inputs
(96 px) for a few epochs per model, each capped by a training-time budget, so the whole comparison
finishes in under 15 minutes on a 2-core CPU: a smoke test of the comparison, not a result (the time caps
also make quick runs depend on machine speed, i.e. not repeatable). ``--ablation`` compares the S-ResNet-34 variants
(matrix/channel/spatial/gated) with plain ResNet-34.
"""
from __future__ import annotations

import csv
import datetime as _dt
import json
import math
import platform
import shutil
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from core import settings
from core.runs import layout
from core.runs.configs import CompareConfig, ConfigError
from core.runs.recorder import RunRecorder

STUDY_MODELS = ("s_resnet34", "resnet34", "resnet152", "densenet121", "cnn", "rnn", "svm")
ABLATION = (("s_resnet34", {"variant": "matrix"}), ("s_resnet34", {"variant": "channel"}),
            ("s_resnet34", {"variant": "spatial"}), ("s_resnet34", {"variant": "gated"}), ("resnet34", {}))
# Overall scores of evaluate_predictions, in table order.
METRICS = ("accuracy", "mean_one_vs_rest_accuracy", "macro_f1", "macro_recall", "macro_precision",
           "quadratic_kappa", "macro_roc_auc", "expected_calibration_error", "negative_log_likelihood")
PLOTTED = ("accuracy", "mean_one_vs_rest_accuracy", "macro_f1", "macro_recall", "macro_roc_auc")
QUICK_DATASET = "phantom-quick"
QUICK_PATIENTS = 240
QUICK_PHANTOM_SIZE = 256
QUICK_INPUT_SIZE = 96
# Epochs per model in --quick. CPU cost per epoch (~170 train images at 96 px, 2 idle cores, scaled from
# docs' 224 px timings): ResNet-34 ~2.5 s, ResNet-152 ~7 s, DenseNet-121 ~4.5 s, CNN ~0.5 s, RNN ~0.3 s,
# so about 5 minutes of training in all, with room for a busy machine inside the 15-minute budget.
QUICK_EPOCHS = {"s_resnet34": 25, "resnet34": 25, "resnet152": 12, "densenet121": 15, "cnn": 40, "rnn": 40,
                "svm": 1}
# ...and a training-time cap per model (time_limit_s), so a busy machine still finishes inside 15 minutes
# (the caps sum to under 8 minutes; phantoms, imports and scoring take about 2 more).
QUICK_TIME_S = {"s_resnet34": 90, "resnet34": 90, "resnet152": 100, "densenet121": 90, "cnn": 45, "rnn": 45}
# --full: the same 240-patient phantom benchmark and no time cap: every model (the study's seven and the other
# S-ResNet-34 variants) trains until its validation macro-F1 has not improved for FULL_PATIENCE epochs (FULL_EPOCHS is
# only a ceiling), so none stops at chance level because a clock ran out. Repeatable (no time caps). The input size
# is the device's profile: 96 px on a CPU (ResNet-152 at 5.5 img/s on 2 cores: 128 px would take ~8 h for the table),
# the study's 224 px on a GPU.
FULL_INPUT_SIZE = {"cpu": 96, "cuda": 224}
FULL_VARIANTS = ("channel", "spatial", "gated")
FULL_EPOCHS = 150
FULL_PATIENCE = 12
STUDY_REPORTED = "Liang et al. 2025 report for S-ResNet-34: ACC 90.94 %, F1 85.27 %, recall 85.36 % (240 patients)."


class CompareError(ConfigError):
    """A comparison that cannot run: unknown model, missing dataset, too few patients for the folds."""


@dataclass
class Entry:
    """One row of the comparison: a model (with options) and everything measured about it."""

    model: str
    options: dict = field(default_factory=dict)
    report: dict = field(default_factory=dict)
    train_seconds: float = 0.0
    n_parameters: int = 0
    inference_ms: float | None = None
    epochs_run: list[int] = field(default_factory=list)
    run_dirs: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        if not self.options:
            return self.model
        return f"{self.model}[{','.join(str(v) for v in self.options.values())}]"


# ---------------------------------------------------------------------------------------------- data
def dataset_exists(name: str) -> bool:
    from core.data import datasets

    try:
        return bool(datasets.training_items(name))
    except datasets.DatasetError:
        return False


def build_quick_dataset(name: str = QUICK_DATASET, patients: int = QUICK_PATIENTS, size: int = QUICK_PHANTOM_SIZE,
                        seed: int = 0) -> str:
    """Phantom patients (one image each) imported as ``name`` and split 70/15/15 by patient."""
    from core.data import datasets, importers, phantom

    out = settings.home() / "phantoms" / name
    if out.exists():
        shutil.rmtree(out)
    print(f"writing {patients} phantom patients ({size} px) to {out} ...", flush=True)
    phantom.write_phantoms(out, patients=patients, images_per_patient=1, seed=seed, size=size)
    report = importers.import_csv(out / "manifest.csv", dataset=name)
    print(report.format(), flush=True)
    datasets.make_splits(name, seed=seed)
    return name


def _ensure_splits(dataset: str, seed: int) -> None:
    from core.data import datasets

    if not datasets.training_items(dataset, "val") or not datasets.training_items(dataset, "test"):
        print(f"dataset {dataset!r} has no val/test split yet: splitting 70/15/15 by patient (seed {seed})")
        datasets.make_splits(dataset, seed=seed)


def _inner_split(items: list, seed: int, fraction: float = 1 / 6) -> tuple[list, list]:
    """Patient-grouped, class-stratified hold-out of about ``fraction`` of ``items`` (early stopping)."""
    from sklearn.model_selection import StratifiedGroupKFold

    y = np.array([item.label for item in items])
    groups = np.array([item.patient_id for item in items])
    n_splits = max(2, round(1 / fraction))
    if len(set(groups)) < n_splits:
        raise CompareError(f"a fold has only {len(set(groups))} patients: too few for an inner validation split")
    train_idx, val_idx = next(StratifiedGroupKFold(n_splits, shuffle=True, random_state=seed).split(y, y, groups))
    return [items[i] for i in train_idx], [items[i] for i in val_idx]


def plans(dataset: str, folds: int | None, seed: int) -> list[dict[str, list]]:
    """The item sets every model trains on: one {train, val, test} plan, or one per fold."""
    from core.data import datasets

    if not folds:
        plan = {split: datasets.training_items(dataset, split) for split in ("train", "val", "test")}
        for split, items in plan.items():
            if not items:
                raise CompareError(f"dataset {dataset!r} has no labelled images in its {split} split")
        return [plan]
    try:
        fold_list = datasets.kfold_splits(dataset, folds, seed)
    except datasets.DatasetError as exc:
        raise CompareError(str(exc)) from None
    out = []
    for fold in fold_list:
        train, val = _inner_split(datasets.training_items(dataset, image_ids=fold.train), seed)
        out.append({"train": train, "val": val, "test": datasets.training_items(dataset, image_ids=fold.val)})
    return out


# ---------------------------------------------------------------------------------------------- measuring
def _n_parameters(model: Any) -> int:
    from core.training.classify import count_parameters

    svc = getattr(model, "svc_", None)
    if svc is not None:  # support vectors, their dual coefficients, intercepts and the calibration sigmoids
        return int(svc.support_vectors_.size + svc.dual_coef_.size + svc.intercept_.size
                   + np.size(model.sigmoid_a_) + np.size(model.sigmoid_b_))
    return count_parameters(model)


def inference_ms(model: Any, meta: dict, crops, repeats: int = 20) -> float:
    """Median milliseconds to classify one crop (batch of 1, CPU, after one warm-up)."""
    import torch

    from core.training.checkpoints import classify_crops

    crops = crops[: max(1, min(repeats, len(crops)))]
    with torch.inference_mode():
        classify_crops(model, meta, crops[:1])
        times = []
        for i in range(len(crops)):
            started = time.perf_counter()
            classify_crops(model, meta, crops[i:i + 1])
            times.append((time.perf_counter() - started) * 1000)
    return float(statistics.median(times))


def full_input_size(device: str = "auto") -> int:
    """The --full profile's crop side on the device that will train: 224 px on CUDA, 96 px otherwise."""
    from core.training.devices import pick_device

    return FULL_INPUT_SIZE["cuda" if pick_device(device).type == "cuda" else "cpu"]


def _train_config(model: str, options: dict, dataset: str, epochs: int | None, input_size: int | None,
                  seed: int, n_boot: int, quick: bool, batch_size: int | None, full: bool = False) -> dict:
    config = {"model": model, "model_options": dict(options), "dataset": dataset, "seed": seed, "n_boot": n_boot}
    if quick:
        config.update(input_size=QUICK_INPUT_SIZE, epochs=QUICK_EPOCHS.get(model, 10), batch_size=16, lr=0.001,
                      time_limit_s=QUICK_TIME_S.get(model, 0.0), aug_hflip=True)  # phantoms face either way
    if full:
        config.update(input_size=full_input_size(), epochs=FULL_EPOCHS, patience=FULL_PATIENCE, batch_size=16,
                      lr=0.001, time_limit_s=0.0, aug_hflip=True)
    if epochs is not None:
        config["epochs"] = epochs
    if input_size is not None:
        config["input_size"] = input_size
    if batch_size is not None:
        config["batch_size"] = batch_size
    return config


def _epoch_seconds(member: Path) -> float:
    """Training seconds a member run has recorded (metrics.csv), for a member resumed by another process."""
    table = member / layout.METRICS_FILE
    if not table.exists():
        return 0.0
    with open(table, newline="", encoding="utf-8") as handle:
        return float(sum(float(row.get("seconds") or 0) for row in csv.DictReader(handle)))


def run_entry(entry: Entry, plan_list: list[dict[str, list]], config: dict, n_boot: int, seed: int,
              progress: Path | None = None) -> Entry:
    """Train ``entry`` on every plan, pool its test predictions and score them.

    ``progress``: a JSON file naming the member runs started so far. A comparison stopped mid-model resumes there:
    a finished member is read back, an unfinished one resumes from its ``last.pt`` (the epoch it reached).
    """
    from core.evaluation import metrics
    from core.training import classify
    from core.training.checkpoints import load_classifier
    from core.training.crops import load_crops, to_samples
    from core.runs.configs import ClassifyConfig

    cfg = ClassifyConfig.from_dict(config)
    started_members = json.loads(progress.read_text())["run_dirs"] if progress and progress.exists() else []
    pooled_true, pooled_probs, pooled_patients = [], [], []
    for number, plan in enumerate(plan_list, start=1):
        fold = f" fold {number}/{len(plan_list)}" if len(plan_list) > 1 else ""
        member = Path(started_members[number - 1]) if number <= len(started_members) else None
        if member is not None and (member / "test_report.json").exists():
            print(f"- {entry.label}{fold}: finished before the resume ({member.name})", flush=True)
            entry.train_seconds += _epoch_seconds(member)
        else:
            if member is None:
                member = layout.new_run_dir(cfg.model, "classify")
                started_members.append(str(member))
                if progress is not None:
                    layout.atomic_write_text(progress, json.dumps({"label": entry.label, "run_dirs": started_members}))
                print(f"- {entry.label}{fold}: training up to {cfg.epochs} epoch(s) on {len(plan['train'])} images",
                      flush=True)
                resume = False
            else:
                print(f"- {entry.label}{fold}: resuming {member.name}", flush=True)
                entry.train_seconds += _epoch_seconds(member)
                resume = True
            started = time.perf_counter()
            classify.train(cfg, run_dir=member, items=plan, resume=resume)
            entry.train_seconds += time.perf_counter() - started
        run_dir = member
        entry.run_dirs.append(str(run_dir))
        (run_dir / "last.pt").unlink(missing_ok=True)  # 3x the weights (optimizer state); the member is finished
        status = json.loads((run_dir / "status.json").read_text())
        entry.epochs_run.append(int(status.get("epoch") or 0))
        report = json.loads((run_dir / "test_report.json").read_text())
        classes = report["classes"]
        for row in report["predictions"]:
            pooled_true.append(classes.index(row["true"]))
            pooled_probs.append(row["probabilities"])
            pooled_patients.append(row["patient_id"])
        if number == 1:
            model, meta = load_classifier(run_dir)
            entry.n_parameters = _n_parameters(model)
            samples = to_samples(plan["test"][:20])
            crops = load_crops(samples, int(meta["input_size"]), float(meta["roi_margin"]))
            entry.inference_ms = inference_ms(model, meta, crops)
    entry.report = metrics.evaluate_predictions(np.array(pooled_true), np.array(pooled_probs), pooled_patients,
                                                list(settings.CLASSES), n_boot=n_boot, seed=seed)
    return entry


# ---------------------------------------------------------------------------------------------- writing
def _score(entry: Entry, name: str) -> dict:
    return entry.report.get("metrics", {}).get(name) or {"value": None, "low": None, "high": None}


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return f"{value:.{digits}f}"


def write_csv(entries: Sequence[Entry], path: Path) -> None:
    columns = ["model", "options"] + [f"{m}{s}" for m in METRICS for s in ("", "_low", "_high")] + [
        "n_test_images", "n_test_patients", "train_seconds", "n_parameters", "inference_ms_per_image",
        "epochs_run", "run_dirs"]
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        for e in entries:
            row = [e.model, json.dumps(e.options)]
            for m in METRICS:
                s = _score(e, m)
                row += [s["value"], s["low"], s["high"]]
            row += [e.report.get("n_images"), e.report.get("n_patients"), round(e.train_seconds, 1), e.n_parameters,
                    None if e.inference_ms is None else round(e.inference_ms, 2),
                    " ".join(map(str, e.epochs_run)), " ".join(e.run_dirs)]
            writer.writerow(row)


def write_markdown(entries: Sequence[Entry], path: Path, header: dict) -> None:
    lines = [f"# Model comparison — {header['title']}", ""]
    lines += [f"- {k}: {v}" for k, v in header.items() if k != "title"]
    lines += ["- values: point estimate [95 % patient-bootstrap interval]; ECE and NLL: lower is better",
              "- `mean_one_vs_rest_accuracy` is probably what the paper calls ACC; `accuracy` is plain 3-class accuracy",
              f"- {STUDY_REPORTED}", ""]
    cols = list(METRICS)
    lines.append("| model | " + " | ".join(cols) + " | train s | parameters | ms/image |")
    lines.append("|---" * (len(cols) + 4) + "|")
    for e in entries:
        cells = []
        for m in cols:
            s = _score(e, m)
            cells.append(f"{_fmt(s['value'])} [{_fmt(s['low'])}, {_fmt(s['high'])}]")
        ms = "–" if e.inference_ms is None else f"{e.inference_ms:.1f}"
        lines.append(f"| {e.label} | " + " | ".join(cells)
                     + f" | {e.train_seconds:.0f} | {e.n_parameters:,} | {ms} |")
    lines.append("")
    notes = sorted({n for e in entries for n in e.report.get("notes", [])})
    if notes:
        lines += ["Notes from the scorer:", ""] + [f"- {n}" for n in notes] + [""]
    path.write_text("\n".join(lines), encoding="utf-8")


def write_html(entries: Sequence[Entry], path: Path, title: str) -> None:
    """Grouped bars (one group per metric, one bar per model) with the bootstrap interval as error bars."""
    import plotly.graph_objects as go

    figure = go.Figure()
    for e in entries:
        values, plus, minus = [], [], []
        for m in PLOTTED:
            s = _score(e, m)
            v = s["value"]
            values.append(v)
            plus.append(None if v is None or s["high"] is None else s["high"] - v)
            minus.append(None if v is None or s["low"] is None else v - s["low"])
        figure.add_trace(go.Bar(name=e.label, x=list(PLOTTED), y=values,
                                error_y={"type": "data", "array": plus, "arrayminus": minus, "visible": True}))
    figure.update_layout(barmode="group", title=title, yaxis={"range": [0, 1], "title": "score"},
                         legend={"title": "model"})
    # plotly.js inlined: the page opens without a network
    figure.write_html(path, include_plotlyjs=True, full_html=True)


# ---------------------------------------------------------------------------------------------- the comparison
# metrics.csv: one row per model trained (``epoch`` = its number in the table), after layout.COMMON_COLUMNS
COLUMNS = ("model", "accuracy", "mean_one_vs_rest_accuracy", "macro_f1", "macro_recall")
ENTRIES_DIR = "entries"  # one JSON per finished model: a resumed comparison skips them


def _entries(cfg: CompareConfig) -> list[Entry]:
    if cfg.ablation:
        return [Entry(name, dict(opts)) for name, opts in ABLATION]
    entries = [Entry(name) for name in (cfg.models or STUDY_MODELS)]
    if cfg.full and not cfg.models:  # the full table also answers the ablation: which weight matrix earns its place
        entries += [Entry("s_resnet34", {"variant": variant}) for variant in FULL_VARIANTS]
    return entries


def fit(config: Mapping[str, Any] | CompareConfig, run_dir: str | Path, *, resume: bool = False) -> Path:
    """Train every model of the comparison on the same splits; the run folder gets compare.md/.csv/.html.

    Each model is an ordinary classify run under runs/ (its last.pt dropped: members are not resumed); a resumed
    comparison keeps the models already finished (``entries/``) and trains the rest.
    """
    cfg = config if isinstance(config, CompareConfig) else CompareConfig.from_dict(config)
    run_dir = Path(run_dir)
    entries = _entries(cfg)
    label = "ablation" if cfg.ablation else ",".join(e.label for e in entries)
    with RunRecorder(run_dir, "compare", COLUMNS, model=label, metric="best macro-F1") as run:
        run.write_config(cfg.to_dict())
        run.update(epoch=0, epochs=len(entries), best_metric=None, message="preparing the dataset")
        dataset = cfg.dataset or (QUICK_DATASET if cfg.quick or cfg.full else "default")
        if not dataset_exists(dataset):
            if not (cfg.quick or cfg.full):
                raise CompareError(f"dataset {dataset!r} has no labelled images: import one first, or use quick "
                                   "or full to build the phantom benchmark")
            build_quick_dataset(dataset, seed=cfg.seed)
        _ensure_splits(dataset, cfg.seed)
        plan_list = plans(dataset, cfg.folds, cfg.seed)
        saved = run_dir / ENTRIES_DIR
        saved.mkdir(exist_ok=True)
        if not resume:
            run.keep_metrics_until(0)
        done = {json.loads(p.read_text())["label"]: p for p in saved.glob("*.json")} if resume else {}
        started = time.perf_counter()
        best = None
        for number, entry in enumerate(entries, start=1):
            if entry.label in done:
                entry.__dict__.update({k: v for k, v in json.loads(done[entry.label].read_text()).items()
                                       if k != "label"})
            else:
                run.update(message=f"training {entry.label} ({number}/{len(entries)})")
                config_dict = _train_config(entry.model, entry.options, dataset, cfg.epochs, cfg.input_size, cfg.seed,
                                            cfg.n_boot, cfg.quick, cfg.batch_size, cfg.full)
                run_entry(entry, plan_list, config_dict, cfg.n_boot, cfg.seed,
                          progress=saved / f"{number:02d}.started")
                row = {"epoch": number, "split": "test" if not cfg.folds else "out-of-fold", "model": entry.label,
                       "seconds": round(entry.train_seconds, 1),
                       **{m: _score(entry, m)["value"] for m in COLUMNS if m != "model"}}
                run.append_metrics(row)
                layout.atomic_write_text(saved / f"{number:02d}.json",
                                         json.dumps({"label": entry.label, **asdict(entry)}, default=str))
            f1 = _score(entry, "macro_f1")
            if f1["value"] is not None and (best is None or f1["value"] > best):
                best = f1["value"]
            run.epoch_status(number, len(entries), entry.train_seconds, best_metric=best, message=(
                f"{entry.label}: macro-F1 {_fmt(f1['value'])} [{_fmt(f1['low'])}, {_fmt(f1['high'])}], "
                f"{entry.train_seconds:.0f} s"))
            run.check_cancel()
        _write_tables(cfg, entries, plan_list, dataset, run_dir, time.perf_counter() - started, resumed=bool(done))
        winner = _keep_best(entries, run_dir)
        run.write_json(layout.TEST_REPORT, {
            "split": "out-of-fold" if cfg.folds else "test", "dataset": dataset, "best": winner,
            "models": {e.label: {m: _score(e, m) for m in METRICS} for e in entries}})
        run.done(f"done: {len(entries)} models; best {winner}, macro-F1 {_fmt(best)} (compare.md)", best_metric=best)
    return run_dir


def _keep_best(entries: list[Entry], run_dir: Path) -> str | None:
    """The best model's checkpoint as the comparison's best.pt (promotable as the classifier, like any run's)."""
    scored = [e for e in entries if _score(e, "macro_f1")["value"] is not None and e.run_dirs]
    if not scored:
        return None
    winner = max(scored, key=lambda e: _score(e, "macro_f1")["value"])
    shutil.copy2(Path(winner.run_dirs[0]) / "best.pt", run_dir / "best.pt")
    return winner.label


def _write_tables(cfg: CompareConfig, entries: list[Entry], plan_list, dataset: str, out_dir: Path,
                  wall: float, resumed: bool = False) -> None:
    import torch

    first = plan_list[0]
    evaluation = (f"{cfg.folds}-fold patient-grouped cross-validation, pooled out-of-fold predictions" if cfg.folds
                  else f"train {len(first['train'])} / val {len(first['val'])} / test {len(first['test'])} images, "
                       "patient-grouped")
    header = {
        "title": "ablation: S-ResNet-34 variants vs ResNet-34" if cfg.ablation else "the study's models",
        "dataset": dataset, "evaluation": evaluation, "seed": cfg.seed, "bootstrap resamples": cfg.n_boot,
        "mode": "quick (phantoms, small inputs, few epochs: a smoke test, not a result)" if cfg.quick else
                (f"full ({cfg.input_size or full_input_size()} px, early stopping after {FULL_PATIENCE} epochs without a better val "
                 f"macro-F1, at most {FULL_EPOCHS} epochs, no time cap)" if cfg.full else "custom"),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, "
                   f"{'CUDA ' + torch.cuda.get_device_name() if torch.cuda.is_available() else 'CPU'}",
        "training time (all models)": f"{sum(e.train_seconds for e in entries):.0f} s",
        # a resumed comparison's process saw only the models it trained: its wall time is not the whole
        "wall time": f"{wall:.0f} s" + (" (the last, resumed process only)" if resumed else ""),
        "written": _dt.datetime.now().isoformat(timespec="seconds"),
    }
    write_csv(entries, out_dir / "compare.csv")
    write_markdown(entries, out_dir / "compare.md", header)
    write_html(entries, out_dir / "compare.html", f"CerviCurve — {header['title']} ({dataset})")


def evaluate(run_dir: str | Path, split: str = "test") -> dict:
    """Each member run re-scored on ``split`` (classify.evaluate), by model label."""
    from core.training import classify

    run_dir = layout.resolve_run(run_dir)
    report = {"split": split, "run_id": run_dir.name, "models": {}}
    for path in sorted((run_dir / ENTRIES_DIR).glob("*.json")):
        entry = json.loads(path.read_text())
        report["models"][entry["label"]] = [
            {k: v for k, v in classify.evaluate(member, split).items() if k != "predictions"}
            for member in entry["run_dirs"]]
    layout.atomic_write_text(run_dir / f"{split}_report.json", json.dumps(report, indent=1, default=str))
    return report


def load(path: str | Path) -> list[dict]:
    """The comparison's table (compare.csv) as rows."""
    table = layout.resolve_run(path) / "compare.csv"
    if not table.exists():
        raise FileNotFoundError(f"{table} does not exist: the comparison has not finished")
    with open(table, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))
