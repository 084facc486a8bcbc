"""Explore's redraw after a slider move, at the page's film size (512 px), engine and real browser.

    .venv/bin/python benchmarks/teach_redraw.py [--home WORKSPACE] [--from 20] [--to -10] [--pause 1]
                                                [--screenshots DIR]

The angle slider is moved one degree at a time from ``--from`` to ``--to``. Engine: ``explore.explore`` in this
process for each new angle (film, measurements, the models' answer with Grad-CAM, pictures) without the prefetch,
the same angles again (every part cached), and a walk at another seed with the prefetch and ``--pause`` seconds
between moves. Browser: `streamlit run app.py` with the system chromium; one ArrowLeft on the slider, timed until
the page shows the new angle's rule class, and until the rerun has finished and every image has loaded: the first
half of the walk back to back, the rest with the pause.
``--home`` is a workspace with promoted models (e.g. one built by `python -m core demo --quick`); without it a
tiny classifier is trained into a temporary workspace. Writes benchmarks/results/teach_redraw.md.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from app_latency import models_of, workspace_or_tiny  # noqa: E402
from tests.helpers.browser import CHROMIUM, CHROMIUM_ARGS, NOTICE, start_server, stop_server  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "teach_redraw.md"


def engine_moves(angles: list[int], pause_s: float) -> dict[str, list[float]]:
    """Seconds per ``explore.explore`` over the angles: without the prefetch (every part made on the move), with it
    and a pause between moves (a student looking at the film), and each angle again (everything cached);
    plus each stage's share without the prefetch."""
    from core.inference.teaching import explore, films

    explore.explore(films.FilmSettings(cobb_c2c7=angles[0]), prefetch=False)  # loads the models, the patient
    runs: dict[str, list[float]] = {"cold": [], "prefetched": [], "again": []}
    for angle in angles[1:]:
        started = time.perf_counter()
        result = explore.explore(films.FilmSettings(cobb_c2c7=angle), prefetch=False)
        runs["cold"].append(time.perf_counter() - started)
        for stage, ms in result.timings_ms.items():
            runs.setdefault(f"stage {stage}", []).append(ms / 1000)
    for angle in angles[1:]:
        runs["again"].append(_timed(lambda: explore.explore(films.FilmSettings(cobb_c2c7=angle), prefetch=False)))
    # The same walk at another seed (nothing cached), now with the prefetch and a pause after each redraw.
    explore.explore(films.FilmSettings(cobb_c2c7=angles[0], seed=2))
    for angle in angles[1:]:
        time.sleep(pause_s)
        runs["prefetched"].append(_timed(lambda: explore.explore(films.FilmSettings(cobb_c2c7=angle, seed=2))))
    return runs


def _timed(call) -> float:
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


def browser_moves(browser, url: str, angles: list[int], pauses: list[float],
                  screenshot: Path | None) -> tuple[list[float], list[float]]:
    """Seconds from one key press to (the new rule class shown, the rerun finished with its images loaded); before
    the press to ``angles[i + 1]``, a wait of ``pauses[i]`` seconds after the previous redraw finished."""
    page = browser.new_page(viewport={"width": 1500, "height": 2000})  # tall: the screenshot holds the whole page
    page.goto(f"{url}/teach")
    page.get_by_text(NOTICE).first.wait_for(timeout=60_000)
    page.get_by_text(f"Redrawn at {angles[0]:+.1f}°").wait_for(timeout=180_000)
    thumb = page.locator("[data-testid='stSlider']").filter(has_text="C2–C7 angle").locator("input[type='range']")
    if int(thumb.input_value()) != angles[0]:
        raise RuntimeError(f"the slider starts at {thumb.input_value()}, not {angles[0]}")
    shown, done = [], []
    for angle, pause_s in zip(angles[1:], pauses):
        page.wait_for_timeout(pause_s * 1000)
        thumb.focus()
        started = time.perf_counter()
        thumb.press("ArrowLeft" if angle < angles[0] else "ArrowRight")
        page.locator(f"h4:has-text('Cobb C2–C7 {angle:+.1f}°')").wait_for(timeout=60_000)
        shown.append(time.perf_counter() - started)
        page.get_by_text(f"Redrawn at {angle:+.1f}°").wait_for(timeout=60_000)  # the page's last element
        page.wait_for_function("() => [...document.images].every(img => img.complete)")
        done.append(time.perf_counter() - started)
    if screenshot is not None:
        page.wait_for_timeout(500)  # let the charts finish drawing
        page.screenshot(path=str(screenshot), full_page=True)
    page.close()
    return shown, done


