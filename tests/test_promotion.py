"""A promotion or rollback killed mid-way (a real process, SIGKILLed at each step of its folder swap) never loses the
model Predict used: the next read of ``promoted/`` puts back what the killed process had moved aside."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from core import settings
from core.runs import layout, promotion
from tests.helpers import ROOT

# A child that promotes run B (or rolls back) and is killed right after its n-th os.replace, or once its copy is
# begun (n = 0): each point a kill can land on between the swap's steps.
KILLED = textwrap.dedent("""
    import os, signal, sys, shutil
    from core.runs import promotion
    action, target, after = sys.argv[1], sys.argv[2], int(sys.argv[3])
    done = []
    real_replace, real_copy = os.replace, shutil.copy2
    def replace(src, dst):
        real_replace(src, dst)
        done.append(dst)
        if len(done) == after:
            os.kill(os.getpid(), signal.SIGKILL)
    def copy2(src, dst):
        real_copy(src, dst)
        if after == 0:
            os.kill(os.getpid(), signal.SIGKILL)
    promotion.os.replace, promotion.shutil.copy2 = replace, copy2
    promotion.promote(target) if action == "promote" else promotion.rollback("classify")
""")


def fake_run(tag: str):
    """A finished classifier run whose best.pt holds ``tag`` (promotion copies it; nothing loads it)."""
    def prepare(staging, run_dir):
        (staging / layout.CONFIG_FILE).write_text("task: classify\nmodel: cnn\n", encoding="utf-8")
        (staging / "best.pt").write_bytes(tag.encode())

    run = layout.new_run_dir("cnn", "classify", prepare)
    layout.write_status(run, {"state": "done"})
    return run


def kill_mid_way(action: str, target, after: int) -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, "-c", KILLED, action, str(target), str(after)], env=env, timeout=120)
    assert done.returncode == -signal.SIGKILL


def hidden() -> list[str]:
    return sorted(p.name for p in settings.promoted_dir().iterdir() if p.name not in (".history", "classify"))


# after n replaces: 0 the copy begun; 1 the model moved aside; 2 the copy swapped in; 3 the old one in the history
@pytest.mark.parametrize("after", [0, 1, 2, 3])
def test_a_promotion_killed_at_any_step_leaves_a_model_for_predict(workspace, after):
    first, second = fake_run("A"), fake_run("B")
    promotion.promote(first)
    kill_mid_way("promote", second, after)
    model = promotion.promoted_model("classify")  # a read recovers
    assert model is not None and model.read_bytes() == (b"A" if after < 2 else b"B")
    assert hidden() == []
    # whichever model is not in use is kept for a rollback
    assert [h["run_id"] for h in promotion.history("classify")] == ([] if after < 2 else [first.name])
    promotion.promote(second)  # and the next promotion works as usual
    assert promotion.promoted_model("classify").read_bytes() == b"B"


@pytest.mark.parametrize("after", [1, 2, 3])
def test_a_rollback_killed_at_any_step_loses_neither_model(workspace, after):
    first, second = fake_run("A"), fake_run("B")
    promotion.promote(first)
    promotion.promote(second)
    kill_mid_way("rollback", "-", after)
    in_use = promotion.promoted_model("classify").read_bytes()  # a read recovers
    assert hidden() == []
    kept = [h["run_id"] for h in promotion.history("classify")]
    if after < 3:  # killed before A was in: B stays in use, A goes back to the history to roll back to again
        assert in_use == b"B" and kept == [first.name]
    else:  # A is in use; B, moved aside, is kept in the history (its run has it too)
        assert in_use == b"A" and promotion.promoted_info("classify")["run_id"] == first.name
        assert kept == [second.name]


def test_a_live_process_swap_is_left_alone(workspace):
    """Folders named by a live process (this one) are its swap in progress: never touched."""
    first = fake_run("A")
    promotion.promote(first)
    busy = settings.promoted_dir() / f".classify.{os.getpid()}.tmp"
    busy.mkdir()
    aside = settings.promoted_dir() / f".classify.old.{os.getpid()}"
    aside.mkdir()
    promotion.recover()
    assert busy.is_dir() and aside.is_dir()
