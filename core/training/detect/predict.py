"""The predictors: ``RoiDetector`` (the box) and ``LandmarkModel`` (YOLO-pose, 23 points), and ``load``.

Each rebuilds the network from a weights-only CerviCurve checkpoint (``checkpoint``). Models are shared between
Streamlit sessions, so each predictor holds a lock.
"""
from __future__ import annotations

import copy
import threading
from pathlib import Path

import numpy as np

from core import settings
from core.training.detect.checkpoint import read_checkpoint, read_checkpoint_meta
from core.training.detect.networks import WRAPPER_STUB
from core.training.detect.sandbox import yolo_session, resolve_device


class _YoloPredictor:
    """A rebuilt network behind Ultralytics' predictor (letterbox, NMS, scaling back), one call at a time."""

    task = "detect"

    def __init__(self, weights_path: str | Path):
        checkpoint = read_checkpoint(weights_path, self.task)
        self.path = Path(weights_path)
        self.meta = checkpoint["meta"]
        self.imgsz = int(self.meta.get("imgsz") or 640)
        self.names = self.meta["names"]
        self._lock = threading.Lock()
        with yolo_session():
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
            self._yolo = YOLO(WRAPPER_STUB[yolo_task], task=yolo_task, verbose=False)
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
        with self._lock, yolo_session():
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


def load(path: str | Path) -> "RoiDetector | LandmarkModel":
    """The predictor a detect or YOLO-pose landmarks checkpoint holds."""
    task = read_checkpoint_meta(path).get("task")
    return LandmarkModel(path) if task == "landmarks" else RoiDetector(path)
