"""`python -m core train` / `evaluate`: every task trains, evaluates and loads the same way.

The tasks and their modules are declared in ``core.runs.registry``; a task's module has ``fit(config, run_dir,
resume=...)``, ``evaluate(run_dir, split)`` and ``load(path)``. The run folder is written by
``core.runs.recorder.RunRecorder`` inside ``fit``, so every task leaves the same files. Modules are imported only
when their task runs: a classifier run never imports ultralytics.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from core.runs import layout, registry
from core.runs.configs import ConfigError, read_config_source
from core.runs.recorder import RunCancelled


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


# ---------------------------------------------------------------------------------------------- CLI
def configure_train(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML config (configs/*.yaml document every key)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="override config keys, e.g. epochs=5")
    parser.add_argument("--resume", metavar="RUN", help="continue a run folder from its last.pt")
    parser.add_argument("--run-dir", help="write into this folder (default: a new one under runs/)")


def run_train(args: argparse.Namespace) -> int:
    """One run in the foreground: what a background run (`runs start`) executes."""
    run_dir: Path | None = None
    try:
        if args.resume:
            run_dir = layout.resolve_run(args.resume)
            source: Any = run_dir / layout.CONFIG_FILE
        elif args.config:
            source = args.config
            run_dir = Path(args.run_dir) if args.run_dir else None
        else:
            raise ConfigError("give --config FILE.yaml (see configs/) or --resume RUN")
        config = registry.parse_config(read_config_source(source, args.overrides))
        task = task_for(config.to_dict())
        if run_dir is None and int(os.environ.get("WORLD_SIZE", "1")) == 1:
            run_dir = layout.new_run_dir(getattr(config, "model", None) or task.name, task.name)
        result = task.fit(config, run_dir, resume=bool(args.resume))
        if run_dir is None:  # under torchrun rank 0 made the folder; classify.fit returns it
            run_dir = Path(result)
    except (ConfigError, layout.JobError) as exc:
        # refused before training began: a background run's folder must not stay "queued"
        if run_dir is not None and (Path(run_dir) / layout.STATUS_FILE).exists():
            layout.update_status(run_dir, state="failed", message=str(exc), eta_s=None)
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except RunCancelled:
        return 143
    except Exception as exc:  # the traceback is in train.log; the status says failed
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    if int(os.environ.get("RANK", "0")) == 0:
        print(run_dir)
    return 0


def configure_evaluate(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", help="run folder or run id")
    parser.add_argument("--split", default="test", help="split of the run's dataset (default: test)")
    parser.add_argument("--n-boot", type=int, default=None, help="bootstrap resamples for the intervals")


def run_evaluate(args: argparse.Namespace) -> int:
    try:
        run_dir = layout.resolve_run(args.run)
        task = task_for(run_config(run_dir))
        options: dict[str, Callable | int] = {"n_boot": args.n_boot} if task.name == "classify" else {}
        report = task.evaluate(run_dir, args.split, **options)
    except (ConfigError, layout.JobError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    summary = {k: v for k, v in report.items() if k != "predictions"}
    print(json.dumps(summary, indent=1, default=str))
    return 0
