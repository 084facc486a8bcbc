"""Heatmap landmark model: the 23 CSXA points on the detector's crop, precise enough to measure angles.

Why a second landmark model next to YOLO-pose (``core.training.detect``, ``model: yolov8n-pose.yaml``): a Cobb angle
hangs on endplate corners a few pixels apart. On 60 held-out 512 px phantoms after the full demo's budget on a
2-core CPU, YOLO-pose (10 epochs on ROI crops, 5.6 min) placed points 16.6 px off on average (6.1 % of the
C2-C7 length) and missed the Cobb angle by 16.9 deg; this model (36 epochs, 4.8 min) by 1.3 px and 1.65 deg.

Method (``models.landmark_unet``): the ROI window (box + ``roi_margin`` of its size per side, the window
``core.data.exports.landmark_crop_window`` cuts) is resampled to ``input_size`` squared; a small U-Net gives one
heatmap per landmark at a quarter of that, and soft-argmax reads sub-cell coordinates. Training samples each
window through a random affine map (rotation, per-axis scale, shift, horizontal flip with left/right swap)
from a cached context crop, so it sees the box errors a detector makes; then clinical-film artifacts
(``film``: shoulders, S curve, unsharp masking, low resolution, Poisson-Gaussian noise, borders, text, JPEG;
``core.training.crops.film_artifacts``), gamma, contrast and noise.
Prediction runs on the detector's box, then ``refine`` times (2 by default) on the box the previous points imply
(``measure.roi_box_from_landmarks``, the rule every ROI box in the project follows), which is the window the
model was trained on whatever the detector's error. The mirrored film is read the same way and the two
answers averaged (``mirror_average``).

Run folders follow the other trainers (docs/ARCHITECTURE.md): config.yaml, status.json, metrics.csv,
train.log, best.pt / last.pt (``{"state_dict", "meta"}``, loadable with ``weights_only=True``), test_report.json.
"""
from __future__ import annotations

import json
import logging
import math
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from torch.nn import functional as F

from core import settings
from core.runs import layout
from core.runs.configs import LANDMARK_UNET, ConfigError, HeatmapConfig, init_checkpoint
from core.runs.recorder import RunRecorder
from core.training.crops import film_artifacts
from core.training.devices import pick_device
from core.training.finetune import Mix, training_mix
from core.training.schedule import warmup_cosine
from core.training.checkpoints import state_dict_of
from core.engine.trainer import EpochTask, Trainer
from core.data.exports import crop_window, landmark_crop_window
from core.data.measure import (LANDMARK_NAMES, LandmarkError, landmark_errors, landmark_flip_index,
                          roi_box_from_landmarks)
from models.landmark_unet import LandmarkUNet, peak_mass, soft_argmax

FORMAT = "cervicurve-landmark-heatmap/1"
MODEL_NAME = LANDMARK_UNET
CONTEXT_MARGIN = 0.35  # the cached window: room for the augmentation's shifts, scales and rotations
METRIC = "val mean landmark error (px)"
# the task's own metrics.csv columns, after layout.COMMON_COLUMNS
COLUMNS = ("val_mean_error_px", "val_mean_error_pct_c2c7", "val_cobb_mae_deg")

log = logging.getLogger("cervicurve.run")
ProgressCallback = Callable[[int, int, dict], None]  # (epoch, epochs, metrics row)


class LandmarkTrainingError(ConfigError):
    """A landmark dataset that cannot be trained on (no labelled landmarks, no val split)."""


# ------------------------------------------------------------------------------------ geometry
def _context_size(input_size: int, roi_margin: float) -> int:
    """Side of the cached context crop at the scale the model reads its window."""
    return int(round(input_size * (1 + 2 * CONTEXT_MARGIN) / (1 + 2 * roi_margin)))


def _base_scale(roi_margin: float) -> float:
    """Half-size of the model's window in the context crop's [-1, 1] coordinates."""
    return (1 + 2 * roi_margin) / (1 + 2 * CONTEXT_MARGIN)


_LEVELS = np.linspace(0.0, 1.0, 257)
# read_image's greys: stored integers k scaled to float32(k) / float32(2**bits - 1) (8- to 16-bit films)
_GREY_STEPS = (255, 65535, 4095, 1023, 16383)


