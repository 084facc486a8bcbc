"""A tiny classifier trained and promoted the way the app does it, and films to show it."""
from __future__ import annotations

import io
import os
import shutil
from pathlib import Path

from PIL import Image

from core.settings import CLASSES


def phantom_png(curvature_class: str, seed: int, size: int = 128) -> bytes:
    from core.data.phantom import generate_case

    case = generate_case(seed, size=size, curvature_class=curvature_class)
    buffer = io.BytesIO()
    Image.fromarray(case.image).save(buffer, format="PNG")
    return buffer.getvalue()


def promote_tiny_classifier(home: Path) -> Path:
    """Train a 32 px plain CNN for one epoch on 9 phantoms with core.training.classify, promote it; ~15 s on 2 cores.

    Shared by the Predict, Teach and browser tests and the browser benchmarks.
    """
    from core.runs import promotion
    from core.training import classify
    from core.data.datasets import TrainingItem
    from core.data.phantom import generate_case
    from core.runs.configs import ClassifyConfig

    previous = os.environ.get("CERVICURVE_HOME")
    os.environ["CERVICURVE_HOME"] = str(home)
    try:
        images = home / "train_images"
        images.mkdir(parents=True, exist_ok=True)
        items: dict[str, list] = {"train": [], "val": []}
        number = 0
        for split, per_class in (("train", 2), ("val", 1)):
            for label, name in enumerate(CLASSES):
                for _ in range(per_class):
                    case = generate_case(500 + number, size=128, curvature_class=name)
                    path = images / f"{split}_{number}.png"
                    Image.fromarray(case.image).save(path)
                    items[split].append(TrainingItem(path=path, label=label, roi_box=case.roi_box,
                                                     landmarks=case.landmarks, patient_id=f"P{number}",
                                                     image_id=number))
                    number += 1
        config = ClassifyConfig.from_dict({"model": "cnn", "epochs": 1, "batch_size": 4, "input_size": 32,
                                           "workers": 0, "n_boot": 0, "device": "cpu", "augment": False,
                                           "warmup_epochs": 0})
        run_dir = classify.train(config, items=items)
        return promotion.promote(run_dir)
    finally:
        if previous is None:
            os.environ.pop("CERVICURVE_HOME", None)
        else:
            os.environ["CERVICURVE_HOME"] = previous


def without_ood_references(model_home: Path, home: Path) -> Path:
    """A copy of ``model_home``'s promoted models in ``home`` whose classifier checkpoint is from before
    out-of-distribution references existed (the same weights, its meta without them): nothing flags a film then, so
    the network's class is the verdict. The one-epoch model finds every film unlike its six phantoms otherwise, and
    the pages' judged path would go untested."""
    import torch

    shutil.copytree(model_home / "promoted", home / "promoted")
    path = home / "promoted" / "classify" / "best.pt"
    checkpoint = torch.load(path, weights_only=True)
    for key in ("ood_reference", "ood_image_reference"):
        checkpoint["meta"].pop(key)
    torch.save(checkpoint, path)
    return home
