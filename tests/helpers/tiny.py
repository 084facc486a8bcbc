"""A tiny classification dataset (30 phantom-like 64 px films) in a workspace, and the settings that train on it fast."""
from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
from PIL import Image

from core.settings import CLASSES
from tests.helpers import ROOT

# key=value overrides for the CLI / registry.load_config, and the same kind of settings as a dict for launch.start_run
FAST_OVERRIDES = ["model=cnn", "input_size=64", "batch_size=8", "n_boot=50", "dataset=tiny"]
FAST_CONFIG = {"model": "cnn", "dataset": "tiny", "input_size": 64, "batch_size": 4, "n_boot": 20}


def write_tiny_dataset(folder: Path, patients: int = 30, size: int = 64, seed: int = 0,
                       missing_box: int | None = None) -> Path:
    """Phantom-like 64 px radiographs: a bright column bending forward (normal), straight or backward
    (reversed) inside its ROI box; one patient per image, splits balanced by class. Returns the manifest."""
    rng = np.random.default_rng(seed)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for p in range(patients):
        label = p % 3
        image = rng.normal(0.25, 0.05, (size, size))
        ys = np.arange(int(size * 0.15), int(size * 0.85))
        t = (ys - ys.mean()) / (np.ptp(ys) / 2)
        xs = size / 2 + (1 - label) * size * 0.15 * (1 - t ** 2) + rng.normal(0, 1.5)
        for x, y in zip(xs, ys):
            image[y, max(0, int(x) - 2): int(x) + 3] = 0.9
        name = f"P{p:03d}.png"
        Image.fromarray((np.clip(image, 0, 1) * 255).astype(np.uint8)).save(folder / "images" / name)
        group = (p // 3) % 5  # three patients (one per class) per group: every split holds every class
        split = {3: "val", 4: "test"}.get(group, "train")
        box = ["", "", "", ""] if p == missing_box else [size * 0.2, size * 0.1, size * 0.8, size * 0.9]
        rows.append([f"images/{name}", CLASSES[label], f"P{p:03d}", *box, split])
    manifest = folder / "manifest.csv"
    with open(manifest, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label", "patient_id", "x1", "y1", "x2", "y2", "split"])
        writer.writerows(rows)
    return manifest


def import_tiny(workspace: Path, name: str = "tiny", **kwargs) -> str:
    from core.data import importers

    importers.import_csv(write_tiny_dataset(workspace.parent / f"{name}-source", **kwargs), dataset=name)
    return name


def metric_rows(run_dir: Path, drop=("seconds",)) -> list[dict]:
    with open(run_dir / "metrics.csv", newline="") as handle:
        return [{k: v for k, v in row.items() if k not in drop} for row in csv.DictReader(handle)]


def subprocess_env(workspace: Path) -> dict:
    env = dict(os.environ, CERVICURVE_HOME=str(workspace), CERVICURVE_THREADS="1", OMP_NUM_THREADS="1",
               PYTHONPATH=str(ROOT))
    return env
