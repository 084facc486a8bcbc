"""The ``classify`` task: S-ResNet-34 and the study's comparison models, a config in, a run folder out.

``fit`` is ``train(cfg, run_dir, resume=...)``; the same code runs under ``torchrun --nproc_per_node N`` (DDP: gloo
on CPU, nccl on CUDA; ``batch_size`` is per process; only rank 0 writes). The run folder is written by
``core.runs.recorder.RunRecorder`` like every task's; ``last.pt`` adds optimizer/scheduler state and ``best.pt`` is
``{"state_dict", "meta"}`` with plain-typed meta (``torch.load(weights_only=True)``). Crops come from
``core.training.crops``, checkpoints from ``core.training.checkpoints``; this module owns the loop and evaluation.

Repeatability: every epoch reseeds torch/numpy/random from ``(seed, epoch)``, so an uninterrupted run and
one resumed from ``last.pt`` draw the same shuffles and augmentations, and two CPU runs with the same seed
write the same ``metrics.csv`` (apart from the ``seconds`` column).
"""
from __future__ import annotations

import contextlib
import inspect
import json
import logging
import math
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as nnf
from torch.utils.data import DataLoader, Sampler

from core import settings
from core.runs import layout
from core.training.checkpoints import (classify_crops, load_checkpoint, load_classifier, state_dict_of,
                                      svm_to_tensors)
from core.training.crops import (NORMALISATION, CropDataset, DistributedWeightedSampler, RoiJitter, Sample,
                                 context_inner, load_crops, load_split, normalise, to_samples, train_augmentation)
from core.training.devices import pick_device
from core.training.schedule import warmup_cosine
from core.training.finetune import training_mix
from core.runs.configs import ClassifyConfig, ConfigError, init_checkpoint, to_plain
from core.runs.recorder import RunRecorder
from core.engine.trainer import EpochTask, Trainer

log = logging.getLogger("cervicurve.run")
# the task's own metrics.csv columns, after layout.COMMON_COLUMNS
COLUMNS = ("val_acc", "val_macro_f1")
METRIC = "val macro-F1"


