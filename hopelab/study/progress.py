"""A study's live progress: for each running run its step out of the total, last loss and ETA, and the study's
ETA. One renderer (`StudyProgress`) for every way runs are trained: in this process, `--jobs` workers (their
steps arrive through a queue) and launched jobs (their steps arrive through each run's `progress.json`,
written by `ProgressFile`).

On a terminal it is a live rich display; otherwise (CI, a log file, a SLURM job's output) it prints plain
lines: a status block every `every_s` seconds, and one line when a run starts and when it ends.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from hopelab.data.progress import progress_bar
from hopelab.records import read_json, write_json_atomic
from hopelab.run import STATUS_DONE, STATUS_FAILED, RunState

PLAIN_EVERY_S = 30.0  # seconds between status blocks when the output is not a terminal
FILE_EVERY_S = 2.0  # seconds between writes of a run's progress.json


# ---------------------------------------------------------------------------------------------- progress.json
class ProgressFile:
    """`progress(step, total, loss)` for `train_one` that keeps `<run>/progress.json` = {step, total, loss, time}
    current: written atomically, at most every `every_s` seconds, and at the last step. Cheap enough to run
    every step; it is how a launched job (another process, maybe another host) shows its progress."""

    def __init__(self, path: Path, every_s: float = FILE_EVERY_S, clock: Callable[[], float] = time.monotonic):
        self.path, self.every_s, self.clock = Path(path), every_s, clock
        self.last = float("-inf")

    def __call__(self, step: int, total: int, loss: float) -> None:
        now = self.clock()
        if now - self.last < self.every_s and step < total:
            return
        self.last = now
        write_json_atomic({"step": step, "total": total, "loss": float(loss), "time": time.time()}, self.path)


def read_progress(path: Path) -> tuple[int, int, float] | None:
    """(step, total, loss) from a progress.json; None when there is none yet (or it cannot be read)."""
    try:
        data = read_json(path)
        return int(data["step"]), int(data["total"]), float(data["loss"])
    except (OSError, ValueError, TypeError, KeyError):
        return None


# ---------------------------------------------------------------------------------------------- display
@dataclass
class _Live:
    """A running run as the display saw it: its last step and loss, and its step rate since it was first seen."""

    total: int
    step: int | None = None
    loss: float | None = None
    t0: float | None = None  # when the display first saw a step of this run, and which step
    step0: int = 0
    t: float = 0.0
    task: int | None = None

    def seen(self, step: int, total: int, loss: float, now: float) -> None:
        if self.t0 is None or step < self.step0:  # first step seen, or resumed from an earlier checkpoint
            self.t0, self.step0 = now, step
        self.step, self.total, self.loss, self.t = step, total, loss, now

    def s_per_step(self) -> float | None:
        if self.t0 is None or self.step is None or self.step <= self.step0 or self.t <= self.t0:
            return None
        return (self.t - self.t0) / (self.step - self.step0)

    def left_steps(self) -> int:
        return max(0, self.total - (self.step or 0))


def eta_text(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    s = int(round(seconds))
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


class StudyProgress:
    """Runs finished out of the total and the study's ETA; for each running run its step/total, loss and ETA.

        with StudyProgress(console, "ablation tiny", total=12, done=2, todo={run_id: steps, ...}) as display:
            display.step(run_id, step, total, loss)     # step None: the run started
            display.finished(outcome)                   # a RunState

    The study ETA: the steps left of every unfinished run at the mean seconds per step seen so far, divided by
    the runs training at once."""

    def __init__(self, console, title: str, total: int, done: int, todo: dict[str, int] | None = None,
                 every_s: float = PLAIN_EVERY_S, clock: Callable[[], float] = time.monotonic):
        self.console, self.title, self.total, self.done = console, title, total, done
        self.todo = dict(todo or {})  # run_id -> steps, of runs not finished yet
        self.every_s, self.clock = every_s, clock
        self.live: dict[str, _Live] = {}
        self.rates: list[float] = []  # seconds per step of runs seen, finished ones included
        self.ended: set[str] = set()  # late progress messages of these runs are dropped
        self.plain = not console.is_terminal
        self.last_block = clock()
        self.bar = None if self.plain else progress_bar(kind="runs", console=console)
        if self.bar is not None:
            self.overall = self.bar.add_task(f"[bold]{title}[/] runs", total=total, completed=done, loss="", eta="")

    def __enter__(self) -> StudyProgress:
        if self.bar is not None:
            self.bar.__enter__()
        else:
            self.console.print(f"{self.title}: {self.done}/{self.total} runs finished; {len(self.todo)} to train")
        return self

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.__exit__(*exc)

    # ------------------------------------------------------------------------------------------ updates
    def step(self, run_id: str, step: int | None, total: int, loss: float | None) -> None:
        if run_id in self.ended:
            return
        live = self.live.get(run_id)
        if live is None:
            live = self.live[run_id] = _Live(total)
            if self.bar is not None:
                live.task = self.bar.add_task(f"  {run_id}", total=total, loss="", eta="")
            else:
                self.console.print(f"started {run_id} ({total} steps)")
        if step is not None:
            live.seen(step, total, loss, self.clock())
        self._refresh()

    def finished(self, outcome: RunState) -> None:
        self.ended.add(outcome.run_id)
        self.todo.pop(outcome.run_id, None)
        live = self.live.pop(outcome.run_id, None)
        if live is not None and (rate := live.s_per_step()) is not None:
            self.rates.append(rate)
        if live is not None and live.task is not None:
            self.bar.remove_task(live.task)
        if outcome.status in (STATUS_DONE, STATUS_FAILED):
            self.done += 1
            if self.bar is not None:
                self.bar.advance(self.overall)
        self.console.print(describe(outcome))
        if self.plain:
            self.console.print(self.study_line())
        self._refresh()

    # ------------------------------------------------------------------------------------------ numbers
    def s_per_step(self) -> float | None:
        """Mean seconds per step over the runs seen (running and finished)."""
        rates = self.rates + [r for live in self.live.values() if (r := live.s_per_step()) is not None]
        return sum(rates) / len(rates) if rates else None

    def run_eta(self, live: _Live) -> float | None:
        rate = live.s_per_step()
        return None if rate is None else live.left_steps() * rate

    def study_eta(self) -> float | None:
        if not self.live and not self.todo:
            return 0.0
        mean = self.s_per_step()
        if mean is None:
            return None
        left = sum(live.left_steps() * (live.s_per_step() or mean) for live in self.live.values())
        left += sum(steps for run_id, steps in self.todo.items() if run_id not in self.live) * mean
        return left / max(1, len(self.live))

    def run_line(self, run_id: str, live: _Live) -> str:
        loss = f"loss {live.loss:.4f}" if live.loss is not None else "loss -"
        return f"  {run_id}: step {live.step or 0}/{live.total} {loss} ETA {eta_text(self.run_eta(live))}"

    def study_line(self) -> str:
        return (f"{self.title}: {self.done}/{self.total} runs finished, {len(self.live)} running, "
                f"study ETA {eta_text(self.study_eta())}")

    # ------------------------------------------------------------------------------------------ rendering
    def _refresh(self) -> None:
        if self.bar is not None:
            for live in self.live.values():
                loss = f"loss {live.loss:.4f}" if live.loss is not None else ""
                self.bar.update(live.task, completed=live.step or 0, total=live.total, loss=loss,
                                eta=f"ETA {eta_text(self.run_eta(live))}")
            self.bar.update(self.overall, eta=f"study ETA {eta_text(self.study_eta())}")
            return
        now = self.clock()
        if now - self.last_block >= self.every_s and self.live:
            self.last_block = now
            self.console.print(self.study_line())
            for run_id, live in self.live.items():
                self.console.print(self.run_line(run_id, live))


def describe(outcome: RunState) -> str:
    if outcome.status == STATUS_DONE:
        loss = f"val loss {outcome.final_val_loss:.4f}" if outcome.final_val_loss is not None else "no val loss"
        wall = f", {outcome.wall_time_s:.1f} s" if outcome.wall_time_s is not None else ""
        mark = "already done" if outcome.skipped else "done"
        return f"[green]{mark}[/] {outcome.run_id}: {loss}{wall}"
    if outcome.status == STATUS_FAILED:
        mark = "crashed" if outcome.crashed else "failed"
        return f"[red]{mark}[/] {outcome.run_id}: {outcome.reason}"
    return f"[yellow]{outcome.status}[/] {outcome.run_id}: {outcome.reason}"
