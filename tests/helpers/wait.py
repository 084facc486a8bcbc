"""Waiting on a condition instead of sleeping for a guessed time."""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, TypeVar

T = TypeVar("T")


def wait_for(predicate: Callable[[], T], timeout: float = 180.0, every: float = 0.05,
             message: str | Callable[[], str] = "") -> T:
    """Call ``predicate`` until it returns something truthy and return that; AssertionError after ``timeout`` s.

    ``message`` (or a function giving it, called only on failure: a log's tail) says what was awaited."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            said = message() if callable(message) else message
            raise AssertionError(f"timed out after {timeout} s" + (f": {said}" if said else ""))
        time.sleep(every)


def wait_for_text(path: Path, text: str, timeout: float = 180.0, alive: subprocess.Popen | None = None) -> str:
    """Wait until ``path`` contains ``text`` (a log line); fails at once when ``alive`` (the writer) has exited."""
    def contains():
        content = path.read_text(errors="replace") if path.exists() else ""
        if text in content:
            return content
        assert alive is None or alive.poll() is None, f"exited before writing {text!r}: {content[-2000:]}"
        return None

    return wait_for(contains, timeout, 0.1,
                    lambda: f"{text!r} not in {path}: " + (path.read_text(errors="replace")[-2000:]
                                                           if path.exists() else "(no file)"))


def wait_for_files(paths: list[Path], processes: list[subprocess.Popen] = (), timeout: float = 120.0) -> None:
    """Wait until every path exists; fails at once when one of ``processes`` (meant to write them) has exited."""
    def all_there():
        for process in processes:
            if process.poll() is not None:
                _, err = process.communicate()
                raise AssertionError(f"a process exited with {process.returncode} before it was ready: {err}")
        return all(path.exists() for path in paths)

    wait_for(all_there, timeout, 0.02, lambda: f"missing: {[str(p) for p in paths if not p.exists()]}")


def stand_in_process(*argv: str, **popen) -> subprocess.Popen:
    """A live python process whose command line ends with ``argv`` (what a page checks in /proc): it does nothing
    and lives until it is killed or its stdin is closed, however slow the machine."""
    return subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()", *argv], stdin=subprocess.PIPE,
                            **popen)


def stop(process: subprocess.Popen) -> None:
    """Kill a process started here and reap it."""
    process.kill()
    process.wait()
    if process.stdin:
        process.stdin.close()
