"""Run the planned runs of a study: one at a time in this process, `--jobs N` worker processes, or submitit
jobs (`--launcher`, hopelab.study.launch).

Every run is trained by `hopelab.run.train_one`, which resumes a partial run by itself. Around it this
module takes the run's lock (so two processes never train the same run), skips finished runs, records each
run's state in study.json, and keeps going when a run fails (NaN) or crashes. Each run's outcome is its
`RunState`.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import queue as queue_mod
import signal
import threading
import traceback
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import replace
from pathlib import Path

from hopelab.errors import UserError
from hopelab.run import STATUS_FAILED, STATUS_RUNNING, RunState
from hopelab.run.lock import HEARTBEAT_S, HOST, FileLock, LockHeld
from hopelab.study.plan import PlannedRun, check_same_config
from hopelab.study.progress import StudyProgress
from hopelab.study.study_json import record_runs, run_record

Progress = Callable[[int, int, float], None]  # (step, total, loss), called every training step


def execute_run(run: PlannedRun, root: Path, progress: Progress | None = None) -> RunState:
    """Train one run under its lock and record the result in study.json. Returns (never raises) when the
    run fails or crashes; raises UserError (bad input: every run would fail) and KeyboardInterrupt."""
    spec, run_dir = run.spec, run.dir
    try:
        lock = FileLock(run_dir.lock, heartbeat=HEARTBEAT_S).acquire()
    except LockHeld as held:
        return RunState(spec.run_id, STATUS_RUNNING, reason=f"being trained by {held.who}")
    try:
        state = run_dir.state()  # again, under the lock: another process may have just finished it
        if state.final:
            return replace(state, skipped=True)
        check_same_config(run)
        running = RunState(spec.run_id, STATUS_RUNNING, reason=f"pid {os.getpid()} on {HOST}")
        record_runs(root, [run_record(run, running)])
        try:
            from hopelab.run import train_one  # seconds (Lightning): an interrupt here is recorded too

            state = train_one(spec, progress=progress)
        except (UserError, KeyboardInterrupt, SystemExit) as err:
            record_runs(root, [run_record(run, run_dir.state())])
            if isinstance(err, SystemExit):  # Lightning turns Ctrl+C into SystemExit(1); submitit exits a job
                raise KeyboardInterrupt(err.code) from None  # that it requeued with its own code
            raise
        except Exception as err:  # escaped train_one (data, model build): record it, go on with the study
            log = run_dir.write_error(traceback.format_exc())
            reason = f"{type(err).__name__}: {err}".splitlines()[0][:300] + f" (traceback in {log})"
            state = RunState(spec.run_id, STATUS_FAILED, reason=reason)  # crashed: no failed_step
        record_runs(root, [run_record(run, state)])
        return state
    finally:
        lock.release()


# ---------------------------------------------------------------------------------------------- workers
_QUEUE = None  # set in each worker process: progress messages go back to the parent through it


def _interrupt_once(signum, frame) -> None:
    """A worker's SIGINT handler: the first one stops its run (KeyboardInterrupt, so the run is recorded), later
    ones are ignored (Ctrl+C reaches the worker from the terminal and again from the parent)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise KeyboardInterrupt


def _init_worker(progress_queue, threads: int) -> None:
    global _QUEUE
    _QUEUE = progress_queue
    # progress messages are best effort: a worker that exits while the parent no longer reads them (an
    # interrupted study) must not wait for its unsent ones to fit into a full pipe
    progress_queue.cancel_join_thread()
    signal.signal(signal.SIGINT, _interrupt_once)
    import torch

    torch.set_num_threads(threads)


def _worker_run(run: PlannedRun, root: Path) -> RunState:
    run_id = run.spec.run_id

    def progress(step: int, total: int, loss: float) -> None:
        _QUEUE.put((run_id, step, total, float(loss)))

    _QUEUE.put((run_id, None, run.steps, None))  # started
    return execute_run(run, root, progress)


