"""A study's runs as jobs, through submitit: `hopelab study NAME --launcher slurm|local`.

Each pending run becomes one job (on SLURM, one task of a job array) that calls the per-run entry point every
other way of training a study calls, `runner.execute_run`: the run's lock, the skip of a finished run, the
resume from its last good checkpoint and its record in study.json are the same code. What this module adds:

    submit    the scheduler options (partition, GPUs and CPUs per job, memory, time limit, how many jobs at
              once, any other sbatch option) pass straight to submitit; job folders under <study>/.submitit/
    requeue   a job that hits its time limit or is preempted is requeued by submitit (`RunJob.checkpoint`)
              and resumes from the run's last checkpoint; a job killed outright leaves a lock that goes stale
              (its heartbeat stops, or the requeued job is a later incarnation: hopelab.run.lock)
    watch     while jobs run, each run's progress.json feeds the live display (hopelab.study.progress); a job
              that ends without a result is recorded as crashed (the next invocation resumes it)
    merge     when the jobs are done, every outcome is written to study.json in one update

The local launcher runs the same jobs as processes on this machine (`--jobs N` at once): what CI tests.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hopelab.errors import UserError
from hopelab.run import RunState
from hopelab.study.plan import PlannedRun
from hopelab.study.progress import ProgressFile, StudyProgress, read_progress
from hopelab.study.runner import died, execute_run, threads_per_job
from hopelab.study.study_json import record_runs, run_record

LAUNCHERS = ("local", "slurm")
MAX_REQUEUES = 20  # time limits or preemptions a run may go through (each resumes from its last checkpoint)
POLL_S = 1.0


@dataclass(frozen=True)
class LaunchOptions:
    """How jobs are submitted. `parallel`: jobs at once (the array's parallelism on SLURM; processes at once
    locally; None: all on SLURM). `extra`: any other sbatch option, e.g. {"account": "abc", "qos": "high"}."""

    launcher: str
    partition: str | None = None
    gpus_per_job: int = 0
    cpus_per_job: int | None = None
    mem_gb: float | None = None
    time_min: int = 240
    parallel: int | None = None
    extra: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.launcher not in LAUNCHERS:
            raise UserError(f"--launcher {self.launcher!r}: choose one of {', '.join(LAUNCHERS)}")
        for name, value in (("--gpus-per-job", self.gpus_per_job), ("--time", self.time_min)):
            if value < (0 if name == "--gpus-per-job" else 1):
                raise UserError(f"{name} must be positive, got {value}")

    def executor(self, folder: Path):
        """A submitit executor with these options (submitit is an extra: pip install 'hopelab[cluster]')."""
        try:
            import submitit
        except ImportError:
            raise UserError("--launcher needs the submitit package: pip install 'hopelab[cluster]'") from None
        try:
            executor = submitit.AutoExecutor(folder=folder, cluster=self.launcher, slurm_max_num_timeout=MAX_REQUEUES,
                                             local_max_num_timeout=MAX_REQUEUES)
        except RuntimeError as err:  # no srun/sbatch on this machine
            raise UserError(f"--launcher {self.launcher}: {err} (--launcher local runs the jobs here)") from None
        params: dict[str, Any] = {
            "name": "hopelab",
            "timeout_min": self.time_min,
            "gpus_per_node": self.gpus_per_job,
            "tasks_per_node": max(1, self.gpus_per_job),  # one task per GPU: Lightning's DDP ranks on SLURM
            "slurm_additional_parameters": dict(self.extra),
        }
        if self.cpus_per_job is not None:
            params["cpus_per_task"] = self.cpus_per_job
        if self.mem_gb is not None:
            params["mem_gb"] = self.mem_gb
        if self.partition is not None:
            params["slurm_partition"] = self.partition
        if self.parallel is not None:
            params["slurm_array_parallelism"] = self.parallel
        executor.update_parameters(**params)
        return executor


@dataclass
class RunJob:
    """One run as a submitit job: `execute_run` under the run's lock, its progress written to progress.json.
    Checkpointable: on a time limit or preemption submitit calls `checkpoint` and requeues the same job."""

    run: PlannedRun
    root: Path
    threads: int | None = None

    def __call__(self) -> RunState:
        import submitit
        import torch

        if self.threads is not None:
            torch.set_num_threads(self.threads)
        if submitit.JobEnvironment().global_rank != 0:  # another DDP rank of a multi-GPU run: rank 0 locks
            from hopelab.run import train_one

            return train_one(self.run.spec, progress=lambda step, total, loss: None)
        try:
            return execute_run(self.run, self.root, ProgressFile(self.run.dir.progress))
        except KeyboardInterrupt as err:  # submitit exits a job it requeued: keep its exit code (local requeue)
            raise SystemExit(err.args[0] if err.args else 1) from None

    def checkpoint(self, *args: Any, **kwargs: Any):
        import submitit

        return submitit.helpers.DelayedSubmission(RunJob(self.run, self.root, self.threads))


def launch_jobs(todo: list[PlannedRun], root: Path, options: LaunchOptions, display: StudyProgress | None,
           wait: bool = True) -> dict[str, RunState]:
    """Submit one job per run of `todo` and (with `wait`) watch them to the end: returns each run's outcome,
    already merged into study.json. Without `wait` (SLURM only) returns {} once every job is submitted."""
    if not todo:
        return {}
    if not wait and options.launcher == "local":
        raise UserError("--no-wait needs --launcher slurm: local jobs are processes of this command")
    executor = options.executor(Path(root) / ".submitit")
    threads = options.cpus_per_job
    if options.launcher == "local":
        threads = threads or threads_per_job(options.parallel or 1)
    for run in todo:
        run.dir.progress.unlink(missing_ok=True)  # an old attempt's progress is not this job's
    queue = list(todo)
    limit = len(todo) if options.launcher == "slurm" else max(1, options.parallel or 1)
    inflight: dict[Any, PlannedRun] = {}
    outcomes: dict[str, RunState] = {}
    try:
        while queue or inflight:
            starting = queue[: limit - len(inflight)]
            del queue[: len(starting)]
            inflight.update(_submit(executor, starting, root, threads))
            if not wait:
                return {}
            for job, run in list(inflight.items()):
                run_id = run.spec.run_id
                if display is not None and (seen := read_progress(run.dir.progress)) is not None:
                    display.step(run_id, *seen)
                if job.done():
                    outcomes[run_id] = _outcome(job, run, root)
                    del inflight[job]
                    if display is not None:
                        display.finished(outcomes[run_id])
            if inflight:
                time.sleep(POLL_S)
    except KeyboardInterrupt:
        if options.launcher == "local":  # this command's processes: stop them (the runs resume next time)
            for job in inflight:
                job.cancel(check=False)
        raise
    record_runs(root, [run_record(run, outcomes[run.spec.run_id]) for run in todo])  # one merged update
    return outcomes


def _submit(executor, runs: list[PlannedRun], root: Path, threads: int | None) -> dict[Any, PlannedRun]:
    if not runs:
        return {}
    with executor.batch():  # one job array on SLURM
        jobs = [executor.submit(RunJob(run, root, threads)) for run in runs]
    return dict(zip(jobs, runs))


def _outcome(job, run: PlannedRun, root: Path) -> RunState:
    """The job's RunState; a job that ended without one (killed, cancelled, out of memory, a node lost) is
    recorded as crashed, with where its log is."""
    try:
        return job.result()
    except Exception as err:  # noqa: BLE001 - submitit's UncompletedJobError/FailedJobError, or a lost result
        state = run.dir.state()
        if state.final:  # it finished; only its result went missing
            return state
        first = (str(err).strip().splitlines() or [""])[-1][:200]
        return died(run, root, f"job {job.job_id} ended without a result ({first}); log in {job.paths.stderr}")
