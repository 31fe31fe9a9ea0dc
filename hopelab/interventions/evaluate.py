"""Evaluate one model with each switch on a fixed probe set; the long-format rows and the Δs they give.

    x, y = probe_set(data, context_len=128, seed=1234)           # 64 validation sequences [64, T]
    losses = evaluate_switches(model, (x, y))                        # switch -> per-position losses [64, T]
    for e in switch_effects(losses): print(e.switch, e.delta)        # Δ vs none, 95% bootstrap interval
    rows = intervention_rows(losses)                                 # PROBE_SCHEMA rows (probe "intervene")
    effects = effects_from_rows(table)                               # the same Δs, from the rows alone

Rows (hopelab.records.PROBE_SCHEMA, probe "intervene"; component = the switch):
    loss             position t: the loss of predicting token t + 1, mean over the probe sequences
    seq_loss         level i: sequence i's loss, mean over its positions (position null)
    seq_bucket_loss  level i, position a: sequence i's mean loss over the bucket [a, next bucket's a or T)
Δ and its interval are paired by sequence: Δ_i = seq_loss(switch, i) − seq_loss(none, i).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from hopelab.interventions.stats import Interval, bootstrap_ci, bucket_deltas, bucket_edges, seq_deltas
from hopelab.interventions.switches import NONE, applicable_switches, applies, switched
from hopelab.models.streaming import read_stream

PROBE_SEQUENCES = 64  # validation sequences of the probe set (full context length)
STREAM_SEQUENCES = 16  # streams of the probe set when training streams (`segments` K > 1): 16 x K windows
EVAL_BATCH = 16  # sequences per forward (the logits of a batch are [B, T, V])
BUCKETS = 8  # position buckets of the by-position Δ
PROBE = "intervene"
WHOLE = -1  # effects_from_rows' bucket key of the whole sequence

Batches = tuple[torch.Tensor, torch.Tensor] | Iterable[tuple[torch.Tensor, torch.Tensor]]


def probe_set(data, context_len: int, seed: int, n: int | None = None,
              segments: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """n sequences of `segments` × context_len tokens from the validation tokens, a function of the seed alone
    (the same for every variant of a study): x, y [n, K·T]. A stream (K > 1) is evaluated as it is trained,
    window by window with the fast state carried, so a switch acts on the levels only streams update.
    n defaults to PROBE_SEQUENCES windows, or STREAM_SEQUENCES streams."""
    n = n if n is not None else (PROBE_SEQUENCES if segments == 1 else STREAM_SEQUENCES)
    return data.sampler("val", context_len * segments, n, seed).batch(0)


def position_losses(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of every position: x, y [B, T] -> [B, T] (float32). A sequence longer than the model's
    context is a stream, read window by window with every fast state carried (hopelab.models.streaming)."""
    context = getattr(getattr(model, "config", None), "context_len", x.shape[1])
    logits = model(x) if x.shape[1] <= context else torch.cat(list(read_stream(model, x, context)), dim=1)
    return F.cross_entropy(logits.float().transpose(1, 2), y, reduction="none")  # [B, T]


def _pairs(batches: Batches, batch_size: int):
    if isinstance(batches, tuple) and len(batches) == 2 and isinstance(batches[0], torch.Tensor):
        batches = [batches]
    for x, y in batches:
        yield from zip(x.split(batch_size), y.split(batch_size))


def evaluate_switches(
    model: nn.Module, batches: Batches, switches: Iterable[str] | None = None, batch_size: int = EVAL_BATCH,
    context: Callable[[], Any] | None = None,
) -> dict[str, torch.Tensor]:
    """Per-position losses [N, T] of `model` under each switch on the sequences of `batches` (an (x, y) pair of
    [N, T] or an iterable of such pairs): {switch: losses}, `none` always included, a switch that does not
    apply to the model left out. In eval mode, without gradients, under `context()` (e.g. autocast) if given."""
    names = list(switches) if switches is not None else applicable_switches(model)
    names = [NONE] + [n for n in dict.fromkeys(names) if n != NONE and applies(model, n)]
    device = next(model.parameters()).device
    pairs = [(x.to(device), y.to(device)) for x, y in _pairs(batches, batch_size)]
    was_training = model.training
    model.eval()
    out = {}
    try:
        with torch.no_grad():
            for name in names:
                with switched(model, name), context() if context is not None else contextlib.nullcontext():
                    out[name] = torch.cat([position_losses(model, x, y).cpu() for x, y in pairs])  # [N, T]
    finally:
        model.train(was_training)
    return out


