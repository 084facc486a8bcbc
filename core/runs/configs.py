"""Run configs of every task, strict and torch-free: what `runs start` checks before any process starts.

Defaults < YAML file (or dict) < ``key=value`` overrides. Each task has one config class, named in its entry of
``core.runs.registry`` (which also parses a config into the right class):
``classify`` -> :class:`ClassifyConfig`, ``detect`` -> :class:`YoloConfig`, ``landmarks`` -> :class:`HeatmapConfig`
(``model: landmark-unet``) or :class:`YoloConfig` (a YOLO-pose yaml or .pt), ``compare`` -> :class:`CompareConfig`.
Every class refuses an unknown key (naming it, with the closest known one) and a value of the wrong type.
"""
from __future__ import annotations

import difflib
import math
import types
import typing
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import yaml

from core.data import safe_yaml
from core.data.measure import LANDMARK_CROP_MARGIN

CLASS_WEIGHTING = ("balanced", "none", "sampler")
DEFAULT_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "classify.yaml"


class ConfigError(ValueError):
    """A config key, value or data source that cannot be trained; the message names it and what is allowed."""


class StrictConfig:
    """``from_dict`` refuses unknown keys and wrong types, naming the key; subclasses add ``validate``."""

    def to_dict(self) -> dict:
        return to_plain(asdict(self))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "StrictConfig":
        hints = typing.get_type_hints(cls)
        known = {f.name for f in fields(cls)}
        values = {}
        for key, value in data.items():
            if key not in known:
                close = difflib.get_close_matches(key, known, n=1)
                hint = f" (did you mean '{close[0]}'?)" if close else ""
                raise ConfigError(f"unknown config key '{key}'{hint}; known keys: {', '.join(sorted(known))}")
            values[key] = _coerce(key, hints[key], value)
        config = cls(**values)
        config.validate()
        return config

    def validate(self) -> None:
        pass


@dataclass
class ClassifyConfig(StrictConfig):
    """Every knob of a classification run; ``configs/classify.yaml`` documents each with the same defaults."""

    task: str = "classify"
    model: str = "s_resnet34"
    model_options: dict = field(default_factory=dict)
    weights_path: str | None = None
    init_from: str | None = None  # promoted, a run (id or folder) or .pt: start from its weights, new schedule
    dataset: str = "default"
    mix_with: str = "auto"  # fine-tuning: also train on this dataset (auto: the start model's, if another; none)
    mix_share: float = 0.5  # the dataset's own films' share of each epoch when mixing
    mix_limit: int = 300  # at most this many films of mix_with (seeded pick) per split
    train_split: str = "train"
    val_split: str = "val"
    test_split: str = "test"
    input_size: int | None = None
    roi_margin: float = 0.05
    epochs: int = 30
    batch_size: int = 16
    lr: float = 0.0003
    weight_decay: float = 0.0001
    warmup_epochs: int = 1
    patience: int = 8
    time_limit_s: float = 0.0
    class_weighting: str = "balanced"
    label_smoothing: float = 0.0
    augment: bool = True
    aug_rotation_deg: float = 8.0
    aug_scale: float = 0.15
    aug_shift: float = 0.05
    aug_brightness: float = 0.2
    aug_contrast: float = 0.2
    aug_gamma: float = 0.25
    aug_noise_std: float = 0.02
    aug_hflip: bool = False
    aug_film: float = 0.5  # share of crops given clinical-film artifacts (core.training.crops.film_artifacts)
    seed: int = 0
    device: str = "auto"
    amp: bool | str = "auto"
    channels_last: bool | str = "auto"
    workers: int = -1
    cache_mb: int = 2048
    n_boot: int = 1000
    deterministic: bool = False

    def validate(self) -> None:
        if self.task != "classify":
            raise ConfigError(f"task '{self.task}' is not a classification task")
        from models.registry import MODELS

        if self.model not in MODELS:
            raise ConfigError(f"model '{self.model}' is not one of: {', '.join(MODELS)}")
        if self.class_weighting not in CLASS_WEIGHTING:
            raise ConfigError(f"class_weighting '{self.class_weighting}' is not one of: {', '.join(CLASS_WEIGHTING)}")
        if not (self.device in ("auto", "cpu", "cuda", "mps") or self.device.startswith("cuda:")):
            raise ConfigError(f"device '{self.device}' is not one of: auto, cpu, cuda, cuda:N, mps")
        for name, low in (("epochs", 1), ("batch_size", 1), ("warmup_epochs", 0), ("patience", 0),
                          ("workers", -1), ("cache_mb", 0), ("n_boot", 0)):
            if getattr(self, name) < low:
                raise ConfigError(f"{name} must be >= {low}, got {getattr(self, name)}")
        if self.input_size is not None and not 16 <= self.input_size <= 2048:
            raise ConfigError(f"input_size must be between 16 and 2048 px (or null for the model's default), "
                              f"got {self.input_size}")
        for name in ("lr",):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.time_limit_s < 0:
            raise ConfigError(f"time_limit_s must be >= 0 (0 = no limit), got {self.time_limit_s}")
        for name, high in (("weight_decay", 1.0), ("label_smoothing", 0.999), ("roi_margin", 1.0),
                           ("aug_scale", 0.5), ("aug_shift", 0.3), ("aug_brightness", 1.0),
                           ("aug_contrast", 1.0), ("aug_gamma", 2.0), ("aug_noise_std", 0.5),
                           ("aug_rotation_deg", 45.0), ("aug_film", 1.0)):
            value = getattr(self, name)
            if not 0 <= value <= high:
                raise ConfigError(f"{name} must be between 0 and {high}, got {value}")
        if self.weights_path and not Path(self.weights_path).expanduser().is_file():
            raise ConfigError(f"weights_path '{self.weights_path}' is not a file (weights are never downloaded: "
                              "point it at a local torchvision or CerviCurve .pt file)")
        _check_mix(self)
        if self.init_from:
            if self.model == "svm":
                raise ConfigError("init_from: an SVM is fitted in one go and cannot continue from a checkpoint")
            init_checkpoint(self.init_from, "classify")


