"""Promotion: the run whose model Predict uses, one per task, copied whole into ``promoted/<task>/``.

The copy (best.pt, config, metrics, test report, ``promoted.json``) is made beside and swapped in, so Predict never
sees a half-copied model; a promoted model survives the deletion of its run folder (which is refused anyway).
Each promotion writes a model card beside the model (``model_card.json`` and ``MODEL_CARD.md``: the labels'
fingerprint, the splits, the test metrics with their intervals, the config, the date and the device) and keeps the
model it replaces in ``promoted/.history/<task>/``, so :func:`rollback` can put it back. A promotion or rollback
killed mid-way leaves hidden folders named by its process id; :func:`recover` (run before every read and change of
``promoted/``) puts back a model it had moved aside and removes its half-made copy, so a kill never loses the model
Predict used.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import re
import shutil
from pathlib import Path

from core import settings
from core.data.accounts import authorize
from core.runs import registry, reports
from core.runs.hardware import DATA_FILE
from core.runs.layout import CONFIG_FILE, METRICS_FILE, TEST_REPORT, JobError, now_iso, read_config, read_status, \
    read_status_file, resolve_run, run_path

PROMOTED_FILE = "promoted.json"
CARD_FILE = "model_card.json"
CARD_TEXT = "MODEL_CARD.md"
HISTORY_DIR = ".history"
KEPT_HISTORY = 5  # previously promoted models kept per task for rollback
# the hidden folders of a swap in progress: the copy being made, and the model it replaces while the copy goes in
_IN_PROGRESS = re.compile(r"^\.(?P<task>[a-z_]+)\.(?:old\.(?P<old_pid>\d+)|(?P<tmp_pid>\d+)\.tmp)$")


# ---------------------------------------------------------------------------------------------- promotion
def _best_checkpoint(run_dir: Path) -> Path | None:
    for candidate in (run_dir / "best.pt", run_dir / "weights" / "best.pt"):
        if candidate.exists():
            return candidate
    return None


def promote(run_dir: str | Path, task: str | None = None, *, actor=None) -> Path:
    """Copy a run's best checkpoint to ``promoted/<task>/`` (with ``promoted.json``); Predict uses it."""
    authorize(actor, "promote", str(run_dir))
    recover()
    run_dir = run_path(run_dir)  # only a run under runs/ is copied to Predict
    config = read_config(run_dir)
    task = task or registry.task_of(config).model_task
    if task not in registry.PROMOTABLE:
        raise JobError(f"a {task} run has no model for Predict")
    checkpoint = _best_checkpoint(run_dir)
    if checkpoint is None:
        raise JobError(f"run {run_dir.name} has no best checkpoint (best.pt) to promote")
    status = read_status(run_dir)
    if status.get("state") in ("queued", "running"):
        raise JobError(f"run {run_dir.name} is still {status['state']}: promote it when it is done")
    dest = settings.promoted_dir() / task
    staging = settings.promoted_dir() / f".{task}.{os.getpid()}.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    shutil.copy2(checkpoint, staging / "best.pt")
    for name in (CONFIG_FILE, TEST_REPORT, METRICS_FILE, DATA_FILE):
        if (run_dir / name).exists():
            shutil.copy2(run_dir / name, staging / name)
    record = {"task": task, "run_id": run_dir.name, "run_dir": str(run_dir), "model": config.get("model"),
              "checkpoint": "best.pt", "state": status.get("state"), "best_metric": status.get("best_metric"),
              "promoted_at": now_iso()}
    (staging / PROMOTED_FILE).write_text(json.dumps(record, indent=1), encoding="utf-8")
    write_model_card(staging, run_dir, task, record)
    _swap_in(staging, task)
    return dest


