"""Classifier checkpoints: writing them whole, loading them (torch or the SVM) and scoring crops with them.

A checkpoint is ``{"state_dict", "meta"}`` with plain-typed meta, loadable with ``torch.load(weights_only=True)``;
the SVM travels inside it as its own npz bytes.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
import torch.nn as nn

from core import settings
from core.training.crops import normalise


def save_checkpoint(path: Path, payload: dict) -> None:
    """Written beside, then renamed: a run killed mid-save keeps its previous checkpoint whole."""
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def state_dict_of(model: nn.Module) -> dict:
    module = model.module if hasattr(model, "module") else model
    module = getattr(module, "_orig_mod", module)
    return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}


def load_checkpoint(path: str | Path) -> dict:
    """A checkpoint dict; a run folder or promoted folder means its best.pt."""
    path = Path(path)
    if path.is_dir():
        path = path / "best.pt"
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        # torch's own message runs to a dozen lines of advice about unpickling; one line says what matters
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if "weights_only" in str(exc) or "Unpickl" in type(exc).__name__:
            reason = "it holds pickled code, which is never loaded"
        raise ValueError(f"{path} is refused: not a CerviCurve checkpoint ({reason})") from None
    if not isinstance(data, dict) or "state_dict" not in data or "meta" not in data:
        raise ValueError(f"{path} is not a CerviCurve checkpoint (no state_dict/meta)")
    return data


def load_classifier(path: str | Path) -> tuple[Any, dict]:
    """``(model, meta)`` from a best.pt, a run folder or a promoted folder; the model is in eval mode on CPU.

    ``meta["kind"]`` is ``torch`` (an ``nn.Module``) or ``sklearn`` (the SVM estimator). Use
    :func:`classify_crops` to get calibrated probabilities from either.
    """
    data = load_checkpoint(path)
    meta = data["meta"]
    if meta.get("kind") == "sklearn":
        return _svm_from_tensors(data["state_dict"], f"the SVM in {path}"), meta
    from models.registry import build_model

    options = dict(meta.get("model_options") or {})
    options.update(meta.get("builder_extra") or {})
    model = build_model(meta["model"], num_classes=len(meta["classes"]), in_channels=1, **options)
    model.load_state_dict(data["state_dict"])
    model.eval()
    return model, meta


@torch.no_grad()
def classify_crops(model: Any, meta: Mapping[str, Any], crops: torch.Tensor | np.ndarray,
                   batch_size: int = 32) -> np.ndarray:
    """Temperature-scaled class probabilities ``N x C`` for crops ``N x 1 x S x S`` (or ``N x S x S``) in [0, 1]."""
    crops = torch.as_tensor(np.asarray(crops, dtype=np.float32)) if isinstance(crops, np.ndarray) else crops.float()
    if crops.dim() == 3:
        crops = crops[:, None]
    if meta.get("kind") == "sklearn":
        return np.asarray(model.predict_proba(crops[:, 0].numpy()), dtype=np.float64)
    return calibrated(_logits_of(model, crops, meta, batch_size), meta)


def calibrated(logits: torch.Tensor, meta: Mapping[str, Any]) -> np.ndarray:
    """Class probabilities from a network's logits with the temperature fitted on validation (one place for both
    the batch path above and the pipeline's one-pass class + Grad-CAM)."""
    return torch.softmax(logits.float() / float(meta.get("temperature", 1.0)), dim=1).double().numpy()


def _logits_of(model: nn.Module, crops: torch.Tensor, meta: Mapping[str, Any], batch_size: int) -> torch.Tensor:
    device = next(model.parameters()).device
    model.eval()
    out = []
    for start in range(0, len(crops), batch_size):
        batch = normalise(crops[start:start + batch_size].to(device), meta)
        out.append(model(batch).float().cpu())
    return torch.cat(out) if out else torch.zeros(0, len(meta.get("classes", settings.CLASSES)))


def svm_to_tensors(model: Any) -> dict[str, torch.Tensor]:
    """The SVM's own npz file (arrays + JSON, no pickle) as one uint8 tensor, so best.pt stays one file."""
    return {"svm_npz": torch.frombuffer(bytearray(model.to_bytes()), dtype=torch.uint8).clone()}


def _svm_from_tensors(state: Mapping[str, torch.Tensor], source: str) -> Any:
    from models.svm import CurvatureSVM

    return CurvatureSVM.from_bytes(state["svm_npz"].numpy().tobytes(), source)