def equalise(crop: np.ndarray, region: np.ndarray) -> np.ndarray:
    """``crop`` mapped through the cumulative histogram of ``region`` (the ROI box): every film's spine then spans
    the same grey levels. Real films differ in exposure curve, window/level and edge enhancement far more than the
    augmentation models; with the ROI equalised the full-demo model's median point error on the 6 real CSXA dev
    films fell from 6.0 to 2.6 % of C2-C7 (true boxes), and on 20 phantoms it went from 0.48 to 0.51 %.

    Films whose greys are read_image's integer steps take a counted path (bincount, a table per grey) that equals
    ``np.quantile`` + ``np.interp`` bit for bit; over a 2048 px film's window ``np.interp`` alone took ~280 ms."""
    greys = GreyCodes.of(crop)
    region_codes = None if greys is None else _grey_codes(region, greys.steps)
    if region_codes is not None:
        return _equalise_counted(crop, greys.codes, region_codes, greys.steps)
    region = region[np.isfinite(region)]
    if region.size < 16 or float(np.ptp(region)) == 0.0:
        return crop
    levels = np.quantile(region, _LEVELS)
    return np.interp(crop, levels, _LEVELS).astype(np.float32)


def _equalise_counted(crop: np.ndarray, crop_codes: np.ndarray, region_codes: np.ndarray, steps: int) -> np.ndarray:
    """:func:`equalise` for greys that are integers on ``steps``, counted: the same values bit for bit."""
    counts = np.bincount(region_codes.ravel(), minlength=steps + 1)
    present = np.flatnonzero(counts)
    if region_codes.size < 16 or present.size < 2:
        return crop
    levels = _quantiles(present.astype(np.float32) / np.float32(steps), counts[present])
    # every grey of the scale (at most 65,536) costs less than counting which ones the window uses
    table = np.interp(np.arange(steps + 1, dtype=np.float32) / np.float32(steps), levels, _LEVELS)
    return table.astype(np.float32)[crop_codes]


@dataclass(frozen=True)
class GreyCodes:
    """A film's greys as read_image's stored integers, ``pixels == float32(codes) / float32(steps)`` exactly: found
    once per film, so each window equalised from it only counts (six windows per prediction)."""

    codes: np.ndarray
    steps: int

    @classmethod
    def of(cls, pixels: np.ndarray) -> "GreyCodes | None":
        steps = _grey_steps(pixels)
        codes = None if steps is None else _grey_codes(pixels, steps)
        return None if codes is None else cls(codes, steps)

    def mirrored(self) -> "GreyCodes":
        return GreyCodes(self.codes[:, ::-1], self.steps)


def _grey_steps(pixels: np.ndarray) -> int | None:
    """The integer scale of ``pixels``' greys (255 for an 8-bit film, ...), judged on a sample; None for others."""
    sample = np.asarray(pixels, dtype=np.float32).ravel()[::97][:4096]
    if sample.size == 0:
        return None
    return next((steps for steps in _GREY_STEPS if _grey_codes(sample, steps) is not None), None)


def _grey_codes(pixels: np.ndarray, steps: int) -> np.ndarray | None:
    """The integers k with ``pixels == float32(k) / float32(steps)`` exactly, else None."""
    pixels = np.asarray(pixels)
    if pixels.dtype != np.float32:
        return None
    codes = np.rint(pixels * np.float32(steps))
    if not (np.isfinite(codes).all() and codes.min(initial=0) >= 0 and codes.max(initial=0) <= steps):
        return None
    codes = codes.astype(np.int32)
    if not np.array_equal(codes.astype(np.float32) / np.float32(steps), pixels):
        return None
    return codes


