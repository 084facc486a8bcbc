"""Ultralytics contained: every import of it and every train/predict/val call goes through here.

Ultralytics' global side effects are contained: before the first import its config and matplotlib's cache point
at ``settings.tool_config_dir()``, it is offline (``YOLO_OFFLINE``, no auto-install, no settings sync or
integrations), its Arial font is a local copy of matplotlib's DejaVuSans, torch's inductor cache defaults to the
same folder, runs go to ``run_dir/ultralytics``
(never ``./runs``), and torch's thread count, ``OMP_NUM_THREADS``, numpy/torch print options and OpenCV's thread
count are restored after the import and after every train/predict call. Its AMP self-check (which downloads
yolo26n.pt on a GPU) is replaced, during our calls only, by Ultralytics' own offline outcome: AMP on for CUDA.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np

from core import settings

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
                import ultralytics  # sets OMP_NUM_THREADS, print options, cv2 threads
            np.set_printoptions(**numpy_print)
            torch.set_printoptions(profile="default")
            cv2.setNumThreads(cv2_threads)
        else:  # imported, contained, by an earlier call (an else, so pyflakes sees one binding per branch)
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
def yolo_session():
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
