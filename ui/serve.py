"""``python -m ui.serve [streamlit options]``: the app, answering once the Predict models are loaded.

``streamlit run app.py`` imports nothing of ours until the first browser opens a page, so the first upload waited
for torch, Ultralytics and three models. Loading them in a thread beside Streamlit's own start still left a page
shown at ~5 s waiting for models ready at ~8 s (the two shared two cores): a first upload then took ~6 s
(benchmarks/results/app_latency.md). So the promoted models load first, and Streamlit starts and prints its address
once they are ready, or after ``CERVICURVE_PRELOAD_WAIT_S`` (default 60 s), when they go on loading beside it. The
sessions run in this process and share the loaded models (``core.inference.models``). A workspace without promoted
models starts at once; ``CERVICURVE_PRELOAD=0`` loads nothing early. ``streamlit run app.py`` still works: it then
loads them when the first page opens.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

APP = Path(__file__).resolve().parents[1] / "app.py"


def preload_promoted() -> None:
    """Load and warm the promoted models before the server answers, for at most ``settings.preload_wait_s()``."""
    from core import settings

    try:
        settings.check()
        wait_s = settings.preload_wait_s()
    except settings.SettingsError:
        return  # the app's frame shows the bad setting in one line
    started = time.perf_counter()
    from core.inference import pipeline

    thread = pipeline.preload()
    if thread is None:
        return
    print("CerviCurve: loading the promoted models before the server answers…", file=sys.stderr, flush=True)
    thread.join(wait_s)
    waited = time.perf_counter() - started
    if thread.error is not None:
        print(f"CerviCurve: the promoted models could not be loaded ({thread.error}); the server starts and Predict "
              "says why", file=sys.stderr, flush=True)
    elif thread.is_alive():
        print(f"CerviCurve: the models are still loading after {waited:.1f} s (CERVICURVE_PRELOAD_WAIT_S={wait_s:g}); "
              "the server starts and they go on loading beside it", file=sys.stderr, flush=True)
    else:
        print(f"CerviCurve: the promoted models are loaded ({waited:.1f} s)", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    from streamlit.web import cli

    preload_promoted()
    sys.argv = ["streamlit", "run", str(APP), *(sys.argv[1:] if argv is None else argv)]
    return cli.main()


if __name__ == "__main__":
    sys.exit(main())