def _quantiles(greys: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """``np.quantile(values, _LEVELS)`` (method "linear") of the values with these sorted distinct ``greys`` and their
    ``counts``, with numpy's own arithmetic: its virtual indexes, neighbours and two-sided lerp."""
    n = int(counts.sum())
    virtual = (n - 1) * _LEVELS
    previous = np.floor(virtual)
    following = previous + 1
    above = virtual >= n - 1
    previous[above] = -1
    following[above] = -1
    previous, following = previous.astype(np.intp) % n, following.astype(np.intp) % n
    gamma = virtual - np.where(above, -1, previous)
    ends = np.cumsum(counts)  # sorted position i holds greys[first j with ends[j] > i]
    low = greys[np.searchsorted(ends, previous, side="right")]
    high = greys[np.searchsorted(ends, following, side="right")]
    difference = high - low
    lerp = np.add(low, difference * gamma)
    np.subtract(high, difference * (1 - gamma), out=lerp, where=gamma >= 0.5, casting="unsafe")
    return lerp


def context_crop(pixels: np.ndarray, box: Sequence[float], input_size: int, roi_margin: float,
                 equalised: bool = False, greys: GreyCodes | None = None
                 ) -> tuple[torch.Tensor, tuple[int, int, int, int]]:
    """``(crop (C, C) float32, window)``: the context window around ``box`` at the model's reading scale
    (``equalised``: by the box's own histogram, :func:`equalise`; ``greys``: the film's :class:`GreyCodes`,
    when known, make that cheaper with the same result)."""
    window = landmark_crop_window(box, CONTEXT_MARGIN)
    pixels = np.asarray(pixels, dtype=np.float32)
    crop = crop_window(pixels, window)
    if equalised:
        height, width = pixels.shape[:2]
        x1, y1, x2, y2 = (int(round(v)) for v in box)
        inside = (slice(max(0, y1), min(height, y2)), slice(max(0, x1), min(width, x2)))
        if greys is not None:  # padding outside the film is grey 0 in both
            crop = _equalise_counted(crop, crop_window(greys.codes, window), greys.codes[inside], greys.steps)
        else:
            crop = equalise(crop, pixels[inside])
    crop = torch.from_numpy(np.ascontiguousarray(crop))
    side = _context_size(input_size, roi_margin)
    # antialiased: a 2048 px film shrinks ~10x here; plain bilinear would alias the trabecular texture
    resized = F.interpolate(crop[None, None], size=(side, side), mode="bilinear", align_corners=False, antialias=True)
    return resized[0, 0], window


def _to_unit(points: np.ndarray, window: Sequence[int]) -> np.ndarray:
    left, top, right, bottom = window
    return np.stack([2 * (points[:, 0] - left) / (right - left) - 1, 2 * (points[:, 1] - top) / (bottom - top) - 1], 1)


def _from_unit(points: np.ndarray, window: Sequence[int]) -> np.ndarray:
    left, top, right, bottom = window
    return np.stack([(points[:, 0] + 1) / 2 * (right - left) + left, (points[:, 1] + 1) / 2 * (bottom - top) + top], 1)


def _sample(context: torch.Tensor, matrix: torch.Tensor, shift: torch.Tensor, size: int) -> torch.Tensor:
    """Model inputs ``(N, 1, size, size)``: output point p reads context point ``matrix @ p + shift``."""
    theta = torch.cat([matrix, shift[:, :, None]], dim=2)
    grid = F.affine_grid(theta, [len(context), 1, size, size], align_corners=False)
    return F.grid_sample(context, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _normalise(x: torch.Tensor) -> torch.Tensor:
    return (x - 0.5) / 0.25


# ------------------------------------------------------------------------------------ checkpoints and inference
def _build_network(meta: Mapping[str, Any]):
    return LandmarkUNet(len(meta["landmark_names"]), tuple(meta["widths"]))


def load(path: str | Path):
    """The landmark model in a checkpoint: :class:`HeatmapLandmarkModel` or YOLO-pose (``core.training.detect``)."""
    from core.training.checkpoints import load_checkpoint

    meta = load_checkpoint(path)["meta"]
    if meta.get("format") == FORMAT:
        return HeatmapLandmarkModel(path)
    from core.training import detect  # ultralytics only for a YOLO checkpoint

    return detect.LandmarkModel(path)


class HeatmapLandmarkModel:
    """Loaded once, shared by app sessions (a lock guards the forward pass). Needs a ROI box."""

    needs_box = True

    def __init__(self, path: str | Path):
        from core.training.checkpoints import load_checkpoint

        data = load_checkpoint(path)
        meta = data["meta"]
        if meta.get("format") != FORMAT:
            raise ValueError(f"{path} is not a {MODEL_NAME} landmark checkpoint")
        self.meta = meta
        self.net = _build_network(meta)
        self.net.load_state_dict(data["state_dict"])
        self.net.eval()
        self.input_size = int(meta["input_size"])
        self.crop_margin = float(meta["roi_margin"])
        self.refine = int(meta.get("refine", 1))
        self.mirror_average = bool(meta.get("mirror_average", True))
        self.equalised = bool(meta.get("equalise", False))  # checkpoints from before equalising read raw windows
        self._lock = threading.Lock()

    @torch.no_grad()
    def _points(self, views: Sequence[tuple[np.ndarray, Sequence[float], GreyCodes | None]]
                ) -> list[tuple[np.ndarray, np.ndarray]]:
        """``(points, confidence)`` for each ``(pixels, box, greys)`` view, read in one forward pass."""
        contexts, windows = zip(*(context_crop(pixels, box, self.input_size, self.crop_margin, self.equalised, greys)
                                  for pixels, box, greys in views))
        scale = _base_scale(self.crop_margin)
        inputs = _sample(torch.stack(contexts)[:, None], torch.eye(2).expand(len(views), 2, 2) * scale,
                         torch.zeros(len(views), 2), self.input_size)
        with self._lock:
            points, prob = soft_argmax(self.net(_normalise(inputs)))
        confidence = peak_mass(prob, points).numpy()
        return [(_from_unit(points[i].double().numpy() * scale, window), confidence[i])
                for i, window in enumerate(windows)]

    def locate(self, pixels: np.ndarray, box: Sequence[float] | None, min_confidence: float = 0.25
               ) -> tuple[np.ndarray, np.ndarray] | None:
        """``(points (23, 2) in image pixels, confidence (23,))`` for the spine in ``box``, or None when the
        heatmaps are too diffuse (mean confidence under ``min_confidence``: no spine where the box is).

        With ``mirror_average`` the mirrored film is read too and the two answers are averaged: their errors
        are partly independent, and the result no longer depends on which way the patient faces. Both are read
        in one batch at every pass (the window, then ``refine`` times the box the previous points imply)."""
        if box is None:
            return None
        pixels = np.asarray(pixels)
        height, width = pixels.shape[:2]
        x1, y1, x2, y2 = (float(v) for v in box)
        greys = GreyCodes.of(pixels) if self.equalised else None
        views = [(pixels, [x1, y1, x2, y2], greys)]
        if self.mirror_average:
            views.append((np.ascontiguousarray(pixels[:, ::-1]), [width - x2, y1, width - x1, y2],
                          None if greys is None else greys.mirrored()))
        found = self._points(views)
        for _ in range(self.refine):
            if float(found[0][1].mean()) < min_confidence:
                break
            try:
                views = [(view, roi_box_from_landmarks(points, (width, height)), view_greys)
                         for (view, _, view_greys), (points, _) in zip(views, found)]
            except LandmarkError:
                break
            found = self._points(views)
        points, confidence = found[0]
        if float(confidence.mean()) < min_confidence:
            return None
        if len(found) == 1:
            return points, confidence
        swap = landmark_flip_index()  # a mirrored "left" corner is the original's "right" one
        mirrored = found[1][0][swap]
        mirrored[:, 0] = width - mirrored[:, 0]
        return (points + mirrored) / 2, (confidence + found[1][1][swap]) / 2


def visible_points(points: np.ndarray, confidence: np.ndarray, min_point_confidence: float = 0.25
                   ) -> tuple[np.ndarray, list[str]]:
    """Fail soft: ``(points with nan where the heatmap is unsure, names of those points)``.

    A hidden C7 gives diffuse C7 heatmaps while C2-C6 stay sharp; dropping only the unsure points lets the
    caller measure C2-C6 (``measure_landmarks(..., partial=True)``) instead of reporting no vertebrae."""
    points = np.array(points, dtype=np.float64)
    unsure = ~(np.asarray(confidence, dtype=np.float64) >= min_point_confidence)
    points[unsure] = np.nan
    return points, [name for name, gone in zip(LANDMARK_NAMES, unsure) if gone]


# ------------------------------------------------------------------------------------ data
@dataclass
class _Split:
    contexts: torch.Tensor   # (N, 1, C, C)
    points: torch.Tensor     # (N, 23, 2) in context [-1, 1] coordinates
    truth: list[np.ndarray]  # (23, 2) image pixels
    windows: list[tuple[int, int, int, int]]


def _load_split(cfg: HeatmapConfig, split: str, items=None) -> _Split:
    from core.data.datasets import training_items
    from core.data.imaging import ImageReadError, read_image

    records = items if items is not None else training_items(cfg.dataset, split, need_class=False)
    contexts, points, truth, windows = [], [], [], []
    for item in _distinct(records):
        if item.landmarks is None:
            continue
        landmarks = np.asarray(item.landmarks, dtype=np.float64)
        if landmarks.shape != (len(LANDMARK_NAMES), 2) or not np.all(np.isfinite(landmarks)):
            continue  # the loss needs every point; a partial set would teach the model to drop corners
        try:
            pixels = read_image(item.path).pixels
        except ImageReadError as error:
            log.warning("skipped %s: %s", item.path, error)
            continue
        height, width = pixels.shape
        box = item.roi_box or roi_box_from_landmarks(landmarks, (width, height))
        context, window = context_crop(pixels, box, cfg.input_size, cfg.roi_margin, cfg.equalise)
        contexts.append(context[None])
        points.append(torch.from_numpy(_to_unit(landmarks, window)).float())
        truth.append(landmarks)
        windows.append(window)
    if not contexts:
        return _Split(torch.zeros(0, 1, 1, 1), torch.zeros(0, len(LANDMARK_NAMES), 2), [], [])
    return _Split(torch.stack(contexts), torch.stack(points), truth, windows)


def _distinct(records) -> list:
    """Each film once: a fine-tuning pool repeats films by index, never by reading them again."""
    seen, out = set(), []
    for item in records:
        if str(item.path) not in seen:
            seen.add(str(item.path))
            out.append(item)
    return out


def _concat(a: _Split, b: _Split) -> _Split:
    if not a.truth:
        return b
    if not b.truth:
        return a
    return _Split(torch.cat([a.contexts, b.contexts]), torch.cat([a.points, b.points]), a.truth + b.truth,
                  a.windows + b.windows)


def _augment(cfg: HeatmapConfig, n: int, generator: torch.Generator):
    """Random (matrix, shift, flipped) mapping model-input [-1, 1] coordinates into the context crop."""
    def uniform(size, bound):
        return (torch.rand(size, generator=generator) * 2 - 1) * bound

    angle = uniform(n, math.radians(cfg.rotate_deg))
    scale = (1 + uniform((n, 2), cfg.scale)) * _base_scale(cfg.roi_margin)
    shift = uniform((n, 2), cfg.shift)
    flipped = torch.rand(n, generator=generator) < 0.5
    cos, sin = torch.cos(angle), torch.sin(angle)
    rotation = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], 1)
    mirror = torch.stack([torch.where(flipped, -1.0, 1.0), torch.ones(n)], -1)
    matrix = rotation * scale[:, None, :] * mirror[:, None, :]
    return matrix, shift, flipped


