"""ROI detector and landmark (pose) model on Ultralytics YOLO — the only module that imports ``ultralytics``.

Public API::

    train_detector(data_yaml, run_dir, *, resume=False, progress_callback=None, **YoloConfig keys) -> DetectorReport
    train_landmark_model(data_yaml, run_dir, ...same...) -> DetectorReport   # progress_callback(epoch, epochs, row)
    fit(config: YoloConfig | dict, run_dir, resume=False, progress_callback=None) -> DetectorReport  # the task
    RoiDetector(weights_path).detect(image, min_confidence=0.25) -> ([x1, y1, x2, y2], confidence) | None
    LandmarkModel(weights_path).predict(image, min_confidence=0.25) -> (landmarks (23, 2), confidence (23,)) | None
    evaluate_landmarks(model, items) -> {mean_error_px, mean_error_pct_c2c7, cobb_mae_deg, images, missed}
    read_yolo_landmarks(data_yaml, split="val") -> [(image, landmarks), ...]

Models are built from a packaged Ultralytics yaml (``yolov8n.yaml``, ``yolo11n.yaml``, ``yolov3-tinyu.yaml``,
``yolov3u.yaml`` — the study's detector family —, ``yolov8n-pose.yaml`` ...) with random weights, or start from a
local ``.pt`` the user points at. Nothing is ever downloaded: a ``.pt`` that is not on disk is a FileNotFoundError.

A run folder looks like every other run (docs/ARCHITECTURE.md): ``status.json`` (written atomically, updated
after every epoch from an Ultralytics callback), ``metrics.csv`` (one row per epoch), ``train.log``,
``dataset.yaml`` (the sanitised dataset description actually trained on), ``best.pt``/``last.pt`` and
``test_report.json``. ``best.pt``/``last.pt`` are CerviCurve checkpoints — ``{"state_dict", "meta"}`` with the
network's yaml in ``meta`` — loadable with ``torch.load(weights_only=True)``; Ultralytics' own pickled files stay
in ``ultralytics/weights/`` (referenced as ``meta["ultralytics_weights"]``) for ``resume`` only. Training runs on
one device ('auto', 'cpu', 'cuda:N'): Ultralytics' multi-GPU mode is a generated script our callbacks never reach.

Loading safety: ``RoiDetector``/``LandmarkModel`` only accept the checkpoints CerviCurve runs write (runs/<id>/best.pt,
promoted/<task>/best.pt) and load them with ``weights_only=True``, so a promoted model never unpickles code; any
other file is a ValueError. Ultralytics' native ``.pt`` files are pickles; the only ones opened are those a run
wrote in its own folder (final validation, resume) and a starting ``.pt`` the user names explicitly — all
through Ultralytics' restricted loader (``ULTRALYTICS_SAFE_LOAD=1``: ``weights_only=True`` plus an allow-list of
Ultralytics layer classes), so a crafted file is refused rather than executed.

Ultralytics' global side effects are contained: before the first import its config and matplotlib's cache point
at ``settings.tool_config_dir()``, it is offline (``YOLO_OFFLINE``, no auto-install, no settings sync or
integrations), its Arial font is a local copy of matplotlib's DejaVuSans, torch's inductor cache defaults to the
same folder, runs go to ``run_dir/ultralytics``
(never ``./runs``), and torch's thread count, ``OMP_NUM_THREADS``, numpy/torch print options and OpenCV's thread
count are restored after the import and after every train/predict call. Its AMP self-check (which downloads
yolo26n.pt on a GPU) is replaced, during our calls only, by Ultralytics' own offline outcome: AMP on for CUDA.

Landmarks and flips: CSXA names left/right by image side, so a horizontal flip turns "C4 top left" into
"C4 top right". Flip augmentation stays on (it teaches both facings) and ``flip_idx`` swaps each left/right pair;
it is derived from ``core.data.measure.LANDMARK_NAMES`` and always overrides what a dataset yaml says.

Models are shared between Streamlit sessions, so each predictor holds a lock. Ultralytics is AGPL-3.0.
"""
from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
import os
import re
import shutil
import sys
import threading
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import numpy as np

from core import settings
from core.data import safe_yaml
from core.runs import layout
from core.runs.configs import YOLO_DEFAULT_MODEL, YoloConfig
from core.runs.recorder import RunRecorder, log
from core.data.measure import landmark_flip_index

LANDMARK_COUNT = 23
KPT_SHAPE = [LANDMARK_COUNT, 3]
DEFAULT_DETECT_MODEL = YOLO_DEFAULT_MODEL["detect"]
DEFAULT_LANDMARK_MODEL = YOLO_DEFAULT_MODEL["landmarks"]
CHECKPOINT_FORMAT = "cervicurve-yolo/1"
# project task -> Ultralytics task
TASKS = {"detect": "detect", "landmarks": "pose"}
_PRIMARY_METRIC = {"detect": "metrics/mAP50-95(B)", "pose": "metrics/mAP50-95(P)"}
_OTHER_HEADS = ("-pose", "-seg", "-cls", "-obb", "-world", "yoloe", "rtdetr")
# A tiny packaged network per task: the YOLO wrapper needs one to exist before our own network replaces it.
_WRAPPER_STUB = {"detect": "yolov8n.yaml", "pose": "yolov8n-pose.yaml"}

ProgressCallback = Callable[[int, int, dict], None]


# ---------------------------------------------------------------------------------------------------------------
# Containing Ultralytics
# ---------------------------------------------------------------------------------------------------------------

_IMPORT_LOCK = threading.RLock()
_FONTS = ("Arial.ttf", "Arial.Unicode.ttf")


