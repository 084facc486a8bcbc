"""The frame every page shares, through AppTest: notice, navigation, workspace sidebar, demo offer."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from tests.helpers.wait import stand_in_process, stop

ROOT = Path(__file__).resolve().parents[1]
APP = str(ROOT / "app.py")
NOTICE = "Research and teaching use only — not a diagnosis."
PAGES = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "pages").glob("*.py"))


def run_app() -> AppTest:
    at = AppTest.from_file(APP, default_timeout=60).run()
    assert not at.exception
    return at


def sidebar_text(at: AppTest) -> str:
    return "\n".join(c.value for c in at.sidebar.caption)


def test_empty_workspace_offers_the_demo(workspace):
    at = run_app()
    assert NOTICE in at.warning[0].value
    text = sidebar_text(at)
    assert "0 images · 0 datasets · 0 runs" in text
    assert text.count("none promoted") == 3  # classifier, detector, landmarks
    assert str(workspace) in text
    assert at.button(key="build_demo").label == "Build the demo"
    assert [o.split(" ")[0] for o in at.radio(key="demo_mode").options] == ["Full", "Quick"]  # full is the default
    assert at.radio(key="demo_mode").value == "full"


def test_the_demo_offer_quotes_the_measured_builds(workspace, tmp_path, monkeypatch):
    """The build's time and scores come from benchmarks/demo_build.py's results file, not from typed figures."""
    from core import demo

    measured = tmp_path / "demo_build.json"
    monkeypatch.setattr(demo, "MEASURED_BUILDS", measured)
    measured.write_text(json.dumps({"full": {"wall_s": 2031.0, "cpu_s": 1768.0, "cpu_count": 2, "mean_load": 5.2,
                                             "class_accuracy": 0.953, "cobb_mae_deg": 1.81},
                                    "quick": {"wall_s": 290.0, "cpu_s": 500.0, "cpu_count": 2, "mean_load": 2.1,
                                              "class_accuracy": 0.85, "cobb_mae_deg": 3.5}}))
    full, quick = run_app().radio(key="demo_mode").options
    assert full == ("Full (34 min on a 2-core CPU that was busy (29 min of CPU time); on held-out phantoms the class "
                    "was right on 95%, the angle off by 1.8° on average)")
    assert quick == ("Quick (5 min on a 2-core CPU; on held-out phantoms the class was right on 85%, the angle off by "
                     "3.5° on average)")
    measured.write_text(json.dumps({"full": {"wall_s": 2031.0}}))  # a record without the scores
    assert run_app().radio(key="demo_mode").options == ["Full (not yet timed)", "Quick (not yet timed)"]
    measured.write_text("{not json")  # a torn or hand-broken file: the offer still stands, without figures
    assert run_app().radio(key="demo_mode").options == ["Full (not yet timed)", "Quick (not yet timed)"]


@pytest.mark.parametrize("page", PAGES)
def test_every_page_shows_the_notice_and_sidebar(workspace, page):
    at = run_app()
    at.switch_page(page).run()
    assert not at.exception
    assert NOTICE in at.warning[0].value
    assert "0 images" in sidebar_text(at)


@pytest.mark.slow
def test_first_page_renders_without_loading_torch(workspace):
    """The notice and sidebar appear before any heavy library is imported."""
    script = (
        "import sys\n"
        "from streamlit.testing.v1 import AppTest\n"
        f"at = AppTest.from_file({APP!r}, default_timeout=60).run()\n"
        "assert not at.exception, at.exception\n"
        "print(sorted(m for m in ('torch', 'ultralytics', 'pytorch_grad_cam', 'torchvision') if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                            env=dict(os.environ, CERVICURVE_HOME=str(workspace)), cwd=ROOT)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "[]"


@pytest.fixture()
def demo_like_process():
    """A live process whose command line names core, as a queued build's ``python -m core train`` does."""
    process = stand_in_process("core", "train", start_new_session=True)
    yield process
    stop(process)


def demo_run(status: dict) -> Path:
    """A demo build's run folder as a build in another process writes it."""
    from core.runs import layout

    run_dir = layout.new_run_dir("quick", "demo")
    (run_dir / "config.yaml").write_text("task: demo\nquality: quick\nseed: 0\n")
    layout.write_status(run_dir, {"task": "demo", "model": "quick", "steps": 6, "epochs": 6,
                                  "heartbeat": time.time(), **status})
    return run_dir


