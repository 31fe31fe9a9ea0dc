"""A real tiny study (2 variants x 2 seeds, real training), killed with SIGKILL midway and resumed."""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from hopelab.cli import app

pytestmark = pytest.mark.slow

STEPS = 4
TINY = ["--set", "dim=32", "--set", "n_layers=1", "--set", "context_len=16", "--set", "vocab_size=300",
        "--set", f"steps={STEPS}", "--set", "ckpt_every=2", "--set", "batch_size=2", "--set", "val_batches=1"]
RUN_NAMES = ("transformer", "hope_no_selfmod")  # the two fastest to train on a CPU


def write_corpus(path: Path) -> Path:
    rng = random.Random(0)
    words = "the memory model learns fast slow level token surprise gate update state weight".split()
    with open(path, "w") as f:
        for _ in range(60):
            f.write(json.dumps({"text": " ".join(rng.choice(words) for _ in range(300))}) + "\n")
    return path


def read_manifest(run_dir: Path) -> dict:
    try:
        return json.loads((run_dir / "manifest.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def test_tiny_study_killed_midway_resumes_to_completion(tmp_path, monkeypatch):
    monkeypatch.setenv("HOPELAB_CACHE", str(tmp_path / "cache"))
    corpus = write_corpus(tmp_path / "corpus.jsonl")
    study_file = tmp_path / "mini.py"
    cells = ", ".join(f"Cell({name!r})" for name in RUN_NAMES)
    study_file.write_text(
        "from hopelab.study import Cell, Study\n"
        f"STUDY = Study(name='mini', description='two variants', cells=[{cells}], scales=('tiny',), seeds=2)\n"
    )
    out = tmp_path / "runs"
    args = ["study", "run", str(study_file), "--out", str(out), "--data", str(corpus), *TINY]
    root = out / "mini"
    run_dirs = [root / "tiny" / name / f"seed{seed}" for name in RUN_NAMES for seed in (0, 1)]

    # 1. start the study in a real process and SIGKILL it right after a run's first checkpoint (step 2 of 4)
    log = tmp_path / "first.log"
    with open(log, "w") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "hopelab.cli", *args],
            stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, "HOPELAB_CACHE": str(tmp_path / "cache")},
        )
    killed_in = None
    deadline = time.monotonic() + 120
    while killed_in is None and proc.poll() is None and time.monotonic() < deadline:
        for d in run_dirs:
            manifest = read_manifest(d)  # last_step moves once a checkpoint is completely saved
            if manifest.get("status") == "running" and (manifest.get("last_step") or 0) >= 2:
                os.killpg(proc.pid, signal.SIGKILL)
                killed_in = d
                break
        time.sleep(0.02)
    proc.wait()
    assert killed_in is not None, f"no checkpoint appeared; output: {log.read_text()[-2000:]}"
    assert proc.returncode == -signal.SIGKILL
    not_done = [d for d in run_dirs if read_manifest(d).get("status") != "done"]
    assert killed_in in not_done
    lock = root / ".locks" / f"tiny.{killed_in.parent.name}.{killed_in.name}.lock"
    assert lock.exists()  # left behind by the killed process: stale, taken over on resume

    # 2. the same command again: skips finished runs, resumes the killed one from its checkpoint
    result = CliRunner().invoke(app, args, terminal_width=200)
    assert result.exit_code == 0, result.output
    assert f"{4 - len(not_done)} of 4 runs already finished" in result.output or len(not_done) == 4
    study = json.loads((root / "study.json").read_text())
    assert sorted(r["run_id"] for r in study["runs"]) == sorted(f"mini/tiny/{d.parent.name}/{d.name}" for d in run_dirs)
    for rec in study["runs"]:
        assert rec["status"] == "done" and rec["final_val_loss"] > 0 and rec["wall_time_s"] > 0, rec
    attempts = read_manifest(killed_in)["attempts"]
    assert attempts[-1]["from_step"] >= 2  # resumed from the step-2 checkpoint, not restarted

    for d in run_dirs:  # one row per (step, metric) and per probe measurement: nothing written twice
        metrics = pq.read_table(d / "metrics.parquet").to_pandas()
        train = metrics[metrics.metric == "train_loss"]
        assert sorted(train.step) == list(range(1, STEPS + 1)) or sorted(train.step) == list(range(STEPS))
        assert not metrics.duplicated(["step", "metric"]).any()
        probes = pq.read_table(d / "probes").to_pandas()
        assert len(probes) > 0
        key = [c for c in probes.columns if c != "value"]
        assert not probes.duplicated(key).any()

    # 3. once more: everything is finished, nothing is trained
    again = CliRunner().invoke(app, args, terminal_width=200)
    assert again.exit_code == 0 and "4 of 4 runs already finished" in again.output


