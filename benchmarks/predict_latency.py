"""Per-stage latency of one prediction on a 2048 px phantom, against decoding it plus a bare classifier forward.

Uses the workspace's promoted models (``python -m core demo`` makes them):

    CERVICURVE_HOME=workspace .venv/bin/python benchmarks/predict_latency.py [--repeats 10]

Writes ``benchmarks/results/predict_latency.md``: median and 90th percentile per stage (read, detect,
landmarks, crop, classify, cam), the whole prediction, the floor it is compared with (decoding the file with
``read_image`` plus one bare forward of the loaded classifier, batch 1, under ``no_grad``, at its input size),
and the ratio whole / floor.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def percentile(values, q):
    return float(np.percentile(np.asarray(values, dtype=float), q))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--size", type=int, default=2048, help="phantom height in px")
    parser.add_argument("--cam", default="gradcam")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "predict_latency.md")
    args = parser.parse_args()

    import torch
    from PIL import Image

    from core import settings
    from core.data.phantom import generate_case
    from core.data.imaging import read_image
    from core.inference.pipeline import STAGES, Predictor

    torch.set_num_threads(settings.cpu_threads())
    started = time.perf_counter()
    try:
        predictor = Predictor()
    except ValueError as error:  # no usable model
        print(f"error: {error}", file=sys.stderr)
        return 2
    load_s = time.perf_counter() - started
    case = generate_case(11, size=args.size, curvature_class="normal", bit_depth=16)
    size = int(predictor.meta["input_size"])
    x = torch.randn(1, 1, size, size)

    def bare_forward() -> float:
        with torch.no_grad():
            t0 = time.perf_counter()
            predictor.model(x)
            return (time.perf_counter() - t0) * 1000

    def decode(path) -> float:
        t0 = time.perf_counter()
        read_image(path)
        return (time.perf_counter() - t0) * 1000

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "phantom_2048.png"
        Image.fromarray(case.image).save(path)
        first_started = time.perf_counter()
        predictor.predict(path, cam_method=args.cam)  # warm-up: lazy imports, allocator, Ultralytics setup
        first_ms = (time.perf_counter() - first_started) * 1000
        for _ in range(3):
            bare_forward()
        # interleaved, so a machine shared with other work slows both sides alike
        runs, totals, bare_ms, decode_ms = [], [], [], []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            result = predictor.predict(path, cam_method=args.cam)
            totals.append((time.perf_counter() - t0) * 1000)
            runs.append(result.timings)
            bare_ms.append(bare_forward())
            decode_ms.append(decode(path))

    whole = float(np.median(totals))
    floor = [d + b for d, b in zip(decode_ms, bare_ms)]
    floor_median = float(np.median(floor))
    lines = [
        "# Predict latency, one radiograph",
        "",
        f"{case.width} x {case.height} px 16-bit phantom PNG; classifier {predictor.model_name} at {size} px "
        f"({predictor.quality or 'trained'} models); detector {'yes' if predictor.detector else 'no'}, "
        f"landmarks {'yes' if predictor.landmark_model else 'no'}; CAM {args.cam}. "
        f"{args.repeats} runs after one warm-up; CPU {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores, torch threads {torch.get_num_threads()}, torch {torch.__version__}.",
        "",
        "| stage | median ms | min ms | p90 ms |",
        "| --- | ---: | ---: | ---: |",
    ]
    for stage in STAGES:
        values = [r[stage] for r in runs]
        lines.append(f"| {stage} | {np.median(values):.1f} | {min(values):.1f} | {percentile(values, 90):.1f} |")
    lines += [
        f"| **whole predict()** | **{whole:.1f}** | **{min(totals):.1f}** | **{percentile(totals, 90):.1f}** |",
        f"| decode (`read_image`) | {np.median(decode_ms):.1f} | {min(decode_ms):.1f} | {percentile(decode_ms, 90):.1f} |",
        f"| bare {predictor.model_name} forward, {size} px, batch 1 | {np.median(bare_ms):.1f} | {min(bare_ms):.1f} | "
        f"{percentile(bare_ms, 90):.1f} |",
        f"| floor: decode + bare forward | {floor_median:.1f} | {min(floor):.1f} | {percentile(floor, 90):.1f} |",
        "",
        f"Whole / floor: **{whole / floor_median:.2f}x** (medians), {min(totals) / min(floor):.2f}x (minima). "
        f"First prediction after loading: {first_ms:.0f} ms; loading the three models: {load_s:.1f} s. "
        f"The minima are the best estimate of an unshared machine; medians and p90 show how much other work "
        f"on the machine slowed it (load average {os.getloadavg()[0]:.1f} at the end).",
        "",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines), encoding="utf-8")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
