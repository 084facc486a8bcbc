"""Runs page through AppTest on two real finished runs (tiny CNNs trained by `runs start` on a store dataset).

Promoting a run that scores worse than the promoted model, and rolling back, each need a tick that says what will
happen; the model card and the ONNX file come as downloads whose bytes are the files' own (read back from the
media store AppTest's runtime serves downloads from)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from streamlit.runtime.media_file_manager import MediaFileManager
from streamlit.runtime.memory_media_file_storage import MemoryMediaFileStorage
from streamlit.testing.v1 import AppTest
from streamlit.testing.v1.errors import AppTestError

from core import settings
from core.runs import launch, layout, promotion
from tests.helpers.pages import RUNS, texts
from tests.helpers.tiny import import_tiny
from tests.helpers.wait import wait_for

RUN = {"model": "cnn", "dataset": "tiny", "input_size": 32, "batch_size": 4, "n_boot": 50, "epochs": 2,
       "warmup_epochs": 0}


@pytest.fixture()
def two_runs(workspace, monkeypatch):
    monkeypatch.setenv("CERVICURVE_THREADS", "1")
    import_tiny(workspace)
    first = launch.start_run(RUN)
    second = launch.start_run(dict(RUN, lr=0.01, seed=3))  # waits in the queue, then starts by itself
    wait_for(lambda: all(layout.read_status(r)["state"] in ("done", "failed") for r in (first, second)), timeout=300)
    assert [layout.read_status(r)["state"] for r in (first, second)] == ["done", "done"]
    return first, second


@pytest.fixture()
def downloads(monkeypatch):
    """The media stores and managers AppTest creates per run, newest last: a download button's URL names its file
    in the newest store, and a deferred button's callable is registered with the newest manager."""
    stores: list[MemoryMediaFileStorage] = []
    managers: list[MediaFileManager] = []
    for cls, kept in ((MemoryMediaFileStorage, stores), (MediaFileManager, managers)):
        def keep(self, *args, _original=cls.__init__, _kept=kept, **kwargs):
            _original(self, *args, **kwargs)
            _kept.append(self)

        monkeypatch.setattr(cls, "__init__", keep)
    return stores, managers


def download(at: AppTest, media, key: str) -> tuple[str, bytes]:
    """(file name, bytes) a download button hands the browser; a deferred one (``data`` a callable) is generated
    here as the browser's click would."""
    stores, managers = media
    [button] = [b for b in at.get("download_button") if b.key == key]
    url = button.proto.url
    if button.proto.deferred_file_id:
        url = managers[-1].execute_deferred(button.proto.deferred_file_id)
    media_file = stores[-1].get_file(Path(url).name)
    return media_file.filename, media_file.content


def make_worse(run_dir: Path, macro_f1: float = 0.1) -> None:
    """The run's test report says macro-F1 ``macro_f1`` (a run clearly worse than any that learned something)."""
    path = run_dir / layout.TEST_REPORT
    report = json.loads(path.read_text())
    report["metrics"]["macro_f1"] = {"value": macro_f1, "low": 0.0, "high": 0.2}
    path.write_text(json.dumps(report))


def runs_page() -> AppTest:
    at = AppTest.from_file(RUNS, default_timeout=60).run()
    assert not at.exception, at.exception
    return at