def _gone(pid: int) -> bool:
    """The process has exited (a zombie not yet reaped counts: in a container nothing may reap it)."""
    try:
        return Path(f"/proc/{pid}/status").read_text().split("State:")[1].split()[0] == "Z"
    except (FileNotFoundError, IndexError):
        return True


def test_sigterm_to_the_study_stops_its_worker_processes_too(tmp_path):
    """`kill PID` of `hopelab study --jobs 2` (the parent alone, as a scheduler does): it exits 130 within
    seconds, its two workers stop their runs and exit (none left training on its own), and study.json holds
    no run as running."""
    corpus = write_corpus(tmp_path / "corpus.jsonl")
    study_file = tmp_path / "long.py"
    study_file.write_text(
        "from hopelab.study import Cell, Study\n"
        "STUDY = Study(name='long', description='runs that outlast the test', cells=[Cell('transformer')], "
        "scales=('tiny',), seeds=2)\n"
    )
    out = tmp_path / "runs"
    settings = [a.replace(f"steps={STEPS}", "steps=100000").replace("ckpt_every=2", "ckpt_every=1000")
                for a in TINY]
    args = ["study", "run", str(study_file), "--out", str(out), "--data", str(corpus), "--jobs", "2", *settings]
    root = out / "long"
    locks = [root / ".locks" / f"tiny.transformer.seed{s}.lock" for s in (0, 1)]
    log = tmp_path / "study.log"
    with open(log, "w") as log_file:
        proc = subprocess.Popen([sys.executable, "-m", "hopelab.cli", *args], stdout=log_file,
                                stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, "HOPELAB_CACHE": str(tmp_path / "cache")})
    try:
        deadline = time.monotonic() + 180
        workers: set[int] = set()
        while len(workers) < 2 and proc.poll() is None and time.monotonic() < deadline:
            for lock in locks:
                with contextlib.suppress(FileNotFoundError, json.JSONDecodeError, KeyError):
                    workers.add(json.loads(lock.read_text())["pid"])
            time.sleep(0.1)
        assert len(workers) == 2, f"the runs did not start; output: {log.read_text()[-2000:]}"
        assert proc.pid not in workers  # the runs train in the worker processes
        time.sleep(3)  # inside the training loop
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=90) == 130, log.read_text()[-2000:]
        deadline = time.monotonic() + 30
        while not all(_gone(pid) for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert all(_gone(pid) for pid in workers), f"workers left running: {workers}"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    study = json.loads((root / "study.json").read_text())
    assert len(study["runs"]) == 2 and all(r["status"] != "running" for r in study["runs"]), study["runs"]


def test_threads_sets_the_torch_threads_of_each_run_and_restores_them(tmp_path, monkeypatch):
    """`--threads 1` on an in-process study: the run trains on one torch thread (its manifest says so) and the
    process gets its own thread count back afterwards."""
    import torch

    monkeypatch.setenv("HOPELAB_CACHE", str(tmp_path / "cache"))
    corpus = write_corpus(tmp_path / "corpus.jsonl")
    study_file = tmp_path / "one.py"
    study_file.write_text("from hopelab.study import Cell, Study\n"
                          "STUDY = Study(name='one', description='one run', cells=[Cell('transformer')], "
                          "scales=('tiny',), seeds=1)\n")
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        args = ["study", "run", str(study_file), "--out", str(tmp_path / "runs"), "--data", str(corpus),
                "--threads", "1", *TINY]
        result = CliRunner().invoke(app, args, terminal_width=200)
        assert result.exit_code == 0, result.output
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    manifest = read_manifest(tmp_path / "runs" / "one" / "tiny" / "transformer" / "seed0")
    assert manifest["hardware"]["torch_threads"] == 1
