"""core.inference.models and the Ultralytics containment under sharing: several browser sessions (threads) use
one process's models at once. Real checkpoints: a YOLO detector and a YOLO-pose landmark model trained for one
epoch at 64 px on tiny synthetic sets (tests/test_detect.py's), each run written by the real trainer."""
from __future__ import annotations

import gc
import os
import threading
import weakref
from pathlib import Path

import numpy as np
import pytest

from tests.helpers.films import write_box_dataset, write_landmark_dataset


@pytest.fixture(scope="module")
def yolo_runs(tmp_path_factory) -> tuple[Path, Path, Path]:
    """(workspace, detector best.pt, YOLO-pose best.pt)."""
    from core.training.detect import train_detector, train_landmark_model

    home = tmp_path_factory.mktemp("yolo") / "workspace"
    home.mkdir()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CERVICURVE_HOME", str(home))
        patch.delenv("CERVICURVE_DB", raising=False)
        patch.chdir(home)
        boxes = write_box_dataset(home / "exports" / "boxes", train=6, val=2, size=64)
        points = write_landmark_dataset(home / "exports" / "points", train=6, val=2, size=64)
        train_detector(boxes, home / "runs" / "det", epochs=1, imgsz=64, batch=4, device="cpu", seed=0)
        train_landmark_model(points, home / "runs" / "pose", epochs=1, imgsz=64, batch=4, device="cpu", seed=0)
    return home, home / "runs" / "det" / "best.pt", home / "runs" / "pose" / "best.pt"


@pytest.fixture()
def home(yolo_runs, monkeypatch):
    monkeypatch.setenv("CERVICURVE_HOME", str(yolo_runs[0]))
    monkeypatch.delenv("CERVICURVE_DB", raising=False)
    return yolo_runs[0]


def film(seed: int, size: int = 200) -> np.ndarray:
    rng = np.random.default_rng(seed)
    image = (rng.random((size, size + 40)) * 0.3).astype(np.float32)
    image[40:150, 70:140] = 0.9
    return image


def run_together(*jobs):
    """Start every job at the same moment in its own thread; their results, in order (errors re-raised)."""
    barrier = threading.Barrier(len(jobs))
    results, errors = [None] * len(jobs), []

    def work(index, job):
        try:
            barrier.wait()
            results[index] = job()
        except Exception as error:  # surfaced below
            errors.append(error)

    threads = [threading.Thread(target=work, args=(i, job)) for i, job in enumerate(jobs)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    if errors:
        raise errors[0]
    return results


@pytest.mark.slow
def test_two_yolo_models_predicting_at_once_leave_torch_threads_and_omp_as_they_were(home, yolo_runs):
    """Ultralytics sets torch to 1 thread (and OMP_NUM_THREADS) process-wide; overlapping calls in two threads
    must neither race on restoring that nor change each other's answers."""
    import torch

    from core.inference import models

    _, detector_path, pose_path = yolo_runs
    torch.set_num_threads(2)
    omp_before = os.environ.get("OMP_NUM_THREADS")
    images = [film(1), film(2)]
    alone = [models.load("detect", detector_path).detect(images[0], 0.0),
             models.load("landmarks", pose_path).predict(images[1], 0.0)]
    for _ in range(3):
        # loading too: Ultralytics' predictor setup is where it sets the thread count
        models.CACHE.clear()
        boxes, points = run_together(lambda: models.load("detect", detector_path).detect(images[0], 0.0),
                                     lambda: models.load("landmarks", pose_path).predict(images[1], 0.0))
        # torch keeps a thread count per thread, and a new thread starts from the process-wide one: a page's
        # next rerun runs in a new thread, so that is the number that must be back at 2
        assert run_together(torch.get_num_threads) == [2]
        assert torch.get_num_threads() == 2 and os.environ.get("OMP_NUM_THREADS") == omp_before
        assert boxes is not None and np.allclose(boxes[0], alone[0][0], atol=1e-3)
        assert points is not None and np.allclose(points[0], alone[1][0], atol=1e-3)
    # answers in the film's own pixels although the network reads it at 64 px
    x1, y1, x2, y2 = boxes[0]
    assert 0 <= x1 < x2 <= 240 and 0 <= y1 < y2 <= 200
    assert points[0].shape == (23, 2)


@pytest.mark.slow
def test_a_model_asked_for_by_two_threads_at_once_loads_once(home, yolo_runs):
    from core.inference import models

    cache = models.ModelCache()
    key = models.model_key("detect", yolo_runs[1])
    calls = []

    def load():
        calls.append(threading.get_ident())
        return models._LOADERS["detect"](key[1])

    first, second = run_together(lambda: cache.get(key, load), lambda: cache.get(key, load))
    assert first is second and len(calls) == 1 and cache.loads == 1


@pytest.mark.slow
def test_evicted_and_replaced_models_are_released(home, yolo_runs, tmp_path):
    """Past the limit the least recently used model goes, and a re-promoted file replaces its old version: no
    reference stays behind, so the memory is freed."""
    import shutil

    from core.inference import models

    cache = models.ModelCache(max_entries=1)
    copy = tmp_path / "runs" / "copy" / "best.pt"
    copy.parent.mkdir(parents=True)
    shutil.copy(yolo_runs[1], copy)
    first = cache.get(models.model_key("detect", yolo_runs[1]), lambda: models._LOADERS["detect"](str(yolo_runs[1])))
    gone = weakref.ref(first)
    del first
    cache.get(models.model_key("detect", copy), lambda: models._LOADERS["detect"](str(copy)))
    gc.collect()
    assert gone() is None and len(cache.keys()) == 1

    old = weakref.ref(cache.get(models.model_key("detect", copy), lambda: None))
    stat = copy.stat()
    os.utime(copy, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))  # a new file at the same path
    cache.get(models.model_key("detect", copy), lambda: models._LOADERS["detect"](str(copy)))
    gc.collect()
    assert old() is None and cache.loads == 3


@pytest.mark.slow
def test_a_file_that_is_no_model_is_a_model_error(home, tmp_path):
    from core.inference import models

    bad = tmp_path / "notes.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(models.ModelError, match="notes.pt is not a usable detector checkpoint"):
        models.load("detect", bad)
    assert not [k for k in models.CACHE.keys() if k[1] == str(bad.resolve())]
