"""Training metrics -> `metrics.parquet` (METRICS_SCHEMA, long format), and the fixed-batch val loss.

Every step: train_loss, lr, grad_norm (before clipping), labelled with the step count after that update
(1..N; `tokens` = tokens consumed so far). At step 0 and every checkpoint: val_loss on the fixed
val batches and tokens_per_s since the previous checkpoint. The file is rewritten atomically at every
checkpoint (and when a run fails); on resume, rows after the restored step are dropped (they are recomputed),
and rows are unique by (metric, step). Every row also goes to the Trainer's loggers, if any (`--logger
csv|tensorboard`: one `log_metrics` per step, saved at every checkpoint), so the curves open in TensorBoard.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pyarrow.parquet as pq
import torch
from lightning.pytorch.callbacks import Callback

from hopelab.lit.module import NonFiniteError, lm_loss, lr_factor
from hopelab.lit.trainer import Schedule
from hopelab.models.streaming import read_stream
from hopelab.probes.base import RunLabels
from hopelab.probes.forward import eval_mode, forward_context
from hopelab.records import METRICS_SCHEMA, rows_to_table, write_parquet_atomic

StepFn = Callable[[int, int, float], None]


def evaluate(model: torch.nn.Module, batches, device: torch.device | str, trainer: pl.Trainer | None = None) -> float:
    """Mean cross-entropy over fixed (x, y) batches, eval mode, no grad. Batches longer than the context are
    streams (`segments` > 1): read window by window with the fast state carried, the mean over every window."""
    context = model.config.context_len
    total = torch.zeros((), device=device)
    with eval_mode(model), forward_context(trainer):
        for x, y in batches:
            x, y = x.to(device), y.to(device)
            if x.shape[1] <= context:
                total += lm_loss(model(x), y)
                continue
            losses = [lm_loss(logits, yw) for logits, yw in zip(read_stream(model, x, context), y.split(context, 1))]
            total += torch.stack(losses).mean()
    return float(total) / max(1, len(batches))


def read_metrics(path: Path) -> list[dict[str, Any]]:
    if not Path(path).exists():
        return []
    return pq.read_table(path, schema=METRICS_SCHEMA).to_pylist()


def dedup(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (metric, step), the last written wins; sorted by step then metric."""
    last = {(r["metric"], r["step"]): r for r in rows}
    return sorted(last.values(), key=lambda r: (r["step"], r["metric"]))


class TrainMetrics(Callback):
    def __init__(
        self, labels: RunLabels, schedule: Schedule, path: Path, val_batches: list, on_step: StepFn | None = None
    ) -> None:
        self.labels = labels
        self.schedule = schedule
        self.path = Path(path)
        self.val_batches = val_batches
        self.on_step = on_step
        self.rows: list[dict[str, Any]] = []
        self.last_val_loss: float | None = None
        self._t0 = 0.0
        self._step0 = 0
        self.loggers: list = []  # the Trainer's Lightning loggers (rank 0)

    def _row(self, step: int, metric: str, value: float | None) -> dict[str, Any]:
        return {**self.labels.row(step), "metric": metric, "value": value}

    def on_train_start(self, trainer, pl_module) -> None:
        step = trainer.global_step
        if trainer.is_global_zero:
            self.loggers = list(trainer.loggers)
            self.rows = [r for r in read_metrics(self.path) if r["step"] <= step]
            if step == 0:
                self.checkpoint_metrics(trainer, pl_module, 0)
                self.to_loggers(self.rows)
                self.flush()
        self.restart_clock(step)

    def restart_clock(self, step: int) -> None:
        self._t0 = time.perf_counter()
        self._step0 = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if not trainer.is_global_zero:
            return
        step = trainer.global_step  # optimizer steps done; this batch was step - 1
        first_new = len(self.rows)
        loss = float(outputs["train_loss"])  # the global batch's loss (LitLM.training_step)
        lr = pl_module.train_cfg.lr * lr_factor(step - 1, pl_module.train_cfg)  # the lr this update used
        self.rows.append(self._row(step, "train_loss", loss))
        self.rows.append(self._row(step, "lr", lr))
        if pl_module.last_grad_norm is not None:
            self.rows.append(self._row(step, "grad_norm", float(pl_module.last_grad_norm)))
        if self.on_step is not None:
            self.on_step(step, self.schedule.total_steps, loss)
        if self.schedule.is_ckpt_step(step):
            elapsed = time.perf_counter() - self._t0
            if step > self._step0 and elapsed > 0:
                tokens = (step - self._step0) * self.labels.tokens_per_step
                self.rows.append(self._row(step, "tokens_per_s", tokens / elapsed))
            self.checkpoint_metrics(trainer, pl_module, step)
        self.to_loggers(self.rows[first_new:])
        if self.schedule.is_ckpt_step(step):
            self.flush()

    def to_loggers(self, rows: list[dict[str, Any]]) -> None:
        """One step's rows to the Lightning loggers, as {metric: value} at that step."""
        if rows:
            for logger in self.loggers:
                logger.log_metrics({r["metric"]: r["value"] for r in rows}, step=rows[0]["step"])

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        # the clock of tokens/s restarts after the previous checkpoint's probes and save
        if self.schedule.is_probe_step(trainer.global_step):
            self.restart_clock(trainer.global_step)

    def checkpoint_metrics(self, trainer, pl_module, step: int) -> None:
        val = evaluate(pl_module.model, self.val_batches, pl_module.device, trainer)
        self.rows.append(self._row(step, "val_loss", val))
        self.last_val_loss = val
        if val != val or val in (float("inf"), float("-inf")):
            self.flush()
            raise NonFiniteError("val_loss", step, val)

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        if not trainer.is_global_zero:
            return
        if isinstance(exception, NonFiniteError) and exception.quantity == "train_loss":
            self.rows.append(self._row(exception.step, "train_loss", exception.value))
        self.flush()

    def flush(self) -> None:
        write_parquet_atomic(rows_to_table(dedup(self.rows), METRICS_SCHEMA), self.path)
        for logger in self.loggers:
            logger.save()