def augmented_batch(contexts: torch.Tensor, points: torch.Tensor, cfg: HeatmapConfig, generator: torch.Generator,
                    photometric: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(inputs (N, 1, S, S), points (N, 23, 2) in input [-1, 1] coordinates, flipped (N,))`` for one step."""
    matrix, shift, flipped = _augment(cfg, len(contexts), generator)
    inputs = _sample(contexts, matrix, shift, cfg.input_size)
    if photometric:
        inputs = _photometric(film_artifacts(inputs, cfg.film, generator) if cfg.film > 0 else inputs, generator)
    # the same map applied backwards to the points: input = matrix^-1 (context - shift)
    target = torch.linalg.solve(matrix, (points - shift[:, None, :]).transpose(1, 2)).transpose(1, 2)
    # a mirrored image shows "C4 top left" where "C4 top right" was
    target = torch.where(flipped[:, None, None], target[:, landmark_flip_index()], target)
    return inputs, target, flipped


def _photometric(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Exposure differences between films: gamma, contrast, brightness, quantum noise."""
    n = len(x)
    gamma = torch.exp((torch.rand(n, 1, 1, 1, generator=generator) * 2 - 1) * 0.4)
    contrast = 0.8 + 0.4 * torch.rand(n, 1, 1, 1, generator=generator)
    brightness = (torch.rand(n, 1, 1, 1, generator=generator) * 2 - 1) * 0.1
    noise = 0.02 * torch.randn(x.shape, generator=generator)
    return x.clamp(0, 1) ** gamma * contrast + brightness + noise


def _gaussian_targets(points: torch.Tensor, size: int, sigma_cells: float = 1.5) -> torch.Tensor:
    """Normalised Gaussian maps at the true points: a shape prior that keeps each heatmap single-peaked."""
    centres = (torch.arange(size, dtype=points.dtype, device=points.device) + 0.5) / size * 2 - 1
    sigma = sigma_cells / size * 2
    gx = torch.exp(-((centres - points[..., 0:1]) ** 2) / (2 * sigma ** 2))
    gy = torch.exp(-((centres - points[..., 1:2]) ** 2) / (2 * sigma ** 2))
    maps = gy[..., :, None] * gx[..., None, :]
    return maps / maps.sum((-1, -2), keepdim=True).clamp_min(1e-12)


def _loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    points, prob = soft_argmax(logits)
    heat = _gaussian_targets(target, logits.shape[-1])
    cross_entropy = -(heat * torch.log(prob.clamp_min(1e-8))).sum((-1, -2)).mean()
    return (points - target).abs().mean() + 0.01 * cross_entropy


def train_step(net, optimizer, contexts: torch.Tensor, points: torch.Tensor, cfg: HeatmapConfig,
               generator: torch.Generator, device: torch.device) -> float:
    """One optimizer step on a freshly augmented batch; returns the loss."""
    inputs, target, _ = augmented_batch(contexts, points, cfg, generator)
    loss = _loss(net(_normalise(inputs.to(device))), target.to(device))
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.item()


@torch.no_grad()
def _predict_split(net, split: _Split, cfg: HeatmapConfig, device: torch.device, batch: int = 64) -> list[np.ndarray]:
    """Points in image pixels for each item, read on its true window (one pass)."""
    net.eval()
    scale = _base_scale(cfg.roi_margin)
    out = []
    for start in range(0, len(split.contexts), batch):
        contexts = split.contexts[start:start + batch].to(device)
        n = len(contexts)
        inputs = _sample(contexts, (torch.eye(2) * scale).expand(n, 2, 2).to(device), torch.zeros(n, 2, device=device),
                         cfg.input_size)
        points, _ = soft_argmax(net(_normalise(inputs)))
        for i, p in enumerate(points.cpu().double().numpy()):
            out.append(_from_unit(p * scale, split.windows[start + i]))
    return out


# ------------------------------------------------------------------------------------ training
def _meta(cfg: HeatmapConfig, extra: Mapping[str, Any] | None = None) -> dict:
    return {"format": FORMAT, "model": MODEL_NAME, "task": "landmarks", "input_size": cfg.input_size,
            "roi_margin": cfg.roi_margin, "crop": "roi", "widths": list(cfg.widths), "refine": cfg.refine,
            "mirror_average": cfg.mirror_average, "equalise": cfg.equalise,
            "landmark_names": list(LANDMARK_NAMES), "dataset": cfg.dataset, "config": cfg.to_dict(),
            "saved_at": layout.now_iso(), **(extra or {})}


def fit(config: Mapping[str, Any] | HeatmapConfig, run_dir: str | Path, *, resume: bool = False,
        progress_callback: ProgressCallback | None = None, items: Mapping[str, Sequence[Any]] | None = None) -> dict:
    """Train the heatmap landmark model into ``run_dir``; returns the test report (also test_report.json).

    ``items`` maps split names to TrainingItem-like records (tests), or is a fine-tuning :class:`Mix`; without it the
    store's patient-level splits of ``config.dataset`` are used, mixed with ``mix_with``'s when fine-tuning. ``resume`` continues from last.pt. A bad dataset ends the run as failed
    (LandmarkTrainingError), SIGTERM as cancelled (RunCancelled); status.json says which.
    """
    cfg = config if isinstance(config, HeatmapConfig) else HeatmapConfig.from_dict(config)
    with RunRecorder(run_dir, "landmarks", COLUMNS, model=MODEL_NAME, metric=METRIC) as run:
        run.write_config(cfg.to_dict())
        run.update(epoch=0, epochs=cfg.epochs, best_metric=None, message="loading images")
        return _fit(cfg, run, progress_callback, items, resume, pick_device(cfg.device))


def _fit(cfg: HeatmapConfig, run: RunRecorder, progress_callback, items, resume: bool, device: torch.device) -> dict:
    run_dir = run.run_dir
    if device.type == "cpu":
        torch.set_num_threads(settings.cpu_threads())
    started = time.time()
    repeat, mixed, records, mixed_with = 1, None, items, None
    if items is None or isinstance(items, Mix):  # fine-tuning: another dataset's films mixed in
        mix = items if isinstance(items, Mix) else training_mix(cfg, "landmarks", ("train", "val"), need_class=False)
        repeat, mixed, mixed_with = mix.repeat, mix.splits["train"][mix.team_train:], mix.mixed_with
        records = {**mix.splits, "train": mix.splits["train"][:mix.team_train]}
    splits = {name: _load_split(cfg, name, records.get(name, [])) for name in ("train", "val")}
    team_train = len(splits["train"].truth)
    if mixed:
        if team_train == 0:
            raise LandmarkTrainingError(f"dataset {cfg.dataset!r} has no training film with all "
                                        f"{len(LANDMARK_NAMES)} landmarks to fine-tune on (split it first: python -m "
                                        f"core split --dataset {cfg.dataset} --no-stratify)")
        splits["train"] = _concat(splits["train"], _load_split(cfg, "train", mixed))
    if len(splits["train"].truth) == 0:
        raise LandmarkTrainingError(f"dataset {cfg.dataset!r} has no training image with all "
                                    f"{len(LANDMARK_NAMES)} landmarks")
    if len(splits["val"].truth) == 0:
        raise LandmarkTrainingError(f"dataset {cfg.dataset!r} has no validation image with landmarks: "
                                    "make patient-level splits first (python -m core split)")
    log.info("%d train and %d val images cached in %.1f s", len(splits["train"].truth), len(splits["val"].truth),
             time.time() - started)

    torch.manual_seed(cfg.seed)
    net = LandmarkUNet(len(LANDMARK_NAMES), tuple(cfg.widths)).to(device)
    if cfg.init_from:  # continue an earlier run (or the promoted model) as a new one: its weights, a fresh schedule
        source = init_checkpoint(cfg.init_from, "landmarks")
        from core.training.checkpoints import load_checkpoint

        try:
            net.load_state_dict(load_checkpoint(source)["state_dict"])
        except (ValueError, FileNotFoundError) as error:
            raise LandmarkTrainingError(f"init_from: {error}") from None
        log.info("started from the weights of %s", source)
    optimizer = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    train_split = splits["train"]
    # each of the team's films `repeat` times an epoch (fine-tuning mix), every other film once
    pool = torch.cat([torch.arange(team_train).repeat(repeat), torch.arange(team_train, len(train_split.truth))])
    n = len(pool)
    steps_per_epoch = max(1, math.ceil(n / cfg.batch_size))
    total_steps = steps_per_epoch * cfg.epochs
    scheduler = warmup_cosine(optimizer, min(50, total_steps // 10), total_steps)
    task = _LandmarkEpochs(cfg, net, optimizer, scheduler, train_split, splits["val"], pool, steps_per_epoch, device,
                           mixed_with)
    Trainer(run, task, epochs=cfg.epochs, metric="val_mean_error_px", higher_is_better=False,
            patience=cfg.patience, on_epoch=progress_callback).fit(resume)

    run.update(message="evaluating on the test split", eta_s=None)
    report = evaluate(run_dir, items=None if items is None else
                      (items.splits if isinstance(items, Mix) else items).get("test", []))
    report["seconds"] = round(time.time() - started, 1)
    run.write_json(layout.TEST_REPORT, report)
    run.done(f"done: test error {report['mean_error_px']:.2f} px, Cobb MAE {report['cobb_mae_deg']:.2f} deg"
             if report.get("cobb_mae_deg") is not None else "done (no test images with landmarks)")
    return report


class _LandmarkEpochs(EpochTask):
    """The landmark model's hooks for the engine's loop (core.engine.trainer)."""

    def __init__(self, cfg: HeatmapConfig, net, optimizer, scheduler, train_split: _Split, val_split: _Split,
                 pool: torch.Tensor, steps_per_epoch: int, device: torch.device, mixed_with):
        self.cfg, self.net, self.optimizer, self.scheduler, self.device = cfg, net, optimizer, scheduler, device
        self.train_split, self.val_split, self.pool, self.steps = train_split, val_split, pool, steps_per_epoch
        self.mixed_with, self.meta = mixed_with, {}

    def train_epoch(self, epoch: int) -> dict:
        cfg = self.cfg
        self.net.train()
        generator = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)  # resumable: same batches again
        order = self.pool[torch.randperm(len(self.pool), generator=generator)]
        losses, lr = [], self.optimizer.param_groups[0]["lr"]
        for step in range(self.steps):
            index = order[step * cfg.batch_size:(step + 1) * cfg.batch_size]
            if len(index) == 0:
                index = order[:cfg.batch_size]
            lr = self.optimizer.param_groups[0]["lr"]
            losses.append(train_step(self.net, self.optimizer, self.train_split.contexts[index],
                                     self.train_split.points[index], cfg, generator, self.device))
            self.scheduler.step()
        return {"train_loss": round(float(np.mean(losses)), 5), "lr": lr}

    def validate(self, epoch: int) -> dict:
        val = landmark_errors(list(zip(_predict_split(self.net, self.val_split, self.cfg, self.device),
                                       self.val_split.truth)))
        self.meta = _meta(self.cfg, {"epoch": epoch, "val": val, "mixed_with": self.mixed_with})
        return {"val_mean_error_px": round(val["mean_error_px"], 4),
                "val_mean_error_pct_c2c7": round(val["mean_error_pct_c2c7"], 4),
                "val_cobb_mae_deg": None if val["cobb_mae_deg"] is None else round(val["cobb_mae_deg"], 4)}

    def state(self) -> dict:
        return {"state_dict": self.net.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "meta": self.meta}

    def load_state(self, state) -> None:
        self.net.load_state_dict(state["state_dict"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])

    def best_payload(self) -> dict:
        return {"state_dict": state_dict_of(self.net), "meta": self.meta}

    def message(self, epoch: int, epochs: int, row, improved: bool) -> str:
        text = f"epoch {epoch}/{epochs}: val error {row['val_mean_error_px']:.2f} px"
        return text + (f", Cobb MAE {row['val_cobb_mae_deg']:.2f} deg" if row["val_cobb_mae_deg"] is not None else "")


def evaluate(run_dir: str | Path, split: str = "test", items: Sequence[Any] | None = None) -> dict:
    """The run's best model on a split of its dataset, through :meth:`HeatmapLandmarkModel.locate` (refinement
    and mirror reading included) starting from each image's ROI box; also written to ``<split>_report.json``."""
    from core.data.imaging import read_image

    model = HeatmapLandmarkModel(Path(run_dir) / "best.pt")
    cfg = HeatmapConfig.from_dict(model.meta["config"])
    from core.data.datasets import training_items

    records = items if items is not None else training_items(cfg.dataset, split, need_class=False)
    pairs, missed = [], 0
    for item in records:
        if item.landmarks is None:
            continue
        truth = np.asarray(item.landmarks, dtype=np.float64)
        if truth.shape != (len(LANDMARK_NAMES), 2) or not np.all(np.isfinite(truth)):
            continue
        pixels = read_image(item.path).pixels
        box = item.roi_box or roi_box_from_landmarks(truth, pixels.shape[::-1])
        found = model.locate(pixels, box, min_confidence=0.0)
        if found is None:
            missed += 1
            continue
        pairs.append((found[0], truth))
    report = landmark_errors(pairs)
    report.update(split=split, missed=missed, model=MODEL_NAME)
    layout.atomic_write_text(Path(run_dir) / f"{split}_report.json", json.dumps(report, indent=1))
    return report
