"""What a run will train on, and about how long an epoch takes there; torch-free (the Train page opens at once).

GPUs are read through NVML (``nvidia-ml-py``, imported as ``pynvml``): name, memory used / total, utilisation and
temperature, without creating a CUDA context. Without a usable NVIDIA driver the CPU is described (psutil).

The time per epoch is estimated from this workspace's earlier runs: the median ``seconds`` of metrics.csv rows of
runs with the same task, model, input size and device, scaled by the number of training images (an epoch is one
pass over them). With no such run there is no estimate, and the page says so rather than guessing.
"""
from __future__ import annotations

import os
import platform
import statistics
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping

from core.runs import layout

DATA_FILE = "data.json"  # written by the launcher: the labels the run was started on (core.runs.launch)


@dataclass
class Gpu:
    index: int
    name: str
    memory_used_mb: float
    memory_total_mb: float
    utilisation_pct: float | None
    temperature_c: float | None


def gpus() -> list[Gpu]:
    """Every NVIDIA GPU NVML sees; empty without nvidia-ml-py, a driver or a GPU."""
    try:
        import pynvml
    except ImportError:
        return []
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return []
    found = []
    try:
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            name = pynvml.nvmlDeviceGetName(handle)
            memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
            found.append(Gpu(index, name.decode() if isinstance(name, bytes) else str(name),
                             memory.used / 2 ** 20, memory.total / 2 ** 20,
                             _nvml_or_none(lambda: float(pynvml.nvmlDeviceGetUtilizationRates(handle).gpu)),
                             _nvml_or_none(lambda: float(pynvml.nvmlDeviceGetTemperature(
                                 handle, pynvml.NVML_TEMPERATURE_GPU)))))
    except pynvml.NVMLError:
        pass  # a GPU that vanished mid-query: report the ones read
    finally:
        pynvml.nvmlShutdown()
    return found


def _nvml_or_none(read) -> float | None:
    import pynvml

    try:
        return read()
    except pynvml.NVMLError:  # e.g. utilisation is not supported on some MIG slices
        return None


def cpu() -> dict:
    """The CPU a CPU run trains on: model name, cores, load and memory."""
    import psutil

    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = psutil.virtual_memory()
    return {"name": name, "logical_cores": psutil.cpu_count() or os.cpu_count() or 1,
            "physical_cores": psutil.cpu_count(logical=False), "load_pct": psutil.cpu_percent(interval=None),
            "memory_used_gb": (memory.total - memory.available) / 2 ** 30, "memory_total_gb": memory.total / 2 ** 30}


def snapshot() -> dict:
    """What the hardware panel and ``runs hardware`` show: the GPUs, or the CPU when there is none."""
    found = gpus()
    return {"gpus": [asdict(g) for g in found], "cpu": cpu(), "device": "cuda:0" if found else "cpu"}


def device_key(config: Mapping[str, Any], has_gpu: bool | None = None) -> str:
    """The device a config will train on (``cuda:N``, ``mps`` or ``cpu``): the unit the queue shares out.

    ``auto`` resolves like ``core.training.devices.pick_device`` does, using NVML instead of torch."""
    requested = str(config.get("device") or "auto")
    if requested == "auto":
        if has_gpu is None:
            has_gpu = bool(gpus())
        return "cuda:0" if has_gpu else "cpu"
    return "cuda:0" if requested == "cuda" else requested


def input_size(config: Mapping[str, Any]) -> int | None:
    """The square input side a config trains at (the model's default when the config leaves it open)."""
    if config.get("task") in ("detect",) or (config.get("task") == "landmarks" and "imgsz" in config):
        return int(config.get("imgsz") or 0) or None
    if config.get("input_size"):
        return int(config["input_size"])
    if config.get("task", "classify") == "classify":
        from models.registry import MODELS

        spec = MODELS.get(str(config.get("model")))
        return spec.default_input_size if spec else None
    return None


def _train_images(run_dir: Path) -> int | None:
    import json

    try:
        data = json.loads((run_dir / DATA_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    count = (data.get("splits") or {}).get(data.get("train_split") or "train", {}).get("images")
    return int(count) if count else None


@dataclass
class EpochEstimate:
    seconds: float | None      # per epoch for the config asked about; None: no comparable run here
    runs: int                  # how many earlier runs it rests on
    epochs: int                # how many of their epochs
    basis: str                 # one sentence saying where the number comes from

    def whole_run(self, epochs: int) -> float | None:
        return None if self.seconds is None else self.seconds * epochs


def estimate_epoch(config: Mapping[str, Any], train_images: int | None = None,
                   has_gpu: bool | None = None) -> EpochEstimate:
    """Median seconds per epoch of earlier runs here with the same task, model, input size and device."""
    task, model = config.get("task", "classify"), str(config.get("model") or "")
    size, device = input_size(config), device_key(config, has_gpu)
    per_image, used_runs, used_epochs, plain = [], 0, 0, []
    for info in layout.list_runs():
        run_dir = Path(info.run_dir)
        other = layout.read_config(run_dir)
        if (info.task != task or str(other.get("model") or info.model) != model or input_size(other) != size
                or (layout.read_status_file(run_dir).get("device") or device_key(other, has_gpu)) != device):
            continue
        metrics = layout.read_metrics(run_dir)
        seconds = [float(s) for s in metrics.get("seconds", []) if s == s and float(s) > 0]
        if not seconds:
            continue
        used_runs += 1
        used_epochs += len(seconds)
        images = _train_images(run_dir)
        if images:
            per_image.extend(s / images for s in seconds)
        plain.extend(seconds)
    what = f"{task} {model} at {size} px on {device}"
    if not plain:
        return EpochEstimate(None, 0, 0, f"no earlier {what} run in this workspace: the first epoch's time "
                                         "appears once it ends")
    if train_images and per_image:
        seconds = statistics.median(per_image) * train_images
        basis = f"median of {used_epochs} epochs of {used_runs} earlier {what} run(s), scaled to {train_images} images"
    else:
        seconds = statistics.median(plain)
        basis = f"median of {used_epochs} epochs of {used_runs} earlier {what} run(s)"
    return EpochEstimate(round(seconds, 1), used_runs, used_epochs, basis)
