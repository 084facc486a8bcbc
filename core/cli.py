"""`python -m core COMMAND ...`: every page action is also a command.

Only the module of the chosen command is imported, so `measure` or `phantom` start without torch.
Each module named below provides ``configure_<command>(parser)`` and ``run_<command>(args) -> int``.
"""
from __future__ import annotations

import argparse
import importlib
import pickle
import sqlite3
import sys

COMMANDS: dict[str, tuple[str, str]] = {
    "phantom": ("core.commands.phantom", "write synthetic lateral radiographs with ground truth"),
    "import": ("core.commands.datasets", "import images and labels into the workspace"),
    "export": ("core.commands.datasets", "export a dataset (yolo, folder, csv, coco)"),
    "split": ("core.commands.datasets", "make patient-grouped, class-stratified splits"),
    "measure": ("core.commands.measure", "Cobb angles, CCI and rule class from Labelme landmarks"),
    "train": ("core.commands.training", "train one run in the foreground (classify | detect | landmarks | compare)"),
    "evaluate": ("core.commands.training", "evaluate a run on a split"),
    "compare": ("core.commands.training", "train and compare the study's seven models"),
    "predict": ("core.commands.predict", "classify radiographs: class, box, Grad-CAM, angle"),
    "promote": ("core.commands.promoted", "make a run the model Predict uses"),
    "onnx": ("core.commands.promoted", "export the promoted classifier or landmark model to ONNX, checked"),
    "analyse": ("core.commands.training", "per-landmark errors + Bland-Altman, or detector IoUs, of a run"),
    "quiz": ("core.commands.quiz", "teaching quizzes: create | list | answer | results (CSV)"),
    "demo": ("core.commands.demo", "build a phantom workspace and demo models"),
    "users": ("core.commands.team", "team accounts: add | list | set-role | disable | audit"),
    "db": ("core.commands.team", "the annotation database: upgrade | copy --to URL | backup"),
    "runs": ("core.commands.runs", "list | start | status | cancel | resume | delete | promote runs"),
    "labels": ("core.commands.labels", "labeling: queue | progress | draft | save | review | agreement | export"),
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print("usage: python -m core COMMAND [options]\n\ncommands:")
        for name, (_, summary) in COMMANDS.items():
            print(f"  {name:<9} {summary}")
        if argv and argv[0] not in ("-h", "--help"):
            print(f"\nunknown command: {argv[0]}", file=sys.stderr)
            return 2
        return 0
    command, rest = argv[0], argv[1:]
    from core import settings

    try:  # a bad CERVICURVE_* value is one clear line here, not a crash deep inside a command
        settings.check()
    except settings.SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[command][0])
    parser = argparse.ArgumentParser(prog=f"python -m core {command}", description=COMMANDS[command][1])
    getattr(module, f"configure_{command}")(parser)
    args = parser.parse_args(rest)
    try:
        return int(getattr(module, f"run_{command}")(args) or 0)
    except Exception as exc:
        line = refusal_line(exc)
        if line is None:
            raise  # a bug: its traceback is what a developer needs
        print(f"error: {line}", file=sys.stderr)
        return 2


def refusal_line(exc: BaseException) -> str | None:
    """One line for a failure that is the input's fault, not a bug, whatever command met it: a database file that is
    not a database (or a server that refuses us), a checkpoint refused because it holds pickled code. None otherwise.

    Handled here, once, rather than in each command: every command that opens the store would need the same lines.
    The modules are looked up, not imported, so ``measure`` and ``phantom`` still start without them.
    """
    sqlalchemy_exc = sys.modules.get("sqlalchemy.exc")
    if isinstance(exc, sqlite3.DatabaseError) or (sqlalchemy_exc and isinstance(exc, sqlalchemy_exc.SQLAlchemyError)):
        from core import settings

        reason = getattr(exc, "orig", None) or exc
        where = settings.db_url()
        if sqlalchemy_exc:
            from sqlalchemy.engine import make_url

            where = make_url(where).render_as_string(hide_password=True)
        return (f"the annotation database {where} cannot be used ({_one_line(reason)}); check CERVICURVE_DB and "
                "CERVICURVE_HOME, or restore the database from a backup")
    if isinstance(exc, pickle.UnpicklingError):  # torch.load(weights_only=True) refusing a pickled object
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        detail = next((line for line in lines if "Unsupported" in line or "global" in line.lower()), None)
        return ("checkpoint refused: it is not plain tensors and numbers (CerviCurve never unpickles code)"
                + (f": {detail[:200]}" if detail else ""))
    return None


def _one_line(value: object) -> str:
    text = " ".join(str(value).split())
    return text if len(text) <= 200 else text[:197] + "..."