def _install_fonts(config_dir: Path) -> None:
    """Ultralytics downloads Arial on every train/val unless it finds it: give it matplotlib's DejaVuSans."""
    import matplotlib

    source = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
    config_dir.mkdir(parents=True, exist_ok=True)
    for name in _FONTS:
        target = config_dir / name
        if not target.exists():
            shutil.copyfile(source, target)


def _offline_env() -> Path:
    config = settings.tool_config_dir()
    os.environ["YOLO_OFFLINE"] = "1"
    os.environ["YOLO_AUTOINSTALL"] = "0"
    os.environ["ULTRALYTICS_SAFE_LOAD"] = "1"
    os.environ["YOLO_CONFIG_DIR"] = str(config)
    os.environ["MPLCONFIGDIR"] = str(config)
    # torch._dynamo, imported on the way, makes its cache folder in $TMPDIR; keep it in the workspace too
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(config / "torchinductor"))
    os.environ.setdefault("TRITON_CACHE_DIR", str(config / "triton"))
    _install_fonts(config / "Ultralytics")
    return config


def _import_ultralytics():
    """Import ultralytics once, offline and inside the workspace, undoing its import-time global changes."""
    with _IMPORT_LOCK:
        if "ultralytics" not in sys.modules:
            _offline_env()
            import cv2
            import torch

            numpy_print = np.get_printoptions()
            cv2_threads = cv2.getNumThreads()
            with _restored_threads():
                import ultralytics  # noqa: F401  (sets OMP_NUM_THREADS, print options, cv2 threads)
            np.set_printoptions(**numpy_print)
            torch.set_printoptions(profile="default")
            cv2.setNumThreads(cv2_threads)
        import ultralytics
        from ultralytics.utils import SETTINGS, USER_CONFIG_DIR

        _install_fonts(Path(USER_CONFIG_DIR))
        tools = settings.tool_config_dir() / "ultralytics"
        wanted = {
            "sync": False, "clearml": False, "comet": False, "dvc": False, "mlflow": False, "raytune": False,
            "tensorboard": False, "wandb": False, "vscode_msg": False, "openvino_msg": False,
            "runs_dir": str(tools / "runs"), "datasets_dir": str(tools / "datasets"),
            "weights_dir": str(tools / "weights"),
        }
        changed = {k: v for k, v in wanted.items() if SETTINGS.get(k) != v}
        if changed:
            SETTINGS.update(**changed)
        return ultralytics


def _process_threads() -> int:
    """torch's process-wide thread count: what a new thread starts with. The calling thread may hold its own
    (torch keeps one per thread), e.g. 1 when it first ran torch while an Ultralytics call had set 1."""
    import torch

    seen: list[int] = []
    reader = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))
    reader.start()
    reader.join()
    return seen[0]


def _set_omp(value: str | None) -> None:
    if value is None:
        os.environ.pop("OMP_NUM_THREADS", None)
    else:
        os.environ["OMP_NUM_THREADS"] = value


@contextlib.contextmanager
def _restored_threads():
    """Ultralytics sets torch to NUM_THREADS (1 on a 2-core machine) and OMP_NUM_THREADS for the whole process:
    undo it. Entered with ``_IMPORT_LOCK`` held (the import)."""
    import torch

    threads, omp = _process_threads(), os.environ.get("OMP_NUM_THREADS")
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        _set_omp(omp)


def _offline_amp_check(model) -> bool:
    """Ultralytics' check_amp downloads yolo26n.pt; offline it falls back to 'AMP on' for CUDA, as this does."""
    try:
        return next(model.parameters()).device.type == "cuda"
    except StopIteration:
        return False


# YOLO calls in progress in this process, and what the first of them found. Page sessions share models, so
# calls overlap across threads: with a save/restore per call, the second call saves the 1 thread the first
# one's Ultralytics had just set, and "restores" it last. So the first call in saves the process's values, every
# call puts the thread count back on its way out (its own thread's, and the process's) and the last one out
# restores OMP_NUM_THREADS and the AMP check; all of it under _IMPORT_LOCK.
_active_sessions = 0
_saved: dict[str, Any] = {}


@contextlib.contextmanager
def _yolo_session():
    """Every train/predict call runs in here: offline, AMP check local, threads and OMP restored afterwards."""
    global _active_sessions
    import torch

    with _IMPORT_LOCK:
        ultralytics = _import_ultralytics()
        from ultralytics.engine import trainer as trainer_module
        from ultralytics.utils import torch_utils

        if _active_sessions == 0:
            _saved.update(threads=_process_threads(), omp=os.environ.get("OMP_NUM_THREADS"),
                          check_amp=trainer_module.check_amp, yolo_threads=torch_utils.NUM_THREADS)
            trainer_module.check_amp = _offline_amp_check
            # its select_device() sets torch to cpu_count - 1 threads, i.e. one core of two: train and predict
            # on the threads this process was given instead
            torch_utils.NUM_THREADS = _saved["threads"]
        _active_sessions += 1
    try:
        yield ultralytics
    finally:
        with _IMPORT_LOCK:
            _active_sessions -= 1
            torch.set_num_threads(_saved["threads"])
            if _active_sessions == 0:
                _set_omp(_saved["omp"])
                trainer_module.check_amp = _saved["check_amp"]
                torch_utils.NUM_THREADS = _saved["yolo_threads"]


