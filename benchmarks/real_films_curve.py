"""How many of your own films to label: a leave-one-out learning curve of fine-tuning on real films.

    CERVICURVE_HOME=/tmp/ws .venv/bin/python benchmarks/real_films_curve.py DIR [--ks 0,1,3,5] [--epochs 8]

For each film of DIR (films with Labelme landmarks, CSXA layout) left out in turn, and each k: k of the other films
(a seeded pick) are imported as a dataset of their own (train split; the left-out film is its test split) and the
promoted landmark model is fine-tuned on them exactly as the README's command does (``core train`` with
``init_from=promoted``: ``core.training.finetune`` repeats the team's films to half of each epoch and mixes in up to
``--mix-limit`` films of the dataset the promoted model learned from, choosing the best epoch on that dataset's val
films, since the left-out film is the test). For the largest k the classifier is fine-tuned the same way too
(``--classifier-epochs``), so the out-of-distribution reference includes the team's films. Then Predict (promoted
detector; the fine-tuned models) reads the left-out film; k = 0 is the promoted models themselves.
Per k: the median point error in % of C2-C7, the share of left-out films whose C2-C7 angle is within 5 deg of the
official one, with intervals, the share flagged out-of-distribution, and as pre-annotation drafts how many of the
23 points would need moving (more than 2 % of C2-C7 off, or not placed) against placing all 23 by hand.
Writes ``real_films_<label>.md``, ``.json`` and the chart ``real_films_<label>.png`` to ``--out``; the workspace
keeps the fold datasets (``loo-...``) and runs.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import real_films  # noqa: E402  (the per-film measurements are the zero-shot benchmark's own)

DRAFT_TOLERANCE_PCT = 2.0  # a draft point further off than this (of C2-C7) is one the annotator moves


def fold_dataset(folder: Path, team: list[tuple[Path, Path]], test: tuple[Path, Path], name: str) -> str:
    """The team's films (train) and the left-out one (test) imported as dataset ``name``, as a team would."""
    from core.data.importers import import_csxa
    from core.data.store import AnnotationStore

    with tempfile.TemporaryDirectory(prefix="fold-") as scratch:
        root = Path(scratch) / "datasets-PNG"
        root.mkdir()
        for image, labels in [*team, test]:
            shutil.copy2(image, root / image.name)
            shutil.copy2(labels, root / labels.name)
        sheet = next((p for n in ("datasets.xlsx", "datasets.csv") for p in sorted(folder.rglob(n))), None)
        if sheet is not None:
            shutil.copy2(sheet, Path(scratch) / sheet.name)
        import_csxa(Path(scratch), dataset=name, sigmoid="measure")
    stems = {image.stem for image, _ in team}
    with AnnotationStore() as store:  # a CSXA film's source is the file it came from
        store.set_splits({record.image_id: "train" if Path(record.source).stem in stems else "test"
                          for record in store.images(name)})
    return name


