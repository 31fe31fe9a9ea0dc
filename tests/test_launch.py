"""`hopelab study --launcher`: a tiny study of two runs through submitit's local executor (real jobs, real
training; one job requeued midway as on a SLURM time limit, resuming from its checkpoint), and a job that
dies without a result."""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import pytest
from typer.testing import CliRunner

from hopelab.cli import app
from hopelab.run import RunDir
from hopelab.study import Cell, Study, plan_runs
from hopelab.study.study_json import read_study_json

submitit = pytest.importorskip("submitit")

pytestmark = pytest.mark.slow

STEPS, CKPT = 300, 50  # enough steps after the first checkpoint to signal the job while it trains
TINY = ["--set", "dim=32", "--set", "n_layers=1", "--set", "context_len=16", "--set", "batch_size=2",
        "--set", "val_batches=1", "--set", f"steps={STEPS}", "--set", f"ckpt_every={CKPT}"]


def signal_at_checkpoint(run_dir: RunDir, step: int, deadline_s: float = 120.0) -> None:
    """Once the run has saved checkpoint `step`, send SIGUSR2 (what SLURM sends a job's tasks before its time
    limit) to the process training it: its lock says which (submitit's local controller would not forward it)."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        manifest = run_dir.read_manifest()
        if manifest is not None and (manifest.last_step or 0) >= step:
            os.kill(json.loads(run_dir.lock.read_text())["pid"], signal.SIGUSR2)
            return
        time.sleep(0.02)


def test_tiny_study_through_submitit_local_executor(tmp_path, monkeypatch):
    """Two runs, two jobs. One job is signalled midway as on a SLURM time limit: it checkpoints
    (RunJob.checkpoint), is requeued and resumes its run from the last checkpoint under the same lock."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    study_file = tmp_path / "mini.py"
    study_file.write_text("from hopelab.study import Cell, Study\n"
                          "STUDY = Study(name='mini', description='two runs', cells=[Cell('transformer')], "
                          "scales=('tiny',), seeds=2)\n")
    out = tmp_path / "runs"
    args = ["study", "run", str(study_file), "--out", str(out), "--data", "synthetic:copy", *TINY,
            "--launcher", "local", "--jobs", "2"]
    root = out / "mini"
    run_dirs = [RunDir(root / "tiny" / "transformer" / f"seed{seed}") for seed in (0, 1)]
    timer = threading.Thread(target=signal_at_checkpoint, args=(run_dirs[0], CKPT), daemon=True)
    timer.start()
    result = CliRunner().invoke(app, args)
    timer.join()
    assert result.exit_code == 0, result.output
    for run_dir in run_dirs:  # trained by the jobs: done, and their progress file at the last step
        manifest = run_dir.read_manifest()
        assert manifest.status == "done" and manifest.last_step == STEPS, manifest
        assert json.loads(run_dir.progress.read_text())["step"] == STEPS
        assert not run_dir.lock.exists()  # released
    first, second = (d.read_manifest().attempts for d in run_dirs)
    assert len(first) == 2 and first[1]["from_step"] >= CKPT  # requeued, resumed (not restarted)
    assert len(second) == 1
    jobs = sorted(p.name for p in (root / ".submitit").glob("*_submitted.pkl"))
    assert len(jobs) == 2  # one job per run (a requeued job keeps its id)
    data = read_study_json(root)  # merged: both runs with their final numbers
    assert [r["status"] for r in data["runs"]] == ["done", "done"]
    assert [r["final_val_loss"] for r in data["runs"]] == [d.read_manifest().final_val_loss for d in run_dirs]
    assert "--launcher local" in data["command"]
    assert "started mini/tiny/transformer/seed0 (300 steps)" in result.output  # the plain-line display
    assert "done mini/tiny/transformer/seed1" in result.output

    again = CliRunner().invoke(app, args)  # resume: nothing left to do, nothing submitted
    assert again.exit_code == 0, again.output
    assert "2 of 2 runs already finished" in again.output
    assert sorted(p.name for p in (root / ".submitit").glob("*_submitted.pkl")) == jobs


def test_job_without_a_result_is_recorded_as_crashed(tmp_path):
    from hopelab.study.launch import _outcome

    study = Study(name="gone", description="d", cells=[Cell("transformer")], scales=("tiny",))
    (run,) = plan_runs(study, out=str(tmp_path))

    class DeadJob:
        job_id = "77"
        paths = type("Paths", (), {"stderr": tmp_path / "77_0_log.err"})()

        def result(self):
            raise submitit.core.utils.UncompletedJobError("Job 77 (task: 0) with path ... has not produced any output")

    outcome = _outcome(DeadJob(), run, tmp_path / "gone")
    assert outcome.status == "failed" and outcome.crashed and "job 77 ended without a result" in outcome.reason
    (record,) = read_study_json(tmp_path / "gone")["runs"]
    assert record["status"] == "failed" and "77_0_log.err" in record["reason"]


def test_scheduler_options_reach_the_sbatch_script(tmp_path, monkeypatch):
    """The CLI's scheduler options, through LaunchOptions and submitit, as SLURM will read them (a stand-in
    `srun` on PATH: submitit only checks that there is one)."""
    from hopelab.cli.study import _launch_options

    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "srun").write_text("#!/bin/sh\nexit 0\n")
    (tmp_path / "bin" / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    options = _launch_options("slurm", "gpu", 2, 8, 32.0, 90, 3, ["account=mylab", "qos=high"])
    executor = options.executor(tmp_path / ".submitit")._executor
    script = executor._make_submission_file_text("python -m x", "uid")
    for line in ("--partition=gpu", "--gpus-per-node=2", "--ntasks-per-node=2", "--cpus-per-task=8",
                 "--mem=32GB", "--time=90", "--account=mylab", "--qos=high", "--signal=USR2@90"):
        assert f"#SBATCH {line}\n" in script, line
    assert executor.parameters["array_parallelism"] == 3 and executor.max_num_timeout == 20


@pytest.mark.parametrize("args, needle", [
    (["--partition", "gpu"], "--partition need --launcher"),
    (["--launcher", "pbs"], "choose one of local, slurm"),
    (["--launcher", "local", "--no-wait"], "--no-wait needs --launcher slurm"),
    (["--launcher", "slurm", "--slurm", "account"], "expected KEY=VALUE"),
])
def test_bad_launcher_options_are_one_line_errors(tmp_path, args, needle):
    study_file = tmp_path / "one.py"
    study_file.write_text("from hopelab.study import Cell, Study\n"
                          "STUDY = Study(name='one', description='d', cells=[Cell('transformer')], scales=('tiny',))\n")
    result = CliRunner().invoke(app, ["study", "run", str(study_file), "--out", str(tmp_path), "--data",
                                      "synthetic:copy", *args])
    assert result.exit_code != 0 and needle in str(result.exception), (result.output, result.exception)
