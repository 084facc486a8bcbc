"""Fine-tuning on a team's own films: start from a model (``init_from: promoted``) and mix in the films it learned
from, so a handful of real films teach the new look without the rest being forgotten.

Why mix: a few films alone are learned by heart in a few dozen steps, and the model loses what the phantoms taught
(every level, both facings, shoulders over C7). ``mix_with: auto`` mixes in the dataset the start model was trained
on, when that is another dataset; ``mix_share`` is the team's films' share of each epoch (their films are repeated
to make it), ``mix_limit`` caps how many films of the other dataset come in (a seeded pick).
Validation stays on the team's own films when they have a val split: the best epoch is the one that reads *their*
films best. Without one it falls back on the mixed-in dataset's val split, and the log says so.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from core.runs.configs import MIX_AUTO, ConfigError, init_checkpoint

log = logging.getLogger("cervicurve.run")


@dataclass
class Mix:
    """What a run trains on: the team's splits, the mixed-in films and how often each team film repeats."""

    dataset: str
    mixed_with: str | None
    splits: dict[str, list]   # split -> items; train = the team's and the mixed-in films once each
    team_train: int           # the first team_train items of splits["train"] are the team's
    repeat: int               # each team film appears this many times per epoch
    val_from: str             # the dataset validation reads

    def epoch_pool(self) -> np.ndarray:
        """Indices into splits["train"] for one epoch: each team film ``repeat`` times, each mixed-in film once."""
        total = len(self.splits["train"])
        return np.concatenate([np.tile(np.arange(self.team_train), self.repeat),
                               np.arange(self.team_train, total)]).astype(np.int64)


def mix_source(config: Any, task: str) -> str | None:
    """The dataset to mix in: ``mix_with`` as given, or for ``auto`` the start model's dataset when it differs."""
    if config.mix_with != MIX_AUTO:
        return None if config.mix_with.lower() in ("none", "") else config.mix_with
    if not config.init_from:
        return None
    from core.training.checkpoints import load_checkpoint

    try:
        meta = load_checkpoint(init_checkpoint(config.init_from, task)).get("meta", {})
    except (ValueError, FileNotFoundError) as error:
        raise ConfigError(f"init_from: {error}") from None
    source = meta.get("dataset") or (meta.get("config") or {}).get("dataset")
    if source and source != config.dataset:
        return source
    # the start model was itself fine-tuned on this dataset: mix in what it was mixed with (its checkpoint records
    # what ``auto`` became), so a second round still keeps the phantoms
    chained = meta.get("mixed_with")
    return chained if chained and chained != config.dataset else None


def _pick(items: Sequence[Any], limit: int, seed: int) -> list:
    if len(items) <= limit:
        return list(items)
    keep = np.sort(np.random.default_rng(seed).choice(len(items), size=limit, replace=False))
    return [items[i] for i in keep]


def training_mix(config: Any, task: str, splits: Sequence[str] = ("train", "val", "test"), *,
                 need_class: bool = True) -> Mix:
    """The run's films: the dataset's own splits, plus the mixed-in dataset's train (and val, as a fallback)."""
    from core.data.datasets import training_items

    def items(dataset: str, split: str) -> list:
        try:
            return training_items(dataset, split, need_class=need_class)
        except ValueError as error:
            raise ConfigError(f"dataset '{dataset}', split '{split}': {error}") from None

    train_name, val_name = splits[0], splits[1]
    source = mix_source(config, task)  # first: a start checkpoint that cannot be read is the first thing to say
    own = {name: items(config.dataset, name) for name in splits}
    if source is None:
        return Mix(config.dataset, None, own, len(own[train_name]), 1, config.dataset)
    mixed_train = _pick(items(source, "train"), config.mix_limit, config.seed)
    if not mixed_train:
        raise ConfigError(f"mix_with: dataset {source!r} has no training films (its train split is empty)")
    mixed_val = [] if own[val_name] else _pick(items(source, "val"), max(1, config.mix_limit // 4), config.seed)
    return mix_films(config.dataset, own, source, mixed_train, mixed_val, config.mix_share, splits)


def mix_films(dataset: str, own: dict[str, list], source: str, mixed_train: list, mixed_val: list, share: float,
              splits: Sequence[str] = ("train", "val", "test")) -> Mix:
    """The mix of ``own`` (split -> the team's items) with another dataset's train and val items."""
    train_name, val_name = splits[0], splits[1]
    team = own[train_name]
    repeat = 1
    if team and share < 1:
        repeat = max(1, round(share / (1 - share) * len(mixed_train) / len(team)))
    elif share == 1:
        mixed_train = []
    merged = dict(own)
    merged[train_name] = list(team) + list(mixed_train)
    val_from = dataset
    if not own[val_name]:
        merged[val_name] = list(mixed_val)
        val_from = source
        log.warning("dataset %r has no %s split: the best epoch is chosen on %s films of %r instead; split the "
                    "team's films (python -m core split --dataset %s --no-stratify) to choose on their own",
                    dataset, val_name, len(mixed_val), source, dataset)
    log.info("fine-tuning mix: %d films of %r (each %d times an epoch) with %d of %r; validation on %r",
             len(team), dataset, repeat, len(mixed_train), source, val_from)
    return Mix(dataset, source, merged, len(team), repeat, val_from)

