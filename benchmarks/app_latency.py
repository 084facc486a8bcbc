"""App latency as a user feels it: cold start of `streamlit run app.py` to first render, and upload-to-result
for one 2048 px radiograph (first and warm), measured with the system chromium through playwright.

    .venv/bin/python benchmarks/app_latency.py [--home WORKSPACE] [--repeats 3]

``--home`` is a workspace with promoted models (e.g. one built by `python -m core demo --quick`); without
it a tiny classifier is trained into a temporary workspace (no detector or landmarks: the numbers then
cover reading, classifying, Grad-CAM and drawing only). Writes benchmarks/results/app_latency.md.
"""
from __future__ import annotations

import argparse
import io
import json
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

from tests.helpers.browser import CHROMIUM, CHROMIUM_ARGS, NOTICE, start_server, stop_server  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "app_latency.md"
USER_PAUSE_S = 1.5  # from the page showing to the file handed over: a user choosing a file takes longer


def film(seed: int, size: int) -> bytes:
    from PIL import Image

    from core.data.phantom import generate_case

    case = generate_case(seed, size=size, curvature_class=("normal", "straightened", "reversed")[seed % 3])
    buffer = io.BytesIO()
    Image.fromarray(case.image).save(buffer, format="PNG")
    return buffer.getvalue()


STREAMLIT_RUN = ("streamlit", "run", "app.py")
SERVE = ("ui.serve",)  # the README's command: the server answers once the promoted models are loaded


def cold_start(browser, home: Path, scratch: Path, launcher=SERVE) -> tuple[float, float]:
    """Seconds from launching the server to (HTTP health answers, the browser shows the notice); ui.serve answers
    once the promoted models are loaded."""
    started = time.perf_counter()
    server, url = start_server(home, scratch / "cold.log", launcher)
    http_s = time.perf_counter() - started
    try:
        page = browser.new_page()
        page.goto(url)
        page.get_by_text(NOTICE).first.wait_for(timeout=60_000)
        render_s = time.perf_counter() - started
        page.close()
    finally:
        stop_server(server)
    return http_s, render_s


# Marks, in the page, the first animation frame at which the verdict's title is on the page and the first at which
# the reading view has drawn a film: playwright's own waits poll (up to 0.5 s apart), which a user does not wait for.
SHOWN_PROBE = """(name) => {
  const shown = window.cervicurveShown = {};
  const look = () => {
    const now = Date.now() / 1000;
    if (!shown.verdict && [...document.querySelectorAll("h3")].some((h) => h.textContent.startsWith(name + ": ")))
      shown.verdict = now;
    const frame = document.querySelector("iframe[title*='film_viewer']");
    const app = frame && frame.contentDocument && frame.contentDocument.getElementById("app");
    if (!shown.film && app && app.dataset.ready === "1" && app.dataset.film) shown.film = now;
    if (!(shown.verdict && shown.film)) requestAnimationFrame(look);
  };
  requestAnimationFrame(look);
}"""


def upload_to_result(browser, url: str, image: Path, pause_s: float = 0.0) -> tuple[float, float, float]:
    """Seconds from handing the file to the uploader to the first frame showing both the verdict's title and the
    film drawn in the reading view; the engine's own share (the page's "Time per stage" line: read, detect,
    landmarks, crop, classify, cam); and when (``time.time()``) that frame came. ``pause_s``: how long after the
    notice shows the file is given (a user takes a moment to pick one; at 0 the upload competes with the page's own
    first drawing)."""
    page = browser.new_page(viewport={"width": 1500, "height": 1200})
    page.goto(url)
    page.get_by_text(NOTICE).first.wait_for(timeout=60_000)
    page.wait_for_timeout(pause_s * 1000)
    page.evaluate(SHOWN_PROBE, image.name)
    started = time.time()  # the browser's Date.now() reads the same clock
    page.locator("input[type='file']").first.set_input_files(str(image))
    page.get_by_text(f"{image.name}: ").first.wait_for(timeout=180_000)
    # the reading view has drawn the film (with the heatmap layer, for a film the models judge)
    page.frame_locator("iframe[title*='film_viewer']").locator("#app[data-ready='1']").wait_for(timeout=60_000)
    page.wait_for_function("() => window.cervicurveShown.verdict && window.cervicurveShown.film", timeout=60_000)
    shown = page.evaluate("window.cervicurveShown")
    elapsed = max(shown["verdict"], shown["film"]) - started
    stages = page.get_by_text("Time per stage (ms):").first.inner_text().split(":", 1)[1]
    engine_s = sum(float(part.split()[-1]) for part in stages.split(",")) / 1000.0
    page.close()
    return elapsed, engine_s, max(shown["verdict"], shown["film"])


