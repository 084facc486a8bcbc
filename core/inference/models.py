"""Loaded models, one copy per process, shared by every caller: page sessions, the preload thread, the CLI.

A model is identified by its kind, its file and the file's version (modification time and size), so a
re-promoted model (same path, new file) loads anew and the old version is dropped at once.

Locking: one short-held guard over the table, and one lock per key held while that key loads. Two callers
asking for the same model (the page's preload thread and a first upload) load it once: the second waits
for the first and gets its copy. Different models load at the same time. A model pushed out of the table
(more than ``MAX_MODELS``, or an old version) is released: no reference stays here, and torch's CUDA cache
is emptied so its memory really goes back.

Kinds are the task names: ``classify`` -> ``(network, meta)``, ``detect`` -> ``core.training.detect.RoiDetector``,
``landmarks`` -> the heatmap model or YOLO-pose (``core.training.landmarks.load``).
"""
from __future__ import annotations

import gc
import sys
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable

from core.runs import registry

KINDS = registry.PROMOTABLE  # the models Predict loads, in its order: classifier, detector, landmark model
MAX_MODELS = 6  # one full set is three models; room for a second set chosen in the sidebar


class ModelError(ValueError):
    """A model file that cannot be used for prediction; the message says which and what to do."""


def model_key(kind: str, path: str | Path) -> tuple[str, str, int, int]:
    """Kind, resolved path, modification time and size: a new file at the same path is a new key."""
    path = Path(path)
    stat = path.stat()
    return kind, str(path.resolve()), stat.st_mtime_ns, stat.st_size


def _load_classifier(path: str):
    from core.training.checkpoints import load_classifier
    from core.training.devices import pick_device

    model, meta = load_classifier(path)
    if hasattr(model, "to"):
        model.to(pick_device("auto"))
    return model, meta


def _load_detector(path: str):
    from core.training.detect import RoiDetector

    return RoiDetector(path)


def _load_landmarks(path: str):
    from core.training import landmarks

    return landmarks.load(path)


_LOADERS: dict[str, Callable[[str], Any]] = {
    "classify": _load_classifier, "detect": _load_detector, "landmarks": _load_landmarks,
}
_WHAT = {"classify": "classifier", "detect": "detector", "landmarks": "landmark model"}


class ModelCache:
    """Least recently used models, at most ``max_entries``, each loaded once (see the module's docstring)."""

    def __init__(self, max_entries: int = MAX_MODELS):
        self.max_entries = max_entries
        self.loads = 0  # loader calls that returned a model: what tests and benchmarks check
        self._guard = threading.Lock()
        self._models: OrderedDict[tuple, Any] = OrderedDict()
        self._loading: dict[tuple, threading.Lock] = {}

    def get(self, key: tuple, load: Callable[[], Any]) -> Any:
        with self._guard:
            if key in self._models:
                self._models.move_to_end(key)
                return self._models[key]
            key_lock = self._loading.setdefault(key, threading.Lock())
        with key_lock:
            with self._guard:
                if key in self._models:  # loaded by the caller this one waited for
                    self._models.move_to_end(key)
                    return self._models[key]
            try:
                model = load()  # outside the guard: other keys load meanwhile
            finally:
                with self._guard:
                    if self._loading.get(key) is key_lock:
                        del self._loading[key]
            with self._guard:
                self.loads += 1
                self._models[key] = model
                # older versions of the same file are never asked for again; then the least recently used
                evicted = [self._models.pop(k) for k in list(self._models) if k[:2] == key[:2] and k != key]
                while len(self._models) > self.max_entries:
                    evicted.append(self._models.popitem(last=False)[1])
        if evicted:
            del evicted
            _release_memory()
        return model

    def keys(self) -> list[tuple]:
        with self._guard:
            return list(self._models)

    def clear(self) -> None:
        with self._guard:
            self._models.clear()
        _release_memory()


def _release_memory() -> None:
    gc.collect()  # networks hold reference cycles (hooks, parent modules): free them now, not some time later
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


CACHE = ModelCache()


def load(kind: str, path: str | Path) -> Any:
    """The model of ``kind`` in the checkpoint ``path``, from the process-wide cache (loaded on first use)."""
    if kind not in _LOADERS:
        raise ValueError(f"unknown model kind {kind!r}; choose one of: {', '.join(KINDS)}")
    try:
        key = model_key(kind, path)
        return CACHE.get(key, lambda: _LOADERS[kind](key[1]))
    except (FileNotFoundError, ValueError, KeyError, RuntimeError) as error:
        raise ModelError(f"{path} is not a usable {_WHAT[kind]} checkpoint ({error})") from None