PROMOTED = "promoted"  # init_from: promoted = the model Predict uses for the run's task
MIX_AUTO = "auto"


def _check_mix(config: Any) -> None:
    if not 0 < config.mix_share <= 1:
        raise ConfigError(f"mix_share must be above 0 and at most 1 (the share of the dataset's own films in an "
                          f"epoch), got {config.mix_share}")
    if config.mix_limit < 1:
        raise ConfigError(f"mix_limit must be >= 1, got {config.mix_limit}")
    if config.mix_with == config.dataset:
        raise ConfigError(f"mix_with names the run's own dataset {config.dataset!r}: name another, auto or null")


def init_checkpoint(source: str, task: str) -> Path:
    """The checkpoint ``init_from`` names: ``promoted`` (the task's promoted model), a .pt file, or a run's last.pt
    (best.pt when last.pt was dropped)."""
    from core import settings
    from core.runs import layout

    if source == PROMOTED:
        promoted = settings.promoted_dir() / task / "best.pt"
        if not promoted.is_file():
            raise ConfigError(f"init_from: promoted: no {task} model is promoted in this workspace; build the demo "
                              "(python -m core demo) or promote a run first")
        return promoted
    path = Path(source).expanduser()
    if path.is_file():
        return path
    try:
        run_dir = layout.resolve_run(source)
    except layout.JobError:
        raise ConfigError(f"init_from '{source}' is neither a .pt file nor a run (id or folder)") from None
    for name in ("last.pt", "best.pt"):
        if (run_dir / name).is_file():
            return run_dir / name
    raise ConfigError(f"init_from: run {run_dir.name} has no last.pt or best.pt to start from")


_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