def resolve_device(device: str | int | None = "auto") -> str:
    """'auto' -> first CUDA GPU if any, else 'cpu'; 'cuda'/'cuda:1' -> Ultralytics' '0'/'1'; others pass through."""
    import torch

    text = "auto" if device is None else str(device).strip().lower()
    if text in ("", "auto"):
        return "0" if torch.cuda.is_available() else "cpu"
    if text == "cuda":
        return "0"
    if text.startswith("cuda:"):
        text = text.split(":", 1)[1]
    if "," in text:
        # Ultralytics runs multi-GPU training as a separate generated script: our callbacks (status.json) and
        # offline AMP check would not run there.
        raise ValueError(f"one device at a time (got {device!r}); use e.g. 'cuda:0', 'cpu' or 'auto'")
    return text


# ---------------------------------------------------------------------------------------------------------------
# Inputs: model source and dataset yaml
# ---------------------------------------------------------------------------------------------------------------


def _model_source(model: str | Path, yolo_task: str) -> str:
    """A packaged/local yaml (random weights) or an existing local .pt; never a name Ultralytics would download."""
    text = str(model).strip()
    name = Path(text).name.lower()
    if name.endswith((".yaml", ".yml")):
        is_pose = "-pose" in name
        if yolo_task == "pose" and not is_pose:
            raise ValueError(f"landmarks need a pose network (e.g. yolov8n-pose.yaml, yolo11n-pose.yaml), not {text}")
        if yolo_task == "detect" and any(tag in name for tag in _OTHER_HEADS):
            raise ValueError(f"the ROI detector needs a detection network (e.g. yolov8n.yaml), not {text}")
        path = Path(text).expanduser()
        return str(path.resolve()) if path.is_file() else text
    if name.endswith(".pt"):
        path = Path(text).expanduser()
        if not path.is_file():
            raise FileNotFoundError(
                f"YOLO weights {path} not found. CerviCurve never downloads weights: build the network from a yaml "
                f"(e.g. {_WRAPPER_STUB[yolo_task]}) or give the path of a .pt file on this machine."
            )
        return str(path.resolve())
    raise ValueError(
        f"model must be an Ultralytics network yaml (yolov8n.yaml, yolo11n.yaml, yolov3-tinyu.yaml, yolov3u.yaml, "
        f"yolov8n-pose.yaml ...) or a local .pt file, not {text!r}"
    )


def _split_dirs(root: Path, value) -> list[Path]:
    entries = value if isinstance(value, (list, tuple)) else [value]
    return [Path(e) if Path(e).is_absolute() else root / str(e) for e in entries]


def _load_dataset_yaml(data_yaml: str | Path) -> tuple[dict, Path]:
    import yaml

    path = Path(data_yaml).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"dataset description {path} not found (expected a YOLO data.yaml)")
    try:
        data = safe_yaml.load(path.read_text(encoding="utf-8"))  # a user's data.yaml: no aliases (alias bomb)
    except yaml.YAMLError as exc:
        raise ValueError(f"{path} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{path} must be a mapping with train, val and names")
    root = Path(str(data.get("path") or path.parent)).expanduser()
    if not root.is_absolute():
        root = path.parent / root
    return data, root.resolve()


def _write_dataset_yaml(data_yaml: str | Path, out: Path, yolo_task: str) -> Path:
    """A clean copy of the dataset yaml: absolute path, existing folders, our kpt_shape/flip_idx, no `download`.

    Ultralytics runs a yaml's `download:` entry (a URL, a shell command or Python) when a split is missing; the copy
    never carries one and missing folders are an error here instead.
    """
    import yaml

    data, root = _load_dataset_yaml(data_yaml)
    clean: dict[str, Any] = {"path": str(root)}
    for split in ("train", "val", "test"):
        value = data.get(split)
        if value in (None, "", []):
            if split != "test":
                raise ValueError(f"{data_yaml}: no '{split}' images listed")
            continue
        for folder in _split_dirs(root, value):
            if not folder.exists():
                raise FileNotFoundError(
                    f"{split} images {folder} not found (listed in {data_yaml}; CerviCurve never runs a dataset's "
                    f"download script)"
                )
        clean[split] = value
    names = data.get("names")
    if isinstance(names, (list, tuple)):
        names = dict(enumerate(names))
    if not isinstance(names, dict) or not names:
        raise ValueError(f"{data_yaml}: 'names' must list the class names, e.g. {{0: cervical_spine}}")
    clean["names"] = {int(k): str(v) for k, v in names.items()}
    if yolo_task == "pose":
        kpt_shape = list(data.get("kpt_shape") or KPT_SHAPE)
        if kpt_shape != KPT_SHAPE:
            raise ValueError(f"{data_yaml}: kpt_shape must be {KPT_SHAPE} (the 23 CSXA landmarks), not {kpt_shape}")
        clean["kpt_shape"] = KPT_SHAPE
        clean["flip_idx"] = landmark_flip_index()
    elif data.get("kpt_shape"):
        raise ValueError(f"{data_yaml} holds landmarks (kpt_shape); export it with task='detect' for the detector")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(yaml.safe_dump(clean, sort_keys=False), encoding="utf-8")
    return out


# ---------------------------------------------------------------------------------------------------------------
# Run folder
# ---------------------------------------------------------------------------------------------------------------


