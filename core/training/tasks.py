"""Every task trains, evaluates and loads the same way (``python -m core train`` / ``evaluate`` call this).

The tasks and their modules are declared in ``core.runs.registry``; a task's module has ``fit(config, run_dir,
resume=...)``, ``evaluate(run_dir, split)`` and ``load(path)``. The run folder is written by
``core.runs.recorder.RunRecorder`` inside ``fit``, so every task leaves the same files. Modules are imported only
when their task runs: a classifier run never imports ultralytics.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from core.runs import layout, registry


@dataclass(frozen=True)
class Task:
    """A config's task (``core.runs.registry``) with the module that trains it, imported on first use."""

    name: str
    module: str          # implements fit / evaluate / load

    def implementation(self):
        return importlib.import_module(self.module)

    def fit(self, config, run_dir: Path | None, resume: bool = False) -> Any:
        return self.implementation().fit(config, run_dir, resume=resume)

    def evaluate(self, run_dir: Path, split: str = "test", **options: Any) -> dict:
        return self.implementation().evaluate(run_dir, split, **options)

    def load(self, path: str | Path):
        return self.implementation().load(path)


def task_for(config: Mapping[str, Any]) -> Task:
    """The task that trains a (validated) config: landmark configs go by their model."""
    spec = registry.task_of(config)
    return Task(spec.name, spec.trainer(config).module)


def run_config(run_dir: str | Path) -> dict:
    """A run folder's config, validated again (a hand-edited config.yaml is refused here, not mid-run)."""
    return registry.parse_config(layout.read_config(layout.resolve_run(run_dir))).to_dict()
