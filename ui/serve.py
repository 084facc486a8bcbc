"""``python -m ui.serve [streamlit options]``: the app, with the Predict models loading as the server starts.

``streamlit run app.py`` imports nothing of ours until the first browser opens a page, so the first upload waited
for torch, Ultralytics and three models (6.2 s measured, benchmarks/results/app_latency.md). Here the promoted
models load in a background thread of the server process while Streamlit starts; the sessions run in the same
process and share the loaded models (``core.inference.models``). ``CERVICURVE_PRELOAD=0`` turns it off.
``streamlit run app.py`` still works: it then loads them when the first page opens.
"""
from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

APP = Path(__file__).resolve().parents[1] / "app.py"


def preload_promoted() -> None:
    """Load and warm the promoted models (a workspace without them has nothing to load)."""
    from core import settings

    try:
        settings.check()
    except settings.SettingsError:
        return  # the app's frame shows the bad setting in one line
    started = time.perf_counter()
    from core.inference import pipeline

    thread = pipeline.preload()
    if thread is not None:
        thread.join()
        print(f"CerviCurve: the promoted models are loaded ({time.perf_counter() - started:.1f} s after the server "
              "started)", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    from streamlit.web import cli

    threading.Thread(target=preload_promoted, name="cervicurve-server-preload", daemon=True).start()
    sys.argv = ["streamlit", "run", str(APP), *(sys.argv[1:] if argv is None else argv)]
    return cli.main()


if __name__ == "__main__":
    sys.exit(main())