def test_a_demo_started_elsewhere_shows_its_progress(workspace, demo_like_process):
    demo_run({"stage": "training classifier", "step": 4, "epoch": 3, "message": "epoch 1/3", "state": "running",
              "pid": demo_like_process.pid})
    at = run_app()
    progress = at.get("progress")
    assert len(progress) == 1
    assert progress[0].proto.value == 50  # three of six steps finished
    assert "training classifier" in progress[0].proto.text and "(step 4 of 6)" in progress[0].proto.text
    assert "build_demo" not in [b.key for b in at.button]  # no second build while one runs

    # The process dies without writing "failed" (killed, machine restarted): the page says so.
    demo_like_process.kill()
    demo_like_process.wait()
    at.run()
    assert not at.get("progress")
    assert any("did not finish at step 4 of 6 (training classifier): the training process is gone" in e.value
               for e in at.error), [e.value for e in at.error]
    assert at.button(key="build_demo")


def test_a_demo_waiting_in_the_queue_says_so(workspace):
    """Another run trains on the device: the build waits for it, and the page says what it waits for."""
    from core.runs import layout

    demo_run({"state": "queued", "queued_at": layout.now_iso(), "device": "cpu", "pid": None,
              "message": "waiting"})
    at = run_app()
    progress = at.get("progress")
    assert len(progress) == 1 and "waiting in the queue for cpu" in progress[0].proto.text
    assert "build_demo" not in [b.key for b in at.button]


@pytest.mark.slow
def test_build_the_demo_queues_a_background_run_and_cancel_stops_it(workspace):
    from core.runs import layout

    at = run_app()
    at.radio(key="demo_mode").set_value("quick")  # the faster process
    at.button(key="build_demo").click().run()
    assert not at.exception and not at.error
    (run_dir,) = [r for r in layout.list_runs() if r.task == "demo"]
    assert layout.read_config(run_dir.run_dir) == {"task": "demo", "quality": "quick", "seed": 0}
    pid = layout.read_status(run_dir.run_dir)["pid"]  # the queue started it at once: the device was free
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        assert b"core.runs.queue" in command and b"train" in command  # the launcher's supervisor, as for any run
        environment = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        assert f"CERVICURVE_HOME={workspace}".encode() in environment
        assert any(v.startswith(b"OMP_NUM_THREADS=") for v in environment)
        assert os.getpgid(pid) == pid  # its own session: it outlives the page and the server
        assert len(at.get("progress")) == 1  # the page now polls its progress
        assert "build_demo" not in [b.key for b in at.button]

        at.button(key="cancel_demo").click().run()
        assert not at.exception
        assert layout.read_status(run_dir.run_dir)["state"] == "cancelled"
        assert at.button(key="build_demo")  # offered again
    finally:
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_a_failed_demo_is_reported_and_offered_again(workspace):
    demo_run({"stage": "generating phantoms", "step": 1, "epoch": 0, "message": "disk full", "state": "failed"})
    at = run_app()
    assert any("disk full" in e.value for e in at.error)
    assert at.button(key="build_demo")


def test_an_unreadable_database_is_an_error_message_not_a_traceback(workspace, monkeypatch):
    monkeypatch.setenv("CERVICURVE_DB", f"sqlite:///{workspace}/missing-folder/db.sqlite")
    at = run_app()
    assert NOTICE in at.warning[0].value
    assert len(at.error) == 1 and at.error[0].value.startswith("Reading the workspace failed")


def test_a_rerun_reads_the_run_list_once_and_counts_images_without_loading_them(workspace, monkeypatch):
    """Every widget change reruns the page: the frame must not list the runs per selector or load every image row."""
    from core.data import phantom, store
    from core.data.importers import import_csv
    from core.runs import layout

    phantom.write_phantoms(workspace / "films", 3, seed=1, size=96)
    import_csv(workspace / "films" / "manifest.csv", dataset="films")
    for task in ("classify", "landmarks"):
        layout.new_run_dir("m", task)
    listings = []
    real_list_runs = layout.list_runs
    monkeypatch.setattr(layout, "list_runs", lambda: listings.append(1) or real_list_runs())

    def no_rows(self, dataset=None):
        raise AssertionError("the frame loaded every image row")

    monkeypatch.setattr(store.AnnotationStore, "images", no_rows)
    at = run_app()
    assert "3 images · 1 datasets · 2 runs" in sidebar_text(at)
    assert len(listings) == 1
    at.run()
    assert not at.exception and len(listings) == 2


