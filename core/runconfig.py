"""Classification run configs: ``TrainConfig`` with its defaults and validation, and ``resolve_config``.

Defaults < YAML file (or dict) < ``key=value`` overrides. ``task: detect|landmarks`` configs pass through for
``core.detect``; ``model: landmark-unet`` ones are validated by ``core.landmarks``. No torch at import.
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

TASKS = ("classify", "detect", "landmarks")
CLASS_WEIGHTING = ("balanced", "none", "sampler")
DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "classify.yaml"


class ConfigError(ValueError):
    """A config key, value or data source that cannot be trained; the message names it and what is allowed."""


@dataclass
class TrainConfig:
    """Every knob of a classification run; ``configs/classify.yaml`` documents each with the same defaults."""

    task: str = "classify"
    model: str = "s_resnet34"
    model_options: dict = field(default_factory=dict)
    weights_path: str | None = None
    dataset: str = "default"
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
    seed: int = 0
    device: str = "auto"
    amp: bool | str = "auto"
    channels_last: bool | str = "auto"
    workers: int = -1
    cache_mb: int = 2048
    n_boot: int = 1000
    deterministic: bool = False

    def to_dict(self) -> dict:
        return to_plain(asdict(self))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "TrainConfig":
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
        if self.task not in TASKS:
            raise ConfigError(f"task '{self.task}' is not one of: {', '.join(TASKS)}")
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
                           ("aug_rotation_deg", 45.0)):
            value = getattr(self, name)
            if not 0 <= value <= high:
                raise ConfigError(f"{name} must be between 0 and {high}, got {value}")
        if self.weights_path and not Path(self.weights_path).expanduser().is_file():
            raise ConfigError(f"weights_path '{self.weights_path}' is not a file (weights are never downloaded: "
                              "point it at a local torchvision or CerviCurve .pt file)")


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
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def resolve_config(source: str | Path | Mapping[str, Any] | None = None, overrides: Sequence[str] = ()) -> dict:
    """Defaults < YAML file (or dict) < ``key=value`` overrides, as a plain dict.

    Classification configs are validated into a :class:`TrainConfig` (unknown keys and bad values raise
    :class:`ConfigError`); ``task: detect|landmarks`` configs are passed through for ``core.detect``.
    """
    if source is None:
        data: dict = {}
    elif isinstance(source, Mapping):
        data = dict(source)
    else:
        path = Path(source)
        if not path.is_file():
            raise ConfigError(f"config file '{path}' does not exist")
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
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
    task = data.get("task", "classify")
    if task not in TASKS:
        raise ConfigError(f"task '{task}' is not one of: {', '.join(TASKS)}")
    if task == "landmarks":
        from core import landmarks

        if landmarks.is_heatmap_model(data.get("model")):
            try:  # checked here so a bad key stops before a background process starts
                return landmarks.HeatmapConfig.from_dict(data).to_dict()
            except landmarks.LandmarkTrainingError as error:
                raise ConfigError(str(error)) from None
    if task != "classify":
        return to_plain(data)
    return TrainConfig.from_dict(data).to_dict()


def load_config(source: str | Path | Mapping[str, Any] | None = None, overrides: Sequence[str] = ()) -> TrainConfig:
    """A validated classification config (see :func:`resolve_config`)."""
    data = resolve_config(source, overrides)
    if data.get("task", "classify") != "classify":
        raise ConfigError(f"task '{data['task']}' is trained by core.detect, not as a classification config")
    return TrainConfig.from_dict(data)
