"""The probe callback: runs every probe at every probe step and writes one Parquet file per probe and step.

    callback = ProbeCallback([CMSProbe(), SurpriseProbe()], probe_dir, schedule, (x, y), labels)

At step 0 (the untrained model) and every checkpoint step, on rank 0, each probe turns one `ProbeStep` (the
model, its memory sites, the shared probe forward) into rows, written to `<probe>-step<k>.parquet`
(PROBE_SCHEMA) atomically, so a probe run again at the same step replaces its rows. A probe never crashes a
run: its error becomes a logged warning (and a line in the manifest). What a probe remembers across steps
is its `state_dict`, saved inside every Lightning checkpoint and restored on resume.
"""

from __future__ import annotations

import abc
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from torch import nn

from hopelab.probes.forward import ProbeStep
from hopelab.records import PROBE_SCHEMA, rows_to_table, write_parquet_atomic

if TYPE_CHECKING:
    from hopelab.lit.trainer import Schedule

log = logging.getLogger("hopelab.probes")

MAX_ERRORS = 50  # warnings kept for the manifest


@dataclass(frozen=True)
class RunLabels:
    """The identity columns of every row a run writes (probes and training metrics)."""

    run_id: str
    study: str
    variant: str
    scale: str
    seed: int
    tokens_per_step: int

    def row(self, step: int) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "study": self.study,
            "variant": self.variant,
            "scale": self.scale,
            "seed": self.seed,
            "step": step,
            "tokens": step * self.tokens_per_step,
        }


def probe_path(probe_dir: Path, probe: str, step: int) -> Path:
    """Where the rows of `probe` at `step` live: `<probe>-step<k:06d>.parquet`."""
    return Path(probe_dir) / f"{probe}-step{step:06d}.parquet"


def write_probe_rows(probe_dir: Path, labels: RunLabels, probe: str, step: int, rows: list[dict[str, Any]]) -> Path:
    """The rows of `probe` at `step`, with the run's identity columns, written atomically (replacing any)."""
    base = {**labels.row(step), "probe": probe}
    path = probe_path(probe_dir, probe, step)
    write_parquet_atomic(rows_to_table(({**base, **r} for r in rows), PROBE_SCHEMA), path)
    return path


class Probe(abc.ABC):
    """One probe family: rows at a probe step, and what it remembers across steps (its state_dict)."""

    name = "probe"

    @abc.abstractmethod
    def collect(self, at: ProbeStep) -> list[dict[str, Any]]:
        """The rows of this probe at `at.step` (without the identity columns)."""

    def remember(self, model: nn.Module) -> None:
        """Snapshot what later steps are measured from; called with the model as built (step 0's weights).
        A resumed run then replaces it with the checkpoint's `state_dict`."""

    def before_optimizer_step(self, model: nn.Module, step: int) -> None:
        """Called before the optimizer step that leads to checkpoint `step`, with that step's gradients."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


class ProbeCallback(Callback):
    """Runs `probes` at every probe step of `schedule` on the probe batch; owns the probes' state."""

    def __init__(
        self,
        probes: list[Probe],
        probe_dir: Path,
        schedule: Schedule,
        batch: tuple[torch.Tensor, torch.Tensor],
        labels: RunLabels,
        probe_set: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> None:
        self.probes = probes
        self.probe_dir = Path(probe_dir)
        self.schedule = schedule
        self.batch = batch  # x [B, T], y [B, T]
        self.labels = labels
        self.probe_set = probe_set  # x, y [N, T]: the larger set the intervene probe evaluates (None: `batch`)
        self.errors: list[str] = []
        self.time_s = 0.0  # wall time spent inside the probes (for the overhead benchmark)

    def path(self, probe: str, step: int) -> Path:
        return probe_path(self.probe_dir, probe, step)

    def write(self, probe: str, step: int, rows: list[dict[str, Any]]) -> None:
        write_probe_rows(self.probe_dir, self.labels, probe, step, rows)

    def warn(self, message: str) -> None:
        log.warning(message)
        if len(self.errors) < MAX_ERRORS:
            self.errors.append(message)

    # Lightning hooks ----------------------------------------------------------------------------------------

    def setup(self, trainer, pl_module, stage) -> None:
        # before a checkpoint is restored: the module holds the weights it was built with (step 0's)
        for probe in self.probes:
            probe.remember(pl_module.model)

    def state_dict(self) -> dict[str, Any]:
        return {probe.name: probe.state_dict() for probe in self.probes}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        for probe in self.probes:
            if probe.name in state_dict:
                probe.load_state_dict(state_dict[probe.name])

    def on_train_start(self, trainer, pl_module) -> None:
        if trainer.global_step == 0:
            self.run(trainer, pl_module, 0)

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        step = trainer.global_step + 1  # the step this update leads to
        if not self.schedule.is_ckpt_step(step) or not trainer.is_global_zero:
            return
        for probe in self.probes:
            self._guarded(probe.name, step, probe.before_optimizer_step, pl_module.model, step)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if self.schedule.is_probe_step(step):
            self.run(trainer, pl_module, step)

    # ---------------------------------------------------------------------------------------------------------

    def run(self, trainer: pl.Trainer | None, pl_module: pl.LightningModule, step: int) -> None:
        """Every probe at `step` (rank 0 only), sharing one probe forward."""
        if trainer is not None and not trainer.is_global_zero:
            return
        at = ProbeStep(pl_module.model, step, self.batch, trainer, self.probe_set, step == self.schedule.total_steps)
        for probe in self.probes:
            self._guarded(probe.name, step, self._collect_and_write, probe, at)

    def _collect_and_write(self, probe: Probe, at: ProbeStep) -> None:
        rows = probe.collect(at)
        if rows:
            self.write(probe.name, at.step, rows)

    def _guarded(self, name: str, step: int, fn, *args) -> None:
        """fn(*args), timed; an error becomes a warning."""
        t0 = time.perf_counter()
        try:
            fn(*args)
        except Exception as err:  # noqa: BLE001 - a probe never crashes a run
            self.warn(f"probe {name} failed at step {step}: {err!r}")
        finally:
            self.time_s += time.perf_counter() - t0
