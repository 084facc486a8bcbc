"""The GPU path, checked and measured in one short script (run it on a machine with a CUDA GPU).

1. What the app and `runs start` would pick: ``pick_device("auto")`` is CUDA, NVML names the GPU (the Train page's
   hardware panel reads the same), the classifier runtime has AMP (bf16 or fp16), channels_last, and DDP would use
   nccl (``torch.distributed.is_nccl_available``).
2. S-ResNet-34 at 224 px through the engine's loop against a bare PyTorch loop on the same batches
   (``benchmarks/train_throughput.py``'s measure): images/s, the ratio, peak GPU memory.
3. A few real epochs through ``classify.train`` on a phantom set at 224 px (``benchmarks/epoch_cost.py``): the
   engine's epoch against a bare loop on the same crops.

    .venv/bin/python benchmarks/gpu_check.py [--patients 120] [--epochs 4] [--allow-cpu]

Writes benchmarks/results/gpu_<gpu name>.md. Without a GPU it stops in one line (``--allow-cpu`` runs the same
steps on the CPU at 64 px, to check the script itself). ``compare --full`` on the GPU is its own command:
``python -m core compare --full`` (224 px there).
"""
from __future__ import annotations

import argparse
import os
import platform
import re
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--patients", type=int, default=120)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--allow-cpu", action="store_true", help="run the steps on the CPU (a check of the script)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)

    import torch

    from core.runs import hardware
    from core.runs.configs import ClassifyConfig
    from core.training import classify
    from core.training.devices import pick_device

    device = pick_device("auto")
    if device.type != "cuda" and not args.allow_cpu:
        print("error: no CUDA GPU here (torch.cuda.is_available() is False); nothing to measure", file=sys.stderr)
        return 2
    size = 224 if device.type == "cuda" else 64
    gpus = hardware.gpus()
    name = gpus[0].name if gpus else ("cpu" if device.type == "cpu" else torch.cuda.get_device_name())
    runtime = classify.make_runtime(ClassifyConfig(model="s_resnet34", input_size=size))
    checks = [
        ("pick_device('auto')", str(device)),
        ("NVML GPUs (Train page hardware panel)", ", ".join(f"{g.name} ({g.memory_total_mb:.0f} MB)"
                                                            for g in gpus) or "none"),
        ("classifier runtime: AMP dtype", str(runtime.amp_dtype)),
        ("classifier runtime: channels_last", str(runtime.channels_last)),
        ("DDP backend available: nccl", str(torch.distributed.is_available() and torch.distributed.is_nccl_available())),
    ]
    for label, value in checks:
        print(f"{label}: {value}", flush=True)

    import epoch_cost
    import train_throughput

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    loop = train_throughput.measure("s_resnet34", size, 32 if device.type == "cuda" else 8, 20 if device.type ==
                                    "cuda" else 2, 3, "auto")
    peak_mb = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None
    print(f"loop: bare {loop['bare']:.1f} img/s, engine {loop['engine']:.1f} img/s "
          f"({loop['engine'] / loop['bare']:.3f}), peak memory {peak_mb or 0:.0f} MB", flush=True)

    with tempfile.TemporaryDirectory(prefix="gpu-check-") as scratch:
        os.environ["CERVICURVE_HOME"] = scratch
        from core.training import compare

        dataset = compare.build_quick_dataset("gpu-check", patients=args.patients)
        epochs = epoch_cost.measure("s_resnet34", size, 32 if device.type == "cuda" else 8, args.epochs, dataset)
    print(f"epochs: bare {epochs['bare_s']:.2f} s, engine {epochs['engine_s']:.2f} s "
          f"({epochs['engine_s'] / epochs['bare_s']:.3f})", flush=True)

    lines = [f"# GPU check: {name}", "",
             f"`benchmarks/gpu_check.py` on {platform.node() or 'this machine'}, torch {torch.__version__}, "
             f"{time.perf_counter() - started:.0f} s in all.", "", "| check | value |", "|---|---|",
             *[f"| {label} | {value} |" for label, value in checks], "",
             f"S-ResNet-34 at {size} px, AMP {runtime.amp_dtype}, channels_last {runtime.channels_last}:", "",
             "| measurement | bare loop | engine | engine / bare |", "|---|---|---|---|",
             f"| training images/s (same batches) | {loop['bare']:.1f} | {loop['engine']:.1f} | "
             f"{loop['engine'] / loop['bare']:.3f} |",
             f"| seconds per epoch ({epochs['train']} train / {epochs['val']} val phantom crops) | "
             f"{epochs['bare_s']:.2f} | {epochs['engine_s']:.2f} | {epochs['engine_s'] / epochs['bare_s']:.3f} |",
             "", f"Peak GPU memory (training loop): {'–' if peak_mb is None else f'{peak_mb:.0f} MB'}.", ""]
    safe = re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-").lower() or "gpu"
    out = args.out or ROOT / "benchmarks" / "results" / f"gpu_{safe}.md"
    out.write_text("\n".join(lines), encoding="utf-8")
    print(f"written: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
