"""Batches as a pure function of the optimizer step, so a resumed run sees exactly the batches it would have.

The training stream is an endless IterableDataset whose iterator starts at the trainer's current global step
(read when Lightning creates the iterator, i.e. after a checkpoint was restored) and yields
(step, x [B, T], y [B, T]) with (x, y) = BatchSampler.batch(step). Under DDP every rank takes its rows of the
same global batch, so the global batch does not depend on the number of devices.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, IterableDataset

from hopelab.data.sampler import StreamSampler
from hopelab.errors import UserError


class StepBatches(IterableDataset):
    """Endless stream of (step, x, y) starting at `start_step()`; rows rank::world_size of each batch."""

    def __init__(self, sampler, start_step: Callable[[], int], rank: int = 0, world_size: int = 1) -> None:
        super().__init__()
        self.sampler = sampler
        self.start_step = start_step
        self.rank = rank
        self.world_size = world_size

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        step = int(self.start_step())
        while True:
            x, y = self.sampler.batch(step)  # [B, T] each
            if self.world_size > 1:
                x, y = x[self.rank :: self.world_size], y[self.rank :: self.world_size]
            yield torch.tensor(step), x, y
            step += 1


def check_segments(segments: int, data) -> int:
    """`segments` if streaming applies to `data`: a corpus, K >= 1."""
    from hopelab.data.synthetic import SyntheticData

    if segments < 1:
        raise UserError(f"segments must be >= 1, got {segments}")
    if segments > 1 and isinstance(data, SyntheticData):  # one task instance per sample: nothing to stream
        raise UserError("segments > 1 streams a corpus; a synthetic task has one sequence per sample")
    return segments


def _identity(batch):
    return batch


class StepDataModule(pl.LightningDataModule):
    """Train batches from `data.sampler("train", ...)` (a corpus or a synthetic task); val and probe batches
    are fixed lists."""

    def __init__(self, data, context_len: int, batch_size: int, seed: int, val_batches: int, probe_seed: int,
                 segments: int = 1):
        super().__init__()
        from hopelab.interventions import probe_set

        self.data = data
        self.batch_size = batch_size
        # segments K > 1 (streaming): train on window step % K of streams of K windows; val and probe batches
        # are whole streams [B, K·T], read window by window (hopelab.models.streaming)
        span = context_len * check_segments(segments, data)
        if segments > 1:
            self.train_sampler = StreamSampler(data.sampler("train", span, batch_size, seed), context_len, segments)
        else:
            self.train_sampler = data.sampler("train", context_len, batch_size, seed)
        # fixed held-out batches: the same for every variant and every seed of a study
        self.val = data.sampler("val", span, batch_size, 0).val_batches(val_batches)
        self.probe = data.sampler("val", span, batch_size, probe_seed).batch(0)
        # the intervene probe's sequences: windows, or streams read as trained (hopelab.interventions.probe_set)
        self.probe_set = probe_set(data, context_len, probe_seed, segments=segments)

    def train_dataloader(self) -> DataLoader:
        trainer = self.trainer
        world = trainer.world_size if trainer is not None else 1
        rank = trainer.global_rank if trainer is not None else 0
        if self.batch_size % world:
            raise UserError(f"batch_size {self.batch_size} is not divisible by the {world} devices")
        start = (lambda: trainer.global_step) if trainer is not None else (lambda: 0)
        stream = StepBatches(self.train_sampler, start, rank, world)
        return DataLoader(stream, batch_size=None, collate_fn=_identity, num_workers=0)
