"""Checkpoints: Ultralytics pickles -> weights-only CerviCurve files, and reading those back.

``best.pt``/``last.pt`` are CerviCurve checkpoints — ``{"state_dict", "meta"}`` with the network's yaml in
``meta`` — loadable with ``torch.load(weights_only=True)``; Ultralytics' own pickled files stay in
``ultralytics/weights/`` (referenced as ``meta["ultralytics_weights"]``) for ``resume`` only.

Loading safety: ``RoiDetector``/``LandmarkModel`` only accept the checkpoints CerviCurve runs write (runs/<id>/best.pt,
promoted/<task>/best.pt) and load them with ``weights_only=True``, so a promoted model never unpickles code; any
other file is a ValueError. Ultralytics' native ``.pt`` files are pickles; the only ones opened are those a run
wrote in its own folder (final validation, resume) and a starting ``.pt`` the user names explicitly — all
through Ultralytics' restricted loader (``ULTRALYTICS_SAFE_LOAD=1``: ``weights_only=True`` plus an allow-list of
Ultralytics layer classes), so a crafted file is refused rather than executed.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

CHECKPOINT_FORMAT = "cervicurve-yolo/1"


def _json_default(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    return str(value)  # paths, and anything odd a config may carry


def export_checkpoint(ultralytics_pt: Path, out: Path, meta: dict) -> Path:
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


def read_checkpoint(weights_path: str | Path, task: str | None) -> dict:
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


def read_checkpoint_meta(weights_path: str | Path) -> dict:
    return read_checkpoint(weights_path, None)["meta"]

