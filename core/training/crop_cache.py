"""Decode and crop each film once: the training crops as uint8 files in the workspace, shared by every run.

A comparison trains ten models (and K folds of each) on the same films; a fine-tune and its retries do too. Reading
a 12-Mpx DICOM and cropping it takes longer than a training step on it, so each crop is made once and kept as a
small ``.npy`` file (uint8: 256 levels is more than a resized crop carries through the network, and 4x smaller
than float32). The key covers the file's identity (resolved path, size, modification time), the box, the output
size and the margin, so an edited or re-imported film, or another crop of it, is made afresh. The cache is capped by
``settings.crop_cache_bytes()``; past that crops are made in memory only.
"""
from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from core import settings

log = logging.getLogger("cervicurve.run")


def crop_key(path: str | Path, roi_box: Sequence[float] | None, size: int, margin: float) -> str:
    """The cache name of one crop; a file that changed on disk (size or time) gets a new key."""
    resolved = Path(path).resolve()
    try:
        stat = resolved.stat()
        identity = f"{resolved}|{stat.st_size}|{stat.st_mtime_ns}"
    except OSError:
        identity = str(resolved)  # unreadable: the crop function reports it
    box = ",".join(f"{float(v):.3f}" for v in roi_box) if roi_box else "whole"
    return hashlib.sha256(f"{identity}|{box}|{size}|{margin:.4f}".encode()).hexdigest()


def to_uint8(crop: torch.Tensor) -> torch.Tensor:
    return (crop.clamp(0.0, 1.0) * 255.0).round().to(torch.uint8)


class CropCache:
    """uint8 crops ``1 x S x S`` on disk under ``directory``; ``get`` makes and stores a missing one."""

    def __init__(self, directory: Path | None = None, budget_bytes: int | None = None):
        self.directory = Path(directory) if directory is not None else settings.crop_cache_dir()
        self.budget = settings.crop_cache_bytes() if budget_bytes is None else budget_bytes
        self._used: int | None = None
        self.hits = self.misses = 0

    def _file(self, key: str) -> Path:
        return self.directory / key[:2] / f"{key}.npy"

    def used_bytes(self) -> int:
        if self._used is None:  # counted once per cache object, then kept up to date by our own writes
            self._used = sum(f.stat().st_size for f in self.directory.glob("*/*.npy")) if self.directory.exists() else 0
        return self._used

    def get(self, key: str, size: int, make: Callable[[], torch.Tensor]) -> torch.Tensor:
        path = self._file(key)
        if path.exists():
            try:
                array = np.load(path, allow_pickle=False)
                if array.dtype == np.uint8 and array.shape == (1, size, size):
                    self.hits += 1
                    return torch.from_numpy(array)
            except (OSError, ValueError):
                pass
            log.warning("crop cache: %s is unreadable or of the wrong shape; making the crop again", path.name)
        self.misses += 1
        crop = to_uint8(make())
        nbytes = crop.numel() + 128
        if self.used_bytes() + nbytes <= self.budget:
            path.parent.mkdir(parents=True, exist_ok=True)
            partial = path.with_name(f"{path.stem}.{os.getpid()}.part")
            with open(partial, "wb") as handle:
                np.save(handle, crop.numpy(), allow_pickle=False)
            os.replace(partial, path)  # another process may write the same key: either copy is the same crop
            self._used = self.used_bytes() + nbytes
        return crop
