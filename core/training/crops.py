"""Classifier crops and their augmentation, shared by training, evaluation and the predictor.

Input to every classifier: the labelled ROI box widened by ``roi_margin`` on each side, resized (stretched)
to a square ``input_size``, one gray channel, normalised with ``NORMALISATION``. The predictor must crop
the same way: use :func:`classifier_crop` / ``core.training.checkpoints.classify_crops`` with the checkpoint's meta.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import Dataset, Sampler
from torchvision.transforms import InterpolationMode, v2
from torchvision.transforms.v2 import functional as tvf

from core import settings
from core.runs.configs import ConfigError, ClassifyConfig

# the run's logger: run_logging sends it to train.log
log = logging.getLogger("cervicurve.run")

# ImageNet's RGB statistics folded to one gray channel (luma weights): ImageNet-initialised 1-channel
# stems see inputs on the scale they were trained on; from-scratch models do not care.
NORMALISATION = {"mean": [0.449], "std": [0.226]}
# Extra context cached around the ROI for training, so rotation and crop jitter rarely reach past the image.
CONTEXT_EXTRA = 0.15


@dataclass
class Sample:
    """One training image: what the loaders need from a ``core.data.datasets.TrainingItem``."""

    path: str
    label: int
    roi_box: list[float] | None
    patient_id: str
    image_id: str


def to_samples(items: Sequence[Any], classes: Sequence[str] = settings.CLASSES) -> list[Sample]:
    """TrainingItem-like records (attributes or dict keys: path, label, roi_box, patient_id, image_id)."""
    samples = []
    for item in items:
        get = (lambda k, d=None: item.get(k, d)) if isinstance(item, Mapping) else (lambda k, d=None: getattr(item, k, d))
        label = get("label")
        if isinstance(label, str):
            if label not in classes:
                raise ConfigError(f"label '{label}' of {get('path')} is not one of: {', '.join(classes)}")
            label = classes.index(label)
        elif label is None or not 0 <= int(label) < len(classes):
            raise ConfigError(f"image {get('path')} has no usable class label ({label!r})")
        path = Path(str(get("path")))
        if not path.is_absolute():
            path = settings.home() / path
        box = get("roi_box")
        samples.append(Sample(path=str(path), label=int(label),
                              roi_box=[float(v) for v in box] if box is not None else None,
                              patient_id=str(get("patient_id", "") or ""),
                              image_id=str(get("image_id", "") or path.stem)))
    return samples


def load_split(cfg: ClassifyConfig, split: str) -> list[Sample]:
    """The split's labelled images from the annotation store (``core.data.datasets.training_items``)."""
    from core.data import datasets

    try:
        items = datasets.training_items(cfg.dataset, split)
    except ValueError as exc:
        raise ConfigError(f"dataset '{cfg.dataset}', split '{split}': {exc}") from None
    return to_samples(items)


def crop_box(roi_box: Sequence[float] | None, image_size: tuple[int, int], margin: float) -> list[float]:
    """The region a classifier sees: the ROI box widened by ``margin`` x its size on each side.

    ``image_size`` is ``(width, height)``; with no box, the whole image. The region may reach past the
    image (zero padded), so the crop keeps its scale at the edges. Pass this box to ``explain.cam_to_image``.
    """
    width, height = image_size
    if roi_box is None:
        return [0.0, 0.0, float(width), float(height)]
    x1, y1, x2, y2 = (float(v) for v in roi_box)
    if not (x2 > x1 and y2 > y1):
        raise ValueError(f"ROI box {list(roi_box)} is empty: need x1 < x2 and y1 < y2")
    dx, dy = (x2 - x1) * margin, (y2 - y1) * margin
    return [x1 - dx, y1 - dy, x2 + dx, y2 + dy]


def _resized_region(pixels: torch.Tensor, box: Sequence[float], size: int) -> torch.Tensor:
    x1, y1, x2, y2 = box
    top, left = int(math.floor(y1)), int(math.floor(x1))
    height, width = max(1, int(math.ceil(y2)) - top), max(1, int(math.ceil(x2)) - left)
    return tvf.resized_crop(pixels, top, left, height, width, [size, size],
                            interpolation=InterpolationMode.BILINEAR, antialias=True)


