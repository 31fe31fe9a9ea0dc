"""The live study display (hopelab.study.progress) on a stream that is not a terminal, progress.json, and
the lock rules that let launched jobs die or be requeued (hopelab.run.lock)."""

from __future__ import annotations

import io
import json
import os
import socket
import time

import pytest
from rich.console import Console

from hopelab.run import RunState
from hopelab.run.lock import FileLock, LockHeld, held_by_other
from hopelab.study.progress import ProgressFile, StudyProgress, eta_text, read_progress


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def plain_console() -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, force_terminal=False, width=200, highlight=False), out


def test_plain_lines_show_step_loss_and_etas_of_running_runs():
    console, out = plain_console()
    clock = Clock()
    todo = {"s/tiny/a/seed0": 100, "s/tiny/b/seed0": 100, "s/tiny/c/seed0": 100}
    with StudyProgress(console, "s tiny", total=4, done=1, todo=todo, every_s=10.0, clock=clock) as display:
        display.step("s/tiny/a/seed0", None, 100, None)
        display.step("s/tiny/b/seed0", None, 100, None)
        display.step("s/tiny/a/seed0", 0, 100, 5.0)
        display.step("s/tiny/b/seed0", 0, 100, 5.0)
        clock.now = 10.0  # a: 50 steps in 10 s (0.2 s/step), b: 25 steps (0.4 s/step)
        display.step("s/tiny/a/seed0", 50, 100, 3.21)
        display.step("s/tiny/b/seed0", 25, 100, 4.5)  # within 10 s of the last block: no new block
        text = out.getvalue()
        assert "s tiny: 1/4 runs finished; 3 to train" in text
        assert "started s/tiny/a/seed0 (100 steps)" in text
        assert "s/tiny/a/seed0: step 50/100 loss 3.2100 ETA 10s" in text  # 50 steps left at 0.2 s/step
        clock.now = 20.0
        display.step("s/tiny/b/seed0", 50, 100, 4.0)  # b: 50 steps in 20 s = 0.4 s/step
        block = out.getvalue()[len(text):]
        assert "s/tiny/b/seed0: step 50/100 loss 4.0000 ETA 20s" in block
        # left: a 50 x 0.2 = 10 s, b 50 x 0.4 = 20 s, c 100 steps x mean 0.3 = 30 s; over 2 running: 30 s
        assert "s tiny: 1/4 runs finished, 2 running, study ETA 30s" in block
        display.finished(RunState("s/tiny/a/seed0", "done", final_val_loss=3.0, wall_time_s=12.0))
        display.step("s/tiny/a/seed0", 60, 100, 1.0)  # a late message of a finished run: dropped
        assert "2/4 runs finished, 1 running" in display.study_line()
    tail = out.getvalue()[len(text) + len(block):]
    assert "done s/tiny/a/seed0: val loss 3.0000, 12.0 s" in tail
    assert "2/4 runs finished, 1 running" in tail and "seed0: step 60" not in tail
    assert "\x1b[" not in out.getvalue()  # plain text: no terminal codes


def test_terminal_display_renders_the_same_numbers():
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=160)
    clock = Clock()
    display = StudyProgress(console, "s tiny", total=1, done=0, todo={"s/tiny/a/seed0": 10}, clock=clock)
    assert not display.plain
    with display:
        display.step("s/tiny/a/seed0", 0, 10, 2.0)
        clock.now = 4.0
        display.step("s/tiny/a/seed0", 4, 10, 1.5)
        assert display.run_eta(display.live["s/tiny/a/seed0"]) == pytest.approx(6.0)
        assert display.study_eta() == pytest.approx(6.0)
        display.bar.refresh()
    assert "ETA 6s" in out.getvalue() and "study ETA 6s" in out.getvalue()


def test_eta_text():
    assert [eta_text(s) for s in (None, 5, 65, 3725)] == ["?", "5s", "1m05s", "1h02m"]


def test_progress_file_is_throttled_and_always_has_the_last_step(tmp_path):
    path = tmp_path / "progress.json"
    clock = Clock()
    write = ProgressFile(path, every_s=2.0, clock=clock)
    assert read_progress(path) is None
    write(1, 10, 4.0)
    clock.now = 1.0
    write(2, 10, 3.5)  # within 2 s: not written
    assert read_progress(path) == (1, 10, 4.0)
    clock.now = 2.5
    write(3, 10, 3.0)
    assert read_progress(path) == (3, 10, 3.0)
    write(10, 10, 2.0)  # the last step: written at once
    assert read_progress(path) == (10, 10, 2.0)
    path.write_text("{")  # torn: no progress, no error
    assert read_progress(path) is None


# ------------------------------------------------------------------------------------ locks of jobs
def test_heartbeat_keeps_another_hosts_lock_alive_until_it_stops(tmp_path):
    path = tmp_path / "run.lock"
    with FileLock(path, heartbeat=0.05):
        owner = json.loads(path.read_text())
        assert owner["heartbeat_s"] == 0.05
        os.utime(path, (0, 0))
        time.sleep(0.3)
        assert time.time() - path.stat().st_mtime < 1.0  # touched again by the heartbeat
    beat = {"pid": 1, "host": "node7", "started": 0, "heartbeat_s": 60.0}
    path.write_text(json.dumps(beat))
    assert held_by_other(path) is not None  # beating recently: a live job on node7
    with pytest.raises(LockHeld, match="node7"):
        FileLock(path).acquire()
    old = time.time() - 11 * 60.0  # 11 beats missed: its job died with the node
    os.utime(path, (old, old))
    assert held_by_other(path) is None
    with FileLock(path):
        assert json.loads(path.read_text())["host"] == socket.gethostname()
    path.write_text(json.dumps({**beat, "heartbeat_s": None}))
    os.utime(path, (old, old))
    assert held_by_other(path) is not None  # no heartbeat: another host's lock is trusted


def test_requeued_slurm_job_takes_over_its_own_earlier_lock(tmp_path, monkeypatch):
    path = tmp_path / "run.lock"
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    earlier = {"pid": 1, "host": "node3", "started": 0, "job": "4242", "restart": 0}
    path.write_text(json.dumps(earlier))
    with FileLock(path):  # this job's previous incarnation, on another node: dead
        mine = json.loads(path.read_text())
        assert mine["job"] == "4242" and mine["restart"] == 1
    path.write_text(json.dumps({**earlier, "restart": 1}))  # the same incarnation (another task): alive
    assert held_by_other(path) is not None
    path.write_text(json.dumps({**earlier, "job": "999"}))  # another job
    assert held_by_other(path) is not None
