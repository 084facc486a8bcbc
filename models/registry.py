"""One registry of the study's models: S-ResNet-34 and its six comparisons, built by name.

``build_model("s_resnet34", variant="channel")`` -> an ``nn.Module`` (or the SVM estimator for "svm").
``cam_layer`` is the dotted path (``model.get_submodule(path)``) of the Grad-CAM target layer.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Callable

from models import baselines
from models.s_resnet import s_resnet34
from models.svm import curvature_svm


@dataclass(frozen=True)
class ModelSpec:
    name: str
    builder: Callable[..., Any]   # builder(num_classes=3, in_channels=1, **options)
    default_input_size: int       # square side in px for the study-like setting
    kind: str                     # "torch" or "sklearn"
    cam_layer: str | None         # dotted attribute path of the Grad-CAM target layer
    description: str

    def options(self) -> list[str]:
        """Keyword options the builder accepts besides num_classes and in_channels."""
        return [p for p in inspect.signature(self.builder).parameters if p not in ("num_classes", "in_channels")]


MODELS: dict[str, ModelSpec] = {spec.name: spec for spec in (
    ModelSpec("s_resnet34", s_resnet34, 224, "torch", "layer4.2",
              "S-ResNet-34 (reconstruction): ResNet-34 whose residual branches are scaled by a learnable (1 + W)"),
    ModelSpec("resnet34", baselines.resnet34, 224, "torch", "layer4.2", "torchvision ResNet-34"),
    ModelSpec("resnet152", baselines.resnet152, 224, "torch", "layer4.2", "torchvision ResNet-152"),
    ModelSpec("densenet121", baselines.densenet121, 224, "torch", "features.norm5", "torchvision DenseNet-121"),
    ModelSpec("cnn", baselines.plain_cnn, 224, "torch", "features.4", "plain CNN: five conv-BN-ReLU-pool blocks"),
    ModelSpec("rnn", baselines.row_rnn, 224, "torch", None,
              "bidirectional GRU reading the image row by row, linear head"),
    ModelSpec("svm", curvature_svm, 128, "sklearn", None, "HOG features + RBF SVM with sigmoid-calibrated probabilities"),
)}


def build_model(name: str, num_classes: int = 3, in_channels: int = 1, **options):
    """Build a registered model; ValueError for an unknown name or option, listing the known ones."""
    spec = MODELS.get(name)
    if spec is None:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(MODELS)}")
    unknown = sorted(set(options) - set(spec.options()))
    if unknown:
        raise ValueError(f"model {name!r} has no option {', '.join(unknown)}; "
                         f"its options: {', '.join(spec.options()) or 'none'}")
    return spec.builder(num_classes=num_classes, in_channels=in_channels, **options)
