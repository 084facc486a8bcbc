"""``python -m core quiz``: teaching quizzes: create, list, key, answer, results (CSV or JSON)."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from core.data import quizzes
from core.data.accounts import SHELL
from core.inference.teaching.quiz import (create_quiz, list_quizzes, model_said, new_teacher_key, quiz_results,
                                          submit_answers)
from core.settings import CLASSES


def configure_quiz(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True)
    create = sub.add_parser("create", help="set a quiz of N films")
    create.add_argument("--films", type=int, default=5, help="number of films (default 5)")
    create.add_argument("--seed", type=int, default=0, help="which phantoms (or which dataset images)")
    create.add_argument("--dataset", help="draw labeled images of this dataset instead of phantoms")
    create.add_argument("--show-angle", action="store_true", help="show each film's true C2–C7 angle to students")
    create.add_argument("--title", default="Curvature quiz")
    create.add_argument("--teacher", default="teacher")
    create.add_argument("--no-model", action="store_true", help="do not record the promoted models' answers")
    sub.add_parser("list", help="the quizzes of this workspace")
    key = sub.add_parser("key", help="a new teacher key for a quiz (the Teach page's class results ask for it)")
    key.add_argument("quiz", type=int)
    answer = sub.add_parser("answer", help="answer a quiz as a student")
    answer.add_argument("quiz", type=int)
    answer.add_argument("--student", required=True)
    answer.add_argument("--answers", required=True, help="one class per film, comma separated, in film order")
    results = sub.add_parser("results", help="per student and per film results")
    results.add_argument("quiz", type=int)
    results.add_argument("--csv", dest="csv_path", help="also write every answer to this CSV file")
    results.add_argument("--json", action="store_true", help="print one JSON object")


def run_quiz(args: argparse.Namespace) -> int:
    try:
        if args.action == "create":
            made = create_quiz(title=args.title, teacher=args.teacher, films=args.films, seed=args.seed,
                               dataset=args.dataset, show_angle=args.show_angle, with_model=not args.no_model,
                               actor=SHELL)
            print(f"quiz {made.quiz_id}: {made.label}")
            for item in made.items:
                model = f"model {model_said(item)}" if item.model_name else "no model answer"
                angle = "" if item.truth_cobb is None else f" ({item.truth_cobb:+.1f}°)"
                print(f"  film {item.position}: {item.truth_class}{angle}, {model}")
            if made.teacher_key:
                print(f"teacher key: {made.teacher_key} (the Teach page shows the class's answers to whoever gives it)")
        elif args.action == "key":
            key = new_teacher_key(args.quiz, actor=SHELL)
            print(f"teacher key of quiz {args.quiz}: {key} (the earlier one no longer works)")
        elif args.action == "list":
            for listed in list_quizzes():
                print(f"{listed.label} · created {listed.created_at:%Y-%m-%d %H:%M} UTC")
        elif args.action == "answer":
            given = [a.strip() for a in args.answers.split(",")]
            result = submit_answers(args.quiz, args.student, dict(enumerate(given, start=1)), actor=SHELL)
            print(f"{result.student}: {result.correct}/{result.total} correct")
        else:
            _print_results(quiz_results(args.quiz), args.csv_path, args.json)
    except (ValueError, OSError) as error:  # QuizError, TeachingError, a bad dataset or image: one clear line
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


def _print_results(results: quizzes.QuizResults, csv_path: str | None, as_json: bool) -> None:
    if csv_path:
        Path(csv_path).write_text(results.csv(), encoding="utf-8")
    students = [{"student": s.student, "correct": s.correct, "total": s.total,
                 "confusion": s.confusion.tolist(), "missed": [i.position for i, _ in s.missed]}
                for s in results.students]
    if as_json:
        print(json.dumps({"quiz": results.quiz.quiz_id, "title": results.quiz.title, "classes": list(CLASSES),
                          "students": students, "films": results.per_film()}))
        return
    print(results.quiz.label)
    if not students:
        print("no answers yet")
    for s in students:
        missed = ", ".join(map(str, s["missed"])) or "none"
        print(f"  {s['student']}: {s['correct']}/{s['total']} correct; missed films: {missed}")
    for film in results.per_film():
        rate = "—" if film["correct_rate"] is None else f"{film['correct_rate']:.0%}"
        print(f"  film {film['film']} ({film['truth']}): {film['correct']}/{film['answers']} right ({rate}); "
              f"model {model_said(results.quiz.items[film['film'] - 1])}")
    if csv_path:
        print(f"answers written to {csv_path}")
