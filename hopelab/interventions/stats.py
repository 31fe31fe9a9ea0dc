"""Paired statistics of an intervention: Δ = loss(switch) − loss(none) on the same sequences.

    d = seq_deltas(losses["cms_writes_off"], losses["none"])        # [N] per-sequence mean Δ over positions
    bootstrap_ci(d)                                                 # Interval: mean, 95% percentile bootstrap
    bootstrap_ci([d_seed0, d_seed1])                                # over seeds, then sequences within each
    bucket_deltas(losses["cms_writes_off"], losses["none"], edges)  # the same per position bucket

The unit of resampling is the sequence: positions of one sequence are not independent (they share its
context), sequences are. With several seeds (one trained model each), seeds are resampled first and then the
sequences of each chosen seed (a two-level bootstrap), so the interval covers the seed-to-seed spread too.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

CONFIDENCE = 0.95
N_RESAMPLES = 2000
SEED = 0  # the bootstrap's own generator: the same data always gives the same interval


@dataclass(frozen=True)
class Interval:
    mean: float
    lo: float  # percentile bootstrap interval at CONFIDENCE; nan with fewer than two sequences
    hi: float
    n: int  # sequences (over all seeds)

    @property
    def excludes_zero(self) -> bool:
        return self.lo > 0 or self.hi < 0


def seq_deltas(switch: torch.Tensor, none: torch.Tensor, start: int = 0, end: int | None = None) -> np.ndarray:
    """Per-sequence mean over positions [start, end) of loss(switch) − loss(none).  [N, T], [N, T] -> [N]"""
    d = (switch[:, start:end].double() - none[:, start:end].double()).mean(dim=1)  # [N]
    return d.cpu().numpy()


def bootstrap_ci(values: np.ndarray | Sequence[np.ndarray], confidence: float = CONFIDENCE,
                 n_resamples: int = N_RESAMPLES, seed: int = SEED) -> Interval:
    """Mean of `values` (one array of per-sequence values, or one per seed) with its percentile bootstrap
    interval. With several seeds the mean is the mean over seeds of each seed's mean."""
    groups = [np.asarray(values, dtype=float)] if _is_flat(values) else [np.asarray(g, dtype=float) for g in values]
    groups = [g[~np.isnan(g)] for g in groups]
    groups = [g for g in groups if len(g)]
    n = sum(len(g) for g in groups)
    if not groups:
        return Interval(math.nan, math.nan, math.nan, 0)
    mean = float(np.mean([g.mean() for g in groups]))
    if n < 2:
        return Interval(mean, math.nan, math.nan, n)
    rng = np.random.default_rng(seed)
    G = len(groups)
    if G == 1:
        g = groups[0]
        stats = g[rng.integers(0, len(g), size=(n_resamples, len(g)))].mean(axis=1)  # [n_resamples]
    else:  # draw G seeds, then resample the sequences of each draw independently
        picks = rng.integers(0, G, size=(n_resamples, G))  # [n_resamples, G]
        # every group's mean under a fresh resample of its sequences, one per (resample, draw)
        means = np.stack([g[rng.integers(0, len(g), size=(n_resamples * G, len(g)))].mean(axis=1) for g in groups])
        draws = np.arange(n_resamples * G).reshape(n_resamples, G)
        stats = means[picks, draws].mean(axis=1)  # [n_resamples]
    alpha = (1 - confidence) / 2
    lo, hi = np.quantile(stats, [alpha, 1 - alpha])
    return Interval(mean, float(lo), float(hi), n)


def _is_flat(values) -> bool:
    return isinstance(values, np.ndarray) and values.ndim == 1 or (
        not isinstance(values, np.ndarray) and len(values) > 0 and np.isscalar(values[0]))


def bucket_edges(length: int, buckets: int = 8) -> list[int]:
    """Starts of `buckets` equal position buckets of a sequence of `length` tokens, and `length` at the end."""
    buckets = max(1, min(buckets, length))
    return [round(i * length / buckets) for i in range(buckets)] + [length]


def bucket_deltas(switch: torch.Tensor, none: torch.Tensor, edges: list[int]) -> list[tuple[int, int, Interval]]:
    """(start, end, Δ with its interval) for each position bucket [start, end) of `edges`."""
    return [(a, b, bootstrap_ci(seq_deltas(switch, none, a, b))) for a, b in zip(edges[:-1], edges[1:])]
