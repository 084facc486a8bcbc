"""``python -m core train | evaluate | compare | analyse``: one run in the foreground, its evaluation, the study's
comparison, and the per-image analysis of a landmark or detector run."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, Callable

from core.data.accounts import SHELL
from core.inference import run_analysis
from core.runs import layout, registry
from core.runs.configs import CompareConfig, ConfigError, read_config_source
from core.runs.recorder import RunCancelled
from core.training import compare
from core.training.tasks import run_config, task_for


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


def configure_compare(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true",
                        help=f"phantom dataset ({compare.QUICK_PATIENTS} patients) if missing, "
                             f"{compare.QUICK_INPUT_SIZE} px inputs, few epochs: ~10 min on 2 CPU cores")
    parser.add_argument("--full", action="store_true",
                        help="the same phantom benchmark, every model and S-ResNet-34 variant to its early-stopping "
                             f"point (no time cap); {compare.FULL_INPUT_SIZE['cpu']} px on a CPU, "
                             f"{compare.FULL_INPUT_SIZE['cuda']} px on a GPU")
    parser.add_argument("--models", help=f"comma-separated subset of: {', '.join(compare.STUDY_MODELS)}")
    parser.add_argument("--folds", type=int, help="K-fold cross-validation instead of the train/val/test split")
    parser.add_argument("--dataset", help=f"dataset name (default: default, or {compare.QUICK_DATASET} with --quick)")
    parser.add_argument("--ablation", action="store_true", help="S-ResNet-34 variants vs ResNet-34")
    parser.add_argument("--epochs", type=int, help="epochs for every model (default: config / quick budget)")
    parser.add_argument("--input-size", type=int, help="crop side in px for every model")
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n-boot", type=int, default=1000, help="patient bootstrap resamples")


def run_compare(args: argparse.Namespace) -> int:
    """The comparison in the foreground, as a run folder (``runs start`` with task: compare runs it in the background)."""
    try:
        cfg = CompareConfig.from_dict({
            "models": args.models or [], "dataset": args.dataset, "folds": args.folds, "quick": args.quick,
            "full": args.full,
            "ablation": args.ablation, "epochs": args.epochs, "input_size": args.input_size,
            "batch_size": args.batch_size, "seed": args.seed, "n_boot": args.n_boot})
        run_dir = compare.fit(cfg, layout.new_run_dir("ablation" if cfg.ablation else "study", "compare"))
    except (compare.CompareError, ConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except RunCancelled:
        return 143
    print((run_dir / "compare.md").read_text(encoding="utf-8"))
    print(f"written: {run_dir / 'compare.md'}, compare.csv, compare.html")
    return 0


def configure_analyse(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", help="run folder or run id (landmarks or detect)")
    parser.add_argument("--split", default="test")


def run_analyse(args: argparse.Namespace) -> int:
    try:
        result = run_analysis.analyse(args.run, args.split, actor=SHELL)
    except (ConfigError, layout.JobError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    summary = {k: v for k, v in result.items() if k not in ("iou", "bland_altman")}
    if result.get("bland_altman"):
        summary["bland_altman"] = {k: v for k, v in result["bland_altman"].items()
                                   if k not in ("mean_deg", "difference_deg", "image_ids")}
    print(json.dumps(summary, indent=1))
    return 0
