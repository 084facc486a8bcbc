"""How often the out-of-distribution warning fires: on held-out phantoms, on images that are not lateral neck films,
and on strongly perturbed phantoms. Uses the workspace's promoted models (``python -m core demo`` makes them):

    CERVICURVE_HOME=/tmp/ws nice -n 10 .venv/bin/python benchmarks/ood.py [--holdout 60] [--out benchmarks/results/ood.md]

Sets (all made here, nothing downloaded):
- held-out phantoms: new patients (seeds never used by the demo), the demo's image size; aim <= 5 % flagged.
- not a lateral neck film: the two photographs scikit-learn ships (and crops, flips and grays of them), noise
  (uniform, Gaussian, smooth, pink), flat and gradient images, made-up chest PA, hand and AP cervical radiographs,
  a lateral phantom's skull-only and shoulder-only corners; aim >= 95 % flagged.
- perturbed phantoms: inverted, heavy noise, heavy blur, 4x down-sampled, JPEG quality 5, rotated 90 deg, half
  blacked out, extreme contrast: reported per kind (no aim: some remain readable films).
Each row gives the flag rate of the combined score and of the classifier features alone, and the median score.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
HOLDOUT_SEED = 9_100_000  # new patients: neither the demo's training set nor its own held-out check uses these


def _ellipse(draw: ImageDraw.ImageDraw, cx, cy, rx, ry, fill) -> None:
    draw.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=fill)


def _finish(canvas: Image.Image, rng: np.random.Generator, blur: float = 2.0) -> np.ndarray:
    image = ndimage.gaussian_filter(np.asarray(canvas, np.float32) / 255.0, blur)
    return np.clip(image + rng.normal(0, 0.02, image.shape), 0, 1).astype(np.float32)


def chest_pa(rng: np.random.Generator, size: int) -> np.ndarray:
    """A made-up chest PA: dark lungs, bright mediastinum and heart, rib arcs, clavicles, diaphragm domes."""
    w, h = int(size * rng.uniform(0.9, 1.2)), size
    canvas = Image.new("L", (w, h), int(rng.uniform(150, 190)))
    draw = ImageDraw.Draw(canvas)
    for side in (-1, 1):
        _ellipse(draw, w / 2 + side * w * 0.22, h * 0.5, w * 0.17, h * 0.33, int(rng.uniform(40, 80)))
    draw.rectangle([w * 0.45, h * 0.1, w * 0.55, h * 0.95], fill=200)
    _ellipse(draw, w * 0.55, h * 0.65, w * 0.14, h * 0.14, 190)
    for k in range(9):
        y = h * (0.22 + 0.07 * k)
        for side in (-1, 1):
            draw.arc([w / 2 - w * 0.42 if side < 0 else w / 2, y - h * 0.05, w / 2 if side < 0 else w / 2 + w * 0.42,
                      y + h * 0.12], 180 if side < 0 else 270, 270 if side < 0 else 360, fill=170, width=max(2, size // 90))
    draw.line([(w * 0.15, h * 0.18), (w * 0.45, h * 0.22)], fill=220, width=max(3, size // 60))
    draw.line([(w * 0.85, h * 0.18), (w * 0.55, h * 0.22)], fill=220, width=max(3, size // 60))
    return _finish(canvas, rng)


def hand(rng: np.random.Generator, size: int) -> np.ndarray:
    """A made-up hand radiograph: phalanges and metacarpals as bright rounded bones on dark soft tissue."""
    canvas = Image.new("L", (size, size), 20)
    draw = ImageDraw.Draw(canvas)
    _ellipse(draw, size * 0.5, size * 0.75, size * 0.25, size * 0.2, 70)
    for finger in range(5):
        angle = np.radians(-40 + 20 * finger + rng.uniform(-4, 4))
        x, y = size * 0.5, size * 0.78
        for bone, length in enumerate((0.2, 0.12, 0.08, 0.06)):
            dx, dy = np.sin(angle) * length * size, -np.cos(angle) * length * size
            draw.line([(x, y), (x + dx, y + dy)], fill=int(rng.uniform(190, 235)), width=max(3, size // 40))
            x, y = x + dx * 1.08, y + dy * 1.08
    return _finish(canvas, rng, 1.5)


def ap_cervical(rng: np.random.Generator, size: int) -> np.ndarray:
    """A made-up AP cervical view: bodies stacked face-on in the midline, the tracheal air column over them,
    mandible arc on top and clavicles below: the same bones as a lateral, seen from the front."""
    w, h = int(size * rng.uniform(0.8, 1.0)), size
    canvas = Image.new("L", (w, h), 60)
    draw = ImageDraw.Draw(canvas)
    _ellipse(draw, w / 2, h * 0.55, w * 0.28, h * 0.6, 110)  # neck soft tissue
    for k in range(7):
        y = h * (0.25 + 0.085 * k)
        draw.rounded_rectangle([w * 0.38, y, w * 0.62, y + h * 0.065], radius=size // 60, fill=190)
        for side in (-1, 1):
            _ellipse(draw, w / 2 + side * w * 0.15, y + h * 0.03, w * 0.03, h * 0.025, 175)
    draw.rectangle([w * 0.47, h * 0.2, w * 0.53, h * 0.95], fill=90)  # trachea
    draw.arc([w * 0.2, h * -0.1, w * 0.8, h * 0.3], 20, 160, fill=220, width=max(3, size // 50))
    for side in (-1, 1):
        draw.line([(w / 2 + side * w * 0.08, h * 0.88), (w / 2 + side * w * 0.48, h * 0.8)], fill=215,
                  width=max(3, size // 45))
    return _finish(canvas, rng)


def photographs(size: int) -> list[tuple[str, np.ndarray]]:
    """scikit-learn's two sample photographs (china, flower): whole, cropped, flipped; gray and colour."""
    from sklearn.datasets import load_sample_images

    out = []
    for name, image in zip(("china", "flower"), load_sample_images().images):
        views = {"whole": image, "left": image[:, : image.shape[1] // 2], "right": image[:, image.shape[1] // 2:],
                 "top": image[: image.shape[0] // 2], "flipped": image[::-1]}
        for view, pixels in views.items():
            pil = Image.fromarray(np.ascontiguousarray(pixels))
            pil.thumbnail((size, size))
            out.append((f"photo {name} {view} (colour)", pil))
            out.append((f"photo {name} {view} (gray)", pil.convert("L")))
    return out


def noise_images(rng: np.random.Generator, size: int) -> list[tuple[str, np.ndarray]]:
    out = []
    for k in range(3):
        out.append((f"uniform noise {k}", rng.random((size, size)).astype(np.float32)))
        out.append((f"gaussian noise {k}", np.clip(rng.normal(0.5, 0.2, (size, size)), 0, 1).astype(np.float32)))
        smooth = ndimage.gaussian_filter(rng.normal(size=(size, size)), size / 30)
        out.append((f"smooth noise {k}", ((smooth - smooth.min()) / np.ptp(smooth)).astype(np.float32)))
        spectrum = np.fft.fft2(rng.normal(size=(size, size)))
        f = np.hypot(*np.meshgrid(np.fft.fftfreq(size), np.fft.fftfreq(size)))
        pink = np.real(np.fft.ifft2(spectrum / np.maximum(f, 1 / size)))
        out.append((f"pink noise {k}", ((pink - pink.min()) / np.ptp(pink)).astype(np.float32)))
    out.append(("flat gray", np.full((size, size), 0.5, np.float32)))
    out.append(("flat black", np.zeros((size, size), np.float32)))
    out.append(("gradient", np.tile(np.linspace(0, 1, size, dtype=np.float32), (size, 1))))
    return out


def not_neck_films(size: int, seed: int = 0) -> list[tuple[str, object]]:
    from core.data.phantom import generate_case

    rng = np.random.default_rng(seed)
    items: list[tuple[str, object]] = photographs(size) + noise_images(rng, size)
    for k in range(4):
        items += [(f"chest PA {k}", chest_pa(rng, size)), (f"hand {k}", hand(rng, size)),
                  (f"AP cervical {k}", ap_cervical(rng, size))]
    for k in range(3):  # corners of a lateral that hold no cervical spine: the skull vault, the shoulders
        case = generate_case(HOLDOUT_SEED + 500 + k, size=size * 2)
        h, w = case.image.shape
        items.append((f"lateral skull corner {k}", case.image[: h // 3, : w // 2]))
        items.append((f"lateral shoulder corner {k}", case.image[2 * h // 3:, w // 2:]))
    return items


def perturbations() -> dict:
    def jpeg(image, quality=5):
        buffer = io.BytesIO()
        Image.fromarray(np.round(image * 255).astype(np.uint8)).save(buffer, format="JPEG", quality=quality)
        return np.asarray(Image.open(io.BytesIO(buffer.getvalue())), np.float32) / 255.0

    def half_black(image):
        out = image.copy()
        out[:, : out.shape[1] // 2] = 0
        return out

    return {
        "inverted (MONOCHROME1 shown as 2)": lambda im, rng: 1 - im,
        "heavy noise (sigma 0.2)": lambda im, rng: np.clip(im + rng.normal(0, 0.2, im.shape), 0, 1),
        "heavy blur (sigma 1.5 % of height)": lambda im, rng: ndimage.gaussian_filter(im, im.shape[0] * 0.015),
        "4x down-sampled": lambda im, rng: np.asarray(Image.fromarray(im).resize(
            (max(8, im.shape[1] // 4), max(8, im.shape[0] // 4)), Image.BILINEAR), np.float32),
        "JPEG quality 5": lambda im, rng: jpeg(im),
        "rotated 90 deg": lambda im, rng: np.ascontiguousarray(np.rot90(im)),
        "half blacked out": lambda im, rng: half_black(im),
        "extreme contrast (gamma 4)": lambda im, rng: im ** 4,
    }


def png_bytes(image) -> bytes:
    """Any of the images above as PNG bytes: predicted as an upload is (read, checked, predicted)."""
    if not isinstance(image, Image.Image):
        image = Image.fromarray(np.round(np.clip(image, 0, 1) * 255).astype(np.uint8) if image.dtype != np.uint8
                                else image)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def score(predictor, name: str, image) -> dict:
    try:
        result = predictor.predict(png_bytes(image), name=f"{name}.png", cam_method=None)
    except ValueError:  # refused before any model ran (a blank film): never answered, so counted as flagged
        return {"name": name, "score": None, "flagged": True, "features_flagged": True, "class": None,
                "top_p": 0.0, "components": {}, "refused": True}
    features = result.ood_components.get("features")
    return {"name": name, "score": result.ood_score, "flagged": result.out_of_distribution,
            "features_flagged": features is not None and features > 1, "class": result.curvature_class,
            "top_p": max(result.probabilities.values()), "components": result.ood_components, "refused": False}


def summary_row(label: str, rows: list[dict]) -> str:
    scores = [r["score"] for r in rows if r["score"] is not None]
    return (f"| {label} | {len(rows)} | {np.mean([r['flagged'] for r in rows]):.1%} | "
            f"{np.mean([r['features_flagged'] for r in rows]):.1%} | "
            f"{np.median(scores) if scores else float('nan'):.2f} | {max(r['top_p'] for r in rows):.0%} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--holdout", type=int, default=60, help="held-out phantom patients")
    parser.add_argument("--perturbed", type=int, default=12, help="phantoms per perturbation kind")
    parser.add_argument("--size", type=int, help="phantom height (default: the demo's, from demo_report.json)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "ood.md")
    args = parser.parse_args()

    from core import settings
    from core.data.phantom import generate_case
    from core.inference.pipeline import Predictor

    report_path = settings.home() / "demo_report.json"
    demo = json.loads(report_path.read_text()) if report_path.is_file() else {}
    size = args.size or int(demo.get("profile", {}).get("image_size", 512))
    predictor = Predictor()
    reference = predictor.ood_reference
    started = time.perf_counter()

    held_out, accuracy = [], []
    for index in range(args.holdout):
        truth = settings.CLASSES[index % 3]
        case = generate_case(HOLDOUT_SEED + index, size=size, curvature_class=truth)
        row = score(predictor, f"held-out phantom {index}", case.image.astype(np.float32) / 255.0)
        held_out.append(row)
        accuracy.append((row["class"] == truth, row["flagged"]))
    outside = [score(predictor, name, image) for name, image in not_neck_films(size)]
    rng = np.random.default_rng(1)
    perturbed: dict[str, list[dict]] = {}
    for kind, change in perturbations().items():
        perturbed[kind] = []
        for index in range(args.perturbed):
            case = generate_case(HOLDOUT_SEED + 1000 + index, size=size)
            image = change(case.image.astype(np.float32) / 255.0, rng).astype(np.float32)
            perturbed[kind].append(score(predictor, f"{kind} {index}", image))
    seconds = time.perf_counter() - started

    groups = {}
    for row in outside:
        group = row["name"].split(" ")[0] if not row["name"].startswith(("lateral", "AP", "chest")) else \
            " ".join(row["name"].split(" ")[:2])
        groups.setdefault(group, []).append(row)
    all_perturbed = [r for rows in perturbed.values() for r in rows]
    correct_kept = [c for c, f in accuracy if not f]
    lines = [
        "# Out-of-distribution warning: how often it fires",
        "",
        f"Models: the promoted ones of a `{demo.get('quality', '?')}` demo built with the current phantoms "
        f"(classifier run {demo.get('runs', {}).get('classify', '?')}). Reference: {reference.n_train if reference else 0} "
        f"training crops, thresholds at the {reference.quantile if reference else 0:.1%} quantile of "
        f"{reference.n_val if reference else 0} validation crops framed as predictions frame them (pixel statistics: "
        f"also training crops held out by fold). Phantoms {size} px. "
        f"`python benchmarks/ood.py` on {platform.machine()} ({os.cpu_count()} CPUs), {seconds:.0f} s, "
        f"{time.strftime('%Y-%m-%d')}.",
        "",
        "Flagged = `out_of_distribution` (any component over its threshold: classifier features, crop pixel "
        "statistics, landmark confidence, detector). Features = the classifier-feature component alone. Top p = the highest class "
        "probability shown (capped at 90 % on a flagged film).",
        "",
        "| set | images | flagged | features alone | median score | top p shown |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
        summary_row("held-out phantoms (aim <= 5 %)", held_out),
        summary_row("**not a lateral neck film** (aim >= 95 %)", outside),
        *[summary_row(f"&nbsp;&nbsp;{group}", rows) for group, rows in groups.items()],
        summary_row("**strongly perturbed phantoms**", all_perturbed),
        *[summary_row(f"&nbsp;&nbsp;{kind}", rows) for kind, rows in perturbed.items()],
        "",
        "Held-out phantoms over each component's threshold: " + ", ".join(
            f"{k} {np.mean([r['components'].get(k, 0) > 1 for r in held_out]):.1%}"
            for k in ("features", "image", "landmarks", "detector")) + ".",
        "",
        f"Class accuracy on the held-out phantoms: {np.mean([c for c, _ in accuracy]):.2f} overall, "
        f"{np.mean(correct_kept) if correct_kept else float('nan'):.2f} on the {len(correct_kept)} not flagged.",
        "",
        "Refused before any model ran (a blank image is no film; counted as flagged): " + (", ".join(
            r["name"] for r in outside + all_perturbed if r["refused"]) or "none") + ".",
        "",
        "Not-a-neck-film images still under the threshold: " + (", ".join(
            f"{r['name']} ({r['score']:.2f})" for r in outside if not r["flagged"]) or "none") + ".",
        "",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines), encoding="utf-8")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
