"""The real app for browser tests: the system chromium's arguments, a `streamlit run` server on a free loopback port,
screenshots kept on request. The ``browser`` fixture (playwright's chromium) is in tests/conftest.py.

Needs /usr/bin/chromium (`apt-get install chromium`; scripts/test.sh installs it when run as root).
Set CERVICURVE_SCREENSHOT_DIR to keep the screenshots (docs/screenshots is made this way).
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from tests.helpers import ROOT
from tests.helpers.wait import wait_for

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
NOTICE = "Research and teaching use only"

# A browser test module's marks: `pytestmark = BROWSER_MARKS` (slow: not in the fast lane, `pytest -m "not slow"`).
BROWSER_MARKS = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="/usr/bin/chromium is not installed (apt-get install chromium)"),
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(home: Path, log_path: Path, launcher: tuple[str, ...] = ("streamlit", "run", "app.py"),
                 timeout: float = 180.0) -> tuple[subprocess.Popen, str]:
    """`streamlit run app.py` (or ``launcher``: ``("ui.serve",)``, the README's command) on a free loopback port, in
    its own process group; returns once its health check answers (ui.serve answers once the promoted models are
    loaded: torch's import alone can take half a minute on a busy machine)."""
    port = free_port()
    env = dict(os.environ, CERVICURVE_HOME=str(home), OMP_NUM_THREADS="2")
    env.pop("CERVICURVE_DB", None)
    command = [sys.executable, "-m", *launcher, "--server.port", str(port),
               "--server.headless", "true", "--server.address", "127.0.0.1",
               "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none"]
    log = open(log_path, "wb")
    server = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                              start_new_session=True)
    url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        if server.poll() is not None:
            raise RuntimeError("the server exited")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as answer:
                return answer.status == 200
        except OSError:
            return False

    try:
        wait_for(healthy, timeout, every=0.2)
    except (AssertionError, RuntimeError) as error:
        stop_server(server)
        raise RuntimeError(f"streamlit did not start ({error}): {log_path.read_text(errors='replace')[-2000:]}")
    return server, url


def stop_server(server: subprocess.Popen) -> None:
    try:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=15)
    except ProcessLookupError:
        pass
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()


def keep_screenshot(path: Path, name: str) -> None:
    folder = os.environ.get("CERVICURVE_SCREENSHOT_DIR")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, Path(folder) / name)


def cpu_percent_over(pid: int, seconds: float) -> float:
    """A process's CPU (% of one core) measured over the next ``seconds``. The wait is the measurement itself (a
    window of time to average over), not a guess at how long something takes, so it is a fixed interval."""
    import psutil

    return psutil.Process(pid).cpu_percent(interval=seconds)


# Streamlit marks its root element with the script's state (``data-test-script-state``: running, notRunning, ...).
_WATCH_RERUN = """() => {
  const app = document.querySelector("[data-testid='stApp']");
  window.__cervicurveRan = false;
  new MutationObserver(() => { if (app.dataset.testScriptState !== 'notRunning') window.__cervicurveRan = true; })
    .observe(app, {attributes: true, attributeFilter: ['data-test-script-state']});
}"""
_IDLE = "document.querySelector(\"[data-testid='stApp']\")?.dataset.testScriptState === 'notRunning'"


def after_rerun(page, action, timeout: float = 120_000) -> None:
    """Wait for the app to be idle, do ``action`` (a click, a key press) that makes it rerun, and return once that
    rerun has finished. (Acting during a run can lose the action, and a run already going when the watch starts
    would hide whether the action's own rerun came.)"""
    page.wait_for_function(f"() => {_IDLE}", timeout=timeout)
    page.evaluate(_WATCH_RERUN)
    action()
    page.wait_for_function(f"() => window.__cervicurveRan && {_IDLE}", timeout=timeout)


def drawn(page, timeout: float = 30_000) -> None:
    """Return once the script is idle, the fonts are in, and every Plotly chart has drawn its plot: what a
    screenshot needs."""
    page.wait_for_function(f"""async () => {{
      await document.fonts.ready;
      const charts = [...document.querySelectorAll("[data-testid='stPlotlyChart']")];
      return {_IDLE} && charts.every(chart => chart.querySelector('.main-svg'));
    }}""", timeout=timeout)
