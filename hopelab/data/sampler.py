"""Random fixed-length windows of a token stream, reproducible from (seed, step) alone.

`BatchSampler(tokens, context_len, batch_size, seed).batch(step)` draws batch_size window starts from a
generator seeded by (seed, step), so a run killed at step k and resumed asks for batch(k) and sees
exactly the batch it would have seen. No state is carried between steps.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from hopelab.errors import UserError


class BatchSampler:
    def __init__(self, tokens: np.ndarray, context_len: int, batch_size: int, seed: int = 0) -> None:
        if context_len < 1 or batch_size < 1:
            raise UserError(f"context_len ({context_len}) and batch_size ({batch_size}) must be >= 1")
        if len(tokens) < context_len + 1:
            raise UserError(
                f"a split of {len(tokens)} tokens is too short for context length {context_len} "
                f"(needs at least {context_len + 1}); use a larger corpus or a shorter context"
            )
        if seed < 0:
            raise UserError(f"seed must be >= 0, got {seed}")
        self.tokens = tokens  # 1-D array (usually a read-only np.memmap) of token ids
        self.context_len = context_len
        self.batch_size = batch_size
        self.seed = seed
        self.n_starts = len(tokens) - context_len  # valid window starts: 0 .. n_starts - 1

    def _windows(self, starts: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        idx = starts[:, None] + np.arange(self.context_len + 1)  # [B, T+1]
        chunk = torch.from_numpy(self.tokens[idx].astype(np.int64))  # [B, T+1]
        return chunk[:, :-1].contiguous(), chunk[:, 1:].contiguous()  # x [B, T], y [B, T]

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(x, y) LongTensors [B, T], y = x shifted left by one; a pure function of (seed, step)."""
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([self.seed, step])))
        starts = rng.integers(0, self.n_starts, size=self.batch_size)  # [B]
        return self._windows(starts)

    def iter_from(self, step: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """batch(step), batch(step + 1), ... forever (resume a run at its next step)."""
        while True:
            yield self.batch(step)
            step += 1

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self.iter_from(0)

    def val_batches(self, n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """n fixed batches of windows spread evenly over the whole split, independent of the seed,
        so every run and every checkpoint is scored on the same text."""
        starts = np.linspace(0, self.n_starts - 1, num=n * self.batch_size).round().astype(np.int64)
        return [self._windows(s) for s in starts.reshape(n, self.batch_size)]


class StreamSampler:
    """Streams of `segments` consecutive windows, one window per step (streaming training, `segments` = K):
    batch(step) is window step % K of the B streams `streams.batch(step // K)` ([B, K·T] each), so a stream is
    read over K consecutive steps and, like BatchSampler, every batch is a pure function of (seed, step)."""

    def __init__(self, streams: BatchSampler, context_len: int, segments: int) -> None:
        self.streams = streams  # draws windows of K·T tokens: one stream per row
        self.context_len = context_len
        self.segments = segments
        self._cached: tuple[int, tuple[torch.Tensor, torch.Tensor]] | None = None  # the current streams

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(x, y) [B, T]: window `step % K` of stream group `step // K`."""
        group, window = divmod(step, self.segments)
        if self._cached is None or self._cached[0] != group:
            self._cached = (group, self.streams.batch(group))
        x, y = self._cached[1]  # [B, K·T] each
        cut = slice(window * self.context_len, (window + 1) * self.context_len)
        return x[:, cut].contiguous(), y[:, cut].contiguous()