def threads_per_job(jobs: int) -> int:
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    return max(1, cores // jobs)


# ---------------------------------------------------------------------------------------------- driver
def run_all(runs: list[PlannedRun], root: Path, console, title: str, jobs: int = 1, launch=None,
            threads: int | None = None) -> list[RunState]:
    """Train every run not yet finished; returns one outcome per run, in plan order. `launch`: a
    `hopelab.study.launch.LaunchOptions` to train them as submitit jobs instead of in this machine's processes.
    `threads`: torch threads per run (None: the cores divided among the jobs; torch's default in this process)."""
    outcomes: dict[str, RunState] = {}
    todo: list[PlannedRun] = []
    for run in runs:
        state = run.dir.state()
        if state.final:
            outcomes[run.spec.run_id] = replace(state, skipped=True)
        else:
            todo.append(run)
    if outcomes:
        console.print(f"{len(outcomes)} of {len(runs)} runs already finished; skipping them")
    todo_steps = {run.spec.run_id: run.steps for run in todo}
    with StudyProgress(console, title, total=len(runs), done=len(outcomes), todo=todo_steps) as display, \
            sigterm_interrupts():
        if launch is not None:
            from hopelab.study.launch import launch_jobs

            outcomes.update(launch_jobs(todo, root, launch, display))
        elif jobs <= 1 or len(todo) <= 1:
            with torch_threads(threads):
                for run in todo:
                    run_id = run.spec.run_id
                    display.step(run_id, None, run.steps, None)
                    outcome = execute_run(run, root, lambda s, t, loss, rid=run_id: display.step(rid, s, t, loss))
                    outcomes[run_id] = outcome
                    display.finished(outcome)
        else:
            _run_pool(todo, root, display, jobs, outcomes, threads or threads_per_job(jobs))
    return [outcomes[run.spec.run_id] for run in runs]


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Inside: torch uses `threads` CPU threads in this process (None: as it was), restored after."""
    if threads is None:
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextlib.contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """Inside: SIGTERM (`kill PID`, a scheduler stopping the study) stops the study as Ctrl+C does, so the
    runs in progress are recorded and the worker processes stopped, none left training on their own."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    before = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, before)


def died(run: PlannedRun, root: Path, why: str) -> RunState:
    """The outcome of a run whose process died under it (killed, out of memory, a job cancelled), recorded in
    study.json as crashed: the next invocation resumes it from its last checkpoint."""
    outcome = RunState(run.spec.run_id, STATUS_FAILED, reason=f"crashed: {why}")
    record_runs(root, [run_record(run, outcome)])
    return outcome


def _run_pool(todo: list[PlannedRun], root: Path, display: StudyProgress, jobs: int, outcomes: dict,
              threads: int) -> None:
    ctx = multiprocessing.get_context("spawn")  # torch and fork do not mix
    messages = ctx.Queue()
    pool = ProcessPoolExecutor(
        max_workers=min(jobs, len(todo)),
        mp_context=ctx,
        initializer=_init_worker,
        initargs=(messages, threads),
    )
    try:
        pending = {pool.submit(_worker_run, run, root): run for run in todo}
        while pending:
            finished, _ = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
            _drain(messages, display)
            for fut in finished:
                run = pending.pop(fut)
                try:
                    outcome = fut.result()
                except UserError:
                    raise
                except Exception as err:  # the worker process itself died (killed, out of memory)
                    outcome = died(run, root, f"worker died: {err}")
                outcomes[run.spec.run_id] = outcome
                display.finished(outcome)
    except BaseException:  # Ctrl+C or SIGTERM here, or a bad-input error: stop the runs in progress too
        for process in list((pool._processes or {}).values()):  # noqa: SLF001 - the executor keeps no public list
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGINT)
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        _drain(messages, display)


def _drain(messages, display: StudyProgress) -> None:
    while True:
        try:
            run_id, step, total, loss = messages.get_nowait()
        except queue_mod.Empty:
            return
        display.step(run_id, step, total, loss)
