"""``python -m core runs ...``: list, start, watch, cancel, resume, continue, delete, promote and compare runs
(``core.runs.launch`` does the work; this module parses and prints)."""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Sequence

from core import settings
from core.data.accounts import SHELL
from core.runs import hardware, launch, layout, promotion, queue, registry, reports
from core.runs.configs import ConfigError, read_config_source


def configure_runs(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION")
    listing = sub.add_parser("list", help="every run of every task with its main metric (the default)")
    listing.add_argument("--json", action="store_true", help="one JSON object per run")
    start = sub.add_parser("start", help="validate a config and train it in the background (queued if busy)")
    start.add_argument("--config", required=True, help="YAML config (configs/*.yaml)")
    start.add_argument("overrides", nargs="*", metavar="key=value")
    start.add_argument("--nproc", type=int, default=1, help="processes under torchrun (DDP), classify only")
    for name, text in (("status", "state, epoch, ETA and the last metrics row"),
                       ("cancel", "stop a running run, or take a waiting one out of the queue"),
                       ("resume", "continue from last.pt"), ("delete", "remove the run folder"),
                       ("promote", "make the run the model Predict uses (writes a model card)"),
                       ("show", "a run's test scores with their intervals and its data record")):
        action = sub.add_parser(name, help=text)
        action.add_argument("run", help="run folder or run id")
        if name in ("status", "show"):
            action.add_argument("--json", action="store_true")
    more = sub.add_parser("continue", help="train N more epochs as a new run from the run's last checkpoint")
    more.add_argument("run", help="run folder or run id")
    more.add_argument("--epochs", type=int, required=True, help="epochs of the new run (a fresh schedule)")
    more.add_argument("overrides", nargs="*", metavar="key=value", help="other keys to change, e.g. lr=0.0001")
    waiting = sub.add_parser("queue", help="the runs waiting for a device, in order")
    waiting.add_argument("--slots", type=int, help="set how many runs may train on one device at a time")
    move = sub.add_parser("move", help="move a waiting run to a queue position (1 = next)")
    move.add_argument("run")
    move.add_argument("position", type=int)
    sub.add_parser("advance", help="start the waiting runs whose device is free (every runs command does this)")
    sub.add_parser("hardware", help="the GPUs (NVML) or the CPU runs train on")
    compare = sub.add_parser("compare", help="several runs side by side: differing config keys, study-layout table")
    compare.add_argument("runs", nargs="+", metavar="RUN")
    rollback = sub.add_parser("rollback", help="put the previously promoted model of a task back")
    rollback.add_argument("--task", default="classify", choices=registry.PROMOTABLE)
    parser.set_defaults(json=False)


def run_runs(args: argparse.Namespace) -> int:
    try:
        action = args.action or "list"
        if action not in ("queue", "move"):
            queue.advance()  # the queue moves whenever anyone looks (see core.runs.queue)
        if action == "list":
            return _print_runs(args.json)
        if action == "start":
            run_dir = launch.start_run(args.config, args.overrides, nproc=args.nproc, actor=SHELL)
            print(run_dir)
        elif action == "status":
            _print_status(args.run, args.json)
        elif action == "cancel":
            print(f"{args.run}: {launch.cancel_run(args.run, actor=SHELL).get('state')}")
        elif action == "resume":
            print(launch.resume_run(args.run, actor=SHELL))
        elif action == "continue":
            changes = read_config_source({}, args.overrides)
            print(launch.continue_run(args.run, args.epochs, changes, actor=SHELL))
        elif action == "delete":
            print(f"deleted {launch.delete_run(args.run, actor=SHELL)}")
        elif action == "promote":
            check = promotion.check_against_promoted(args.run)
            if check["warning"]:
                print(f"warning: {check['warning']}", file=sys.stderr)
            print(f"promoted {Path(args.run).name} -> {promotion.promote(args.run, actor=SHELL)}")
        elif action == "rollback":
            record = promotion.rollback(args.task, actor=SHELL)
            print(f"{args.task}: back to run {record.get('run_id')} (was {record.get('rolled_back_from')})")
        elif action == "queue":
            _print_queue(args.slots)
        elif action == "move":
            print("queue: " + ", ".join(queue.move(args.run, args.position, actor=SHELL)))
        elif action == "advance":
            print("\n".join(f"started {d.name}" for d in queue.advance()) or "nothing to start")
        elif action == "hardware":
            print(json.dumps(hardware.snapshot(), indent=1))
        elif action == "show":
            _print_show(args.run, args.json)
        elif action == "compare":
            _print_compare(args.runs)
    except (ConfigError, layout.JobError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def _print_queue(slots: int | None) -> None:
    if slots is not None:
        queue.set_slots(slots)
    order = queue.waiting()
    print(f"{queue.slots()} run(s) per device at a time; busy: "
          + (", ".join(f"{d} {n}" for d, n in queue.occupied().items()) or "none"))
    for number, (run_dir, status) in enumerate(order, start=1):
        print(f"{number:>3}. {run_dir.name}  waits for {status.get('device')} since {status.get('queued_at')}")
    if not order:
        print("no run is waiting")


def _print_show(run: str, as_json: bool) -> None:
    run_dir = layout.run_path(run)
    task = layout.read_config(run_dir).get("task", "classify")
    shown = {"run": run_dir.name, "task": task, "status": layout.read_status(run_dir),
             "headline": reports.headline(run_dir, task), "data": reports.data_record(run_dir)}
    if task == "classify":
        detail = reports.classification_detail(run_dir) or {}
        shown.update(metrics=detail.get("metrics"), per_class=detail.get("per_class"),
                     confusion=detail.get("confusion"))
    if as_json:
        print(json.dumps(shown, indent=1, default=str))
        return
    print(f"{run_dir.name}: {task} {shown['status'].get('model')} · {shown['status'].get('state')}")
    score = shown["headline"]
    print(f"  test {score['name']}: {reports.format_score(score)}" if score else "  no test report yet")
    for name, value in (shown.get("metrics") or {}).items():
        print(f"  {name}: {value}")
    if shown["data"]:
        print(f"  labels {shown['data']['dataset']} fingerprint {shown['data']['fingerprint']}")


def _print_compare(runs: Sequence[str]) -> None:
    run_dirs = [layout.run_path(r) for r in runs]
    result = reports.comparison(run_dirs)
    print("config keys that differ:" if result["differing"] else "the configs are the same")
    for key, values in result["differing"].items():
        print(f"  {key}: " + ", ".join(f"{run} {value}" for run, value in values.items()))
    table = result["table"]
    columns = list(table[0]) if table else []
    print(" | ".join(columns))
    for row in table:
        print(" | ".join("" if row.get(c) is None else str(row.get(c)) for c in columns))


def _print_runs(as_json: bool) -> int:
    runs = layout.list_runs()
    if as_json:
        for info in runs:
            print(json.dumps(asdict(info)))
        return 0
    if not runs:
        print(f"no runs in {settings.runs_dir()}")
        return 0
    print(f"{'run':<46} {'task':<9} {'model':<16} {'state':<11} {'epoch':>7}  main metric")
    for r in runs:
        best = f"{r.metric or 'best'} {r.best_metric:.4f}" if r.best_metric is not None else "-"
        print(f"{r.run_id:<46} {r.task:<9} {r.model[:16]:<16} {r.state:<11} {f'{r.epoch}/{r.epochs}':>7}  {best}")
    return 0


def _print_status(run: str, as_json: bool) -> None:
    run_dir = layout.run_path(run)
    status = layout.read_status(run_dir)
    metrics = layout.read_metrics(run_dir)
    last = {k: v for k, v in metrics.iloc[-1].to_dict().items() if v == v} if len(metrics) else {}
    if as_json:
        print(json.dumps({"status": status, "last_metrics": last}, default=str))
        return
    eta = status.get("eta_s")
    print(f"{run_dir.name}: {status.get('state')} · epoch {status.get('epoch', 0)}/{status.get('epochs', 0)}"
          + (f" · about {float(eta):.0f} s left" if isinstance(eta, (int, float)) and eta else "")
          + (f" · {status.get('metric') or 'best'} {status['best_metric']}" if status.get("best_metric") is not None
             else ""))
    print(f"  {status.get('message', '')}")
    if last:
        print("  last epoch: " + ", ".join(f"{k} {v}" for k, v in last.items()))