@dataclass(frozen=True)
class SwitchEffect:
    """Δ = loss(switch) − loss(none), paired by sequence: over all positions and per position bucket."""

    switch: str
    delta: Interval
    buckets: list[tuple[int, int, Interval]]  # (start, end, Δ over positions [start, end))


def switch_effects(losses: dict[str, torch.Tensor], buckets: int = BUCKETS) -> list[SwitchEffect]:
    """Every switch of `losses` but none, compared with none."""
    none = losses[NONE]
    edges = bucket_edges(none.shape[1], buckets)
    return [SwitchEffect(name, bootstrap_ci(seq_deltas(L, none)), bucket_deltas(L, none, edges))
            for name, L in losses.items() if name != NONE]


def intervention_rows(losses: dict[str, torch.Tensor], buckets: int = BUCKETS) -> list[dict[str, Any]]:
    """The rows of one evaluation (without the identity columns): see the module docstring."""
    rows: list[dict[str, Any]] = []
    edges = bucket_edges(losses[NONE].shape[1], buckets)
    for name, L in losses.items():  # [N, T]
        where = {"component": name}
        rows += [{**where, "metric": "loss", "position": t, "value": float(v)}
                 for t, v in enumerate(L.double().mean(dim=0))]
        rows += [{**where, "metric": "seq_loss", "level": i, "value": float(v)}
                 for i, v in enumerate(L.double().mean(dim=1))]
        for a, b in zip(edges[:-1], edges[1:]):
            rows += [{**where, "metric": "seq_bucket_loss", "level": i, "position": a, "value": float(v)}
                     for i, v in enumerate(L[:, a:b].double().mean(dim=1))]
    return rows


def effects_from_rows(rows: pd.DataFrame, by: Iterable[str] = ()) -> pd.DataFrame:
    """Δ per switch (and per position bucket) from intervene rows: one row per (*by, switch, bucket) with
    delta, delta_lo, delta_hi, n; bucket_start null for the whole sequence. Several seeds among the rows
    (a `seed` column not in `by`) are resampled as a second level (hopelab.interventions.stats)."""
    by = list(by)
    seq = rows[rows["metric"].isin(["seq_loss", "seq_bucket_loss"])].copy()
    seq["bucket_start"] = seq["position"].where(seq["metric"] == "seq_bucket_loss", WHOLE)
    seeds = "seed" if "seed" in seq.columns and "seed" not in by else None
    keys = [*by, *([seeds] if seeds else []), "bucket_start", "level"]
    wide = seq.pivot_table(index=keys, columns="component", values="value", aggfunc="first")
    out = []
    if NONE not in wide.columns:
        return pd.DataFrame(columns=[*by, "switch", "bucket_start", "delta", "delta_lo", "delta_hi", "n"])
    for switch in [c for c in wide.columns if c != NONE]:
        d = (wide[switch] - wide[NONE]).dropna()
        for key, g in d.groupby(level=[*by, "bucket_start"]):
            key = dict(zip([*by, "bucket_start"], key if isinstance(key, tuple) else (key,)))
            groups = [s.to_numpy() for _, s in g.groupby(level=seeds)] if seeds else g.to_numpy()
            iv = bootstrap_ci(groups)
            out.append({**key, "bucket_start": None if key["bucket_start"] == WHOLE else int(key["bucket_start"]),
                        "switch": switch, "delta": iv.mean, "delta_lo": iv.lo, "delta_hi": iv.hi, "n": iv.n})
    return pd.DataFrame(out, columns=[*by, "switch", "bucket_start", "delta", "delta_lo", "delta_hi", "n"])
