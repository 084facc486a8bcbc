"""The task registry: every task trains, evaluates and loads the same way (`python -m core train` / `evaluate`).

A task is a module with ``fit(config, run_dir, resume=...)``, ``evaluate(run_dir, split)`` and ``load(path)``;
its config class lives in ``core.runs.configs`` (torch-free, checked before any process starts). The run folder is
written by ``core.runs.recorder.RunRecorder`` inside ``fit``, so every task leaves the same files. Modules are
imported only when their task runs: a classifier run never imports ultralytics.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from core.runs import layout
from core.runs.configs import ConfigError, HeatmapConfig, parse_config, read_config_source
from core.runs.recorder import RunCancelled


@dataclass(frozen=True)
class Task:
    name: str
    module: str          # implements fit / evaluate / load
    description: str

    def implementation(self):
        return importlib.import_module(self.module)

    def fit(self, config, run_dir: Path, resume: bool = False) -> Any:
        return self.implementation().fit(config, run_dir, resume=resume)

    def evaluate(self, run_dir: Path, split: str = "test", **options: Any) -> dict:
        return self.implementation().evaluate(run_dir, split, **options)

    def load(self, path: str | Path):
        return self.implementation().load(path)


TASKS: dict[str, Task] = {
    "classify": Task("classify", "core.training.classify", "curvature class: S-ResNet-34 and the study's models"),
    "detect": Task("detect", "core.training.detect", "C2-C7 ROI box: YOLO detector"),
    "landmarks": Task("landmarks", "core.training.landmarks", "the 23 CSXA landmarks: heatmap U-Net"),
    "landmarks-yolo": Task("landmarks", "core.training.detect", "the 23 CSXA landmarks: YOLO-pose"),
    "compare": Task("compare", "core.training.compare", "the study's models on the same splits"),
}


def task_for(config: dict) -> Task:
    """The task that trains a (validated) config: landmark configs go by their model."""
    name = config.get("task", "classify")
    if name == "landmarks" and config.get("model") != HeatmapConfig.model:
        return TASKS["landmarks-yolo"]
    if name not in TASKS:
        raise ConfigError(f"task '{name}' is not one of: {', '.join(sorted({t.name for t in TASKS.values()}))}")
    return TASKS[name]


def run_config(run_dir: str | Path) -> dict:
    """A run folder's config, validated again (a hand-edited config.yaml is refused here, not mid-run)."""
    return parse_config(layout.read_config(layout.resolve_run(run_dir))).to_dict()


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
        config = parse_config(read_config_source(source, args.overrides))
        task = task_for(config.to_dict())
        if run_dir is None and int(os.environ.get("WORLD_SIZE", "1")) == 1:
            run_dir = layout.new_run_dir(getattr(config, "model", None) or task.name, task.name)
        if task.name == "classify":
            result = task.implementation().train(config, run_dir, resume=bool(args.resume))
            run_dir = Path(result)
        else:
            task.fit(config, run_dir, resume=bool(args.resume))
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