def core_train(*args: str) -> Path:
    """``python -m core train ...`` as a user runs it; its run folder."""
    import subprocess

    env = dict(os.environ, PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, "-m", "core", "train", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True)
    if done.returncode != 0:
        raise RuntimeError(f"core train {' '.join(args)} failed: {done.stderr.strip().splitlines()[-1:]}")
    return Path(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--ks", default="0,1,3,5")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--mix-limit", type=int, default=150)
    parser.add_argument("--classifier-epochs", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--label", default="curve")
    args = parser.parse_args()

    from core.inference.pipeline import Predictor

    ks = [int(k) for k in args.ks.split(",")]
    films = real_films.films(args.folder)
    grades = real_films.grades(args.folder)
    started = time.time()
    results: dict[int, list[dict]] = {}
    for k in ks:
        rows = []
        for index, test in enumerate(films):
            others = [f for f in films if f is not test]
            if k > len(others):
                continue
            pick = np.random.default_rng([args.seed, k, index]).choice(len(others), size=k, replace=False)
            team = [others[i] for i in sorted(pick)]
            models = {}
            if k > 0:
                t0 = time.time()
                dataset = fold_dataset(args.folder, team, test, f"loo-k{k}-{test[0].stem}")
                models["landmarks"] = core_train(
                    "--config", "configs/landmarks.yaml", f"dataset={dataset}", "init_from=promoted",
                    f"epochs={args.epochs}", f"lr={args.lr}", f"mix_limit={args.mix_limit}", f"seed={args.seed}")
                if k == max(ks) and args.classifier_epochs > 0:
                    models["classifier"] = core_train(
                        "--config", "configs/classify.yaml", f"dataset={dataset}", "init_from=promoted",
                        "model=s_resnet34", f"epochs={args.classifier_epochs}", "lr=0.0002", "warmup_epochs=0",
                        f"mix_limit={args.mix_limit}", "n_boot=50", "input_size=128", f"seed={args.seed}")
                print(f"k={k} left out {test[0].stem}: fine-tuned in {time.time() - t0:.0f} s", flush=True)
            predictor = Predictor(models.get("classifier"), None, models.get("landmarks"))
            row, drawing = real_films.evaluate_film(predictor, test[0], test[1], grades.get(test[0].stem), "film")
            errors = real_films.point_errors_pct(drawing["predicted"], drawing["truth"])
            row.update(k=k, trained_on=[image.stem for image, _ in team],
                       classifier="fine-tuned" if "classifier" in models else "promoted",
                       points_to_move=int(np.sum(~(errors <= DRAFT_TOLERANCE_PCT))))
            rows.append(row)
            print(json.dumps(row), flush=True)
        results[k] = rows
    summary = {k: curve_point(rows) for k, rows in results.items()}
    info = {"date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()}, {os.cpu_count()} cores",
            "seconds": round(time.time() - started), "args": {k: str(v) for k, v in vars(args).items()},
            "films": len(films)}
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"real_films_{args.label}"
    stem.with_suffix(".json").write_text(json.dumps({"info": info, "summary": summary, "rows": results}, indent=1,
                                                    default=str))
    chart(summary, stem.with_suffix(".png"))
    stem.with_suffix(".md").write_text(markdown(summary, info), encoding="utf-8")
    print(markdown(summary, info))


def curve_point(rows: list[dict]) -> dict:
    cobb = [abs(r["cobb_error"]) for r in rows if r["cobb_error"] is not None]
    return {"films": len(rows),
            "point_error_pct_median": real_films.median_ci([r["point_error_pct"] for r in rows]),
            "cobb_abs_error_median": real_films.median_ci(cobb),
            "cobb_within_5deg": real_films.share_ci(sum(e <= 5 for e in cobb), len(rows)),
            "points_to_move_median": float(np.median([r["points_to_move"] for r in rows])) if rows else None,
            "flagged_ood": real_films.share_ci(sum(r["ood"] for r in rows), len(rows))}


def chart(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ks = sorted(summary)
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.4))
    for axis, key, scale, title in ((left, "point_error_pct_median", 1, "median point error (% of C2-C7)"),
                                     (right, "cobb_within_5deg", 100, "angle within 5 deg of official (%)")):
        values = [summary[k][key] for k in ks]
        mid = np.array([np.nan if v[0] is None else v[0] * scale for v in values])
        low = np.array([np.nan if v[1] is None else v[1] * scale for v in values])
        high = np.array([np.nan if v[2] is None else v[2] * scale for v in values])
        axis.plot(ks, mid, "o-", color="#1f6f8b")
        axis.fill_between(ks, np.where(np.isnan(low), mid, low), np.where(np.isnan(high), mid, high), alpha=0.2,
                          color="#1f6f8b")
        axis.set_xticks(ks)
        axis.set_xlabel("your films labeled (k), one left out each time")
        axis.set_title(title, fontsize=10)
        axis.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def markdown(summary: dict, info: dict) -> str:
    lines = [f"# How many of your films to label: leave-one-out on {info['films']} real films",
             "", f"{info['date']}, {info['machine']}, {info['seconds']} s in all. Settings: {info['args']}.",
             "Films: Cervical Spine X-ray Atlas (Ran et al., Sci Data 2024, doi 10.1038/s41597-024-03383-0).", "",
             "| k labeled | median point error (% C2-C7) | median abs Cobb error (deg) | within 5 deg | "
             "draft points to move (of 23) | flagged OOD |", "|---|---|---|---|---|---|"]
    for k, s in sorted(summary.items()):
        lines.append(f"| {k} | {real_films._fmt(s['point_error_pct_median'])} | "
                     f"{real_films._fmt(s['cobb_abs_error_median'])} | {real_films._fmt(s['cobb_within_5deg'], pct=True)}"
                     f" | {s['points_to_move_median']} | {real_films._fmt(s['flagged_ood'], pct=True)} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
