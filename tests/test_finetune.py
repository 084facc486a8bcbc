"""A team's own films: imported from a CSXA folder with grades missing, split by patient alone, and fine-tuned from
the promoted models with the phantoms mixed in (``init_from=promoted``), through the real CLI; Predict then uses
the fine-tuned model once it is promoted. Tiny phantoms stand in for the films here (the real ones are not
needed); what the curve looks like on real films is benchmarks/real_films_curve.py's job."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
TINY_LANDMARKS = ["epochs=1", "input_size=64", "batch_size=4", "widths=[8,8,16,16,16]", "device=cpu", "refine=0"]
TINY_CLASSIFIER = ["model=cnn", "input_size=32", "batch_size=4", "epochs=1", "n_boot=20", "device=cpu"]


def _env(home: Path) -> dict:
    return dict(os.environ, CERVICURVE_HOME=str(home), CERVICURVE_THREADS="1", OMP_NUM_THREADS="1",
                OMP_WAIT_POLICY="PASSIVE", PYTHONPATH=str(ROOT))


def _core(home: Path, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "core", *args], cwd=ROOT, env=_env(home), capture_output=True,
                          text=True, timeout=timeout)


def _train(home: Path, config: str, *overrides: str) -> Path:
    """One foreground run through the CLI; its run folder (a fresh run id under runs/)."""
    before = set((home / "runs").glob("*")) if (home / "runs").is_dir() else set()
    done = _core(home, "train", "--config", f"configs/{config}.yaml", *overrides)
    assert done.returncode == 0, done.stdout + done.stderr
    (run_dir,) = set((home / "runs").glob("*")) - before
    return run_dir


def _films_folder(src: Path) -> None:
    """Six 'team films' in CSXA layout with a sheet headed as the published dev subset is: three grades blank."""
    from core.data import phantom

    phantom.write_phantoms(src, 6, 1, seed=901, size=128, formats=("csxa",))
    csxa = src / "csxa"
    for sheet in csxa.rglob("datasets.*"):
        sheet.unlink()
    numbers = sorted(int(p.stem.split("_")[0]) for p in (csxa / "datasets-PNG").glob("*.png"))
    header = ["Number", "Age", "Cervical curvature status: 1. Normal; 2. Straightened; 3. Upper arch lower "
                                "straight; 4. Lower arch upper straight; 5. Curvature reversal"]
    body = [[n, 40, [1, 2, 5, None, None, None][i]] for i, n in enumerate(numbers)]
    pd.DataFrame([["Cervical Spine X-ray Atlas (subset)", None, None], header, *body]).to_excel(
        csxa / "datasets.xlsx", sheet_name="Sheet1", header=False, index=False)


@pytest.fixture(scope="module")
def team_home(tmp_path_factory):
    """Phantoms trained into tiny promoted models (the demo's role), and the team's films imported beside them."""
    home = tmp_path_factory.mktemp("finetune") / "workspace"
    home.mkdir()
    src = home.parent / "phantoms"
    from core.data import phantom

    phantom.write_phantoms(src, 12, 1, seed=5, size=128, formats=("csxa",))
    for args in (("import", "csxa", str(src / "csxa"), "--dataset", "ph"), ("split", "--dataset", "ph")):
        done = _core(home, *args)
        assert done.returncode == 0, done.stdout + done.stderr
    for config, extra in (("landmarks", TINY_LANDMARKS), ("classify", TINY_CLASSIFIER)):
        run_dir = _train(home, config, "dataset=ph", *extra)
        done = _core(home, "runs", "promote", run_dir.name)
        assert done.returncode == 0, done.stdout + done.stderr
    _films_folder(home.parent / "films")
    done = _core(home, "import", "csxa", str(home.parent / "films" / "csxa"), "--dataset", "films")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "6 imported" in done.stdout, done.stdout  # the three without a grade come in for their landmarks
    refused = _core(home, "split", "--dataset", "films")
    assert refused.returncode == 2 and "--no-stratify" in refused.stdout  # 3 classes of 1 patient each
    done = _core(home, "split", "--dataset", "films", "--fractions", "0.67,0.33,0", "--no-stratify")
    assert done.returncode == 0, done.stdout + done.stderr
    return home


def test_films_with_blank_grades_import_and_split_by_patient(team_home, monkeypatch):
    monkeypatch.setenv("CERVICURVE_HOME", str(team_home))
    from core.data.store import AnnotationStore

    with AnnotationStore() as store:
        items = store.current_labels("films")
    assert sorted(item.split for item in items) == ["train"] * 4 + ["val"] * 2
    assert sorted(str(item.curvature_class) for item in items) == ["None"] * 3 + ["normal", "reversed",
                                                                                  "straightened"]


def test_landmarks_fine_tune_from_the_promoted_model_mixes_the_phantoms_in(team_home):
    run_dir = _train(team_home, "landmarks", "dataset=films", "init_from=promoted", *TINY_LANDMARKS, "mix_limit=5")
    log = (run_dir / "train.log").read_text()
    promoted = (team_home / "promoted" / "landmarks" / "best.pt").resolve()
    assert f"started from the weights of {promoted}" in log
    # 4 team films, each repeated to half the epoch against 5 phantoms of 'ph' (its promoted model's dataset)
    assert "fine-tuning mix: 4 films of 'films' (each 1 times an epoch) with 5 of 'ph'; validation on 'films'" in log
    import torch

    tuned = torch.load(run_dir / "best.pt", weights_only=True)
    base = torch.load(promoted, weights_only=True)
    assert tuned["meta"]["config"]["init_from"] == "promoted" and tuned["meta"]["dataset"] == "films"
    assert any(not torch.equal(tuned["state_dict"][k], base["state_dict"][k]) for k in base["state_dict"])

    # promoted, Predict reads with it
    assert _core(team_home, "runs", "promote", run_dir.name).returncode == 0
    film = next((team_home.parent / "films" / "csxa" / "datasets-PNG").glob("*.png"))
    out = _core(team_home, "predict", str(film), "--json", "--cam", "none")
    assert out.returncode == 0, out.stdout + out.stderr
    result = json.loads(out.stdout.splitlines()[-1])
    assert result["file"] == str(film)
    info = json.loads((team_home / "promoted" / "landmarks" / "promoted.json").read_text())
    assert info["run_id"] == run_dir.name


def test_classifier_fine_tune_mixes_the_phantoms_in_and_its_ood_reference_holds_every_team_film(team_home,
                                                                                                 monkeypatch):
    # no input_size given: the start model's (32) is kept, as S-ResNet's weight matrices need
    overrides = [o for o in TINY_CLASSIFIER if not o.startswith("input_size=")]
    run_dir = _train(team_home, "classify", "dataset=films", "init_from=promoted", *overrides, "mix_limit=6")
    log = (run_dir / "train.log").read_text()
    assert "fine-tuning mix:" in log and "with 6 of 'ph'" in log
    monkeypatch.setenv("CERVICURVE_HOME", str(team_home))
    import torch

    from core.data.store import AnnotationStore

    with AnnotationStore() as store:
        train = [item for item in store.current_labels("films") if item.split == "train"]
    labeled = [item for item in train if item.curvature_class]
    repeat = max(1, round(6 / len(labeled)))
    meta = torch.load(run_dir / "best.pt", weights_only=True)["meta"]
    assert meta["input_size"] == 32
    # the films without a class are not trained on, but the reference of how films look holds them too
    assert meta["ood_image_reference"]["n_train"] == len(labeled) * repeat + 6 + (len(train) - len(labeled))


def test_bad_fine_tune_settings_are_refused_by_name(team_home, tmp_path):
    empty = tmp_path / "empty-workspace"
    empty.mkdir()
    refused = _core(empty, "train", "--config", "configs/landmarks.yaml", "dataset=films", "init_from=promoted")
    assert refused.returncode != 0 and "no landmarks model is promoted" in (refused.stdout + refused.stderr)
    refused = _core(team_home, "train", "--config", "configs/landmarks.yaml", "dataset=films", "mix_share=0")
    assert refused.returncode != 0 and "mix_share" in (refused.stdout + refused.stderr)
    refused = _core(team_home, "train", "--config", "configs/landmarks.yaml", "dataset=films", "mix_with=films")
    assert refused.returncode != 0 and "mix_with" in (refused.stdout + refused.stderr)
    assert "Traceback" not in refused.stderr


def test_the_train_page_offers_to_fine_tune_the_promoted_model(team_home, monkeypatch):
    import yaml
    from streamlit.testing.v1 import AppTest

    from core.runs import layout
    from tests.helpers.wait import wait_for

    monkeypatch.setenv("CERVICURVE_HOME", str(team_home))
    monkeypatch.setenv("CERVICURVE_THREADS", "1")
    at = AppTest.from_file(str(ROOT / "pages" / "train.py"), default_timeout=60).run()
    at.selectbox(key="train_task").set_value("landmarks").run()
    at.selectbox(key="train_dataset").set_value("films").run()
    at.radio(key="train_init_landmarks").set_value("the promoted model: fine-tune on this dataset").run()
    for name, value in {"epochs": 1, "input_size": 64, "batch_size": 4, "device": "cpu"}.items():
        set_setting(at, f"train_HeatmapConfig_{name}", value)
    at.text_area(key="train_extra_HeatmapConfig").set_value("widths=[8,8,16,16,16]\nmix_limit=5\nrefine=0").run()
    assert not at.exception and not at.error
    at.button(key="train_start").click().run()
    run_dir = team_home / "runs" / at.session_state["train_run"]
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["init_from"] == "promoted"
    assert wait_for(lambda: layout.read_status(run_dir).get("state") in ("done", "failed"), 300)
    assert layout.read_status(run_dir)["state"] == "done", (run_dir / "train.log").read_text()
    assert "fine-tuning mix: 4 films of 'films'" in (run_dir / "train.log").read_text()


def set_setting(at, key: str, value) -> None:
    """A Train page setting, whichever widget its type is drawn as (number box, choice list, checkbox, text)."""
    for kind in ("number_input", "selectbox", "checkbox", "text_input"):
        try:
            widget = getattr(at, kind)(key=key)
        except KeyError:
            continue
        widget.set_value(value if kind != "text_input" else str(value)).run()
        return
    raise AssertionError(f"no Train page setting {key}")

