"""Cost of the registry's torch models: parameters, FLOPs, CPU inference latency vs plain ResNet-34.

    .venv/bin/python benchmarks/model_cost.py [--repeats 5] [--out benchmarks/results/model_cost.md]

FLOPs come from torch.utils.flop_counter.FlopCounterMode (a multiply-add counts 2; convolutions and matrix
products only, so BatchNorm, ReLU and S-ResNet's element-wise (1 + W) product are not in them; the latter
is listed separately). Latency: grayscale input at the default size, eval mode, inference_mode, one
thread by default, one warm-up, median of ``--repeats`` runs, each alternating with a run of a plain
torchvision ResNet-34; the ratio is the median of the paired CPU-time ratios, which holds on a shared,
busy machine where wall-clock milliseconds do not.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models.registry import MODELS, build_model  # noqa: E402
from models.s_resnet import VARIANTS, SResNet  # noqa: E402
from torchvision.models import resnet34 as tv_resnet34  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "model_cost.md"


def flops(model: torch.nn.Module, side: int) -> int:
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        model(torch.rand(1, 1, side, side))
    return counter.get_total_flops()


def paired_latency(model: torch.nn.Module, baseline: torch.nn.Module, batch: int, side: int,
                   repeats: int) -> dict[str, float]:
    """Median wall and CPU ms of ``model``, and the median of its per-pair CPU-time ratios to ``baseline``.

    Model and baseline alternate, so a change in load hits both alike; CPU time (process_time) counts
    only this process's work, so other processes on a shared machine barely move it.
    """
    x = torch.rand(batch, 1, side, side)
    runs: dict[str, list[tuple[float, float]]] = {"model": [], "baseline": []}
    with torch.inference_mode():
        model(x), baseline(x)  # warm-up: first call allocates and picks kernels
        for _ in range(repeats):
            for key, net in (("baseline", baseline), ("model", model)):
                wall, cpu = time.perf_counter(), time.process_time()
                net(x)
                runs[key].append(((time.perf_counter() - wall) * 1000, (time.process_time() - cpu) * 1000))
    ratios = [m[1] / b[1] for m, b in zip(runs["model"], runs["baseline"])]
    return {"wall_ms": statistics.median(r[0] for r in runs["model"]),
            "cpu_ms": statistics.median(r[1] for r in runs["model"]), "ratio": statistics.median(ratios)}


def scale_multiplies(model: torch.nn.Module, side: int) -> int:
    """Element-wise products of S-ResNet's (1 + W) per image (not counted by FlopCounterMode)."""
    if not isinstance(model, SResNet):
        return 0
    sizes: list[int] = []
    hooks = [scale.register_forward_hook(lambda m, args, out: sizes.append(out[0].numel()))
             for scale in model.residual_scales()]
    with torch.inference_mode():
        model(torch.rand(1, 1, side, side))
    for hook in hooks:
        hook.remove()
    return sum(sizes)


def candidates() -> list[tuple[str, torch.nn.Module, int]]:
    rows = [("torchvision resnet34 (baseline, 1-channel conv1)", _plain_resnet34(), 224)]
    for variant in VARIANTS:
        rows.append((f"s_resnet34 {variant}", build_model("s_resnet34", variant=variant), MODELS["s_resnet34"].default_input_size))
    for name, spec in MODELS.items():
        if spec.kind == "torch" and name != "s_resnet34":
            rows.append((name, build_model(name), spec.default_input_size))
    return rows


def _plain_resnet34() -> torch.nn.Module:
    model = tv_resnet34(weights=None, num_classes=3)
    model.conv1 = torch.nn.Conv2d(1, 64, 7, 2, 3, bias=False)
    return model


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="paired runs at batch 1 (batch 16: half)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads; 1 makes CPU time a fair measure on a shared machine")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    repeats_16 = max(2, args.repeats // 2)
    load_before = os.getloadavg()[0]

    rows = candidates()
    baseline = rows[0][1].eval()
    measured = []
    for label, model, side in rows:
        model.eval()
        b1 = paired_latency(model, baseline, 1, side, args.repeats)
        b16 = paired_latency(model, baseline, 16, side, repeats_16)
        measured.append({
            "label": label, "side": side,
            "params": sum(p.numel() for p in model.parameters()),
            "gflops_default": flops(model, side) / 1e9, "gflops_224": flops(model, 224) / 1e9,
            "gflops_128": flops(model, 128) / 1e9, "scale_mults": scale_multiplies(model, side),
            "b1": b1, "b16": b16,
        })
        print(f"{label}: {b1['cpu_ms']:.1f} ms (x{b1['ratio']:.2f}) / {b16['cpu_ms']:.0f} ms (x{b16['ratio']:.2f})",
              flush=True)
    load_after = os.getloadavg()[0]

    lines = [
        "# Model cost (CPU inference)",
        "",
        f"Measured {time.strftime('%Y-%m-%d')} on {platform.machine()} ({os.cpu_count()} cores, 1-minute load "
        f"{load_before:.1f} before / {load_after:.1f} after) with torch threads = {args.threads} (torch {torch.__version__}); "
        f"1-channel input, eval mode, inference_mode. Latency: median of {args.repeats} runs at batch 1 and "
        f"{repeats_16} at batch 16 after one warm-up, each alternating with a run of the baseline (plain "
        "torchvision ResNet-34). CPU ms is the process's CPU time per forward pass, which other processes "
        "on a shared machine barely change; wall ms is what a user waits and depends on the load. "
        "\"x baseline\" is the median of the paired CPU-time ratios. GFLOPs count a multiply-add as 2 and "
        "cover convolutions and matrix products only; S-ResNet's element-wise (1 + W) products are listed "
        "separately (millions per image).",
        "",
        "| model | default px | params (M) | GFLOPs @ default | GFLOPs @ 224 | GFLOPs @ 128 | (1 + W) mults (M) "
        "| batch 1 CPU ms | batch 1 wall ms | x baseline | batch 16 CPU ms | batch 16 wall ms | x baseline |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in measured:
        b1, b16 = r["b1"], r["b16"]
        lines.append(
            f"| {r['label']} | {r['side']} | {r['params'] / 1e6:.2f} | {r['gflops_default']:.2f} | {r['gflops_224']:.2f} "
            f"| {r['gflops_128']:.2f} | {r['scale_mults'] / 1e6:.2f} | {b1['cpu_ms']:.1f} | {b1['wall_ms']:.1f} "
            f"| {b1['ratio']:.2f} | {b16['cpu_ms']:.0f} | {b16['wall_ms']:.0f} | {b16['ratio']:.2f} |")
    lines += ["", "The SVM (HOG + RBF SVC, scikit-learn) is not a torch model and is not listed.", ""]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
