"""Settings are checked at start: a bad value is one clear line naming the variable and the form expected."""
from __future__ import annotations

import pytest

from core import settings


def test_defaults_and_good_values_pass(workspace, monkeypatch):
    settings.check()
    monkeypatch.setenv("CERVICURVE_THREADS", "3")
    monkeypatch.setenv("CERVICURVE_NORMAL_MIN_DEG", "12.5")
    monkeypatch.setenv("CERVICURVE_DB", f"sqlite:///{workspace / 'x.db'}")
    settings.check()
    assert settings.cpu_threads() == 3 and settings.rule_thresholds_deg() == (12.5, -4.0)


@pytest.mark.parametrize("name, value, expected", [
    ("CERVICURVE_THREADS", "four", "CERVICURVE_THREADS='four' is not valid; expected torch CPU threads: a whole number"),
    ("CERVICURVE_THREADS", "0", "CERVICURVE_THREADS='0' is not valid"),
    ("CERVICURVE_NORMAL_MIN_DEG", "ten", "CERVICURVE_NORMAL_MIN_DEG='ten' is not valid; expected Cobb"),
    ("CERVICURVE_NORMAL_MIN_DEG", "nan", "CERVICURVE_NORMAL_MIN_DEG='nan' is not valid"),
    ("CERVICURVE_REVERSED_MAX_DEG", "20", "CERVICURVE_REVERSED_MAX_DEG (20) must be below CERVICURVE_NORMAL_MIN_DEG (10)"),
    ("CERVICURVE_DB", "not a url", "CERVICURVE_DB='not a url' is not valid; expected a SQLAlchemy database URL"),
    ("CERVICURVE_DB", "mysql://u:secret@h/db", "the 'mysql' database is not supported"),
    ("CERVICURVE_PRELOAD", "yes", "CERVICURVE_PRELOAD='yes' is not valid; expected load the Predict models"),
    ("CERVICURVE_PRELOAD_WAIT_S", "-5", "CERVICURVE_PRELOAD_WAIT_S='-5' is not valid; expected seconds"),
    ("CERVICURVE_PRELOAD_WAIT_S", "soon", "CERVICURVE_PRELOAD_WAIT_S='soon' is not valid"),
])
def test_a_bad_value_is_named_with_the_form_expected(workspace, monkeypatch, name, value, expected):
    monkeypatch.setenv(name, value)
    with pytest.raises(settings.SettingsError) as error:
        settings.check()
    assert expected in str(error.value) and "secret" not in str(error.value)
    assert str(error.value).count("\n") == 1  # one line for the one bad value


def test_workspace_that_is_a_file_is_reported(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("x")
    monkeypatch.setenv("CERVICURVE_HOME", str(tmp_path / "file"))
    monkeypatch.setenv("CERVICURVE_THREADS", "-1")
    with pytest.raises(settings.SettingsError) as error:
        settings.check()
    lines = str(error.value).splitlines()
    assert lines[0] == "bad settings:" and len(lines) == 3
    assert "CERVICURVE_HOME=" in lines[1] and "cannot be used as the workspace" in lines[1]
    assert "CERVICURVE_THREADS='-1'" in lines[2]


@pytest.mark.parametrize("command", [["measure", "x.json"], ["runs"], ["phantom", "--out", "p", "--patients", "1"]])
def test_every_command_refuses_a_bad_setting_with_one_line(workspace, command):
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "CERVICURVE_HOME": str(workspace), "PYTHONPATH": str(root), "CERVICURVE_THREADS": "four",
           "CERVICURVE_NORMAL_MIN_DEG": "ten"}
    done = subprocess.run([sys.executable, "-m", "core", *command], cwd=workspace, env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "CERVICURVE_THREADS='four'" in done.stderr and "CERVICURVE_NORMAL_MIN_DEG='ten'" in done.stderr
    assert not (workspace / "p").exists()


def test_a_measurement_with_a_bad_threshold_names_the_variable(monkeypatch):
    from core.data.measure import RuleThresholds

    monkeypatch.setenv("CERVICURVE_NORMAL_MIN_DEG", "ten")
    with pytest.raises(settings.SettingsError, match="CERVICURVE_NORMAL_MIN_DEG='ten'"):
        RuleThresholds.from_env()
