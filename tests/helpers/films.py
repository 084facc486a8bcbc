"""Films for the labeling and model tests: unlabeled phantoms imported into the store, and small YOLO box and
landmark datasets on disk (a bright box on noise; a drawn C2-C7 column with its 23 landmarks)."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw


def unlabeled_phantoms(home: Path, n: int, *, dataset: str = "films", size: int = 128, seed: int = 100) -> list:
    """Write ``n`` phantom PNGs and import them with a manifest that gives no labels; returns the PhantomCases
    (their ground truth: class, box, landmarks) in image-id order."""
    from core.data.importers import import_csv
    from core.data.phantom import generate_case
    from core.settings import CLASSES

    source = home.parent / f"{dataset}_source"
    (source / "images").mkdir(parents=True, exist_ok=True)
    cases, lines = [], ["path,label,patient_id"]
    for i in range(n):
        case = generate_case(seed + i, size=size, curvature_class=CLASSES[i % 3])
        Image.fromarray(case.image).save(source / "images" / f"case{i:03d}.png")
        lines.append(f"images/case{i:03d}.png,,P{i:03d}")
        cases.append(case)
    (source / "manifest.csv").write_text("\n".join(lines) + "\n")
    report = import_csv(source / "manifest.csv", dataset=dataset)
    assert report.imported == n, report.format()
    return cases


def write_box_dataset(out: Path, train: int = 12, val: int = 4, size: int = 96, seed: int = 0, test: int = 0) -> Path:
    """A bright rectangle (the 'spine') on noise; label = its box."""
    rng = np.random.default_rng(seed)
    for split, count in (("train", train), ("val", val), ("test", test)):
        if not count:
            continue
        (out / "images" / split).mkdir(parents=True, exist_ok=True)
        (out / "labels" / split).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            image = rng.random((size, size)) * 0.35
            w, h = rng.integers(size // 4, size // 2, 2)
            x1, y1 = rng.integers(0, size - w), rng.integers(0, size - h)
            image[y1:y1 + h, x1:x1 + w] = 0.9
            Image.fromarray((image * 255).astype(np.uint8)).save(out / "images" / split / f"{split}{i:03d}.png")
            (out / "labels" / split / f"{split}{i:03d}.txt").write_text(
                f"0 {(x1 + w / 2) / size:.6f} {(y1 + h / 2) / size:.6f} {w / size:.6f} {h / size:.6f}\n")
    (out / "data.yaml").write_text(f"path: {out}\ntrain: images/train\nval: images/val\n"
                                   + ("test: images/test\n" if test else "") + "names:\n  0: cervical_spine\n")
    return out / "data.yaml"


def spine_landmarks(rng, size: int) -> np.ndarray:
    """23 CSXA landmarks of a gently curved, slightly rotated C2–C7 column (image-side left/right)."""
    points = []
    centre_x, top, bottom = size * 0.5, size * 0.12, size * 0.9
    depth = rng.uniform(-0.08, 0.12) * size
    half_width = size * 0.09
    levels = np.linspace(top, bottom, 7)  # C2 top, then the bottom of C2..C7

    def x_at(y):
        return centre_x + depth * math.sin(math.pi * (y - top) / (bottom - top))

    c2_bottom = levels[1]
    points.append([x_at((top + c2_bottom) / 2), (top + c2_bottom) / 2])  # C2 centroid
    points += [[x_at(c2_bottom) - half_width, c2_bottom], [x_at(c2_bottom) + half_width, c2_bottom]]
    for k in range(2, 7):
        y_top, y_bottom = levels[k - 1] + size * 0.03, levels[k]
        points += [[x_at(y_top) - half_width, y_top], [x_at(y_top) + half_width, y_top],
                   [x_at(y_bottom) - half_width, y_bottom], [x_at(y_bottom) + half_width, y_bottom]]
    points = np.array(points)
    angle = math.radians(rng.uniform(-8, 8))
    rotation = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    return (points - size / 2) @ rotation.T + size / 2


def write_landmark_dataset(out: Path, train: int = 8, val: int = 3, size: int = 96, seed: int = 1) -> Path:
    from core.data.measure import roi_box_from_landmarks

    rng = np.random.default_rng(seed)
    for split, count in (("train", train), ("val", val)):
        (out / "images" / split).mkdir(parents=True, exist_ok=True)
        (out / "labels" / split).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            landmarks = spine_landmarks(rng, size)
            image = Image.fromarray((rng.random((size, size)) * 80).astype(np.uint8))
            draw = ImageDraw.Draw(image)
            c2 = landmarks[[1, 2]]
            draw.polygon([tuple(c2[0] - [0, size * 0.1]), tuple(c2[1] - [0, size * 0.1]), tuple(c2[1]), tuple(c2[0])],
                         fill=230)
            for k in range(5):
                tl, tr, bl, br = landmarks[3 + 4 * k: 7 + 4 * k]
                draw.polygon([tuple(tl), tuple(tr), tuple(br), tuple(bl)], fill=230)
            image.save(out / "images" / split / f"{split}{i:03d}.png")
            x1, y1, x2, y2 = roi_box_from_landmarks(landmarks, (size, size))
            kpts = " ".join(f"{x / size:.6f} {y / size:.6f} 2" for x, y in landmarks)
            (out / "labels" / split / f"{split}{i:03d}.txt").write_text(
                f"0 {(x1 + x2) / 2 / size:.6f} {(y1 + y2) / 2 / size:.6f} {(x2 - x1) / size:.6f} "
                f"{(y2 - y1) / size:.6f} {kpts}\n")
    (out / "data.yaml").write_text(
        f"path: {out}\ntrain: images/train\nval: images/val\nkpt_shape: [23, 3]\nnames:\n  0: cervical_spine\n")
    return out / "data.yaml"


# ------------------------------------------------------------------------------------------ not films, and drawings
def screenshot_png(seed: int = 0) -> bytes:
    """Not a film: flat panels, a coloured banner and lines of text, like a screenshot of this app."""
    import io

    rng = np.random.default_rng(seed)
    image = Image.new("RGB", (320, 240), (250, 250, 250))
    draw = ImageDraw.Draw(image)
    draw.rectangle([0, 0, 60, 240], fill=(240, 242, 246))
    draw.rectangle([70, 10, 310, 40], fill=(255, 75, 75))
    for line in range(8):
        draw.text((80, 50 + 20 * line), f"spine.png: normal ({rng.integers(50, 99)}%) OOD 9.1", fill=(30, 30, 30))
    draw.rectangle([200, 120, 300, 220], fill=(40, 40, 40))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def colour_pixels(image: Image.Image, colour) -> int:
    """How many pixels of ``image`` are exactly ``colour`` (RGB): what a report drew in that colour."""
    return int(np.all(np.asarray(image.convert("RGB")) == np.asarray(colour, dtype=np.uint8), axis=-1).sum())
