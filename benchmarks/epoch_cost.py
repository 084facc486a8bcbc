"""What a training epoch of the engine costs against a bare PyTorch loop over the same crops.

The engine's epoch (``core.training.classify.train``) does more than a loop: the training augmentation, a
validation pass with macro-F1, the best/last checkpoints, the run's status and metrics files. This benchmark
builds a small phantom set in a scratch workspace, trains it through the engine, and runs a bare loop on the same
crops as tensors made once (no augmentation, no files: normalise, forward, loss, backward, AdamW step, then a
forward pass over the validation crops), same model, batch, input size and memory format. Bare epochs run before
and after the engine's run; the ratio of medians is the claim (absolute seconds depend on the machine's load).

    .venv/bin/python benchmarks/epoch_cost.py [--models s_resnet34,resnet152] [--size 96] [--patients 120]
        [--epochs 5] [--batch 16]

Writes benchmarks/results/epoch_cost.md.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def bare_epochs(name: str, size: int, batch: int, train_x, train_y, val_x, epochs: int, runtime) -> list[float]:
    import torch
    from torch import nn

    from core.training.crops import normalise
    from models.registry import build_model

    options = {"input_size": size} if name == "s_resnet34" else {}
    model = build_model(name, 3, 1, **options).to(runtime.device)
    if runtime.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    criterion = nn.CrossEntropyLoss()
    generator = torch.Generator().manual_seed(0)

    def prepared(x):
        x = normalise(x.to(runtime.device))
        return x.contiguous(memory_format=torch.channels_last) if runtime.channels_last else x

    seconds = []
    for _ in range(epochs):
        started = time.perf_counter()
        model.train()
        order = torch.randperm(len(train_y), generator=generator)
        for i in range(0, len(order) - 1, batch):  # a lone last image is dropped, as the engine does
            index = order[i:i + batch]
            optimizer.zero_grad(set_to_none=True)
            criterion(model(prepared(train_x[index])), train_y[index]).backward()
            optimizer.step()
        model.eval()
        with torch.no_grad():
            for i in range(0, len(val_x), max(batch, 32)):
                model(prepared(val_x[i:i + max(batch, 32)]))
        seconds.append(time.perf_counter() - started)
    return seconds


def measure(name: str, size: int, batch: int, epochs: int, dataset: str) -> dict:
    import torch

    from core.data import datasets
    from core.runs import layout
    from core.runs.configs import ClassifyConfig
    from core.training import classify
    from core.training.crops import CropDataset, to_samples

    cfg = ClassifyConfig.from_dict({"model": name, "dataset": dataset, "input_size": size, "batch_size": batch,
                                    "epochs": epochs, "patience": 0, "lr": 0.001, "aug_hflip": True, "n_boot": 20})
    runtime = classify.make_runtime(cfg)
    crops = {}
    for split in ("train", "val"):
        data = CropDataset(to_samples(datasets.training_items(dataset, split)), size, cfg.roi_margin, None)
        crops[split] = (torch.stack([data[i][0] for i in range(len(data))]),
                        torch.tensor([data[i][1] for i in range(len(data))]))
    args = (name, size, batch, crops["train"][0], crops["train"][1], crops["val"][0])
    bare_epochs(*args, 1, runtime)  # warm-up: allocator, oneDNN kernels
    # interleaved (bare, engine run, bare, engine run, bare) so a change in the machine's load hits both alike
    bare, engine = bare_epochs(*args, max(1, epochs // 2), runtime), []
    for _ in range(2):
        run_dir = classify.train(cfg)
        engine += [float(s) for s in layout.read_metrics(run_dir)["seconds"]][1:]  # epoch 1 carries the warm-up
        bare += bare_epochs(*args, max(1, epochs // 2), runtime)
    return {"model": name, "device": str(runtime.device), "channels_last": runtime.channels_last,
            "train": len(crops["train"][1]), "val": len(crops["val"][1]),
            "bare_s": statistics.median(bare), "engine_s": statistics.median(engine)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="s_resnet34,resnet152")
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--patients", type=int, default=120)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "epoch_cost.md")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="epoch-cost-") as scratch:
        os.environ["CERVICURVE_HOME"] = scratch
        from core import settings
        import torch
        from core.training import compare

        dataset = compare.build_quick_dataset("epoch-cost", patients=args.patients)
        rows = []
        for name in args.models.split(","):
            row = measure(name.strip(), args.size, args.batch, args.epochs, dataset)
            rows.append(row)
            print(f"{name}: bare {row['bare_s']:.2f} s/epoch, engine {row['engine_s']:.2f} s/epoch, "
                  f"ratio {row['engine_s'] / row['bare_s']:.3f}", flush=True)

    lines = [
        "# Epoch cost: the engine's epoch against a bare PyTorch loop on the same crops", "",
        f"- {args.patients} phantom patients (256 px films, one each), patient-grouped 70/15/15; crops {args.size} px, "
        f"batch {args.batch}; median of epochs 2-{args.epochs} of two engine runs, and of the bare epochs run before, "
        "between and after them",
        "- engine: `core.training.classify.train` (augmentation on the main process, validation pass with macro-F1, "
        "metrics and status written every epoch, best.pt and last.pt after epoch 1 and then at most every 30 s)",
        "- bare: the same model, batch and memory format over the crops as tensors made once: normalise, forward, "
        "loss, backward, AdamW step; then a forward pass over the validation crops; no augmentation, no files",
        f"- machine: {platform.machine()}, {settings.cpu_threads()} torch threads, torch {torch.__version__}; "
        "measured while other jobs shared the CPU, so seconds are noisy and the ratio is the claim", "",
        "| model | device | channels_last | train / val crops | bare s/epoch | engine s/epoch | engine / bare |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['model']} | {r['device']} | {r['channels_last']} | {r['train']} / {r['val']} | "
                     f"{r['bare_s']:.2f} | {r['engine_s']:.2f} | {r['engine_s'] / r['bare_s']:.3f} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"written: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