def workspace_or_tiny(home: Path | None, scratch: Path) -> Path:
    """The workspace asked for, or a tiny one in ``scratch`` with a promoted test classifier (no detector or
    landmarks): shared by the browser benchmarks."""
    if home is not None:
        return home
    from tests.helpers.models import promote_tiny_classifier

    promote_tiny_classifier(scratch / "workspace")
    return scratch / "workspace"


def models_of(home: Path) -> str:
    parts = []
    for task in ("classify", "detect", "landmarks"):
        record = home / "promoted" / task / "promoted.json"
        if record.exists():
            info = json.loads(record.read_text())
            parts.append(f"{task}: {info.get('model') or 'yolo'} ({info.get('demo_quality') or info.get('run_id')})")
        else:
            parts.append(f"{task}: none")
    return "; ".join(parts)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, help="workspace with promoted models (default: a tiny one)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--size", type=int, default=2048, help="radiograph height in px")
    args = parser.parse_args()
    if not CHROMIUM.exists():
        print(f"{CHROMIUM} is missing: apt-get install chromium", file=sys.stderr)
        return 2
    from playwright.sync_api import sync_playwright

    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        home = workspace_or_tiny(args.home, scratch)
        images = []
        for number in range(args.repeats + 1):
            path = scratch / f"film_{args.size}px_{number}.png"
            path.write_bytes(film(900 + number, args.size))
            images.append(path)

        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            cold = [cold_start(browser, home, scratch) for _ in range(args.repeats)]
            launched = time.time()
            server, url = start_server(home, scratch / "plain.log", STREAMLIT_RUN)
            try:  # `streamlit run app.py` loads torch and the models when the first upload asks
                first_plain = upload_to_result(browser, url, images[0])
                launch_plain = first_plain[2] - launched
            finally:
                stop_server(server)
            launched = time.time()
            server, url = start_server(home, scratch / "warm.log", SERVE)
            try:
                first = upload_to_result(browser, url, images[0])  # the server answered once the models were loaded
                launch_serve = first[2] - launched
                warm = [upload_to_result(browser, url, image, USER_PAUSE_S) for image in images[1:]]
                at_once = [upload_to_result(browser, url, image) for image in images[1:]]
            finally:
                stop_server(server)
            browser.close()

    import torch

    load_after = os.getloadavg()[0]
    rows = [
        ("cold start: `python -m ui.serve` -> HTTP health answers (the models are loaded first)", [c[0] for c in cold]),
        ("cold start: `python -m ui.serve` -> browser shows the notice", [c[1] for c in cold]),
        (f"first upload right after the page shows -> result ({args.size} px), `streamlit run app.py` (models load "
         "on the first upload)", [first_plain[0]]),
        (f"first upload right after the page shows -> result ({args.size} px), `python -m ui.serve` (the server "
         "answers once the models are loaded)", [first[0]]),
        ("launch -> first result, `streamlit run app.py` (page opened once the server answers, file given at once)",
         [launch_plain]),
        ("launch -> first result, `python -m ui.serve` (page opened once the server answers, file given at once)",
         [launch_serve]),
        (f"warm upload {USER_PAUSE_S:.1f} s after the page opened -> result ({args.size} px, new file, models "
         f"loaded)", [w[0] for w in warm]),
        ("  of which the engine (read, detect, landmarks, crop, classify, Grad-CAM)", [w[1] for w in warm]),
        ("warm upload the moment the notice shows -> result (the page still drawing itself)", [w[0] for w in at_once]),
    ]
    lines = [
        "# App latency",
        "",
        f"Measured {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC by `benchmarks/app_latency.py` on "
        f"{os.cpu_count()} CPU cores ({platform.machine()}, no GPU used), torch {torch.__version__}, "
        f"system chromium driven by playwright. Upload-to-result ends at the first animation frame "
        f"showing both the verdict's title and the film drawn in the reading view (marked in the page; until "
        f"2026-12-08 it ended when playwright's polling waits noticed them, up to ~0.5 s later). The first "
        f"upload is made the moment the page shows after a fresh server start, with each launcher. 1-minute load "
        f"average "
        f"{load_before:.1f} before, {load_after:.1f} after (other work on the machine slows every number).",
        "",
        f"Models: {models_of(home)}.",
        "",
        "| measurement | median (s) | runs (s) |",
        "| --- | ---: | --- |",
        *[f"| {name} | {statistics.median(runs):.2f} | {', '.join(f'{v:.2f}' for v in runs)} |" for name, runs in rows],
        "",
    ]
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text("\n".join(lines), encoding="utf-8")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