@pytest.mark.slow
def test_table_detail_comparison_promotion_card_deletion_rollback_and_onnx(two_runs, downloads):
    first, second = two_runs
    at = runs_page()
    table = at.dataframe[0].value
    assert set(table["run"]) == {first.name, second.name} and set(table["state"]) == {"done"}
    fingerprint = json.loads((first / "data.json").read_text())["fingerprint"]
    assert list(table["labels"]) == [fingerprint, fingerprint]  # same labels, same fingerprint
    assert all(" [" in score for score in table["test score"])  # point [95 % interval]
    assert set(table["device"]) == {"cpu"} and table["duration s"].notna().all()
    at.text_input(key="runs_search").set_value("densenet").run()
    assert at.dataframe[0].value.empty
    at.text_input(key="runs_search").set_value(first.name[-4:]).run()
    assert list(at.dataframe[0].value["run"]) == [first.name]
    at.text_input(key="runs_search").set_value("").run()
    at.multiselect(key="runs_states").set_value(["done"]).run()
    assert len(at.dataframe[0].value) == 2

    # one run: curves, confusion matrix, ROC, reliability, per-class table
    at.multiselect(key="runs_selected").set_value([first.name]).run()
    assert not at.exception and not at.error
    titles = [chart.proto.spec for chart in at.get("plotly_chart")]
    for title in ("Loss", "Confusion matrix", "One-vs-rest ROC", "Reliability diagram"):
        assert any(title in spec for spec in titles), title
    assert any("class" in df.value.columns and "recall" in df.value.columns for df in at.dataframe)

    # two runs: only the differing keys, and the study's table with the published row
    at.multiselect(key="runs_selected").set_value([first.name, second.name]).run()
    assert not at.exception
    differing = next(df.value for df in at.dataframe if first.name in df.value.columns)
    assert set(differing.index) == {"lr", "seed"}
    study = next(df.value for df in at.dataframe if "ACC (mean one-vs-rest)" in df.value.columns)
    assert list(study["run"])[-1] == "Liang et al. 2025 (published)" and study["ACC (mean one-vs-rest)"].iloc[-1] == "0.909"

    # promote the first (a model card beside it, shown as Markdown and offered as a download)
    at.multiselect(key="runs_selected").set_value([first.name]).run()
    assert not any(c.key == f"promote_anyway_{first.name}" for c in at.checkbox)  # nothing promoted: no question
    at.button(key=f"promote_{first.name}").click().run()
    card = json.loads((settings.promoted_dir() / "classify" / "model_card.json").read_text())
    assert card["run_id"] == first.name and card["labels_fingerprint"] == fingerprint and card["device"] == "cpu"
    assert card["test_metrics"]["macro_f1"]["low"] is not None and card["config"]["lr"] == RUN.get("lr", 0.0003)
    card_text = (settings.promoted_dir() / "classify" / "MODEL_CARD.md").read_text()
    assert "## Test scores" in card_text and "| macro-F1 | " in card_text
    assert "on the test split: 6 images of 6 patients" in card_text
    assert "None" not in card_text and "test test" not in card_text and "(classify)" not in card_text
    name, data = download(at, downloads, "card_download_classify")
    assert data == card_text.encode() and name == f"MODEL_CARD-classify-{first.name}.md"
    shown = texts(at)
    assert "#### Model card: cnn (classifier)" in shown and "None" not in shown and "test test" not in shown
    assert "scored on the test split: 6 images of 6 patients · macro-F1 " in shown

    # the second, made clearly worse on the same test split: no promotion without the tick that says so
    make_worse(second)
    check = promotion.check_against_promoted(second)
    assert check["same_test_split"] is True and check["worse"] is True
    at.multiselect(key="runs_selected").set_value([second.name]).run()
    assert any(w.value.startswith("Worse than the promoted model") for w in at.warning)
    first_f1 = check["promoted"]["value"]
    confirm = at.checkbox(key=f"promote_anyway_{second.name}")
    assert confirm.label == f"Promote although macro-F1 0.100 < {first_f1:.3f} of the promoted run {first.name}"
    assert at.button(key=f"promote_{second.name}").disabled
    with pytest.raises(AppTestError):
        at.button(key=f"promote_{second.name}").click().run()
    assert promotion.promoted_info("classify")["run_id"] == first.name

    # a promoted run cannot be deleted; another one can, after confirming
    at.multiselect(key="runs_selected").set_value([first.name]).run()
    at.checkbox(key=f"sure_{first.name}").check().run()
    at.button(key=f"delete_{first.name}").click().run()
    assert "is the promoted classify model" in at.error[0].value and first.exists()
    at.multiselect(key="runs_selected").set_value([second.name]).run()
    assert at.button(key=f"delete_{second.name}").disabled  # not confirmed yet
    at.checkbox(key=f"promote_anyway_{second.name}").check().run()
    at.button(key=f"promote_{second.name}").click().run()
    assert not at.error and promotion.promoted_info("classify")["run_id"] == second.name

    # rolling back names the model that comes back, and waits for the tick
    assert at.button(key="rollback_classify").disabled
    with pytest.raises(AppTestError):
        at.button(key="rollback_classify").click().run()
    assert promotion.promoted_info("classify")["run_id"] == second.name
    sure = at.checkbox(key="rollback_sure_classify")
    assert sure.label.startswith(f"Put back run {first.name} (cnn, promoted ") and sure.label.endswith(
        f"for Predict's classifier, in place of run {second.name}")
    sure.check().run()
    at.button(key="rollback_classify").click().run()
    assert promotion.promoted_info("classify")["run_id"] == first.name
    assert "rolled back from" in texts(at)

    # ONNX: exported, checked against torch, then a download of the file's bytes (no server path on the page)
    at.button(key="onnx_classify").click().run()
    assert not at.error
    exported = settings.promoted_dir() / "classify" / "model.onnx"
    assert json.loads(exported.with_suffix(".json").read_text())["max_abs_diff"] < 1e-4
    # the file is read when the button is clicked, not on every rerun of the page
    [onnx_button] = [b for b in at.get("download_button") if b.key == "onnx_download_classify"]
    assert onnx_button.proto.deferred_file_id and not onnx_button.proto.url
    name, data = download(at, downloads, "onnx_download_classify")
    assert data == exported.read_bytes() and name == f"cervicurve-classify-{first.name}.onnx"
    assert "Checked against torch: max abs difference" in texts(at)
    assert str(settings.promoted_dir()) not in texts(at) + "".join(s.value for s in at.success)

    at.multiselect(key="runs_selected").set_value([second.name]).run()
    at.checkbox(key=f"sure_{second.name}").check().run()
    at.button(key=f"delete_{second.name}").click().run()
    assert not second.exists() and [r.run_id for r in layout.list_runs()] == [first.name]
