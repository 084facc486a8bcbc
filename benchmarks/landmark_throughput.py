"""Heatmap landmark training throughput: the engine's step (core.training.landmarks.train_step) vs a bare PyTorch loop.

Same network (models.landmark_unet), same optimizer and loss, interleaved in one process (A, B, A, B, ...) so
machine load hits both alike; images/s from the median of the repeats. The bare loop trains on batches made
before the clock starts; the engine's step draws each batch on the fly (random affine window through
grid_sample, mirror with left/right swap, gamma/contrast/noise), so the ratio is what augmentation costs.

    .venv/bin/python benchmarks/landmark_throughput.py [--size 128] [--batch 16] [--steps 8] [--repeats 5]
        [--device auto]

Writes benchmarks/results/landmark_throughput.md.
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

from core import settings  # noqa: E402  (first: core sets OpenMP's wait policy before torch loads)
from core.training import landmarks
import torch  # noqa: E402
from models.landmark_unet import LandmarkUNet  # noqa: E402


def contexts_and_points(n: int, size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Context crops with blobs at 23 points (the content does not change the cost; the shapes do)."""
    generator = torch.Generator().manual_seed(seed)
    side = landmarks._context_size(size, 0.1)
    points = torch.rand(n, 23, 2, generator=generator) * 1.2 - 0.6
    centres = (torch.arange(side) + 0.5) / side * 2 - 1
    gx = torch.exp(-((centres - points[..., 0:1]) ** 2) / 0.002)
    gy = torch.exp(-((centres - points[..., 1:2]) ** 2) / 0.002)
    contexts = (gy[..., :, None] * gx[..., None, :]).sum(1, keepdim=True).clamp(0, 1)
    return contexts, points


def bare_loop(net, optimizer, batches, device) -> float:
    """The shortest correct loop: forward, soft-argmax, loss, backward, step."""
    net.train()
    started = time.perf_counter()
    for inputs, target in batches:
        loss = landmarks._loss(net(inputs.to(device)), target.to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - started


def engine_loop(net, optimizer, contexts, points, cfg, steps, batch, device, generator) -> float:
    net.train()
    started = time.perf_counter()
    for step in range(steps):
        index = torch.randint(0, len(contexts), (batch,), generator=generator)
        landmarks.train_step(net, optimizer, contexts[index], points[index], cfg, generator, device)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "landmark_throughput.md")
    args = parser.parse_args()

    from core.training.devices import pick_device

    device = pick_device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(settings.cpu_threads())
    cfg = landmarks.HeatmapConfig(dataset="benchmark", input_size=args.size, batch_size=args.batch)
    contexts, points = contexts_and_points(4 * args.batch, args.size, seed=0)
    generator = torch.Generator().manual_seed(1)
    batches = []
    for _ in range(args.steps):
        index = torch.randint(0, len(contexts), (args.batch,), generator=generator)
        inputs, target, _ = landmarks.augmented_batch(contexts[index], points[index], cfg, generator)
        batches.append((landmarks._normalise(inputs), target))

    torch.manual_seed(0)
    nets = {name: LandmarkUNet().to(device) for name in ("bare", "engine")}
    optimizers = {name: torch.optim.AdamW(net.parameters(), lr=cfg.lr) for name, net in nets.items()}
    bare_loop(nets["bare"], optimizers["bare"], batches[:2], device)  # warm-up
    engine_loop(nets["engine"], optimizers["engine"], contexts, points, cfg, 2, args.batch, device, generator)
    rates = {"bare": [], "engine": []}
    images = args.steps * args.batch
    for _ in range(args.repeats):
        rates["bare"].append(images / bare_loop(nets["bare"], optimizers["bare"], batches, device))
        rates["engine"].append(images / engine_loop(nets["engine"], optimizers["engine"], contexts, points, cfg,
                                                    args.steps, args.batch, device, generator))
    bare, engine = statistics.median(rates["bare"]), statistics.median(rates["engine"])
    load = Path("/proc/loadavg").read_text().split()[0] if Path("/proc/loadavg").exists() else "?"
    lines = [
        "# Landmark training throughput: engine step vs bare PyTorch loop",
        "",
        f"- landmark-unet ({sum(p.numel() for p in nets['bare'].parameters()) / 1e6:.2f} M parameters), input "
        f"{args.size} x {args.size} px, batch {args.batch}, {args.steps} steps per repeat, median of "
        f"{args.repeats} interleaved repeats after a warm-up",
        f"- machine: {platform.machine()}, device {device}, {torch.get_num_threads()} CPU threads for torch, "
        f"torch {torch.__version__}; load average {load} at the end",
        "- bare: forward, soft-argmax loss, backward, AdamW step over batches augmented before the clock starts",
        "- engine: `core.training.landmarks.train_step`, drawing each batch on the fly (affine window, mirror, photometric)",
        "",
        "| device | bare img/s | engine img/s | engine / bare |",
        "|---|---|---|---|",
        f"| {device} | {bare:.1f} | {engine:.1f} | {engine / bare:.3f} |",
        "",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines), encoding="utf-8")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