def row(name: str, seconds: list[float]) -> str:
    ms = sorted(v * 1000 for v in seconds)
    return (f"| {name} | {statistics.median(ms):.0f} | {ms[0]:.0f} | {ms[int(0.9 * (len(ms) - 1))]:.0f} | "
            f"{ms[-1]:.0f} | {len(ms)} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, help="workspace with promoted models (default: a tiny one)")
    parser.add_argument("--from", dest="start", type=int, default=20)
    parser.add_argument("--to", dest="end", type=int, default=-10)
    parser.add_argument("--pause", type=float, default=1.0, help="seconds between a redraw and the next move")
    parser.add_argument("--screenshots", type=Path, help="save teach_explore.png here after the last move")
    args = parser.parse_args()
    if not CHROMIUM.exists():
        print(f"{CHROMIUM} is missing: apt-get install chromium", file=sys.stderr)
        return 2
    step = -1 if args.end < args.start else 1
    angles = list(range(args.start, args.end + step, step))
    from playwright.sync_api import sync_playwright

    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        home = workspace_or_tiny(args.home, scratch)
        os.environ["CERVICURVE_HOME"] = str(home)
        engine = engine_moves(angles, args.pause)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            server, url = start_server(home, scratch / "server.log")
            try:
                shot = None if args.screenshots is None else args.screenshots / "teach_explore.png"
                if shot is not None:
                    shot.parent.mkdir(parents=True, exist_ok=True)
                half = len(angles) // 2  # back-to-back moves on the first half, a student's pause on the rest
                shown, done = browser_moves(browser, url, angles, [0.0] * half + [args.pause] * (len(angles) - 1 - half),
                                            shot)
                hurried, paused = (shown[:half], done[:half]), (shown[half:], done[half:])
            finally:
                stop_server(server)
            browser.close()
    load_after = os.getloadavg()[0]

    import torch

    lines = [
        "# Teach: Explore redraw after a slider move",
        "",
        f"Measured {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC by `benchmarks/teach_redraw.py` on "
        f"{os.cpu_count()} CPU cores ({platform.machine()}, no GPU used), torch {torch.__version__}, system chromium "
        f"driven by playwright. The angle slider moved 1° at a time from {args.start:+d}° to {args.end:+d}° "
        f"({len(angles) - 1} moves; every move a new phantom), film height 512 px (the page's size), all layers drawn, "
        f"Grad-CAM on. The browser walks the first half back to back and the second half with a "
        f"{args.pause:g} s pause after each redraw, in which the page has made the next films (prefetch). "
        f"1-minute load average {load_before:.1f} before, {load_after:.1f} after (other work on the machine slows "
        "every number).",
        "",
        f"Models: {models_of(home)}.",
        "",
        "| measurement (ms) | median | min | p90 | max | moves |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
        row(f"browser, {args.pause:g} s between moves: key press -> new rule class shown", paused[0]),
        row(f"browser, {args.pause:g} s between moves: key press -> rerun finished, images loaded", paused[1]),
        row("browser, back-to-back moves: key press -> new rule class shown", hurried[0]),
        row("browser, back-to-back moves: key press -> rerun finished, images loaded", hurried[1]),
        row(f"engine: `teaching.explore`, new angle, prefetch on, {args.pause:g} s between moves",
            engine["prefetched"]),
        row("engine: `teaching.explore`, new angle, no prefetch", engine["cold"]),
        *[row(f"  of which {name.split()[1]}", values) for name, values in engine.items() if name.startswith("stage")],
        row("engine: the same angle again (all cached)", engine["again"]),
        "",
        "Stages: *film* = the phantom for the angle (cached per seed, patient, angle, facing, size) with exposure, "
        "noise and its measurements; *model* = detector, landmarks, classifier and Grad-CAM (cached per film and "
        "model files); *drawing* = the construction picture and the heatmap. The prefetch makes the films one degree "
        "either side of the one shown, with the models' answer on them, in one background thread.",
        "",
    ]
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text("\n".join(lines), encoding="utf-8")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
