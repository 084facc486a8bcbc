"""Team load: N browser sessions at once on Predict, each uploading its own film; upload-to-result per session.

    .venv/bin/python benchmarks/team_load.py [--home WORKSPACE] [--sessions 8] [--size 1024] [--cold]

One `streamlit run app.py` on loopback and one system chromium with a browser context (its own cookies, so its
own Streamlit session) per user, all driven by playwright's async API from one event loop (playwright's sync
objects cannot be shared across threads). Every session opens Predict (the default page, served at /; /predict
is "Page not found"); once all show the page, they upload their films at the same moment. Upload-to-result
ends when the verdict heading is shown and the reading view has drawn the film. By default one upload first loads the
models (a team's server has them loaded); ``--cold`` skips it, so the sessions also race for the model cache.
``--home`` as in app_latency.py (default: a tiny classifier in a temporary workspace). Writes
benchmarks/results/team_load.md. tests/test_browser_team_load.py runs the same code with 8 small films, cold.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import platform
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

from app_latency import film, models_of, workspace_or_tiny  # noqa: E402
from tests.helpers.browser import CHROMIUM, CHROMIUM_ARGS, NOTICE, start_server, stop_server  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "team_load.md"
# Streamlit's exception box and st.error; warnings (low confidence, unlike training) are not errors.
ERROR_SELECTOR = "[data-testid='stException'], [data-testid='stAlertContentError']"
VIEWER = "iframe[title*='film_viewer']"  # Predict's reading view (ui/components/film_viewer)


@dataclass
class SessionResult:
    film: str
    seconds: float | None = None  # upload to result; None when no result came
    engine_seconds: float | None = None  # the page's "Time per stage" sum: the server's predict() alone
    errors: list[str] = field(default_factory=list)  # error text on the page, or why the session failed


def make_films(folder: Path, count: int, size: int, first_seed: int = 900) -> list[Path]:
    """``count`` different phantom PNGs (classes in turn), one per session."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for number in range(count):
        path = folder / f"film_{number + 1}_{size}px.png"
        path.write_bytes(film(first_seed + number, size))
        paths.append(path)
    return paths


async def open_predict(browser, url: str, timeout_s: float):
    """A new context (a separate session) showing the Predict page, ready for a file."""
    context = await browser.new_context(viewport={"width": 1500, "height": 1200})
    context.set_default_timeout(timeout_s * 1000)
    page = await context.new_page()
    await page.goto(url)  # Predict is the default page
    await page.get_by_text(NOTICE).first.wait_for()
    await page.locator("input[type='file']").first.wait_for(state="attached")
    return page


async def errors_on(page) -> list[str]:
    texts = [text.strip()[:300] for text in await page.locator(ERROR_SELECTOR).all_inner_texts()]
    body = await page.locator("body").inner_text()
    texts += [f"the page shows {words!r}" for words in ("Traceback", "Page not found") if words in body]
    return texts


async def upload_and_wait(page, image: Path, timeout_s: float) -> SessionResult:
    """Hand the file to the uploader, wait for the verdict heading (or an error) and the drawn reading view."""
    result = SessionResult(image.name)
    timeout_ms = timeout_s * 1000
    started = time.perf_counter()
    await page.locator("input[type='file']").first.set_input_files(str(image))
    # The subheading only: an error message also starts with the file's name.
    heading = page.get_by_role("heading").filter(has_text=f"{image.name}: ").first
    # An error ends the wait at once instead of running out the clock.
    await heading.or_(page.locator(ERROR_SELECTOR).first).first.wait_for(timeout=timeout_ms)
    if await heading.is_visible():
        # the result is drawn: the reading view holds the film (and the heatmap, for a film the models judge)
        await page.frame_locator(VIEWER).locator("#app[data-ready='1']").wait_for(timeout=timeout_ms)
        result.seconds = time.perf_counter() - started
        stages = (await page.get_by_text("Time per stage (ms):").first.inner_text()).split(":", 1)[1]
        result.engine_seconds = sum(float(part.split()[-1]) for part in stages.split(",")) / 1000.0
    result.errors = await errors_on(page)
    if result.seconds is None and not result.errors:
        result.errors.append("no result and no error text")
    return result


def failed(image: Path, error: BaseException) -> SessionResult:
    return SessionResult(image.name, errors=[f"{type(error).__name__}: {(str(error).splitlines() or [''])[0][:300]}"])


async def drive(url: str, films: list[Path], timeout_s: float,
                warm_up: Path | None) -> tuple[list[SessionResult], SessionResult | None]:
    """One chromium; the optional warm-up upload alone, then every film in its own session at once."""
    from playwright.async_api import async_playwright

    deadline = time.monotonic() + timeout_s

    def left() -> float:  # each step may use what is left of the run's time
        return max(deadline - time.monotonic(), 1.0)

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            first = None
            if warm_up is not None:
                try:
                    page = await open_predict(browser, url, left())
                    first = await upload_and_wait(page, warm_up, left())
                    await page.context.close()  # an idle ninth page would only add load
                except Exception as error:  # noqa: BLE001 (reported, not raised: the others still run)
                    first = failed(warm_up, error)
            pages = await asyncio.gather(*(open_predict(browser, url, left()) for _ in films),
                                         return_exceptions=True)
            uploads = [upload_and_wait(page, image, left()) for page, image in zip(pages, films)
                       if not isinstance(page, BaseException)]
            done = iter(await asyncio.gather(*uploads, return_exceptions=True))
            results = []
            for page, image in zip(pages, films):
                outcome = page if isinstance(page, BaseException) else next(done)
                results.append(failed(image, outcome) if isinstance(outcome, BaseException) else outcome)
            return results, first
        finally:
            await browser.close()


