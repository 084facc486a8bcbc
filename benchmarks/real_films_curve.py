"""How many of your own films to label: a leave-one-out learning curve of landmark fine-tuning on real films.

    CERVICURVE_HOME=/tmp/ws .venv/bin/python benchmarks/real_films_curve.py DIR [--ks 0,1,3,5] [--epochs 8]

For each film of DIR (films with Labelme landmarks, CSXA layout) left out in turn, and each k: k of the other films
(a seeded pick) fine-tune the promoted landmark model exactly as ``runs start --config configs/landmarks.yaml
dataset=<films> init_from=promoted`` does (``core.training.finetune``: the team's films repeated to half of each
epoch, mixed with up to ``--mix-limit`` films of the dataset the promoted model learned from, the best epoch chosen on
that dataset's val films, since the left-out film is the test). Then Predict (promoted detector and classifier, the
fine-tuned landmark model) reads the left-out film; k = 0 is the promoted model itself. Per k: the median point error
in % of C2-C7 and the share of left-out films whose C2-C7 angle is within 5 deg of the official one, with intervals;
and, as pre-annotation drafts, how many of the 23 points would need moving (more than 2 % of C2-C7 off, or not
placed) against placing all 23 by hand.
Writes ``real_films_curve.md``, ``.json`` and the chart ``real_films_curve.png`` to ``--out``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import real_films  # noqa: E402  (the per-film measurements are the zero-shot benchmark's own)

DRAFT_TOLERANCE_PCT = 2.0  # a draft point further off than this (of C2-C7) is one the annotator moves


@dataclass
class Film:
    path: Path
    label: None
    roi_box: list
    landmarks: np.ndarray
    patient_id: str
    image_id: int
    json_path: Path


def load_films(folder: Path) -> list[Film]:
    from core.data.imaging import read_image
    from core.data.measure import read_labelme, roi_box_from_landmarks

    out = []
    for number, (image, json_path) in enumerate(real_films.films(folder)):
        truth = read_labelme(json_path).landmarks
        width, height = read_image(image).original_size
        out.append(Film(image, None, roi_box_from_landmarks(truth, (width, height)), truth, image.stem, number,
                        json_path))
    return out


def fine_tune(team: list[Film], test: Film, mixed_train: list, mixed_val: list, args, run_dir: Path) -> Path:
    from core.runs.configs import HeatmapConfig
    from core.training import landmarks
    from core.training.checkpoints import load_checkpoint
    from core.training.finetune import mix_films

    promoted = Path(os.environ["CERVICURVE_HOME"]) / "promoted" / "landmarks" / "best.pt"
    base = dict(load_checkpoint(promoted)["meta"]["config"])
    base.update(dataset="films", init_from=str(promoted), epochs=args.epochs, lr=args.lr, seed=args.seed,
                rotate_deg=args.rotate, scale=args.scale, shift=args.shift, film=args.film, patience=0,
                mix_limit=args.mix_limit, mix_share=args.share)
    config = HeatmapConfig.from_dict(base)
    mix = mix_films("films", {"train": team, "val": [], "test": [test]}, args.mix_dataset, mixed_train, mixed_val,
                    config.mix_share)
    landmarks.fit(config, run_dir, items=mix)
    return run_dir / "best.pt"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--ks", default="0,1,3,5")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--mix-limit", type=int, default=150)
    parser.add_argument("--share", type=float, default=0.5)
    parser.add_argument("--rotate", type=float, default=12.0)
    parser.add_argument("--scale", type=float, default=0.2)
    parser.add_argument("--shift", type=float, default=0.12)
    parser.add_argument("--film", type=float, default=0.5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--mix-dataset", default="phantom-demo")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--label", default="curve")
    args = parser.parse_args()

    from core.data.datasets import training_items
    from core.inference.pipeline import Predictor

    ks = [int(k) for k in args.ks.split(",")]
    films = load_films(args.folder)
    grades = real_films.grades(args.folder)
    rng = np.random.default_rng(args.seed)
    mixed_train = real_films_pick(training_items(args.mix_dataset, "train", need_class=False), args.mix_limit, rng)
    mixed_val = real_films_pick(training_items(args.mix_dataset, "val", need_class=False), args.mix_limit // 4, rng)
    started = time.time()
    results: dict[int, list[dict]] = {}
    with tempfile.TemporaryDirectory(prefix="curve-") as scratch:
        for k in ks:
            rows = []
            for index, test in enumerate(films):
                others = [f for f in films if f is not test]
                if k > len(others):
                    continue
                pick = np.random.default_rng([args.seed, k, index]).choice(len(others), size=k, replace=False)
                team = [others[i] for i in sorted(pick)]
                if k == 0:
                    predictor = Predictor()
                else:
                    t0 = time.time()
                    weights = fine_tune(team, test, mixed_train, mixed_val, args, Path(scratch) / f"k{k}-{test.patient_id}")
                    print(f"k={k} left out {test.patient_id}: fine-tuned in {time.time() - t0:.0f} s", flush=True)
                    predictor = Predictor(landmarks=weights)
                row, drawing = real_films.evaluate_film(predictor, test.path, test.json_path,
                                                        grades.get(test.path.stem), "film")
                errors = real_films.point_errors_pct(drawing["predicted"], test.landmarks)
                row.update(k=k, trained_on=[f.patient_id for f in team],
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


def real_films_pick(items: list, limit: int, rng: np.random.Generator) -> list:
    if len(items) <= limit:
        return items
    return [items[i] for i in np.sort(rng.choice(len(items), size=limit, replace=False))]


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
