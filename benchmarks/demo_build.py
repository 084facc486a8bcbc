"""How long the demo build takes and how good its models are, per quality: the figures the app's "Build the demo"
offer and the README quote (they are read from the file this writes, never typed by hand).

    .venv/bin/python benchmarks/demo_build.py [--quality full|quick]

Builds the demo with `python -m core demo` in a fresh temporary workspace, samples the machine's load while it
runs, and writes the build's own report (held-out check, wall and CPU seconds per step) into
benchmarks/results/demo_build.json under its quality, beside the machine facts.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from core.demo import MEASURED_BUILDS, REPORT_FILE  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quality", choices=("full", "quick"), default="full")
    args = parser.parse_args()
    loads: list[float] = []
    done = threading.Event()

    def sample() -> None:  # the 1-minute load average every 10 s: a busy machine makes the build slower
        while not done.wait(10.0):
            loads.append(os.getloadavg()[0])

    # the code measured is the code at the start (a checkout may move on while a build runs for an hour)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    with tempfile.TemporaryDirectory(prefix="cervicurve-demo-bench-") as home:
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        started = time.time()
        command = [sys.executable, "-m", "core", "demo"] + (["--quick"] if args.quality == "quick" else [])
        built = subprocess.run(command, cwd=ROOT, env={**os.environ, "CERVICURVE_HOME": home},
                               capture_output=True, text=True)
        wall = time.time() - started
        done.set()
        if built.returncode != 0:
            print(built.stderr[-3000:], file=sys.stderr)
            return built.returncode
        report = json.loads((Path(home) / REPORT_FILE).read_text(encoding="utf-8"))
    entry = {
        "measured_at": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": commit.stdout.strip(), "cpu_count": os.cpu_count(), "machine": platform.processor() or platform.machine(),
        "mean_load": round(statistics.fmean(loads), 1) if loads else None, "wall_s": round(wall, 1),
        "cpu_s": round(sum(step["cpu_s"] for step in report["step_seconds"].values()), 1),
        **{k: report[k] for k in ("images", "class_accuracy", "box_iou50_rate", "cobb_mae_deg", "cobb_within_5deg",
                                  "mean_landmark_error_px", "ood_flag_rate", "step_seconds", "profile")},
    }
    results = json.loads(MEASURED_BUILDS.read_text(encoding="utf-8")) if MEASURED_BUILDS.exists() else {}
    results[args.quality] = entry
    MEASURED_BUILDS.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    print(json.dumps({k: v for k, v in entry.items() if k not in ("step_seconds", "profile")}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