def _json_default(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    return str(value)  # paths, and anything odd a config may carry


def _same_file(stream, path: Path) -> bool:
    try:
        a, b = os.fstat(stream.fileno()), os.stat(path)
    except (OSError, ValueError, AttributeError):
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _column(key: str) -> str:
    """'metrics/mAP50-95(B)' -> 'mAP50_95', '(P)' -> 'pose_...', 'train/box_loss' -> 'train_box_loss'."""
    name = key.removeprefix("metrics/")
    if name.endswith("(B)"):
        name = name[:-3]
    elif name.endswith("(P)"):
        name = "pose_" + name[:-3]
    return name.replace("/", "_").replace("-", "_")


# Ultralytics' epoch results -> the task's metrics.csv columns (after layout.COMMON_COLUMNS)
DETECT_COLUMNS = ("train_box_loss", "train_cls_loss", "train_dfl_loss", "val_box_loss", "val_cls_loss", "val_dfl_loss",
                  "precision", "recall", "mAP50", "mAP50_95", "fitness")
POSE_COLUMNS = DETECT_COLUMNS + ("train_pose_loss", "train_kobj_loss", "val_pose_loss", "val_kobj_loss",
                                 "pose_precision", "pose_recall", "pose_mAP50", "pose_mAP50_95")


def columns_for(task: str) -> tuple[str, ...]:
    return POSE_COLUMNS if task == "landmarks" else DETECT_COLUMNS


class _AnsiFreeFormatter(logging.Formatter):
    _ansi = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")

    def format(self, record):
        return self._ansi.sub("", super().format(record))


@contextlib.contextmanager
def _ultralytics_log_into(run_dir: Path):
    """Ultralytics' log into train.log, unless stdout already goes there (a background run)."""
    log_path = run_dir / layout.LOG_FILE
    if _same_file(sys.stdout, log_path):
        yield
        return
    handler = logging.FileHandler(log_path, encoding="utf-8")
    handler.setFormatter(_AnsiFreeFormatter("%(asctime)s %(message)s", "%H:%M:%S"))
    ulog = logging.getLogger("ultralytics")
    ulog.addHandler(handler)
    try:
        yield
    finally:
        ulog.removeHandler(handler)
        handler.close()


class _EpochRecorder:
    """Ultralytics callbacks -> the run's metrics.csv rows and status (through the shared RunRecorder)."""

    def __init__(self, run, task: str, progress_callback: ProgressCallback | None):
        self.run, self.task, self.yolo_task = run, task, TASKS[task]
        self.progress_callback = progress_callback
        self.best_metric: float | None = run.status.get("best_metric") if run.status else None
        self.final_metrics: dict = {}
        self.epoch_metrics: dict = {}
        self.epochs_run = 0
        self._pending_epoch = False
        self._epoch_started = time.time()

    def attach(self, yolo) -> None:
        def on_train_epoch_start(trainer):
            self.run.release_cancel()  # an epoch redone after a NaN never reached on_fit_epoch_end
            self._epoch_started = time.time()

        def on_train_epoch_end(trainer):
            # Ultralytics validates and writes last.pt before on_fit_epoch_end: a cancel in between would resume
            # after an epoch that has no metrics row (seen in CI: epochs 1, 2, 3, 5, 6)
            self.run.hold_cancel()
            self._pending_epoch = True

        yolo.add_callback("on_train_epoch_start", on_train_epoch_start)
        yolo.add_callback("on_train_epoch_end", on_train_epoch_end)
        yolo.add_callback("on_fit_epoch_end", self._on_fit_epoch_end)

    def _on_fit_epoch_end(self, trainer) -> None:
        metrics = {k: float(v) for k, v in (trainer.metrics or {}).items()}
        if not self._pending_epoch:  # Ultralytics' final validation of best.pt calls this hook once more
            self.final_metrics = metrics
            return
        self._pending_epoch = False
        epoch, epochs = int(trainer.epoch) + 1, int(trainer.epochs)
        self.epochs_run = epoch
        seconds = time.time() - self._epoch_started
        losses = trainer.label_loss_items(trainer.tloss, prefix="train") if trainer.tloss is not None else {}
        values = {_column(k): float(v) for k, v in losses.items()}
        values.update({_column(k): v for k, v in metrics.items()})
        if trainer.fitness is not None:
            values["fitness"] = float(trainer.fitness)
        lrs = list((getattr(trainer, "lr", None) or {}).values())
        row = {k: v for k, v in values.items() if k in self.run.columns}
        row.update(epoch=epoch, seconds=round(seconds, 3), lr=float(lrs[0]) if lrs else None,
                   train_loss=sum(v for k, v in values.items() if k.startswith("train_") and k.endswith("_loss")),
                   val_loss=sum(v for k, v in values.items() if k.startswith("val_") and k.endswith("_loss")) or None)
        self.run.append_metrics(row)
        primary = metrics.get(_PRIMARY_METRIC[self.yolo_task])
        if primary is not None and (self.best_metric is None or primary > self.best_metric):
            self.best_metric = primary
        self.epoch_metrics = metrics
        name = self.run.metric
        self.run.epoch_status(epoch, epochs, seconds, best_metric=self.best_metric,
                              message=f"epoch {epoch}/{epochs}: {name} " + ("n/a" if primary is None else f"{primary:.4f}"))
        if self.progress_callback is not None:
            self.progress_callback(epoch, epochs, dict(row))
        self.run.release_cancel()

    def seconds_per_epoch(self) -> float | None:
        """Mean train + validation time of one epoch (setup and the final validation left out)."""
        return round(float(np.mean(self.run.epoch_seconds)), 2) if self.run.epoch_seconds else None


# ---------------------------------------------------------------------------------------------------------------
# Checkpoints: Ultralytics pickles -> weights-only CerviCurve files
# ---------------------------------------------------------------------------------------------------------------


def _export_checkpoint(ultralytics_pt: Path, out: Path, meta: dict) -> Path:
    """Our own run's Ultralytics .pt -> {"state_dict", "meta"} that torch.load(weights_only=True) can read."""
    import torch
    from ultralytics.nn.tasks import load_checkpoint

    network, _ = load_checkpoint(str(ultralytics_pt))
    # weights_only loading accepts plain types only: JSON round trips guarantee that (names keep int keys below)
    network_yaml = json.loads(json.dumps(network.yaml))
    meta = json.loads(json.dumps(meta, default=_json_default))
    payload = {
        "state_dict": {k: v.detach().float().cpu().clone() if v.is_floating_point() else v.detach().cpu().clone()
                       for k, v in network.state_dict().items()},
        "meta": {
            **meta,
            "format": CHECKPOINT_FORMAT,
            "ultralytics_task": network.task,
            "model_yaml": network_yaml,
            "names": {int(k): str(v) for k, v in network.names.items()},
            "kpt_shape": list(network.kpt_shape) if getattr(network, "kpt_shape", None) else None,
        },
    }
    tmp = out.with_name(f".{out.name}.tmp")
    torch.save(payload, tmp)
    os.replace(tmp, out)
    return out


def _read_checkpoint(weights_path: str | Path, task: str | None) -> dict:
    """A CerviCurve YOLO checkpoint (weights only); ``task`` None accepts either task."""
    import pickle

    import torch

    path = Path(weights_path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"model file {path} not found")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as exc:
        raise ValueError(
            f"{path} is not a CerviCurve {task or 'YOLO'} checkpoint. Only weights-only files written by a CerviCurve run "
            f"(runs/<id>/best.pt or promoted/) are loaded; Ultralytics .pt files are pickled code and are used "
            f"only as training starting points. ({type(exc).__name__})"
        ) from exc
    meta = checkpoint.get("meta") if isinstance(checkpoint, dict) else None
    if not isinstance(meta, dict) or meta.get("format") != CHECKPOINT_FORMAT or "state_dict" not in checkpoint:
        raise ValueError(f"{path} is not a CerviCurve {task or 'YOLO'} checkpoint (no {CHECKPOINT_FORMAT} meta)")
    if task is not None and meta.get("task") != task:
        raise ValueError(f"{path} holds a {meta.get('task')} model, not a {task} model")
    return checkpoint


def _read_checkpoint_meta(weights_path: str | Path) -> dict:
    return _read_checkpoint(weights_path, None)["meta"]


class _YoloPredictor:
    """A rebuilt network behind Ultralytics' predictor (letterbox, NMS, scaling back), one call at a time."""

    task = "detect"

    def __init__(self, weights_path: str | Path):
        checkpoint = _read_checkpoint(weights_path, self.task)
        self.path = Path(weights_path)
        self.meta = checkpoint["meta"]
        self.imgsz = int(self.meta.get("imgsz") or 640)
        self.names = self.meta["names"]
        self._lock = threading.Lock()
        with _yolo_session():
            from ultralytics import YOLO
            from ultralytics.nn.tasks import DetectionModel, PoseModel

            yolo_task = self.meta["ultralytics_task"]
            cfg = copy.deepcopy(self.meta["model_yaml"])
            channels = int(cfg.get("channels", 3))
            if yolo_task == "pose":
                network = PoseModel(cfg, ch=channels, nc=len(self.names),
                                    data_kpt_shape=tuple(self.meta["kpt_shape"]), verbose=False)
            else:
                network = DetectionModel(cfg, ch=channels, nc=len(self.names), verbose=False)
            network.load_state_dict(checkpoint["state_dict"])
            network.names = dict(self.names)
            network.eval()
            self._yolo = YOLO(_WRAPPER_STUB[yolo_task], task=yolo_task, verbose=False)
            self._yolo.model = network
            # Ultralytics sets its predictor up (device, and torch's thread count on a CPU) on the first call:
            # do it now, while loading, rather than in the middle of someone's first prediction.
            self._run(np.zeros((32, 32, 3), dtype=np.uint8), 1.0)

    def _run(self, bgr: np.ndarray, min_confidence: float):
        return self._yolo.predict(
            bgr, imgsz=self.imgsz, conf=float(min_confidence), device=resolve_device("auto"),
            verbose=False, save=False, project=str(settings.tool_config_dir() / "ultralytics" / "predict"),
            name="predict", exist_ok=True,
        )[0]

    def _predict(self, image: np.ndarray, min_confidence: float):
        """Ultralytics' result for ``image`` and the (x, y) factors from its coordinates to the image's.

        A film larger than the network's input is shrunk to it here (area averaging, as a smaller film would
        look) rather than by Ultralytics' letterbox: converting and resizing 2048 px of uint8 RGB costs more
        than the network itself."""
        array = np.asarray(image)
        scale = (1.0, 1.0)
        if array.ndim == 2 and max(array.shape) > self.imgsz:
            import cv2

            height, width = array.shape
            factor = self.imgsz / max(height, width)
            size = (max(1, round(width * factor)), max(1, round(height * factor)))
            array = cv2.resize(np.ascontiguousarray(array, dtype=np.float32), size, interpolation=cv2.INTER_AREA)
            scale = (width / size[0], height / size[1])
        pixels = _as_bgr(array)
        with self._lock, _yolo_session():
            return self._run(pixels, min_confidence), scale


def _as_bgr(image) -> np.ndarray:
    """float32 H x W in [0, 1] -> the uint8 3-channel image Ultralytics trains on (grayscale PNGs read as BGR)."""
    array = np.asarray(image)
    if array.ndim != 2 or array.size == 0:
        raise ValueError(f"expected a grayscale image H x W, got shape {array.shape}")
    if not np.issubdtype(array.dtype, np.floating):
        raise ValueError(f"expected a float image in [0, 1], got dtype {array.dtype}")
    gray = np.round(np.clip(np.nan_to_num(array), 0.0, 1.0) * 255).astype(np.uint8)
    return np.ascontiguousarray(np.repeat(gray[:, :, None], 3, axis=2))


class RoiDetector(_YoloPredictor):
    """The cervical-spine box finder. ``detect`` returns the most confident box in original pixels, or None."""

    task = "detect"

    def detect(self, image: np.ndarray, min_confidence: float = 0.25) -> tuple[list[float], float] | None:
        result, (sx, sy) = self._predict(image, min_confidence)
        boxes = result.boxes
        if boxes is None or len(boxes) == 0:
            return None
        best = int(boxes.conf.argmax())
        x1, y1, x2, y2 = (float(v) for v in boxes.xyxy[best].tolist())
        height, width = np.asarray(image).shape[:2]
        # scaled back from the network's input: keep float rounding from leaving the film (120.00000000000001)
        return [min(max(x1 * sx, 0.0), width), min(max(y1 * sy, 0.0), height), min(max(x2 * sx, 0.0), width),
                min(max(y2 * sy, 0.0), height)], float(boxes.conf[best])


class LandmarkModel(_YoloPredictor):
    """The 23 CSXA landmarks. ``predict`` returns ((23, 2) x/y in original pixels, (23,) confidences) or None.

    ``locate(pixels, box)`` is what the pipeline calls: for a model trained on ROI crops (``crop: roi`` in its
    config) it reads the same window around the detector's box and maps the points back; ``needs_box`` says so.
    """

    task = "landmarks"

    def __init__(self, weights_path: str | Path):
        super().__init__(weights_path)
        config = self.meta.get("config") or {}
        self.crop_margin: float | None = None
        if (self.meta.get("crop") or config.get("crop")) == "roi":
            from core.data.measure import LANDMARK_CROP_MARGIN

            self.crop_margin = float(self.meta.get("roi_margin") or config.get("roi_margin") or LANDMARK_CROP_MARGIN)

    @property
    def needs_box(self) -> bool:
        return self.crop_margin is not None

    def locate(self, pixels: np.ndarray, box, min_confidence: float = 0.25) -> tuple[np.ndarray, np.ndarray] | None:
        if self.crop_margin is None:
            return self.predict(pixels, min_confidence)
        if box is None:
            return None
        from core.data.exports import crop_window, landmark_crop_window

        window = landmark_crop_window(box, self.crop_margin)  # the window the ROI-crop export cut
        found = self.predict(crop_window(pixels, window), min_confidence)
        if found is None:
            return None
        return found[0] + np.array(window[:2], dtype=np.float64), found[1]

    def predict(self, image: np.ndarray, min_confidence: float = 0.25) -> tuple[np.ndarray, np.ndarray] | None:
        result, scale = self._predict(image, min_confidence)
        if result.boxes is None or len(result.boxes) == 0 or result.keypoints is None:
            return None
        best = int(result.boxes.conf.argmax())
        points = result.keypoints.xy[best].cpu().numpy().astype(np.float64) * np.asarray(scale)
        conf = result.keypoints.conf
        confidence = (conf[best].cpu().numpy() if conf is not None else np.ones(len(points))).astype(np.float64)
        return points, confidence


# ---------------------------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class DetectorReport:
    task: str                       # "detect" | "landmarks"
    mAP50: float | None             # box mAP on the report split
    mAP50_95: float | None
    weights: Path                   # run_dir/best.pt (weights-only CerviCurve checkpoint)
    last_weights: Path
    run_dir: Path
    split: str                      # "test" when the dataset has one, else "val"
    precision: float | None = None
    recall: float | None = None
    pose_mAP50: float | None = None
    pose_mAP50_95: float | None = None
    landmark_errors: dict | None = None
    epochs_run: int = 0
    seconds: float = 0.0
    seconds_per_epoch: float | None = None  # mean train + validation time of one epoch

    def as_dict(self) -> dict:
        out = asdict(self)
        for key in ("weights", "last_weights", "run_dir"):
            out[key] = str(out[key])
        return out


def _metric(metrics: dict, key: str) -> float | None:
    value = metrics.get(key)
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)


