"""Phantom generation speed: images per second at 1024 and 2048 px against a trivial baseline.

    .venv/bin/python benchmarks/phantom_speed.py [--repeats 5] [--out benchmarks/results/phantom_speed.md]

Each repeat renders one phantom (a new seed: new anatomy, pose, exposure) and, alternating with it, the
baseline: white noise of the same size, one Gaussian blur (sigma 2 px) and 8-bit quantisation, i.e. the
least any image generator pays per pixel. The ratio column is the median of paired ratios, so it holds on
a busy machine better than the absolute numbers do. The stage split (geometry, attenuation, exposure,
PNG encoding) is measured on separate calls of the module's stages.
"""
from __future__ import annotations

import argparse
import io
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.data import phantom  # noqa: E402
from core.data.phantom.cases import _plan  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "phantom_speed.md"


def baseline(seed: int, height: int, width: int) -> np.ndarray:
    noise = np.random.default_rng(seed).standard_normal((height, width), dtype=np.float32)
    return np.clip(ndimage.gaussian_filter(noise, 2.0) * 60 + 128, 0, 255).astype(np.uint8)


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return time.perf_counter() - start, result


def stages(seed: int, size: int) -> dict[str, float]:
    """Seconds per stage of one phantom, via the module's own stage functions."""
    plan_s, plan = timed(_plan, seed, size, None, None, None, None, None, None)
    rng = np.random.default_rng([seed, 0xC8])
    att_s, att = timed(phantom.attenuation, plan.anatomy, plan.view, rng)
    exp_s, image = timed(phantom.expose, att, plan.view, rng)
    pixels = np.round(image * 255).astype(np.uint8)
    png_s, _ = timed(lambda: Image.fromarray(pixels).save(io.BytesIO(), format="PNG",
                                                           compress_level=phantom.PNG_COMPRESS_LEVEL))
    return {"geometry": plan_s, "attenuation": att_s, "exposure": exp_s, "png": png_s}


def measure(size: int, repeats: int) -> dict:
    phantom.generate_case(0, size=size)  # warm-up (imports, allocator)
    case_s, base_s, ratios, shapes = [], [], [], []
    for r in range(repeats):
        seconds, case = timed(phantom.generate_case, 1000 + r, size=size)
        shapes.append(case.image.shape)
        b, _ = timed(baseline, r, *case.image.shape)
        case_s.append(seconds)
        base_s.append(b)
        ratios.append(seconds / b)
    split = [stages(2000 + r, size) for r in range(max(1, repeats // 2))]
    return {
        "size": size,
        "shape": shapes[0],
        "phantom_s": statistics.median(case_s),
        "baseline_s": statistics.median(base_s),
        "ratio": statistics.median(ratios),
        "stages": {k: statistics.median(s[k] for s in split) for k in split[0]},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 2048])
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    rows = [measure(size, args.repeats if size <= 1024 else max(2, args.repeats // 2 + 1)) for size in args.sizes]
    lines = [
        "# Phantom generation speed",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores (shared), Python {platform.python_version()}, "
        f"numpy {np.__version__}, load average {os.getloadavg()[0]:.1f} when done (other jobs share the cores: "
        "trust the ratio column more than the seconds). "
        f"Command: `.venv/bin/python benchmarks/phantom_speed.py --repeats {args.repeats}`.",
        "",
        "Median over repeats, each a new seed (new patient, pose, exposure). Baseline: white noise + one Gaussian",
        "blur (sigma 2 px) + 8-bit quantisation of the same size; ratio = median of paired (alternating) ratios.",
        "",
        "| height px | image (h x w) | phantom s | phantom images/s | baseline s | baseline images/s "
        "| phantom / baseline |",
        "| ---: | :---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        h, w = row["shape"]
        lines.append(f"| {row['size']} | {h} x {w} | {row['phantom_s']:.3f} | {1 / row['phantom_s']:.2f} | "
                     f"{row['baseline_s']:.3f} | {1 / row['baseline_s']:.1f} | {row['ratio']:.1f}x |")
    lines += ["", "Stage split (seconds, median; PNG encoding is not part of `generate_case` but of `write_phantoms`):",
              "",
              "| height px | geometry | attenuation (bones + soft tissue) | exposure (noise, blur, processing) "
              "| PNG encode |",
              "| ---: | ---: | ---: | ---: | ---: |"]
    for row in rows:
        st = row["stages"]
        lines.append(f"| {row['size']} | {st['geometry']:.3f} | {st['attenuation']:.3f} | {st['exposure']:.3f} | "
                     f"{st['png']:.3f} |")
    text = "\n".join(lines) + "\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text, encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
