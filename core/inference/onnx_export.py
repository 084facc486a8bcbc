"""ONNX export of the promoted classifier and heatmap landmark model, checked against torch on the same input.

``python -m core onnx {classify|landmarks} [--out FILE]`` writes ``promoted/<task>/model.onnx`` (or FILE) and
prints the largest absolute difference between onnxruntime's and torch's outputs on one seeded random input.
The graph takes crops in [0, 1] (``N x 1 x S x S``) and includes the normalisation, so a user feeds it what
CerviCurve's crops are: the classifier graph also includes the temperature and softmax (it returns calibrated
probabilities); the landmark graph returns the network's heatmaps (the soft-argmax and box mapping stay in
CerviCurve). torch's TorchScript exporter is used (``dynamo=False``): the newer exporter needs ``onnxscript``.
"""
from __future__ import annotations

import json
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from core.runs import promotion

OPSET = 17
ONNX_FILE = "model.onnx"


class OnnxExportError(ValueError):
    """A model that cannot be exported (none promoted, an SVM, a YOLO network) or whose export does not match."""


class _Classifier(nn.Module):
    """Crops in [0, 1] -> temperature-scaled class probabilities, as ``classify_crops`` computes them."""

    def __init__(self, net: nn.Module, meta: dict):
        super().__init__()
        from core.training.crops import NORMALISATION

        norm = meta.get("normalisation") or NORMALISATION
        self.net, self.temperature = net, float(meta.get("temperature", 1.0))
        self.register_buffer("mean", torch.tensor(norm["mean"], dtype=torch.float32).view(-1, 1, 1))
        self.register_buffer("std", torch.tensor(norm["std"], dtype=torch.float32).view(-1, 1, 1))

    def forward(self, crops: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.net((crops - self.mean) / self.std) / self.temperature, dim=1)


class _Landmarks(nn.Module):
    """Context window in [0, 1] -> heatmaps, with the landmark model's own normalisation."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, window: torch.Tensor) -> torch.Tensor:
        return self.net((window - 0.5) / 0.25)


def _wrapped(task: str, checkpoint: Path) -> tuple[nn.Module, int, str]:
    if task == "classify":
        from core.training.checkpoints import load_classifier

        model, meta = load_classifier(checkpoint)
        if meta.get("kind") != "torch":
            raise OnnxExportError(f"the promoted classifier is a {meta.get('model')} ({meta.get('kind')}), not a "
                                  "network: only torch classifiers export to ONNX")
        return _Classifier(model, meta).eval(), int(meta["input_size"]), str(meta["model"])
    if task == "landmarks":
        from core.training.landmarks import HeatmapLandmarkModel

        try:
            model = HeatmapLandmarkModel(checkpoint)
        except ValueError:
            raise OnnxExportError("the promoted landmark model is a YOLO-pose network: export it with Ultralytics' "
                                  "own `yolo export format=onnx`") from None
        return _Landmarks(model.net).eval(), model.input_size, "landmark-unet"
    raise OnnxExportError(f"task must be classify or landmarks, got {task!r}")


def export_promoted(task: str, out: str | Path | None = None, seed: int = 0, *, actor=None) -> dict:
    """Export the promoted ``task`` model; returns ``{path, max_abs_diff, input_shape, ...}``. ``actor``: who asks
    (``core.data.accounts.authorize``: an admin in team mode; it writes a file on the server).

    Raises OnnxExportError when nothing is promoted, the model cannot be exported, or onnxruntime's output differs
    from torch's by more than 1e-3 (the file is kept so it can be inspected)."""
    import onnxruntime

    from core.data.accounts import authorize

    authorize(actor, "export_model", f"onnx {task}" + (f" -> {out}" if out else ""))
    checkpoint = promotion.promoted_model(task)
    if checkpoint is None:
        raise OnnxExportError(f"no {task} model is promoted: promote a run first (python -m core runs promote RUN)")
    module, size, name = _wrapped(task, checkpoint)
    path = Path(out) if out else checkpoint.parent / ONNX_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    example = torch.rand((1, 1, size, size), generator=torch.Generator().manual_seed(seed))
    started = time.perf_counter()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(module, (example,), str(path), dynamo=False, opset_version=OPSET,
                          input_names=["crops"], output_names=["output"],
                          dynamic_axes={"crops": {0: "batch"}, "output": {0: "batch"}})
        expected = module(example).numpy()
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {"crops": example.numpy()})[0]
    difference = float(np.max(np.abs(got - expected)))
    result = {"task": task, "model": name, "path": str(path), "input_shape": [1, 1, size, size],
              "output_shape": list(got.shape), "max_abs_diff": difference, "opset": OPSET,
              "onnxruntime": onnxruntime.__version__, "seconds": round(time.perf_counter() - started, 2),
              "run_id": (promotion.promoted_info(task) or {}).get("run_id")}
    (path.with_suffix(".json")).write_text(json.dumps(result, indent=1), encoding="utf-8")
    if not difference <= 1e-3:
        raise OnnxExportError(f"onnxruntime differs from torch by {difference:.3g} (max abs) on the check input; "
                              f"{path} kept for inspection")
    return result