def classifier_crop(pixels: np.ndarray, roi_box: Sequence[float] | None, input_size: int,
                    margin: float = 0.05) -> torch.Tensor:
    """``1 x S x S`` float32 crop in [0, 1] (not normalised) of a ``H x W`` radiograph, as training sees it."""
    image = torch.from_numpy(np.ascontiguousarray(pixels, dtype=np.float32))[None]
    box = crop_box(roi_box, (image.shape[-1], image.shape[-2]), margin)
    return _resized_region(image, box, input_size).clamp_(0.0, 1.0)


def normalise(batch: torch.Tensor, meta: Mapping[str, Any] | None = None) -> torch.Tensor:
    norm = (meta or {}).get("normalisation", NORMALISATION)
    mean = torch.tensor(norm["mean"], dtype=batch.dtype, device=batch.device).view(-1, 1, 1)
    std = torch.tensor(norm["std"], dtype=batch.dtype, device=batch.device).view(-1, 1, 1)
    return (batch - mean) / std


class RandomGamma(nn.Module):
    """Gamma drawn log-uniformly in [1/(1+g), 1+g]: exposure and detector response differ between sites."""

    def __init__(self, strength: float):
        super().__init__()
        self.log_range = math.log1p(strength)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        if self.log_range == 0:
            return image
        gamma = math.exp((torch.rand(()).item() * 2 - 1) * self.log_range)
        return tvf.adjust_gamma(image.clamp(0, 1), gamma)


def film_artifacts(batch: torch.Tensor, probability: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """What clinical films show and clean phantoms lack, drawn afresh per image (``N x 1 x S x S`` in [0, 1]).

    Each image, with ``probability``, gets a random subset of: shoulders over the lower end (a bright band rising
    from the bottom), a film-like S curve, CR/DX unsharp masking, low resolution (down and up again),
    Poisson-Gaussian noise, a collimation or black-border strip on one side, burned-in text, JPEG compression.
    Each image's draws come from a seed taken from ``generator`` (the landmark trainer's, so a resumed run repeats
    its batches), else from torch's global stream (the classifier's loader reseeds it every epoch). The work is
    numpy/scipy/PIL per image: torch's small-tensor ops cost ~20x more on a busy CPU.
    """
    from PIL import Image, ImageDraw, ImageFont
    from scipy import ndimage

    from core.data.phantom import BURNED_IN_TEXT

    out = batch.clone()
    n, _, h, w = out.shape
    seeds = torch.randint(0, 2 ** 62, (n,), generator=generator).tolist()
    chosen = torch.rand(n, generator=generator).tolist()
    for i in range(n):
        if chosen[i] >= probability:
            continue
        rng = np.random.default_rng(seeds[i])
        image = np.clip(out[i, 0].numpy().astype(np.float32), 0, 1)
        pick = rng.random(8)
        if pick[0] < 0.35:  # shoulders: soft bright band over the lowest 5-30 % of the crop
            rows = np.arange(h, dtype=np.float32)[:, None]
            edge = h * (0.95 - 0.25 * rng.random())
            band = 1 / (1 + np.exp(-(rows - edge) / max(1.0, 0.03 * h)))
            image = image + rng.uniform(0.15, 0.65) * band * (1 - image)
        if pick[1] < 0.3:  # film's characteristic curve
            k = rng.uniform(4, 9)
            low = 1 / (1 + np.exp(k / 2))
            image = (1 / (1 + np.exp(-k * (image - 0.5))) - low) / (1 - 2 * low)
        if pick[2] < 0.45:  # unsharp masking, 1-4 px kernel, up to 2.5x: edge halos
            image = image + rng.uniform(0.5, 2.5) * (image - ndimage.gaussian_filter(image, rng.uniform(1, 4)))
        if pick[3] < 0.3:  # a low-resolution film: 30-70 % of the crop's side, then back up
            factor = rng.uniform(0.3, 0.7)
            small = ndimage.zoom(ndimage.gaussian_filter(image, 0.5 / factor), factor, order=1)
            image = ndimage.zoom(small, (h / small.shape[0], w / small.shape[1]), order=1)[:h, :w]
        image = np.clip(image, 0, 1)
        if pick[4] < 0.5:  # Poisson-Gaussian: signal-dependent quanta plus flat electronic noise
            quanta, read = rng.uniform(0.002, 0.022), rng.uniform(0, 0.01)
            image = np.clip(image + rng.standard_normal(image.shape) * np.sqrt(quanta * image + read ** 2), 0, 1)
        if pick[5] < 0.2:  # collimation or a black border along one side
            width, value = max(1, int(rng.uniform(0, 0.12) * min(h, w))), float(rng.random() < 0.5)
            side = int(rng.integers(4))
            if side == 0:
                image[:, :width] = value
            elif side == 1:
                image[:, w - width:] = value
            elif side == 2:
                image[:width] = value
            else:
                image[h - width:] = value
        if pick[6] < 0.25:  # burned-in text somewhere on the crop
            canvas = Image.new("L", (w, h), 0)
            font = ImageFont.load_default(size=max(6, int(h * rng.uniform(0.05, 0.1))))
            ImageDraw.Draw(canvas).text((rng.uniform(0, 0.7) * w, rng.uniform(0, 0.9) * h),
                                        str(rng.choice(BURNED_IN_TEXT)), fill=255, font=font)
            ink = np.asarray(canvas, np.float32) / 255.0
            image = image * (1 - ink) + ink * (0.98 if rng.random() < 0.85 else 0.02)
        if pick[7] < 0.4:  # JPEG, quality 15-80
            import io

            buffer = io.BytesIO()
            Image.fromarray(np.round(image * 255).astype(np.uint8)).save(buffer, format="JPEG",
                                                                         quality=int(rng.integers(15, 81)))
            image = np.asarray(Image.open(io.BytesIO(buffer.getvalue())), np.float32) / 255.0
        out[i, 0] = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))
    return out