def _coerce(key: str, hint: Any, value: Any) -> Any:
    """``value`` as the dataclass field's type, or a ConfigError naming the key and the expected type."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        if bool in args and str in args:  # tri-state: auto | true | false
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("auto", "none", "null", ""):
                return "auto"
            if text in _TRUE or text in _FALSE:
                return text in _TRUE
            raise ConfigError(f"{key} must be auto, true or false, got {value!r}")
        if type(None) in args:
            if value is None or str(value).strip().lower() in ("none", "null", "auto", ""):
                return None
            inner = next(a for a in args if a is not type(None))
            return _coerce(key, inner, value)
    if hint is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in _TRUE or text in _FALSE:
            return text in _TRUE
        raise ConfigError(f"{key} must be true or false, got {value!r}")
    if hint is int:
        if isinstance(value, bool):
            raise ConfigError(f"{key} must be a whole number, got {value!r}")
        if isinstance(value, float) and value.is_integer():
            return int(value)
        try:
            return int(str(value).strip()) if not isinstance(value, int) else value
        except ValueError:
            raise ConfigError(f"{key} must be a whole number, got {value!r}") from None
    if hint is float:
        if isinstance(value, bool):
            raise ConfigError(f"{key} must be a number, got {value!r}")
        try:
            result = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key} must be a number, got {value!r}") from None
        if not math.isfinite(result):
            raise ConfigError(f"{key} must be a finite number, got {value!r}")
        return result
    if hint is str:
        if isinstance(value, (dict, list)) or value is None:
            raise ConfigError(f"{key} must be text, got {value!r}")
        return str(value)
    if typing.get_origin(hint) in (list, tuple) or hint in (list, tuple):
        if value is None:
            return []
        if isinstance(value, str):
            value = [v for v in value.replace(",", " ").split() if v]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key} must be a list, got {value!r}")
        inner = (typing.get_args(hint) or (Any,))[0]
        return [value_ if inner is Any else _coerce(key, inner, value_) for value_ in value]
    if hint is dict or typing.get_origin(hint) is dict:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a mapping (e.g. {{variant: channel}}), got {value!r}")
        return dict(value)
    return value


def to_plain(value: Any) -> Any:
    """Plain Python types only (YAML, JSON and weights_only checkpoints)."""
    if isinstance(value, dict):
        return {str(k): to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_plain(v) for v in value]
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, np.ndarray):
        return to_plain(value.tolist())
    if isinstance(value, (str, Path)):  # str subclasses (TorchVersion) are not weights_only-safe
        return str(value)
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    return value


def _parse_value(text: str) -> Any:
    try:
        return safe_yaml.load(text)  # no aliases in user YAML (an alias bomb)
    except yaml.YAMLError:
        return text


LANDMARK_UNET = "landmark-unet"
DEVICES_HELP = "auto, cpu, cuda, cuda:N, mps"


def _check_device(device: str) -> None:
    if not (device in ("auto", "cpu", "cuda", "mps") or (device.startswith("cuda:") and device[5:].isdigit())):
        raise ConfigError(f"device '{device}' is not one of: {DEVICES_HELP}")


def _check_minimum(config: Any, **minimums: float) -> None:
    for name, low in minimums.items():
        if getattr(config, name) < low:
            raise ConfigError(f"{name} must be >= {low}, got {getattr(config, name)}")


@dataclass
class HeatmapConfig(StrictConfig):
    """The heatmap landmark model (``core.training.landmarks``); ``configs/landmarks.yaml`` documents each key."""

    task: str = "landmarks"
    model: str = LANDMARK_UNET
    dataset: str = "default"
    input_size: int = 128
    epochs: int = 40
    batch_size: int = 16
    lr: float = 2e-3
    weight_decay: float = 1e-4
    roi_margin: float = LANDMARK_CROP_MARGIN
    widths: list[int] = field(default_factory=lambda: [24, 32, 64, 128, 160])
    rotate_deg: float = 8.0
    scale: float = 0.15   # per axis, +/-
    shift: float = 0.10   # of the window, +/-
    film: float = 0.5     # share of windows given clinical-film artifacts (core.training.crops.film_artifacts)
    patience: int = 0     # stop after this many epochs without a better val error (0 = never)
    seed: int = 0
    device: str = "auto"
    refine: int = 2       # extra passes on the box the previous points imply (1 -> 2: held-out Cobb MAE 2.34 -> 2.24 deg)
    init_from: str | None = None  # promoted, a run (id or folder) or .pt: start from its weights, new schedule
    mix_with: str = "auto"  # fine-tuning: also train on this dataset (auto: the start model's, if another; none)
    mix_share: float = 0.5  # the dataset's own films' share of each epoch when mixing
    mix_limit: int = 300  # at most this many films of mix_with (seeded pick) per split
    mirror_average: bool = True  # also read the mirrored film and average (measured: Cobb MAE 2.2 -> 1.7 deg)
    equalise: bool = True  # map each window through its ROI's histogram (real films: point error 6.0 -> 2.6 %)

    def validate(self) -> None:
        if self.task != "landmarks" or self.model != LANDMARK_UNET:
            raise ConfigError(f"HeatmapConfig is for task landmarks, model {LANDMARK_UNET}")
        _check_device(self.device)
        _check_minimum(self, epochs=1, batch_size=1, patience=0, refine=0)
        if self.input_size < 32 or self.input_size % 32:
            raise ConfigError(f"input_size must be a multiple of 32 (at least 32), got {self.input_size}")
        if not 0 <= self.film <= 1:
            raise ConfigError(f"film must be between 0 and 1 (a share of the windows), got {self.film}")
        if not self.lr > 0:
            raise ConfigError(f"lr must be > 0, got {self.lr}")
        if not 0 <= self.roi_margin <= 0.25:  # the cached context must hold the window and its jitter
            raise ConfigError(f"roi_margin must be between 0 and 0.25, got {self.roi_margin}")
        if len(self.widths) != 5 or min(self.widths) < 1:
            raise ConfigError(f"widths needs 5 positive channel counts (one per encoder stage), got {self.widths}")
        _check_mix(self)
        if self.init_from:
            init_checkpoint(self.init_from, "landmarks")


YOLO_DEFAULT_MODEL = {"detect": "yolov8n.yaml", "landmarks": "yolov8n-pose.yaml"}


@dataclass
class YoloConfig(StrictConfig):
    """The ROI detector (``task: detect``) or YOLO-pose landmarks (``task: landmarks`` with a pose network)."""

    task: str = "detect"
    model: str = ""        # an Ultralytics network yaml or a local .pt; default by task (YOLO_DEFAULT_MODEL)
    dataset: str | None = None   # a store dataset, exported to YOLO in the run folder
    data: str | None = None      # or a YOLO data.yaml on disk
    epochs: int = 50
    imgsz: int = 640
    batch: int = 16
    device: str = "auto"
    seed: int = 0
    workers: int | None = None   # data-loader processes (None: 0 on CPU)
    patience: int = 50
    crop: str = "full"     # landmarks: "roi" trains and predicts on the ROI window, "full" on whole films
    roi_margin: float = LANDMARK_CROP_MARGIN

    def validate(self) -> None:
        if self.task not in YOLO_DEFAULT_MODEL:
            raise ConfigError(f"YoloConfig is for task detect or landmarks, not {self.task!r}")
        self.model = self.model or YOLO_DEFAULT_MODEL[self.task]
        name = Path(self.model).name.lower()
        if not name.endswith((".yaml", ".yml", ".pt")):
            raise ConfigError(f"model must be an Ultralytics network yaml (yolov8n.yaml, yolov8n-pose.yaml ...) or a "
                              f"local .pt file, not {self.model!r}")
        if name.endswith(".pt") and not Path(self.model).expanduser().is_file():
            raise ConfigError(f"model '{self.model}' is not a file: CerviCurve never downloads weights; build the "
                              f"network from a yaml (e.g. {YOLO_DEFAULT_MODEL[self.task]}) or give a local .pt")
        if (self.task == "landmarks") != ("-pose" in name):
            raise ConfigError(f"task {self.task} needs a {'pose' if self.task == 'landmarks' else 'detection'} "
                              f"network, not {self.model}")
        if not self.dataset and not self.data:
            raise ConfigError("give 'dataset' (a dataset in the annotation store) or 'data' (a YOLO data.yaml)")
        if self.data and not Path(self.data).expanduser().is_file():
            raise ConfigError(f"data '{self.data}' is not a file (expected a YOLO data.yaml)")
        if self.crop not in ("full", "roi") or (self.crop == "roi" and self.task != "landmarks"):
            raise ConfigError(f"crop must be 'full' or (for landmarks) 'roi', got {self.crop!r}")
        _check_device(self.device)
        _check_minimum(self, epochs=1, imgsz=32, batch=1, patience=0)
        if self.workers is not None and self.workers < 0:
            raise ConfigError(f"workers must be >= 0, got {self.workers}")


@dataclass
class CompareConfig(StrictConfig):
    """The study's comparison as one run: every model trained on the same splits (``core.training.compare``)."""

    task: str = "compare"
    models: list[str] = field(default_factory=list)   # empty: the study's seven (or the ablation's five)
    dataset: str | None = None   # default: "default", or the quick phantom set with quick
    quick: bool = False
    full: bool = False    # the phantom benchmark at 128 px, every model to its early-stopping point, no time cap
    ablation: bool = False
    folds: int | None = None
    epochs: int | None = None
    input_size: int | None = None
    batch_size: int | None = None
    seed: int = 0
    n_boot: int = 1000

    def validate(self) -> None:
        if self.task != "compare":
            raise ConfigError(f"CompareConfig is for task compare, not {self.task!r}")
        from models.registry import MODELS

        unknown = [m for m in self.models if m not in MODELS]
        if unknown:
            raise ConfigError(f"unknown model(s) {', '.join(unknown)}; known: {', '.join(MODELS)}")
        if self.quick and self.full:
            raise ConfigError("quick and full are two profiles: choose one")
        if self.folds is not None and self.folds < 2:
            raise ConfigError(f"folds needs at least 2, got {self.folds}")
        for name in ("epochs", "input_size", "batch_size"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        _check_minimum(self, n_boot=0)


DEMO_QUALITIES = ("full", "quick", "tiny")  # core.demo.PROFILES, in that order


@dataclass
class DemoConfig(StrictConfig):
    """The demo build as one run (``core.demo``): phantoms, the three demo models trained and promoted, a check."""

    task: str = "demo"
    quality: str = "full"   # full: the models the README measures; quick: weaker, faster; tiny: for tests
    seed: int = 0

    def validate(self) -> None:
        if self.task != "demo":
            raise ConfigError(f"DemoConfig is for task demo, not {self.task!r}")
        if self.quality not in DEMO_QUALITIES:
            raise ConfigError(f"quality must be one of {', '.join(DEMO_QUALITIES)}, got {self.quality!r}")


def read_config_source(source: str | Path | Mapping[str, Any] | None = None, overrides: Sequence[str] = ()) -> dict:
    """Defaults < YAML file (or dict) < ``key=value`` overrides, before validation."""
    if source is None:
        data: dict = {}
    elif isinstance(source, Mapping):
        data = dict(source)
    else:
        path = Path(source)
        if not path.is_file():
            raise ConfigError(f"config file '{path}' does not exist")
        try:
            data = safe_yaml.load(path.read_text(encoding="utf-8")) or {}  # no aliases: an alias bomb is refused
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file '{path}' is not valid YAML: {exc}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"config file '{path}' must hold a mapping of key: value, got {type(data).__name__}")
    data = dict(data)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' must look like key=value (e.g. epochs=10)")
        key, text = item.split("=", 1)
        key = key.strip()
        value = _parse_value(text)
        if "." in key:  # model_options.variant=channel
            head, sub = key.split(".", 1)
            if head != "model_options":
                raise ConfigError(f"override '{key}': only model_options.<name>=value may use a dot")
            options = dict(data.get(head) or {})
            options[sub] = value
            data[head] = options
        else:
            data[key] = value
    return data
