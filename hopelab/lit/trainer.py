"""The Trainer factory, the checkpoint schedule, atomic step checkpoints and finding the last good one.

Order at a checkpoint step k (callbacks run in list order; `StepCheckpoint` is always last):
    train metrics (val loss, tokens/s) -> probes -> checkpoint k (temp file + rename) -> manifest.
So every row that belongs to step k is on disk before checkpoint k exists: a run killed at any moment and
resumed from its last good checkpoint recomputes (and rewrites in place) everything after it, and loses
nothing before it.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import Callback

from hopelab.errors import UserError
from hopelab.run.rundir import RunDir

log = logging.getLogger("hopelab.train")

KEEP_CHECKPOINTS = 2  # the last one plus one fallback in case the last is corrupt


@dataclass(frozen=True)
class Schedule:
    """When to checkpoint (and probe): every `ckpt_every` optimizer steps and at the last step."""

    ckpt_every: int
    total_steps: int

    def is_ckpt_step(self, step: int) -> bool:
        return step > 0 and (step % self.ckpt_every == 0 or step == self.total_steps)

    def is_probe_step(self, step: int) -> bool:
        """Probes also run at step 0 (the untrained model), the reference of every curve."""
        return step == 0 or self.is_ckpt_step(step)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """torch.load a Lightning checkpoint on CPU and check it is one of ours (raises on any problem)."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True)  # as Lightning loads it on resume
    for key in ("state_dict", "global_step", "loops", "optimizer_states", "hopelab"):
        if key not in ckpt:
            raise ValueError(f"checkpoint {path} has no {key!r}")
    return ckpt


def last_good_checkpoint(run_dir: RunDir, rename_corrupt: bool = True) -> tuple[int, Path] | None:
    """The run's newest checkpoint that loads and whose global step matches its name; corrupt ones are renamed
    `*.corrupt` (kept for inspection; only by rank 0) and the previous one is tried."""
    for step, path in reversed(run_dir.list_checkpoints()):
        try:
            ckpt = load_checkpoint(path)
            if int(ckpt["global_step"]) != step:
                raise ValueError(f"global_step {ckpt['global_step']} != {step}")
            return step, path
        except Exception as err:  # noqa: BLE001 - any failure to load means: not a usable checkpoint
            log.warning("checkpoint %s is unusable (%s); falling back to the previous one", path, err)
            if rename_corrupt:
                os.replace(path, path.with_name(path.name + ".corrupt"))
    return None


class StepCheckpoint(Callback):
    """Saves the run's checkpoint of step k (`RunDir.checkpoint(k)`) atomically at every checkpoint step, keeps
    the last few.

    Must be the last callback: the metrics and probes of step k are written before checkpoint k.
    """

    def __init__(
        self,
        run_dir: RunDir,
        schedule: Schedule,
        keep: int = KEEP_CHECKPOINTS,
        on_saved: Callable[[int], None] | None = None,
    ) -> None:
        self.run_dir = run_dir
        self.schedule = schedule
        self.keep = keep
        self.on_saved = on_saved

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if self.schedule.is_ckpt_step(step):
            self.save(trainer, step)
            if self.on_saved is not None and trainer.is_global_zero:
                self.on_saved(step)

    def save(self, trainer: pl.Trainer, step: int) -> None:
        final = self.run_dir.checkpoint(step)
        tmp = final.with_name(f".{final.name}.tmp")
        if trainer.is_global_zero:
            final.parent.mkdir(parents=True, exist_ok=True)
        trainer.save_checkpoint(tmp)  # all ranks call it; rank 0 writes, then a barrier
        if trainer.is_global_zero:
            os.replace(tmp, final)
            for _, old in self.run_dir.list_checkpoints()[: -self.keep]:
                old.unlink(missing_ok=True)
        trainer.strategy.barrier("hopelab.checkpoint")


def _devices(devices: str | int) -> str | int | list[int]:
    """CLI strings to what Lightning expects: 'auto', an int, or a list of device indices ('0,2')."""
    if isinstance(devices, int):
        return devices
    text = str(devices).strip()
    if text.isdigit() or (text.startswith("-") and text[1:].isdigit()):
        return int(text)
    if "," in text:
        return [int(d) for d in text.split(",") if d.strip()]
    return text


def quiet_lightning() -> None:
    """Lightning's banner lines and the warnings that do not apply to our step-indexed data stream."""
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)
    for pattern in (
        ".*does not have many workers.*",
        ".*IterableDataset.*has `__len__` defined.*",
        ".*`training_step` returned `None`.*",
        ".*isinstance\\(treespec, LeafSpec\\)` is deprecated.*",
    ):
        warnings.filterwarnings("ignore", message=pattern)


LOGGERS = ("csv", "tensorboard")


def make_logger(kind: str | None, run_dir: RunDir):
    """Lightning's own logger for `--logger csv|tensorboard` (None: none), writing under `<run>/logs/`; the
    training metrics reach it through `TrainMetrics`. TensorBoard keeps every attempt of a resumed run in one
    folder (it merges event files by step); CSV starts `logs/csv/version_<k>/` per attempt (its metrics.csv
    would otherwise be deleted on resume)."""
    if kind is None:
        return False
    if kind == "csv":
        from lightning.pytorch.loggers import CSVLogger

        return CSVLogger(run_dir.logs, name="csv")
    if kind == "tensorboard":
        import importlib.util

        if importlib.util.find_spec("tensorboard") is None and importlib.util.find_spec("tensorboardX") is None:
            raise UserError("--logger tensorboard needs the tensorboard package: pip install 'hopelab[tensorboard]'")
        from lightning.pytorch.loggers import TensorBoardLogger

        return TensorBoardLogger(run_dir.logs, name="tensorboard", version="", default_hp_metric=False)
    raise UserError(f"--logger {kind!r}: choose one of {', '.join(LOGGERS)}")


def make_trainer(
    *,
    max_steps: int,
    callbacks: list[Callback],
    accelerator: str = "auto",
    devices: str | int = "auto",
    precision: str | None = None,
    strategy: str = "auto",
    logger=False,
) -> pl.Trainer:
    """A Trainer for one run: our own checkpoints, metrics and progress; accelerator, devices, precision and
    strategy pass straight through (so CPU, one GPU or DDP over several work unchanged)."""
    quiet_lightning()
    try:
        return pl.Trainer(
            accelerator=accelerator,
            devices=_devices(devices),
            precision=precision,
            strategy=strategy,
            max_steps=max_steps,
            max_epochs=-1,
            callbacks=callbacks,
            logger=logger,  # make_logger: our metrics reach it through TrainMetrics
            enable_checkpointing=False,  # StepCheckpoint does it, in the order we need
            enable_progress_bar=False,
            enable_model_summary=False,
            num_sanity_val_steps=0,
            limit_val_batches=0,
            use_distributed_sampler=False,  # StepBatches shards the global batch itself
            gradient_clip_val=None,  # LitLM.configure_gradient_clipping clips and records the norm
            log_every_n_steps=1,
        )
    except (MisconfigurationException, ValueError, TypeError, RuntimeError) as err:
        raise UserError(
            f"bad trainer setting (accelerator={accelerator!r}, devices={devices!r}, precision={precision!r}, "
            f"strategy={strategy!r}): {str(err).splitlines()[0]}"
        ) from None