def finished_run(task: str, model: str, dataset: str, report: dict, best_metric: float) -> Path:
    """A done run folder as a trainer leaves it (config, status, test report, a best.pt the sidebar never opens;
    the tests keep Predict, the first page, from loading it in the background)."""
    from core.runs import layout

    run_dir = layout.new_run_dir(model, task)
    (run_dir / layout.CONFIG_FILE).write_text(json.dumps({"task": task, "model": model, "dataset": dataset}))
    layout.write_status(run_dir, {"state": "done", "task": task, "model": model, "best_metric": best_metric,
                                  "epoch": 3, "epochs": 3})
    (run_dir / "best.pt").write_bytes(b"weights the sidebar does not read")
    (run_dir / layout.TEST_REPORT).write_text(json.dumps(report))
    return run_dir


def sidebar_line(at: AppTest, title: str):
    return next(c for c in at.sidebar.caption if c.value.startswith(f"**{title}:**"))


def test_each_model_line_gives_the_runs_pages_headline_and_what_it_was_measured_on(workspace, monkeypatch):
    """Before: "held-out accuracy 1.00" for a classifier measured on phantoms, and a detector described three ways
    (boxes found 100 %, mAP50-95 0.524 on Runs, best val 0.508 in the help). Now one number per model, the Runs
    page's headline test score, and the films it was measured on: phantoms are said to be synthetic."""
    from core.runs import promotion, reports

    monkeypatch.setenv("CERVICURVE_PRELOAD", "0")
    classifier = finished_run("classify", "s_resnet34", "phantom-demo",
                              {"split": "test", "metrics": {"macro_f1": {"value": 1.0, "low": 1.0, "high": 1.0},
                                                            "accuracy": {"value": 1.0}}}, 0.97)
    detector = finished_run("detect", "yolov8n.yaml", "clinic", {"split": "test", "mAP50_95": 0.524, "mAP50": 0.99},
                            0.508)
    promotion.promote(classifier)
    promotion.promote(detector)
    record = workspace / "promoted" / "classify" / promotion.PROMOTED_FILE  # what the demo adds to its models
    record.write_text(json.dumps({**json.loads(record.read_text()), "demo_quality": "full", "dataset": "phantom-demo",
                                  "demo_check": {"class_accuracy": 1.0, "box_iou50_rate": 1.0}}))
    at = run_app()

    line = sidebar_line(at, "Classifier")
    runs_headline = reports.headline(classifier)  # what the Runs page shows for the run
    assert line.value == (f"**Classifier:** s_resnet34 · demo (full) · held-out phantoms: class score "
                          f"({runs_headline['name']}) 1.000 (synthetic, not real films)")
    assert "Measured on held-out phantoms" in line.proto.help and "synthetic" in line.proto.help
    assert "accuracy 1.00" not in line.value  # the demo's own check is not a second number

    line = sidebar_line(at, "Detector")
    runs_headline = reports.headline(detector)
    assert f"held-out films of clinic: box score ({runs_headline['name']}) 0.524" in line.value
    assert "synthetic" not in line.value
    for other in ("0.508", "held-out boxes found", "100%", "best val"):  # one description: no val score, no demo check
        assert other not in line.value and other not in line.proto.help
    assert "Measured on held-out films of clinic" in line.proto.help
    assert sidebar_line(at, "Landmark model").value == "**Landmark model:** none promoted"


def test_a_model_without_a_test_score_says_so(workspace, monkeypatch):
    from core.runs import promotion

    monkeypatch.setenv("CERVICURVE_PRELOAD", "0")
    run_dir = finished_run("detect", "yolov8n.yaml", "clinic", {}, 0.4)
    (run_dir / "test_report.json").unlink()  # a run whose test split was empty
    promotion.promote(run_dir)
    line = sidebar_line(run_app(), "Detector")
    assert line.value.endswith("· no held-out test score (its run had no test films)")
    assert "0.4" not in line.value and "0.4" not in line.proto.help
