"""`--logger csv|tensorboard`: Lightning's own loggers receive the run's training metrics (the same numbers as
metrics.parquet), and TensorBoard's event files load with tbparse."""

from __future__ import annotations

import csv

import pyarrow.parquet as pq
import pytest
import torch

from hopelab.errors import UserError
from hopelab.lit.trainer import make_logger
from hopelab.run import RunDir, RunSpec, parse_overrides, train_one

STEPS = 6
SETTINGS = ["dim=32", "n_layers=1", "n_heads=4", "context_len=16", "batch_size=2", "ckpt_every=3", "val_batches=1"]


def tiny_run(out, logger: str) -> RunDir:
    torch.set_num_threads(1)
    model_over, train_over = parse_overrides(SETTINGS)
    spec = RunSpec(variant="transformer", scale="tiny", study="log", steps=STEPS, data="synthetic:copy",
                   out=str(out), model_overrides=model_over, train_overrides=train_over, accelerator="cpu",
                   probes=False, logger=logger)
    state = train_one(spec, progress=lambda step, total, loss: None)
    assert state.status == "done", state.reason
    return RunDir(spec.run_dir)


def parquet_metrics(run_dir: RunDir) -> dict[str, dict[int, float]]:
    out: dict[str, dict[int, float]] = {}
    for row in pq.read_table(run_dir.metrics).to_pylist():
        out.setdefault(row["metric"], {})[row["step"]] = row["value"]
    return out


@pytest.mark.filterwarnings("ignore:The inplace keyword:DeprecationWarning")  # inside tbparse, with pandas 3
def test_tensorboard_event_files_load_with_tbparse(tmp_path):
    tbparse = pytest.importorskip("tbparse")
    run_dir = tiny_run(tmp_path, "tensorboard")
    scalars = tbparse.SummaryReader(str(run_dir.logs / "tensorboard")).scalars
    logged = {tag: dict(zip(group.step, group.value)) for tag, group in scalars.groupby("tag")}
    expected = parquet_metrics(run_dir)
    assert set(logged) == set(expected) >= {"train_loss", "val_loss", "lr", "grad_norm", "tokens_per_s"}
    assert sorted(logged["train_loss"]) == list(range(1, STEPS + 1))
    assert sorted(logged["val_loss"]) == [0, 3, 6]  # step 0 and every checkpoint
    for metric, by_step in expected.items():
        assert logged[metric] == pytest.approx(by_step, rel=1e-6), metric  # TensorBoard stores float32


def test_csv_logger_writes_the_same_numbers(tmp_path):
    run_dir = tiny_run(tmp_path, "csv")
    (path,) = (run_dir.logs / "csv").glob("version_*/metrics.csv")
    logged: dict[str, dict[int, float]] = {}
    for row in csv.DictReader(path.open()):
        for metric, value in row.items():
            if metric != "step" and value != "":
                logged.setdefault(metric, {})[int(row["step"])] = float(value)
    expected = parquet_metrics(run_dir)
    assert set(logged) == set(expected)
    for metric, by_step in expected.items():
        assert logged[metric] == pytest.approx(by_step, rel=1e-12), metric


def test_unknown_logger_is_a_user_error(tmp_path):
    assert make_logger(None, RunDir(tmp_path)) is False
    with pytest.raises(UserError, match="csv, tensorboard"):
        make_logger("wandb", RunDir(tmp_path))
