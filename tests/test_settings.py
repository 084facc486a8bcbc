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
