"""Which Ultralytics network each task trains, and where a run's network comes from.

Models are built from a packaged Ultralytics yaml (``yolov8n.yaml``, ``yolo11n.yaml``, ``yolov3-tinyu.yaml``,
``yolov3u.yaml`` — the study's detector family —, ``yolov8n-pose.yaml`` ...) with random weights, or start from a
local ``.pt`` the user points at. Nothing is ever downloaded: a ``.pt`` that is not on disk is a FileNotFoundError.
"""
from __future__ import annotations

from pathlib import Path

from core.runs.configs import YOLO_DEFAULT_MODEL

DEFAULT_DETECT_MODEL = YOLO_DEFAULT_MODEL["detect"]
DEFAULT_LANDMARK_MODEL = YOLO_DEFAULT_MODEL["landmarks"]
# project task -> Ultralytics task
TASKS = {"detect": "detect", "landmarks": "pose"}
_OTHER_HEADS = ("-pose", "-seg", "-cls", "-obb", "-world", "yoloe", "rtdetr")
# A tiny packaged network per task: the YOLO wrapper needs one to exist before our own network replaces it.
WRAPPER_STUB = {"detect": "yolov8n.yaml", "pose": "yolov8n-pose.yaml"}


def network_source(model: str | Path, yolo_task: str) -> str:
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
                f"(e.g. {WRAPPER_STUB[yolo_task]}) or give the path of a .pt file on this machine."
            )
        return str(path.resolve())
    raise ValueError(
        f"model must be an Ultralytics network yaml (yolov8n.yaml, yolo11n.yaml, yolov3-tinyu.yaml, yolov3u.yaml, "
        f"yolov8n-pose.yaml ...) or a local .pt file, not {text!r}"
    )
