"""Runs page through AppTest on two real finished runs (tiny CNNs trained by `runs start` on a store dataset)."""
from __future__ import annotations

import json

import pytest
from streamlit.testing.v1 import AppTest

from core import settings
from core.runs import launch, layout, promotion
from test_app_train import RUNS, texts
from test_jobs import wait_for
from test_train import import_tiny

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


def runs_page() -> AppTest:
    at = AppTest.from_file(RUNS, default_timeout=60).run()
    assert not at.exception, at.exception
    return at


def test_table_detail_comparison_promotion_card_deletion_rollback_and_onnx(two_runs):
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

    # promote the first (a model card beside it), then the second: warned when it is worse on the same split
    at.multiselect(key="runs_selected").set_value([first.name]).run()
    at.button(key=f"promote_{first.name}").click().run()
    card = json.loads((settings.promoted_dir() / "classify" / "model_card.json").read_text())
    assert card["run_id"] == first.name and card["labels_fingerprint"] == fingerprint and card["device"] == "cpu"
    assert card["test_metrics"]["macro_f1"]["low"] is not None and card["config"]["lr"] == RUN.get("lr", 0.0003)
    assert "## Test metrics" in (settings.promoted_dir() / "classify" / "MODEL_CARD.md").read_text()
    check = promotion.check_against_promoted(second)
    assert check["same_test_split"] is True and check["worse"] is not None
    at.multiselect(key="runs_selected").set_value([second.name]).run()
    assert any(w.value.startswith("Worse than the promoted model") for w in at.warning) == check["worse"]

    # a promoted run cannot be deleted; another one can, after confirming
    at.multiselect(key="runs_selected").set_value([first.name]).run()
    at.checkbox(key=f"sure_{first.name}").check().run()
    at.button(key=f"delete_{first.name}").click().run()
    assert "is the promoted classify model" in at.error[0].value and first.exists()
    at.multiselect(key="runs_selected").set_value([second.name]).run()
    assert at.button(key=f"delete_{second.name}").disabled  # not confirmed yet
    at.button(key=f"promote_{second.name}").click().run()
    at.button(key="rollback_classify").click().run()
    assert promotion.promoted_info("classify")["run_id"] == first.name
    assert "rolled back from" in texts(at)

    at.button(key="onnx_classify").click().run()
    assert not at.error
    exported = next(s.value for s in at.success if "model.onnx" in s.value)
    assert "max abs difference" in exported
    assert json.loads((settings.promoted_dir() / "classify" / "model.json").read_text())["max_abs_diff"] < 1e-4

    at.multiselect(key="runs_selected").set_value([second.name]).run()
    at.checkbox(key=f"sure_{second.name}").check().run()
    at.button(key=f"delete_{second.name}").click().run()
    assert not second.exists() and [r.run_id for r in layout.list_runs()] == [first.name]
