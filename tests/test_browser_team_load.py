"""A small team at once: 8 browser sessions on one `streamlit run` server open Predict and upload a different film
each, at the same moment, onto a server that has not loaded its models yet (so they also race for the model cache).
Every session must get its result with no error text. The session driving is benchmarks/team_load.py's, which
measures the same at realistic size.
"""
from __future__ import annotations

import sys
from pathlib import Path


from tests.helpers.browser import BROWSER_MARKS
from tests.helpers.models import promote_tiny_classifier

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import team_load  # noqa: E402

SESSIONS = 8
FILM_PX = 256
TIMEOUT_S = 300  # the whole run: page loads, the cold model load and all 8 results

pytestmark = BROWSER_MARKS


def test_eight_sessions_uploading_at_once_each_get_a_result_without_errors(tmp_path):
    home = tmp_path / "workspace"
    promote_tiny_classifier(home)
    films = team_load.make_films(tmp_path / "films", SESSIONS, FILM_PX)
    log = tmp_path / "server.log"
    results, _ = team_load.team_load(home, films, log, timeout_s=TIMEOUT_S)
    p50, p95 = team_load.p50_p95(results)
    print(f"\n{SESSIONS} sessions, {FILM_PX} px films, cold server: upload-to-result p50 {p50:.2f} s, p95 {p95:.2f} s; "
          + ", ".join("—" if r.seconds is None else f"{r.seconds:.1f}" for r in results))
    server_log = log.read_text(errors="replace")[-3000:]
    assert [r.film for r in results] == [f.name for f in films]
    assert {r.film: r.errors for r in results if r.errors} == {}, server_log
    assert all(r.seconds is not None for r in results), server_log
    assert "Traceback" not in server_log