class FilmArtifacts(nn.Module):
    """:func:`film_artifacts` as a transform of one ``1 x S x S`` crop."""

    def __init__(self, probability: float):
        super().__init__()
        self.probability = probability

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return film_artifacts(image[None], self.probability)[0]


class RoiJitter(nn.Module):
    """RandomResizedCrop for an ROI: rotate the cached context, then cut a box around the ROI whose side
    varies by ``scale`` and whose centre moves by ``shift`` (fractions of the crop side), resized to ``size``.

    ``inner`` is the fraction of the context side the un-jittered crop covers.
    """

    def __init__(self, size: int, inner: float, rotation_deg: float, scale: float, shift: float):
        super().__init__()
        self.size, self.inner, self.scale, self.shift = size, inner, scale, shift
        self.rotate = (v2.RandomRotation(rotation_deg, interpolation=InterpolationMode.BILINEAR)
                       if rotation_deg > 0 else nn.Identity())

    def forward(self, context: torch.Tensor) -> torch.Tensor:
        context = self.rotate(context)
        side = context.shape[-1]
        u = torch.rand(4).tolist()
        w = self.inner * side * (1 + (2 * u[0] - 1) * self.scale)
        h = self.inner * side * (1 + (2 * u[1] - 1) * self.scale)
        cx = side / 2 + (2 * u[2] - 1) * self.shift * self.inner * side
        cy = side / 2 + (2 * u[3] - 1) * self.shift * self.inner * side
        return _resized_region(context, (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2), self.size)


def train_augmentation(cfg: ClassifyConfig, size: int, inner: float) -> nn.Module:
    """Radiograph-safe augmentation: small rotation, ROI scale/shift jitter, clinical-film artifacts
    (``aug_film``: see :func:`film_artifacts`), brightness/contrast, gamma, noise.

    No horizontal flip by default (``aug_hflip``): clinical laterals follow a facing convention and carry
    burned-in laterality markers, so mirrored images are ones the model never meets at inference. Turn it
    on when the data mix both facings (the phantoms do) or after facing normalisation.
    """
    steps: list[nn.Module] = [RoiJitter(size, inner, cfg.aug_rotation_deg, cfg.aug_scale, cfg.aug_shift)]
    if cfg.aug_hflip:
        steps.append(v2.RandomHorizontalFlip())
    if cfg.aug_film > 0:
        steps.append(FilmArtifacts(cfg.aug_film))
    if cfg.aug_brightness or cfg.aug_contrast:
        steps.append(v2.ColorJitter(brightness=cfg.aug_brightness, contrast=cfg.aug_contrast))
    steps.append(RandomGamma(cfg.aug_gamma))
    if cfg.aug_noise_std > 0:
        steps.append(v2.RandomApply([v2.GaussianNoise(sigma=cfg.aug_noise_std, clip=True)], p=0.5))
    return v2.Compose(steps)


