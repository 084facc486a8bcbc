"""Training throughput: the engine's loop (core.training.classify.train_one_epoch) vs a bare PyTorch loop.

Same model, same synthetic crops, same optimizer and loss, interleaved in one process (A, B, A, B, ...) so
machine load hits both alike; images/s from the median of the repeats. A third row adds the engine's
radiograph augmentation (rotation, ROI jitter, brightness/contrast, gamma, noise) in the DataLoader, to
show what the data side costs.

    .venv/bin/python benchmarks/train_throughput.py [--models resnet34,s_resnet34] [--size 128] [--batch 16]
        [--steps 6] [--repeats 3] [--device auto]

Writes benchmarks/results/train_throughput.md.
"""
from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from core import settings  # noqa: E402  (first: it sets OpenMP's wait policy before torch loads)
from core.training import classify
from core.training.crops import context_inner, normalise, train_augmentation  # noqa: E402
from core.training.schedule import warmup_cosine  # noqa: E402
from core.runs.configs import ClassifyConfig  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.data import DataLoader, Dataset, TensorDataset  # noqa: E402
from models.registry import build_model  # noqa: E402


class AugmentedCrops(Dataset):
    """Synthetic contexts through the engine's training augmentation (as CropDataset does after caching)."""

    def __init__(self, contexts: torch.Tensor, labels: torch.Tensor, augment: nn.Module):
        self.contexts, self.labels, self.augment = contexts, labels, augment

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        return self.augment(self.contexts[index]).clamp(0, 1), int(self.labels[index])


def bare_loop(model, batches, optimizer, criterion, runtime) -> float:
    """The shortest correct loop: normalise, forward, loss, backward, step."""
    model.train()
    started = time.perf_counter()
    for images, labels in batches:
        images = normalise(images.to(runtime.device))
        labels = labels.to(runtime.device)
        if runtime.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        optimizer.zero_grad(set_to_none=True)
        with classify._autocast(runtime):
            loss = criterion(model(images).float(), labels)
        loss.backward()
        optimizer.step()
    if runtime.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - started


def engine_loop(model, loader, optimizer, scheduler, criterion, runtime) -> float:
    started = time.perf_counter()
    classify.train_one_epoch(model, loader, criterion, optimizer, scheduler, None, runtime)
    if runtime.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - started


def measure(name: str, size: int, batch: int, steps: int, repeats: int, device: str) -> dict:
    cfg = ClassifyConfig(model=name, input_size=size, batch_size=batch, device=device, workers=0)
    runtime = classify.make_runtime(cfg)
    torch.manual_seed(0)
    n = steps * batch
    crops = torch.rand(n, 1, size, size)
    labels = torch.arange(n) % 3
    batches = [(crops[i:i + batch], labels[i:i + batch]) for i in range(0, n, batch)]
    loader = DataLoader(TensorDataset(crops, labels), batch_size=batch, shuffle=True, num_workers=0)
    inner = context_inner(cfg.roi_margin)
    contexts = torch.rand(n, 1, round(size / inner), round(size / inner))
    augmented = DataLoader(AugmentedCrops(contexts, labels, train_augmentation(cfg, size, inner)),
                           batch_size=batch, shuffle=True, num_workers=0)

    options = {"input_size": size} if name == "s_resnet34" else {}
    model = build_model(name, 3, 1, **options).to(runtime.device)
    if runtime.channels_last:
        model = model.to(memory_format=torch.channels_last)
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    scheduler = warmup_cosine(optimizer, 0, 10 ** 6)

    # warm-up (allocator, oneDNN kernels, cudnn autotune)
    bare_loop(model, batches[:2], optimizer, criterion, runtime)
    times = {"bare": [], "engine": [], "engine+augment": []}
    for _ in range(repeats):
        times["bare"].append(bare_loop(model, batches, optimizer, criterion, runtime))
        times["engine"].append(engine_loop(model, loader, optimizer, scheduler, criterion, runtime))
        times["engine+augment"].append(engine_loop(model, augmented, optimizer, scheduler, criterion, runtime))
    rates = {k: n / statistics.median(v) for k, v in times.items()}
    return {"model": name, "device": str(runtime.device), "amp": str(runtime.amp_dtype).replace("torch.", ""),
            "threads": torch.get_num_threads(), **rates}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="resnet34,s_resnet34")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "train_throughput.md")
    args = parser.parse_args(argv)

    rows = []
    for name in args.models.split(","):
        row = measure(name.strip(), args.size, args.batch, args.steps, args.repeats, args.device)
        rows.append(row)
        print(f"{row['model']}: bare {row['bare']:.1f} img/s, engine {row['engine']:.1f} img/s "
              f"(ratio {row['engine'] / row['bare']:.3f}), engine+augment {row['engine+augment']:.1f} img/s",
              flush=True)

    lines = [
        "# Training throughput: engine loop vs bare PyTorch loop", "",
        f"- input {args.size} x {args.size} px, 1 channel, batch {args.batch}, {args.steps} steps per repeat, "
        f"median of {args.repeats} interleaved repeats after a warm-up",
        f"- machine: {platform.machine()}, {settings.cpu_threads()} CPU threads for torch, "
        f"torch {torch.__version__}; CPU shared with other jobs while measured, so absolute rates are noisy; "
        "the ratio compares loops measured side by side",
        "- bare: a for-loop over pre-made batches (normalise, forward, loss, backward, AdamW step)",
        "- engine: `core.training.classify.train_one_epoch` over a DataLoader of the same tensors (adds the LR "
        "scheduler step and loss bookkeeping)",
        "- engine+augment: the same, the DataLoader applying the training augmentation on the main process "
        "(workers=0, the CPU default)", "",
        "| model | device | amp | bare img/s | engine img/s | engine / bare | engine+augment img/s |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['model']} | {r['device']} | {r['amp']} | {r['bare']:.1f} | {r['engine']:.1f} | "
                     f"{r['engine'] / r['bare']:.3f} | {r['engine+augment']:.1f} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"written: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