def fit(config: Mapping[str, Any] | YoloConfig, run_dir, *, resume: bool = False,
        progress_callback: ProgressCallback | None = None) -> DetectorReport:
    """The ``detect`` task (ROI detector) or YOLO-pose ``landmarks``: a config in, a full run folder out.

    ``config`` is a :class:`core.runs.configs.YoloConfig` (or its dict): ``data`` (a YOLO data.yaml) or ``dataset``
    (a store dataset, exported with ``core.data.exports.export_yolo`` into run_dir/dataset, cut to the ROI window with
    ``crop: roi``). ``resume`` continues run_dir from Ultralytics' last.pt.
    """
    cfg = config if isinstance(config, YoloConfig) else YoloConfig.from_dict(config)
    run_dir = Path(run_dir).resolve()
    metric = "pose mAP50-95" if cfg.task == "landmarks" else "mAP50-95"
    with RunRecorder(run_dir, cfg.task, columns_for(cfg.task), model=cfg.model, metric=metric) as run:
        run.write_config(cfg.to_dict())
        run.update(epoch=0 if not resume else run.status.get("epoch", 0), epochs=cfg.epochs, message="preparing")
        data = cfg.data
        if resume and (run_dir / "dataset.yaml").is_file():
            data = run_dir / "dataset.yaml"  # what the interrupted run trained on
        elif not data:
            run.update(message=f"exporting dataset {cfg.dataset}")
            from core.data.exports import export_yolo

            exported = export_yolo(cfg.dataset, run_dir / "dataset", task=cfg.task,
                                   crop="roi" if cfg.crop == "roi" else None, roi_margin=cfg.roi_margin)
            data = Path(exported.out) / "data.yaml"
        return _train(cfg, data, run, progress_callback, resume)


