"""ROI detector and landmark (pose) model on Ultralytics YOLO — the only package that imports ``ultralytics``.

Public API::

    train_detector(data_yaml, run_dir, *, resume=False, progress_callback=None, **YoloConfig keys) -> DetectorReport
    train_landmark_model(data_yaml, run_dir, ...same...) -> DetectorReport   # progress_callback(epoch, epochs, row)
    fit(config: YoloConfig | dict, run_dir, resume=False, progress_callback=None) -> DetectorReport  # the task
    evaluate(run_dir, split="test") -> dict; load(path) -> RoiDetector | LandmarkModel               # the task
    RoiDetector(weights_path).detect(image, min_confidence=0.25) -> ([x1, y1, x2, y2], confidence) | None
    LandmarkModel(weights_path).predict(image, min_confidence=0.25) -> (landmarks (23, 2), confidence (23,)) | None
    evaluate_landmarks(model, items) -> {mean_error_px, mean_error_pct_c2c7, cobb_mae_deg, images, missed}
    read_yolo_landmarks(data_yaml, split="val") -> [(image, landmarks), ...]

One module per responsibility; none imports ultralytics at import time (a classifier run never loads it), and
every call that needs it goes through ``sandbox``:

    sandbox     Ultralytics contained: offline, its config in the workspace, global side effects undone
    networks    task names, default networks, the network a run starts from (a yaml or a local .pt, never a download)
    dataset     the dataset yaml (read, and rewritten clean for training) and pose labels read back
    recording   Ultralytics callbacks and log -> the run folder (metrics.csv, status.json, train.log) via RunRecorder
    checkpoint  Ultralytics pickles -> weights-only CerviCurve checkpoints, and reading those back safely
    predict     the predictors (RoiDetector, LandmarkModel) and ``load``
    train       the task's ``fit`` and its two shortcuts
    evaluation  the task's ``evaluate`` and the landmark errors

Ultralytics is AGPL-3.0.
"""
from core.training.detect.evaluation import evaluate, evaluate_landmarks
from core.training.detect.dataset import read_yolo_landmarks
from core.training.detect.networks import DEFAULT_DETECT_MODEL
from core.training.detect.predict import LandmarkModel, RoiDetector, load
from core.training.detect.train import fit, train_detector, train_landmark_model

# the names callers use (core.demo, core.inference.models, core.training.landmarks, the task registry, tests)
__all__ = ["DEFAULT_DETECT_MODEL", "LandmarkModel", "RoiDetector", "evaluate", "evaluate_landmarks", "fit", "load",
           "read_yolo_landmarks", "train_detector", "train_landmark_model"]