def _swap_in(staging: Path, task: str, keep_old: bool = True) -> None:
    """Swap folders so Predict never sees a half-copied model; the replaced one goes to the history."""
    dest = settings.promoted_dir() / task
    old = settings.promoted_dir() / f".{task}.old.{os.getpid()}"
    if dest.exists():
        os.replace(dest, old)
    os.replace(staging, dest)
    if keep_old and old.exists():
        _keep_in_history(old, task)
    shutil.rmtree(old, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def recover() -> None:
    """Undo what a promotion or rollback killed mid-swap left: the model it had moved aside goes back to
    ``promoted/<task>/`` if the new one never arrived (else to the history, as the swap would have put it), a
    promotion's half-made copy is removed and a rollback's goes back to the history. Only a dead process's folders
    are touched: a live one is mid-swap."""
    root = settings.promoted_dir()
    if not root.is_dir():
        return
    for folder in sorted(root.iterdir()):
        found = _IN_PROGRESS.match(folder.name)
        if found is None or _alive(int(found["old_pid"] or found["tmp_pid"])):
            continue
        task = found["task"]
        try:
            if found["tmp_pid"] and "rolled_back_at" in (reports.read_json(folder / PROMOTED_FILE) or {}):
                _keep_in_history(folder, task)  # a rollback's: the history's model it was putting back
            elif found["tmp_pid"]:
                shutil.rmtree(folder)  # a promotion's half-made copy: its run still has the model
            elif not (root / task).exists():
                os.replace(folder, root / task)
            else:
                _keep_in_history(folder, task)
        except OSError:  # another process recovered it first
            pass


def _keep_in_history(folder: Path, task: str) -> None:
    history = settings.promoted_dir() / HISTORY_DIR / task
    history.mkdir(parents=True, exist_ok=True)
    os.replace(folder, history / f"{len(list(history.iterdir())):04d}-{now_iso().replace(':', '')}")
    for stale in sorted(history.iterdir())[:-KEPT_HISTORY]:
        shutil.rmtree(stale, ignore_errors=True)


def history(task: str = "classify") -> list[dict]:
    """The models promoted before the current one, newest first (what :func:`rollback` can restore)."""
    folder = settings.promoted_dir() / HISTORY_DIR / task
    entries = []
    for path in sorted(folder.iterdir(), reverse=True) if folder.exists() else []:
        record = reports.read_json(path / PROMOTED_FILE)
        if record and (path / "best.pt").exists():
            entries.append({**record, "history_dir": str(path)})
    return entries


def rollback(task: str = "classify", *, actor=None) -> dict:
    """Put the previously promoted model of ``task`` back (the current one is dropped: its run still has it)."""
    authorize(actor, "promote", f"roll back {task}")
    if task not in registry.PROMOTABLE:
        raise JobError(f"task must be one of {', '.join(registry.PROMOTABLE)}, got {task!r}")
    recover()
    earlier = history(task)
    if not earlier:
        raise JobError(f"no earlier promoted {task} model to roll back to")
    source = Path(earlier[0]["history_dir"])
    record = {k: v for k, v in earlier[0].items() if k != "history_dir"}
    current = promoted_info(task)
    record.update(rolled_back_at=now_iso(), rolled_back_from=(current or {}).get("run_id"))
    (source / PROMOTED_FILE).write_text(json.dumps(record, indent=1), encoding="utf-8")
    staging = settings.promoted_dir() / f".{task}.{os.getpid()}.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    os.replace(source, staging)
    _swap_in(staging, task, keep_old=False)
    return record


# ---------------------------------------------------------------------------------------------- model card
def model_card(run_dir: Path, task: str, record: dict) -> dict:
    """What a reader needs to judge a promoted model: data, splits, test metrics with intervals, config, device."""
    data = reports.data_record(run_dir)
    report = reports.test_report(run_dir)
    status = read_status_file(run_dir)
    metrics = report.get("metrics") if isinstance(report.get("metrics"), dict) else {
        k: v for k, v in report.items() if isinstance(v, (int, float)) and k != "seconds"}
    return {
        "model": record.get("model"), "task": task, "run_id": run_dir.name, "promoted_at": record["promoted_at"],
        "trained_until": status.get("updated_at"), "device": status.get("device") or "not recorded",
        "dataset": data.get("dataset") or read_config(run_dir).get("dataset"),
        "labels_fingerprint": data.get("fingerprint") or "not recorded (run not started through runs start)",
        "splits": data.get("splits") or {}, "test_split": report.get("split"),
        "test_images": report.get("n_images") or report.get("images"), "test_patients": report.get("n_patients"),
        "test_metrics": {k: reports._score(v) for k, v in metrics.items()},
        "headline": reports.headline(run_dir, read_config(run_dir).get("task")),
        "interval": (report.get("bootstrap") or {}).get("interval", "none"),
        "config": read_config(run_dir), "intended_use": "research and teaching only, not a diagnosis",
    }


def write_model_card(folder: Path, run_dir: Path, task: str, record: dict) -> dict:
    card = model_card(run_dir, task, record)
    (folder / CARD_FILE).write_text(json.dumps(card, indent=1, default=str), encoding="utf-8")
    (folder / CARD_TEXT).write_text(card_markdown(card), encoding="utf-8")
    return card


def when(text: object) -> str | None:
    """An ISO time as people read it (``2026-12-07 04:39 UTC``); None when there is none."""
    if not text:
        return None
    try:
        moment = _dt.datetime.fromisoformat(str(text))
    except ValueError:
        return str(text)
    if moment.tzinfo is not None:
        moment = moment.astimezone(_dt.timezone.utc)
        return f"{moment:%Y-%m-%d %H:%M} UTC"
    return f"{moment:%Y-%m-%d %H:%M}"


def _count(number: object, noun: str) -> str | None:
    return None if number in (None, "") else f"{number} {noun}"


def _joined(*parts: str | None, sep: str = ", ") -> str:
    return sep.join(p for p in parts if p)


def _task_title(task: str | None) -> str:
    return registry.TASKS[task].title if task in registry.TASKS else str(task or "model")


def scored_on(card: dict) -> str:
    """``the test split: 60 images of 60 patients`` (only the parts the card knows)."""
    split = card.get("test_split")
    counts = _joined(_count(card.get("test_images"), "images"),
                     _count(card.get("test_patients"), "patients"), sep=" of ")
    where = f"the {split} split" if split else "the test split"
    return f"{where}: {counts}" if counts else where


def interval_words(card: dict) -> str:
    interval = str(card.get("interval") or "none")
    if interval.lower() == "none":
        return "no intervals (a single score per metric)"
    return f"intervals: {interval.replace('%', ' %')} bootstrap over patients"


def card_markdown(card: dict) -> str:
    """The model card as Markdown (``MODEL_CARD.md``; the Runs page shows and offers the same text)."""
    title = _task_title(card.get("task"))
    run = _joined(f"`{card.get('run_id')}`", _joined(
        f"promoted {when(card.get('promoted_at'))}" if card.get("promoted_at") else None,
        f"trained until {when(card.get('trained_until'))}" if card.get("trained_until") else None))
    data = _joined(f"dataset `{card['dataset']}`" if card.get("dataset") else None,
                   f"labels fingerprint `{card.get('labels_fingerprint')}`" if card.get("labels_fingerprint") else None)
    lines = [f"# Model card: {card.get('model') or 'model'} ({title.lower()})", "",
             f"- **Run:** {run}",
             f"- **Trained on:** {card.get('device') or 'not recorded'}"]
    if data:
        lines.append(f"- **Data:** {data}")
    lines += [f"- **Intended use:** {card.get('intended_use') or 'research and teaching only, not a diagnosis'}", ""]
    splits = card.get("splits") or {}
    if splits:
        lines += ["## Splits", "", "| split | images | patients | classes |", "| --- | ---: | ---: | --- |"]
        for split, counts in splits.items():
            classes = ", ".join(f"{k} {v}" for k, v in (counts.get("classes") or {}).items()) or "–"
            lines.append(f"| {split} | {counts.get('images', '–')} | {counts.get('patients', '–')} | {classes} |")
        lines.append("")
    lines += ["## Test scores", ""]
    scores = card.get("test_metrics") or {}
    if scores:
        lines += [f"Scored once, at the end of training, on {scored_on(card)}; {interval_words(card)}.", "",
                  "| metric | score" + (" [interval]" if str(card.get("interval") or "none").lower() != "none" else "")
                  + " |", "| --- | --- |"]
        lines += [f"| {reports.metric_name(name)} | {reports.format_score(score)} |" for name, score in scores.items()]
    else:
        lines.append("No test report: the run's test split was empty or the run predates test reports.")
    lines += ["", "## Config", "", "```yaml"]
    lines += [f"{k}: {json.dumps(v, default=str)}" for k, v in (card.get("config") or {}).items()] + ["```", ""]
    return "\n".join(lines)


def card_summary(card: dict) -> str:
    """One line for the Runs page: labels, where it was scored, the headline score, the device."""
    headline = card.get("headline") or {}
    score = (f"{reports.metric_name(headline['name'])} {reports.format_score(headline)}"
             if headline.get("name") and headline.get("value") is not None else "no test score")
    labels = card.get("labels_fingerprint")
    recorded = labels and not str(labels).startswith("not recorded")
    return _joined(f"labels {labels}" if recorded else "labels not recorded",
                   f"scored on {scored_on(card)}" if card.get("test_metrics") else None, score,
                   f"trained on {card['device']}" if card.get("device") else None, sep=" · ")


def worse_confirmation(check: dict) -> str | None:
    """What promoting a worse run means, in one line for its confirmation box; None when it is not worse."""
    if not check.get("worse"):
        return None
    ours, theirs = check["candidate"], check["promoted"]
    sign = "<" if ours.get("higher_is_better", True) else ">"
    where = {True: "", False: ", scored on a different test split",
             None: "; the test splits could not be compared"}[check.get("same_test_split")]
    return (f"Promote although {ours['name']} {ours['value']:.3f} {sign} {theirs['value']:.3f} of the promoted run "
            f"{check.get('promoted_run')}{where}")


def rollback_confirmation(task: str) -> str | None:
    """What rolling ``task`` back does, in one line for its confirmation box; None with nothing to roll back to."""
    earlier = history(task)
    if not earlier:
        return None
    back, current = earlier[0], promoted_info(task) or {}
    promoted_at = when(back.get("promoted_at"))
    return (f"Put back run {back.get('run_id')} ({back.get('model')}"
            + (f", promoted {promoted_at}" if promoted_at else "") + ") for Predict's "
            f"{_task_title(task).lower()}, in place of run {current.get('run_id') or 'the current one'}")


def promoted_card(task: str = "classify") -> dict | None:
    card = reports.read_json(settings.promoted_dir() / task / CARD_FILE)
    return card or None


def check_against_promoted(run_dir: str | Path, task: str | None = None) -> dict:
    """Whether promoting ``run_dir`` would replace a better model: both headline test scores, and whether they were
    measured on the same test split (same labels fingerprint of that split). ``warning`` is None when all is well."""
    run_dir = resolve_run(run_dir)
    config = read_config(run_dir)
    task = task or registry.task_of(config).model_task
    current = promoted_info(task) if task in registry.PROMOTABLE else None
    candidate = reports.headline(run_dir, config.get("task"))
    result = {"task": task, "promoted_run": (current or {}).get("run_id"), "candidate": candidate,
              "promoted": None, "same_test_split": None, "worse": None, "warning": None}
    if not current or current.get("run_id") == run_dir.name:
        return result
    folder = settings.promoted_dir() / task
    result["promoted"] = reports.headline(folder, read_config(folder).get("task", task))
    test_split = (reports.test_report(run_dir).get("split") or "test")
    ours = (reports.data_record(run_dir).get("split_fingerprints") or {}).get(test_split)
    theirs = (reports.data_record(folder).get("split_fingerprints") or {}).get(test_split)
    result["same_test_split"] = None if not (ours and theirs) else ours == theirs
    a, b = result["candidate"], result["promoted"]
    if a and b and a["name"] == b["name"]:
        result["worse"] = a["value"] < b["value"] if a["higher_is_better"] else a["value"] > b["value"]
        if result["worse"]:
            where = {True: "on the same test split", False: "but on a different test split",
                     None: "(the test splits could not be compared)"}[result["same_test_split"]]
            result["warning"] = (f"run {run_dir.name} scores {a['name']} {reports.format_score(a)} {where}; the "
                                 f"promoted {current.get('run_id')} scores {reports.format_score(b)}")
    return result


def promoted_model(task: str = "classify") -> Path | None:
    """The promoted checkpoint for a task, or None when nothing was promoted."""
    recover()
    dest = settings.promoted_dir() / task
    if (dest / PROMOTED_FILE).exists() and (dest / "best.pt").exists():
        return dest / "best.pt"
    return None


def promoted_info(task: str = "classify") -> dict | None:
    recover()
    path = settings.promoted_dir() / task / PROMOTED_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None