def team_load(home: Path, films: list[Path], log_path: Path, timeout_s: float = 300.0,
              warm_up: Path | None = None) -> tuple[list[SessionResult], SessionResult | None]:
    """Start a server on ``home``, drive the sessions, stop it; the whole run bounded by ``timeout_s``."""
    server, url = start_server(home, log_path)
    try:
        # A hard stop a little after the sessions' own deadline, should playwright itself hang.
        return asyncio.run(asyncio.wait_for(drive(url, films, timeout_s, warm_up), timeout_s + 60))
    finally:
        stop_server(server)


def p50_p95(results: list[SessionResult]) -> tuple[float, float]:
    seconds = [r.seconds for r in results if r.seconds is not None]
    if not seconds:
        return float("nan"), float("nan")
    return float(np.percentile(seconds, 50)), float(np.percentile(seconds, 95))


def seconds(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}"


def averages(load: tuple[float, float, float]) -> str:
    return " / ".join(f"{value:.1f}" for value in load)


def gpu_in_use() -> str:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, help="workspace with promoted models (default: a tiny one)")
    parser.add_argument("--sessions", type=int, default=8)
    parser.add_argument("--size", type=int, default=1024, help="film height in px")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds for the whole run")
    parser.add_argument("--cold", action="store_true", help="no warm-up upload: sessions also load the models")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if not CHROMIUM.exists():
        print(f"{CHROMIUM} is missing: apt-get install chromium", file=sys.stderr)
        return 2

    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        home = workspace_or_tiny(args.home, scratch)
        models = models_of(home) + ("" if args.home else " (the tiny test classifier: 32 px, 1 epoch on 9 phantoms)")
        films = make_films(scratch / "films", args.sessions, args.size)
        warm_up = None if args.cold else make_films(scratch / "warm", 1, args.size, first_seed=800)[0]
        load_before = os.getloadavg()
        started = time.perf_counter()
        results, first = team_load(home, films, scratch / "server.log", args.timeout, warm_up)
        wall_s = time.perf_counter() - started
        load_after = os.getloadavg()
        if any(r.errors for r in results):
            print((scratch / "server.log").read_text(errors="replace")[-4000:], file=sys.stderr)

    p50, p95 = p50_p95(results)
    errors = sum(bool(r.errors) for r in results)
    warm_line = ("none (`--cold`: the sessions' uploads also import torch and load the models)" if first is None
                 else f"{first.seconds:.2f} s" if first.seconds is not None else f"failed: {'; '.join(first.errors)}")
    lines = [
        "# Team load: simultaneous sessions on Predict",
        "",
        f"Measured {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC by `benchmarks/team_load.py --sessions "
        f"{args.sessions} --size {args.size}{' --cold' if args.cold else ''}"
        f"{' --home ...' if args.home else ''}` on {os.cpu_count()} CPU cores ({platform.machine()}, "
        f"{gpu_in_use()}), one `streamlit run` server and one system chromium on loopback, one browser context "
        f"(session) per user, driven by playwright's async API. Each session opened Predict; when all showed the "
        f"page they uploaded a different {args.size} px phantom PNG at the same moment. Upload-to-result ends when "
        f"the verdict heading is shown and the reading view has drawn the film in that session's page; the engine's share "
        f"is the page's own \"Time per stage\" sum. The browsers share the machine's cores with the server (a "
        f"team's browsers run on their own machines), so these times overstate what each user would wait. Load average "
        f"(1 / 5 / 15 min) {averages(load_before)} before, {averages(load_after)} after: the machine is shared, and other "
        f"work slows every number.",
        "",
        f"Models: {models}.",
        "",
        f"Warm-up upload (one session alone, before the others): {warm_line}.",
        "",
        f"**{args.sessions} sessions: p50 {p50:.2f} s, p95 {p95:.2f} s upload-to-result; "
        f"{sum(r.seconds is not None for r in results)} results, {errors} sessions with errors; "
        f"whole run {wall_s:.0f} s** (server start, warm-up and page loads included).",
        "",
        "| session | film | upload-to-result (s) | of which the engine (s) | errors |",
        "| ---: | --- | ---: | ---: | --- |",
        *[f"| {number} | {r.film} | {seconds(r.seconds)} | {seconds(r.engine_seconds)} | "
          f"{'; '.join(r.errors).replace('|', '/') or 'none'} |" for number, r in enumerate(results, 1)],
        "",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines), encoding="utf-8")
    print("\n".join(lines))
    return 0 if errors == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