# ============================================================================================ devices, DDP
@dataclass
class Runtime:
    device: torch.device
    amp_dtype: torch.dtype | None
    channels_last: bool
    workers: int
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def make_runtime(cfg: ClassifyConfig) -> Runtime:
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(cfg.device, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world_size > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if device.type == "cpu":
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        torch.set_num_threads(max(1, settings.cpu_threads() // local_world))
    amp = (device.type == "cuda") if cfg.amp == "auto" else bool(cfg.amp)
    amp_dtype = None
    if amp:
        if device.type == "cuda":
            amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        elif device.type == "cpu":
            amp_dtype = torch.bfloat16
        else:
            amp_dtype = torch.float16
    # NHWC: faster convolutions on CUDA (tensor cores) and on CPU too (oneDNN; measured +11-14 % per ResNet step
    # at 96 px on 2 cores, benchmarks/results/train_throughput.md)
    channels_last = (device.type in ("cuda", "cpu")) if cfg.channels_last == "auto" else bool(cfg.channels_last)
    workers = cfg.workers
    if workers < 0:  # auto: decoding is cheap next to a CPU forward pass; a GPU needs feeding
        workers = 0 if device.type == "cpu" else min(8, max(1, (os.cpu_count() or 2) // max(1, world_size) - 1))
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = not cfg.deterministic
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    return Runtime(device, amp_dtype, channels_last, workers, rank, world_size, local_rank)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


def _epoch_seed(seed: int, epoch: int) -> int:
    return seed * 100_003 + epoch


# ============================================================================================ models
def model_spec(name: str):
    from models.registry import MODELS

    if name not in MODELS:
        raise ConfigError(f"model '{name}' is not one of: {', '.join(MODELS)}")
    return MODELS[name]


def _input_size(cfg: ClassifyConfig) -> int:
    """The crop side: the config's, else (fine-tuning) the start model's, else the model's default."""
    if cfg.input_size:
        return int(cfg.input_size)
    if cfg.init_from:  # S-ResNet's weight matrices are sized for the crop the start model was trained on
        meta = load_checkpoint(init_checkpoint(cfg.init_from, "classify")).get("meta", {})
        if meta.get("input_size"):
            return int(meta["input_size"])
    return int(model_spec(cfg.model).default_input_size)


def _builder_options(cfg: ClassifyConfig, input_size: int) -> dict:
    """model_options, plus input_size / weights_path for builders that take them."""
    spec = model_spec(cfg.model)
    options = dict(cfg.model_options)
    params = inspect.signature(spec.builder).parameters
    takes_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
    for name in ("input_size", "image_size"):  # S-ResNet matrices / SVM HOG grid follow the crop size
        if name in params and name not in options:
            options[name] = input_size
    if cfg.weights_path and not _is_cervicurve_checkpoint(cfg.weights_path):
        if "weights_path" not in params and not takes_any:
            raise ConfigError(f"model '{cfg.model}' cannot start from weights_path (it takes no pretrained weights)")
        options["weights_path"] = str(Path(cfg.weights_path).expanduser())
    return options


def _is_cervicurve_checkpoint(path: str) -> bool:
    try:
        data = torch.load(Path(path).expanduser(), map_location="cpu", weights_only=True)
    except Exception:
        return False
    return isinstance(data, dict) and "state_dict" in data and "meta" in data


def build_classifier(cfg: ClassifyConfig, input_size: int) -> nn.Module:
    from models.registry import build_model

    options = _builder_options(cfg, input_size)
    try:
        model = build_model(cfg.model, num_classes=len(settings.CLASSES), in_channels=1, **options)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"model_options {cfg.model_options} do not fit model '{cfg.model}': {exc}") from None
    if cfg.weights_path and _is_cervicurve_checkpoint(cfg.weights_path):  # fine-tune from an earlier run
        state = torch.load(Path(cfg.weights_path).expanduser(), map_location="cpu", weights_only=True)["state_dict"]
        missing, unexpected = model.load_state_dict(state, strict=False)
        log.info("started from %s (missing %d, unexpected %d keys)", cfg.weights_path, len(missing), len(unexpected))
    if cfg.init_from:  # continue an earlier run (or the promoted model) as a new one: its weights, a fresh schedule
        source = init_checkpoint(cfg.init_from, "classify")
        try:
            start = load_checkpoint(source)
        except (ValueError, FileNotFoundError) as error:
            raise ConfigError(f"init_from: {error}") from None
        if start.get("meta", {}).get("model") not in (None, cfg.model):
            raise ConfigError(f"init_from {cfg.init_from}: that model is a {start['meta']['model']}, this run trains "
                              f"a {cfg.model}; set model={start['meta']['model']} to fine-tune it")
        model.load_state_dict(start["state_dict"])
        log.info("started from the weights of %s", source)
    return model


def count_parameters(model: Any) -> int:
    if isinstance(model, nn.Module):
        return int(sum(p.numel() for p in model.parameters()))
    counter = getattr(model, "n_parameters", None)
    return int(counter() if callable(counter) else counter or 0)


# ============================================================================================ training
def _class_counts(samples: Sequence[Sample], n_classes: int) -> np.ndarray:
    return np.bincount([s.label for s in samples], minlength=n_classes).astype(np.float64)


def _loss_weights(cfg: ClassifyConfig, counts: np.ndarray) -> torch.Tensor | None:
    if cfg.class_weighting != "balanced":
        return None
    # n / (k * n_c): each class contributes equally; a class absent from train gets no weight
    present = counts > 0
    weights = np.zeros_like(counts)
    weights[present] = counts.sum() / (present.sum() * counts[present])
    return torch.tensor(weights, dtype=torch.float32)


def _train_loader(cfg: ClassifyConfig, dataset: CropDataset, runtime: Runtime, counts: np.ndarray) -> DataLoader:
    generator = torch.Generator()
    labels = [s.label for s in dataset.samples]
    if cfg.class_weighting == "sampler":
        per_sample = [1.0 / counts[y] for y in labels]
        if runtime.distributed:
            sampler: Sampler = DistributedWeightedSampler(per_sample, len(labels), runtime.rank,
                                                          runtime.world_size, cfg.seed)
        else:
            sampler = torch.utils.data.WeightedRandomSampler(per_sample, len(labels), True, generator=generator)
    elif runtime.distributed:
        sampler = torch.utils.data.DistributedSampler(dataset, runtime.world_size, runtime.rank,
                                                      shuffle=True, seed=cfg.seed)
    else:
        sampler = torch.utils.data.RandomSampler(dataset, generator=generator)
    # BatchNorm cannot train on a batch of one: drop a lone last image
    drop_last = len(sampler) % cfg.batch_size == 1 and len(sampler) > 1
    return DataLoader(dataset, batch_size=cfg.batch_size, sampler=sampler, num_workers=runtime.workers,
                      drop_last=drop_last, generator=generator, pin_memory=runtime.device.type == "cuda",
                      persistent_workers=runtime.workers > 0)


def _eval_loader(cfg: ClassifyConfig, dataset: CropDataset, runtime: Runtime) -> DataLoader:
    return DataLoader(dataset, batch_size=max(cfg.batch_size, 32), shuffle=False, num_workers=runtime.workers,
                      pin_memory=runtime.device.type == "cuda")


def _autocast(runtime: Runtime):
    if runtime.amp_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=runtime.device.type, dtype=runtime.amp_dtype)


def _to_device(x: torch.Tensor, runtime: Runtime) -> torch.Tensor:
    x = normalise(x.to(runtime.device, non_blocking=True))
    return x.contiguous(memory_format=torch.channels_last) if runtime.channels_last else x


def train_one_epoch(model: nn.Module, loader: DataLoader, criterion: nn.Module, optimizer, scheduler,
                    scaler, runtime: Runtime, step_hook: Callable[[], None] | None = None) -> float:
    """One pass over the loader; returns the mean training loss (of this rank's batches)."""
    model.train()
    total, count = 0.0, 0
    for images, labels in loader:
        images, labels = _to_device(images, runtime), labels.to(runtime.device, non_blocking=True)
        optimizer.zero_grad(set_to_none=True)
        with _autocast(runtime):
            loss = criterion(model(images).float(), labels)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        scheduler.step()
        total += float(loss.detach()) * len(labels)
        count += len(labels)
        if step_hook is not None:
            step_hook()
    return total / max(1, count)


@torch.no_grad()
def predict_logits(model: nn.Module, loader: DataLoader, runtime: Runtime) -> tuple[torch.Tensor, torch.Tensor]:
    model.eval()
    logits, labels = [], []
    for images, y in loader:
        with _autocast(runtime):
            out = model(_to_device(images, runtime))
        logits.append(out.float().cpu())
        labels.append(torch.as_tensor(y))
    if not logits:
        return torch.zeros(0, len(settings.CLASSES)), torch.zeros(0, dtype=torch.long)
    return torch.cat(logits), torch.cat(labels)


def _val_scores(logits: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor | None) -> tuple[float, float, float]:
    from sklearn.metrics import f1_score

    loss = float(nnf.cross_entropy(logits, labels, weight=weight))
    pred = logits.argmax(1).numpy()
    acc = float((pred == labels.numpy()).mean())
    f1 = float(f1_score(labels.numpy(), pred, labels=list(range(len(settings.CLASSES))), average="macro",
                        zero_division=0))
    return loss, acc, f1


def _meta(cfg: ClassifyConfig, input_size: int, options: dict, run_dir: Path, **extra: Any) -> dict:
    base = {
        "kind": model_spec(cfg.model).kind,
        "model": cfg.model,
        "model_options": dict(cfg.model_options),
        "builder_extra": {k: v for k, v in options.items() if k in ("input_size", "image_size")},
        "classes": list(settings.CLASSES),
        "input_size": input_size,
        "in_channels": 1,
        "roi_margin": cfg.roi_margin,
        "normalisation": NORMALISATION,
        "config": cfg.to_dict(),
        "run_id": run_dir.name,
        "torch_version": torch.__version__,
        "created_at": layout.now_iso(),
        "temperature": 1.0,
    }
    base.update(extra)
    return to_plain(base)


def train(cfg: ClassifyConfig, run_dir: str | Path | None = None, items: Mapping[str, Sequence[Any]] | None = None,
          resume: bool = False) -> Path:
    """Train ``cfg`` into ``run_dir`` (a new folder under runs/ when None) and return the folder.

    ``items`` maps split names to TrainingItem-like records (for tests, comparisons, notebooks); without
    it the splits come from the annotation store (``cfg.dataset``). Raises ``ConfigError`` for bad
    configs or data, ``RunCancelled`` on SIGTERM; the status file says which.
    """
    runtime = None
    if run_dir is None and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        runtime = make_runtime(cfg)  # the ranks agree on the folder rank 0 makes
    run_dir = _shared_run_dir(run_dir, cfg, runtime)
    is_main = int(os.environ.get("RANK", "0")) == 0
    with RunRecorder(run_dir, "classify", COLUMNS, model=cfg.model, metric=METRIC, active=is_main) as run:
        try:
            run.write_config(cfg.to_dict())
            run.update(epoch=0, epochs=cfg.epochs, best_metric=None, message="loading data")
            runtime = runtime or make_runtime(cfg)
            if model_spec(cfg.model).kind == "sklearn":
                _fit_sklearn(cfg, run_dir, run, items)
            else:
                _fit_torch(cfg, run_dir, run, runtime, items, resume)
        finally:
            if runtime is not None and runtime.distributed and torch.distributed.is_initialized():
                torch.distributed.destroy_process_group()
    return run_dir


def fit(config: Mapping[str, Any] | ClassifyConfig, run_dir: str | Path | None, *, resume: bool = False) -> Path:
    """The task interface (``core.training.tasks``): a config (object or dict) trained into ``run_dir``."""
    cfg = config if isinstance(config, ClassifyConfig) else ClassifyConfig.from_dict(config)
    return train(cfg, run_dir, resume=resume)


def load(path: str | Path):
    """``(model, meta)`` of a classifier checkpoint, run folder or promoted folder."""
    return load_classifier(path)


def _shared_run_dir(run_dir: str | Path | None, cfg: ClassifyConfig, runtime: Runtime | None) -> Path:
    """Rank 0 makes the folder; under DDP the others learn its path from rank 0."""
    path = str(run_dir) if run_dir is not None else None
    if path is None and (runtime is None or runtime.is_main):
        path = str(layout.new_run_dir(cfg.model, "classify"))
    if runtime is not None and runtime.distributed:
        box = [path]
        torch.distributed.broadcast_object_list(box, src=0)
        path = box[0]
    Path(path).mkdir(parents=True, exist_ok=True)
    return Path(path)


REFERENCE_ONLY = "reference only"  # films in the out-of-distribution reference, never trained on (no class)
MIXED_WITH = "mixed with"  # the dataset a fine-tuning run mixed in (a name, not a split)


def _splits(cfg: ClassifyConfig, items: Mapping[str, Sequence[Any]] | None) -> dict[str, list[Sample]]:
    names = (cfg.train_split, cfg.val_split, cfg.test_split)
    if items is not None:
        return {name: to_samples(items.get(name, ())) for name in names}
    # the store's splits, with another dataset's films mixed in when fine-tuning (core.training.finetune)
    mix = training_mix(cfg, "classify", names)
    splits = {name: to_samples(mix.splits[name]) for name in names}
    train = splits[cfg.train_split]
    splits[cfg.train_split] = train[:mix.team_train] * mix.repeat + train[mix.team_train:]
    # The out-of-distribution reference is about how films look, not their class: the team's training films
    # without a class (a landmark set, CSXA's blank grades) count there too, so films like them are not flagged.
    from core.data.datasets import training_items

    unlabeled = [item for item in training_items(cfg.dataset, cfg.train_split, need_class=False) if item.label is None]
    splits[MIXED_WITH] = mix.mixed_with
    splits[REFERENCE_ONLY] = [Sample(path=str(item.path), label=-1, roi_box=item.roi_box,
                                     patient_id=str(item.patient_id), image_id=str(item.image_id))
                              for item in unlabeled]
    return splits


def _fit_torch(cfg: ClassifyConfig, run_dir: Path, run: RunRecorder, runtime: Runtime,
               items: Mapping[str, Sequence[Any]] | None, resume: bool) -> None:
    splits = _splits(cfg, items)
    mixed_with = splits.pop(MIXED_WITH, None)
    train_samples, val_samples = splits[cfg.train_split], splits[cfg.val_split]
    if not train_samples:
        raise ConfigError(f"split '{cfg.train_split}' of dataset '{cfg.dataset}' has no labelled images")
    if not val_samples:
        raise ConfigError(f"split '{cfg.val_split}' of dataset '{cfg.dataset}' has no labelled images: early "
                          "stopping and temperature scaling need a validation split")
    input_size = _input_size(cfg)
    n_classes = len(settings.CLASSES)
    counts = _class_counts(train_samples, n_classes)
    log.info("model %s, input %d px, device %s%s, train %d (%s), val %d", cfg.model, input_size,
             runtime.device, f" x{runtime.world_size} (DDP)" if runtime.distributed else "", len(train_samples),
             ", ".join(f"{c} {int(n)}" for c, n in zip(settings.CLASSES, counts)), len(val_samples))
    augment = train_augmentation(cfg, input_size, context_inner(cfg.roi_margin)) if cfg.augment else None
    train_set = CropDataset(train_samples, input_size, cfg.roi_margin, augment, cfg.cache_mb)
    val_set = CropDataset(val_samples, input_size, cfg.roi_margin, None, cfg.cache_mb)

    seed_everything(cfg.seed)
    options = _builder_options(cfg, input_size)
    model = build_classifier(cfg, input_size).to(runtime.device)
    if runtime.channels_last:
        model = model.to(memory_format=torch.channels_last)
    n_params = count_parameters(model)
    loss_weight = _loss_weights(cfg, counts)
    criterion = nn.CrossEntropyLoss(weight=loss_weight.to(runtime.device) if loss_weight is not None else None,
                                    label_smoothing=cfg.label_smoothing)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    train_loader = _train_loader(cfg, train_set, runtime, counts)
    steps_per_epoch = max(1, len(train_loader))
    scheduler = warmup_cosine(optimizer, cfg.warmup_epochs * steps_per_epoch, cfg.epochs * steps_per_epoch)
    scaler = torch.amp.GradScaler(runtime.device.type) if runtime.amp_dtype is torch.float16 else None

    net: nn.Module = model
    if runtime.distributed:
        net = nn.parallel.DistributedDataParallel(
            model, device_ids=[runtime.device.index] if runtime.device.type == "cuda" else None)
    task = _ClassifyEpochs(cfg, run_dir, runtime, model, net, train_loader, val_set, criterion, optimizer, scheduler,
                           scaler, loss_weight, input_size, options, n_params, mixed_with)

    def share_stop(stop: bool) -> bool:
        box = [stop]
        torch.distributed.broadcast_object_list(box, src=0)
        return bool(box[0])

    Trainer(run, task, epochs=cfg.epochs, metric="val_macro_f1", higher_is_better=True, patience=cfg.patience,
            time_limit_s=cfg.time_limit_s, is_main=runtime.is_main,
            share_stop=share_stop if runtime.distributed else None).fit(resume)

    if runtime.distributed:
        torch.distributed.barrier()
    if runtime.is_main:
        _finish_run(cfg, run_dir, run, model, val_set, runtime, splits, items)


class _ClassifyEpochs(EpochTask):
    """The classifier's hooks for the engine's loop (core.engine.trainer)."""

    def __init__(self, cfg: ClassifyConfig, run_dir: Path, runtime: Runtime, model: nn.Module, net: nn.Module,
                 train_loader: DataLoader, val_set: CropDataset, criterion, optimizer, scheduler, scaler,
                 loss_weight, input_size: int, options: dict, n_params: int, mixed_with):
        self.cfg, self.run_dir, self.runtime, self.model, self.net = cfg, run_dir, runtime, model, net
        self.train_loader, self.val_set, self.criterion = train_loader, val_set, criterion
        self.optimizer, self.scheduler, self.scaler, self.loss_weight = optimizer, scheduler, scaler, loss_weight
        self.input_size, self.options, self.n_params, self.mixed_with = input_size, options, n_params, mixed_with
        self.meta: dict = {}

    def start_epoch(self, epoch: int) -> None:
        seed_everything(_epoch_seed(self.cfg.seed, epoch))
        self.train_loader.generator.manual_seed(_epoch_seed(self.cfg.seed, epoch))
        if hasattr(self.train_loader.sampler, "set_epoch"):
            self.train_loader.sampler.set_epoch(epoch)

    def train_epoch(self, epoch: int) -> dict:
        lr = self.optimizer.param_groups[0]["lr"]
        loss = train_one_epoch(self.net, self.train_loader, self.criterion, self.optimizer, self.scheduler,
                               self.scaler, self.runtime)
        return {"train_loss": loss, "lr": lr}

    def validate(self, epoch: int) -> dict:
        logits, labels = predict_logits(self.model, _eval_loader(self.cfg, self.val_set, self.runtime), self.runtime)
        val_loss, val_acc, val_f1 = _val_scores(logits, labels, self.loss_weight)
        row = {"val_loss": val_loss, "val_acc": val_acc, "val_macro_f1": val_f1}
        # best_*: this epoch's, for best.pt, which the Trainer asks for only when this epoch is the best so far
        self.meta = _meta(self.cfg, self.input_size, self.options, self.run_dir, epoch=epoch, metrics=row,
                          n_parameters=self.n_params, mixed_with=self.mixed_with, best_metric=val_f1, best_epoch=epoch)
        return row

    def state(self) -> dict:
        return {"state_dict": self.model.state_dict(), "meta": self.meta, "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict() if self.scaler else {}}

    def load_state(self, state) -> None:
        self.model.load_state_dict(state["state_dict"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])

    def best_payload(self) -> dict:
        return {"state_dict": state_dict_of(self.model), "meta": self.meta}

    def message(self, epoch: int, epochs: int, row, improved: bool) -> str:
        return (f"epoch {epoch}/{epochs}  train_loss {row['train_loss']:.4f}  val_loss {row['val_loss']:.4f}  "
                f"val_acc {row['val_acc']:.3f}  val_macro_f1 {row['val_macro_f1']:.3f}  lr {row['lr']:.2e}  "
                f"{row['seconds']:.1f}s" + ("  (best)" if improved else ""))


def _finish_run(cfg: ClassifyConfig, run_dir: Path, run: RunRecorder, model: nn.Module, val_set: CropDataset,
                runtime: Runtime, splits: dict[str, list[Sample]], items) -> None:
    """Best weights -> temperature on validation -> test report -> status done."""
    from core.evaluation import metrics

    run.update(message="calibrating on validation", eta_s=None)
    best = torch.load(run_dir / "best.pt", map_location="cpu", weights_only=True)
    model.load_state_dict(best["state_dict"])
    logits, labels = predict_logits(model, _eval_loader(cfg, val_set, runtime), runtime)
    temperature = float(metrics.fit_temperature(logits.numpy(), labels.numpy()))
    if not 0.02 <= temperature <= 50:
        # at the search bound: validation is separated perfectly (NLL falls as T -> 0) or carries no signal;
        # the temperature is not identifiable there, so keep the network's own scale
        log.warning("temperature %.3g hit its search bound on %d validation images: kept 1.0", temperature,
                    len(labels))
        temperature = 1.0
    best["meta"]["temperature"] = temperature
    log.info("temperature %.3f (validation: %d images)", temperature, len(labels))
    run.update(message="fitting the out-of-distribution reference")
    best["meta"].update(_ood_references(
        cfg, lambda data: penultimate_features(model, _eval_loader(cfg, data, runtime), runtime), 0,
        splits[cfg.train_split] + splits.get(REFERENCE_ONLY, []), val_set.samples, val_set.size))
    run.save("best.pt", best)
    _report_test(cfg, run_dir, run, splits, best["meta"])


def _ood_references(cfg: ClassifyConfig, features_of: Callable[[CropDataset], np.ndarray], feature_folds: int,
                    train_samples: Sequence[Sample], val_samples: Sequence[Sample], size: int) -> dict:
    """The model's own training data as the reference every prediction is scored against (core.evaluation.ood):
    its features (``features_of``: a network's penultimate layer, the SVM's HOG) and pixel statistics of the
    un-augmented training crops, thresholds from validation. ``feature_folds``: cross-fitting for features the
    model did not learn (0 for a network's: its own training crops are not held-out)."""
    from core.evaluation import ood

    train_set = CropDataset(train_samples, size, cfg.roi_margin, None, cfg.cache_mb)
    # Thresholds come from validation crops framed as a prediction frames them: the box of predicted landmarks or
    # a detector, a few percent off the true one (measured: 10 % of held-out phantoms over a threshold fitted on
    # true boxes, against 2.5 % meant).
    framing = RoiJitter(size, context_inner(cfg.roi_margin), 0.0, 0.05, 0.03)
    val_framed = CropDataset(val_samples, size, cfg.roi_margin, framing, cfg.cache_mb)
    references = {}
    # Pixel statistics do not come from the network, so training crops held out by patient fold count as held-out
    # too, scored framed as the validation crops are (a prediction's crop is never framed exactly).
    for key, cross_fit, describe in (
            ("ood_reference", feature_folds, features_of),
            ("ood_image_reference", 5, lambda data: ood.crop_statistics(_crop_stack(data)))):
        seed_everything(cfg.seed)  # the same framing draws for both references
        train, val = describe(train_set), describe(val_framed)
        framed_train = (describe(CropDataset(train_samples, size, cfg.roi_margin, framing, cfg.cache_mb))
                        if cross_fit > 1 else None)
        try:
            reference = ood.fit_reference(train, val, cross_fit=cross_fit, cross_fit_rows=framed_train,
                                          groups=[sample.patient_id for sample in train_samples])
        except ood.OodReferenceError as error:
            log.warning("no out-of-distribution reference (%s): %s", key, error)
            continue
        log.info("out-of-distribution reference (%s): %d training crops, %d values each, threshold %.3f (%.1f %% of "
                 "%d validation crops)", key, len(train), train.shape[1], reference.threshold,
                 reference.quantile * 100, len(val))
        references[key] = reference.to_meta()
    return references


def _crop_stack(data: CropDataset) -> np.ndarray:
    return np.stack([data[i][0][0].numpy() for i in range(len(data))])


def feature_layer(model: nn.Module) -> nn.Module:
    """The classifier's last linear layer: its input is the penultimate feature vector."""
    linear = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linear:
        raise ValueError(f"{type(model).__name__} has no linear layer to read features from")
    return linear[-1]


@contextlib.contextmanager
def capture_features(model: nn.Module):
    """Within the block, every forward pass appends its penultimate features (N x D, CPU float32) to the list."""
    captured: list[torch.Tensor] = []
    hook = feature_layer(model).register_forward_pre_hook(
        lambda _module, args: captured.append(args[0].detach().float().flatten(1).cpu()))
    try:
        yield captured
    finally:
        hook.remove()


@torch.no_grad()
def penultimate_features(model: nn.Module, loader: DataLoader, runtime: Runtime) -> np.ndarray:
    with capture_features(model) as captured:
        predict_logits(model, loader, runtime)
    return torch.cat(captured).numpy() if captured else np.zeros((0, 0), np.float32)


def _report_test(cfg: ClassifyConfig, run_dir: Path, run: RunRecorder, splits: dict[str, list[Sample]],
                 meta: dict) -> None:
    test_samples = splits.get(cfg.test_split) or []
    message = "done"
    if test_samples:
        run.update(message="evaluating on the test split")
        report = evaluate(run_dir, cfg.test_split, samples=test_samples, n_boot=cfg.n_boot)
        message = f"done; test macro-F1 {_point(report, 'macro_f1'):.3f}" if _point(report, "macro_f1") is not None else "done"
    else:
        log.warning("split '%s' is empty: no test_report.json", cfg.test_split)
    run.done(message, best_metric=meta.get("best_metric"))


def _point(report: Mapping[str, Any], name: str) -> float | None:
    """A metric's point value from evaluate_predictions' report, whatever nesting it uses."""
    value = report.get("metrics", report).get(name) if isinstance(report.get("metrics", report), Mapping) else None
    if isinstance(value, Mapping):
        value = value.get("value", value.get("point"))
    return float(value) if isinstance(value, (int, float)) else None


def _fit_sklearn(cfg: ClassifyConfig, run_dir: Path, run: RunRecorder, items) -> None:
    """The SVM: HOG features of the same crops; one 'epoch', the same run folder and test report."""
    from sklearn.metrics import log_loss

    splits = _splits(cfg, items)
    splits.pop(MIXED_WITH, None)  # an SVM is never fine-tuned (refused by its config)
    train_samples, val_samples = splits[cfg.train_split], splits[cfg.val_split]
    if not train_samples:
        raise ConfigError(f"split '{cfg.train_split}' of dataset '{cfg.dataset}' has no labelled images")
    input_size = _input_size(cfg)
    started = time.perf_counter()
    run.update(epochs=1, message="fitting the SVM")
    seed_everything(cfg.seed)
    model = build_classifier(cfg, input_size)
    x_train = load_crops(train_samples, input_size, cfg.roi_margin)
    y_train = np.array([s.label for s in train_samples])
    model.fit(x_train, y_train)
    labels = list(range(len(settings.CLASSES)))
    train_loss = float(log_loss(y_train, model.predict_proba(x_train), labels=labels))
    row = {"epoch": 1, "train_loss": train_loss, "val_loss": float("nan"), "val_acc": float("nan"),
           "val_macro_f1": float("nan"), "lr": 0.0}
    if val_samples:
        x_val = load_crops(val_samples, input_size, cfg.roi_margin)
        y_val = np.array([s.label for s in val_samples])
        probs = model.predict_proba(x_val)
        logits = torch.from_numpy(np.log(np.clip(probs, 1e-7, 1.0))).float()
        row["val_loss"], row["val_acc"], row["val_macro_f1"] = _val_scores(logits, torch.from_numpy(y_val), None)
    row["seconds"] = round(time.perf_counter() - started, 3)
    run.append_metrics(row)
    best_metric = row["val_macro_f1"] if math.isfinite(row["val_macro_f1"]) else None
    meta = _meta(cfg, input_size, {}, run_dir, epoch=1, best_metric=best_metric, best_epoch=1,
                 metrics={k: row[k] for k in ("train_loss", "val_loss", "val_acc", "val_macro_f1")},
                 n_parameters=count_parameters(model))
    if val_samples:
        run.update(message="fitting the out-of-distribution reference")
        # HOG is not learned: training crops held out by fold count as held-out for its threshold
        meta.update(_ood_references(cfg, lambda data: model.features(_crop_stack(data)), 5, train_samples,
                                    val_samples, input_size))
    payload = {"state_dict": svm_to_tensors(model), "meta": meta}
    run.save("best.pt", payload)
    run.save("last.pt", payload)
    run.epoch_status(1, 1, row["seconds"], best_metric=best_metric, finished=True)
    log.info("svm fitted on %d crops in %.1fs; val macro-F1 %s", len(train_samples), row["seconds"],
             f"{row['val_macro_f1']:.3f}")
    _report_test(cfg, run_dir, run, splits, meta)


# ============================================================================================ evaluation
def evaluate(run_dir: str | Path, split: str = "test", samples: Sequence[Any] | None = None,
             n_boot: int | None = None) -> dict:
    """Score a run's best.pt on a split with ``core.evaluation.metrics.evaluate_predictions``; writes ``<split>_report.json``.

    ``samples`` (TrainingItem-like records) replaces reading the split from the annotation store.
    """
    from core.evaluation import metrics

    run_dir = layout.resolve_run(run_dir)
    cfg = ClassifyConfig.from_dict(layout.read_config(run_dir))
    model, meta = load_classifier(run_dir / "best.pt")
    records = to_samples(samples) if samples is not None else load_split(cfg, split)
    if not records:
        raise ConfigError(f"split '{split}' of dataset '{cfg.dataset}' has no labelled images to evaluate")
    input_size, margin = int(meta["input_size"]), float(meta.get("roi_margin", cfg.roi_margin))
    started = time.perf_counter()
    crops = torch.from_numpy(load_crops(records, input_size, margin))
    if isinstance(model, nn.Module):
        model.to(pick_device(cfg.device) if cfg.device != "auto" else pick_device("auto"))
    probs = classify_crops(model, meta, crops)
    seconds = time.perf_counter() - started
    y_true = np.array([s.label for s in records])
    report = metrics.evaluate_predictions(y_true, probs, [s.patient_id for s in records], list(meta["classes"]),
                                          n_boot=cfg.n_boot if n_boot is None else n_boot, seed=cfg.seed)
    report = dict(to_plain(report))
    report.update({
        "split": split, "run_id": run_dir.name, "model": meta["model"], "n_images": len(records),
        "n_patients": len({s.patient_id for s in records}), "temperature": meta.get("temperature", 1.0),
        "seconds": round(seconds, 3),
        "predictions": [{"image_id": s.image_id, "patient_id": s.patient_id, "true": meta["classes"][s.label],
                         "predicted": meta["classes"][int(np.argmax(p))],
                         "probabilities": [round(float(v), 6) for v in p]} for s, p in zip(records, probs)],
    })
    layout.atomic_write_text(run_dir / f"{split}_report.json", json.dumps(to_plain(report), indent=1))
    log.info("%s report: %d images -> %s", split, len(records), run_dir / f"{split}_report.json")
    return report