def _train(cfg: YoloConfig, data_yaml, run, progress_callback, resume: bool) -> DetectorReport:
    task, yolo_task, run_dir = cfg.task, TASKS[cfg.task], run.run_dir
    epochs = _EpochRecorder(run, task, progress_callback)
    if resume:
        source = str(run_dir / "ultralytics" / "weights" / "last.pt")
        if not Path(source).is_file():
            raise FileNotFoundError(f"nothing to resume in {run_dir}: {source} is missing")
        run.keep_metrics_until(int(run.status.get("epoch") or 0))
    else:
        source = _model_source(cfg.model, yolo_task)
    dataset_yaml = _write_dataset_yaml(data_yaml, run_dir / "dataset.yaml", yolo_task)
    device = resolve_device(cfg.device)
    workers = cfg.workers if cfg.workers is not None else 0 if device == "cpu" else min(8, os.cpu_count() or 1)
    log.info(f"training {task} model {source} on {dataset_yaml} ({cfg.epochs} epochs, {cfg.imgsz} px, "
             f"device {device})")
    started = time.time()
    with _yolo_session(), _ultralytics_log_into(run_dir):
        from ultralytics import YOLO

        try:
            yolo = YOLO(source, task=yolo_task)
        except FileNotFoundError as exc:
            raise FileNotFoundError(f"unknown network {cfg.model!r}: {exc}") from exc
        except TypeError as exc:  # Ultralytics' restricted loader refusing a .pt
            raise ValueError(
                f"{cfg.model} cannot be loaded safely as YOLO weights: Ultralytics' restricted loader (weights_only "
                f"plus an allow-list of its layer classes) refused it, so nothing in it was run"
            ) from exc
        if yolo.task != yolo_task:
            raise ValueError(f"{cfg.model} is a {yolo.task} network; {task} needs a {yolo_task} network")
        epochs.attach(yolo)
        yolo.train(
            data=str(dataset_yaml), epochs=cfg.epochs, imgsz=cfg.imgsz, batch=cfg.batch, device=device,
            seed=cfg.seed, deterministic=True, workers=workers, patience=cfg.patience,
            project=str(run_dir), name="ultralytics", exist_ok=True, plots=False, verbose=False, val=True,
            # a path, never True: True makes Ultralytics resume its most recent run anywhere on disk
            **({"resume": source} if resume else {}),
        )
        run.check_cancel()
        ultra_dir = Path(yolo.trainer.save_dir)
        final = epochs.final_metrics or epochs.epoch_metrics
        split = "val"
        if "test" in _load_dataset_yaml(dataset_yaml)[0]:
            split = "test"
            run.update(message="evaluating on the test split", eta_s=None)
            final = {k: float(v) for k, v in yolo.val(
                data=str(dataset_yaml), split="test", imgsz=cfg.imgsz, batch=cfg.batch, device=device,
                project=str(run_dir), name="ultralytics_test", exist_ok=True, plots=False, verbose=False,
            ).results_dict.items()}
        seconds = time.time() - started
        meta = {
            "task": task, "imgsz": cfg.imgsz, "epochs": epochs.epochs_run, "metrics": final,
            "config": cfg.to_dict(), "model_source": str(cfg.model), "dataset": str(dataset_yaml),
            "crop": cfg.crop, "roi_margin": cfg.roi_margin,
            "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "ultralytics_version": _version(), "landmark_names": _landmark_names() if task == "landmarks" else None,
        }
        best_src = ultra_dir / "weights" / "best.pt"
        last_src = ultra_dir / "weights" / "last.pt"
        best = _export_checkpoint(best_src, run_dir / "best.pt",
                                  {**meta, "ultralytics_weights": str(best_src.relative_to(run_dir))})
        last = _export_checkpoint(last_src, run_dir / "last.pt",
                                  {**meta, "ultralytics_weights": str(last_src.relative_to(run_dir))})
    report = DetectorReport(
        task=task, mAP50=_metric(final, "metrics/mAP50(B)"), mAP50_95=_metric(final, "metrics/mAP50-95(B)"),
        precision=_metric(final, "metrics/precision(B)"), recall=_metric(final, "metrics/recall(B)"),
        pose_mAP50=_metric(final, "metrics/mAP50(P)"), pose_mAP50_95=_metric(final, "metrics/mAP50-95(P)"),
        weights=best, last_weights=last, run_dir=run_dir, split=split, epochs_run=epochs.epochs_run,
        seconds=round(seconds, 2), seconds_per_epoch=epochs.seconds_per_epoch(),
    )
    if task == "landmarks":
        run.update(message="measuring landmark errors")
        report.landmark_errors = evaluate_landmarks(LandmarkModel(best), read_yolo_landmarks(dataset_yaml, split))
    run.write_json(layout.TEST_REPORT, report.as_dict())
    final_metric = report.pose_mAP50_95 if task == "landmarks" else report.mAP50_95
    run.done(f"done: {split} {run.metric} {'n/a' if final_metric is None else f'{final_metric:.4f}'}",
             best_metric=epochs.best_metric)
    log.info(f"done in {seconds:.1f} s; report in test_report.json")
    return report