def context_inner(margin: float) -> float:
    """Fraction of the cached training context's side that the plain classifier crop covers."""
    return (1 + 2 * margin) / (1 + 2 * (margin + CONTEXT_EXTRA))


class CropDataset(Dataset):
    """ROI crops of samples; with ``augment`` set, each item is a fresh augmentation of a cached context.

    Crops are decoded once (``core.training.crop_cache``: uint8 files in the workspace, shared by every run) and
    held in memory as uint8 when they fit in ``cache_mb``; with ``cache_mb`` 0 every access reads the file.
    Returns ``(crop 1 x S x S in [0, 1], label)``; normalisation happens on the device.
    """

    def __init__(self, samples: Sequence[Sample], size: int, margin: float,
                 augment: nn.Module | None = None, cache_mb: int = 2048):
        from core.training.crop_cache import CropCache, crop_key

        self.samples, self.size, self.margin, self.augment = list(samples), size, margin, augment
        # with augmentation, cache a wider context so rotation/jitter see real pixels, not padding
        self.extra = CONTEXT_EXTRA if augment is not None else 0.0
        self.inner = context_inner(margin) if augment is not None else 1.0
        self.base_size = int(round(size / self.inner))
        # a film repeated in the list (a fine-tuning mix repeats the team's few films) is read and cached once
        distinct: dict[tuple, int] = {}
        for index, sample in enumerate(self.samples):
            distinct.setdefault((str(sample.path), tuple(sample.roi_box or ())), index)
        self.cache: list[torch.Tensor] | None = None
        if cache_mb > 0 and len(distinct) * self.base_size ** 2 <= cache_mb * 2 ** 20:
            disk = CropCache()
            loaded = {key: disk.get(crop_key(key[0], key[1], self.base_size, self.margin + self.extra),
                                    self.base_size, lambda index=index: self._load(index))
                      for key, index in distinct.items()}
            self.cache = [loaded[(str(sample.path), tuple(sample.roi_box or ()))] for sample in self.samples]
            if disk.misses:
                log.info("crops: %d made and cached, %d read from the crop cache", disk.misses, disk.hits)

    def _load(self, index: int) -> torch.Tensor:
        from core.data.imaging import read_image

        sample = self.samples[index]
        pixels = read_image(sample.path).pixels
        if sample.roi_box is None:
            log.warning("no ROI box for %s (image %s): the whole image is used", sample.path, sample.image_id)
        return classifier_crop(pixels, sample.roi_box, self.base_size, self.margin + self.extra)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        base = self.cache[index].float().div_(255.0) if self.cache is not None else self._load(index)
        crop = self.augment(base) if self.augment is not None else base
        return crop.clamp(0.0, 1.0), self.samples[index].label


class DistributedWeightedSampler(Sampler):
    """Class-balanced sampling for DDP: every rank draws the same weighted list, then takes its share."""

    def __init__(self, weights: Sequence[float], num_samples: int, rank: int, world_size: int, seed: int):
        self.weights = torch.as_tensor(weights, dtype=torch.double)
        self.rank, self.world_size, self.seed, self.epoch = rank, world_size, seed, 0
        self.per_rank = int(math.ceil(num_samples / world_size))

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        drawn = torch.multinomial(self.weights, self.per_rank * self.world_size, True, generator=generator)
        return iter(drawn[self.rank::self.world_size].tolist())

    def __len__(self) -> int:
        return self.per_rank


def load_crops(samples: Sequence[Sample], size: int, margin: float) -> np.ndarray:
    """Evaluation crops ``N x S x S`` float32 in [0, 1] (no augmentation, no cache), as the predictor makes them."""
    dataset = CropDataset(samples, size, margin, None, cache_mb=0)
    return np.stack([dataset[i][0][0].numpy() for i in range(len(dataset))]) if len(dataset) else \
        np.zeros((0, size, size), np.float32)