def _version() -> str:
    import ultralytics

    return ultralytics.__version__


def _landmark_names() -> list[str]:
    from core.data.measure import LANDMARK_NAMES

    return list(LANDMARK_NAMES)


def load(path: str | Path) -> "RoiDetector | LandmarkModel":
    """The predictor a detect or YOLO-pose landmarks checkpoint holds."""
    task = _read_checkpoint_meta(path).get("task")
    return LandmarkModel(path) if task == "landmarks" else RoiDetector(path)


def evaluate(run_dir: str | Path, split: str = "test") -> dict:
    """The run's best weights scored by Ultralytics' validator on ``split`` of the dataset it trained on;
    YOLO-pose runs add the landmark errors. Written to ``<split>_report.json``."""
    run_dir = layout.resolve_run(run_dir)
    meta = _read_checkpoint_meta(run_dir / "best.pt")
    dataset_yaml = run_dir / "dataset.yaml"
    data, _ = _load_dataset_yaml(dataset_yaml)
    if not data.get(split):
        raise ValueError(f"{dataset_yaml} has no '{split}' split")
    weights = run_dir / str(meta.get("ultralytics_weights") or "ultralytics/weights/best.pt")
    if not weights.is_file():
        raise FileNotFoundError(f"{weights} (the run's own Ultralytics weights) is missing")
    with _yolo_session():
        from ultralytics import YOLO

        results = YOLO(str(weights), task=TASKS[meta["task"]]).val(
            data=str(dataset_yaml), split=split, imgsz=int(meta.get("imgsz") or 640), device=resolve_device("auto"),
            project=str(run_dir), name=f"ultralytics_{split}", exist_ok=True, plots=False, verbose=False)
    scores = {k: float(v) for k, v in results.results_dict.items()}
    report = {"split": split, "run_id": run_dir.name, "task": meta["task"],
              **{_column(k): v for k, v in scores.items()}}
    if meta["task"] == "landmarks":
        report["landmark_errors"] = evaluate_landmarks(LandmarkModel(run_dir / "best.pt"),
                                                       read_yolo_landmarks(dataset_yaml, split))
    layout.atomic_write_text(run_dir / f"{split}_report.json", json.dumps(report, indent=1, default=str))
    return report


def train_detector(data_yaml, run_dir, *, resume: bool = False, progress_callback: ProgressCallback | None = None,
                   **options: Any) -> DetectorReport:
    """Train the ROI detector on a YOLO detection dataset (``options``: YoloConfig keys, e.g. epochs, imgsz)."""
    return fit({"task": "detect", "data": str(data_yaml), **options}, run_dir, resume=resume,
               progress_callback=progress_callback)


def train_landmark_model(data_yaml, run_dir, *, resume: bool = False,
                         progress_callback: ProgressCallback | None = None, **options: Any) -> DetectorReport:
    """Train YOLO-pose on the 23 landmarks (kpt_shape [23, 3]); the report adds landmark errors and Cobb MAE."""
    return fit({"task": "landmarks", "data": str(data_yaml), **options}, run_dir, resume=resume,
               progress_callback=progress_callback)


# ---------------------------------------------------------------------------------------------------------------
# Landmark evaluation
# ---------------------------------------------------------------------------------------------------------------


def _read_gray(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as img:
        if img.mode in ("I;16", "I;16B", "I;16L", "I"):
            array = np.asarray(img, dtype=np.float32)
            return np.clip(array / (65535.0 if array.max() > 255 else 255.0), 0, 1).astype(np.float32)
        return np.asarray(img.convert("L"), dtype=np.float32) / 255.0


_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


def read_yolo_landmarks(data_yaml, split: str = "val") -> list[tuple[np.ndarray, np.ndarray]]:
    """(image, landmarks (23, 2) in pixels, nan where not visible) for every labelled image of a pose split."""
    data, root = _load_dataset_yaml(data_yaml)
    if not data.get(split):
        raise ValueError(f"{data_yaml} has no '{split}' split")
    items = []
    for folder in _split_dirs(root, data[split]):
        for image_path in sorted(p for p in folder.rglob("*") if p.suffix.lower() in _IMAGE_SUFFIXES):
            parts = list(image_path.parts)
            where = len(parts) - 1 - parts[::-1].index("images")  # Ultralytics: last /images/ -> /labels/
            label = Path(*parts[:where], "labels", *parts[where + 1:]).with_suffix(".txt")
            if not label.is_file() or not label.read_text().strip():
                continue
            values = np.array(label.read_text().split("\n")[0].split(), dtype=np.float64)
            if values.size != 5 + 3 * LANDMARK_COUNT:
                raise ValueError(f"{label}: expected 5 + 3 x {LANDMARK_COUNT} numbers, found {values.size}")
            image = _read_gray(image_path)
            height, width = image.shape
            kpts = values[5:].reshape(LANDMARK_COUNT, 3)
            landmarks = kpts[:, :2] * [width, height]
            landmarks[kpts[:, 2] <= 0] = np.nan
            items.append((image, landmarks))
    return items


def evaluate_landmarks(model: LandmarkModel, items: Iterable) -> dict:
    """Point error and the clinical number that depends on it (Cobb C2–C7) on labelled images.

    ``items``: ``(image, true_landmarks)`` or ``(image, true_landmarks, facing)``. Errors are per visible point;
    the percentage is relative to the C2–C7 length (C2 centroid to the middle of the C7 lower endplate) of each
    image. Facing comes from the truth (given or inferred) and is used for both, so a Cobb error is never a sign
    flip from a different facing guess. ``missed`` counts images without a detection.
    """
    from core.data.measure import landmark_errors

    pairs, images, missed = [], 0, 0
    for item in items:
        images += 1
        predicted = model.predict(item[0])
        if predicted is None:
            missed += 1
            continue
        pairs.append((predicted[0], *item[1:]))
    summary = landmark_errors(pairs)
    return {**{k: summary[k] for k in ("mean_error_px", "mean_error_pct_c2c7", "cobb_mae_deg")},
            "images": images, "missed": missed}
