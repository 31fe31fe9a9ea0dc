"""Recall probe: exact-match accuracy on the answer positions of the probe batch, overall and by distance.

An answer position is one whose target is not IGNORE_INDEX: the query keys of a synthetic MQAR sequence, the
second span of a copy sequence (hopelab.data.synthetic); on a corpus every position is one, and the rows are
plain next-token accuracy. The distance of an answer at t is how far back the same (input, target) pair was
last seen: the largest s < t with x[s] = x[t] and x[s+1] = y[t], distance t − s. For MQAR that is the query
back to its key-value pair; for copy, the span length + 1. An answer with no earlier occurrence has none.

Rows (PROBE_SCHEMA; `position` holds the distance bucket: its lower edge d of the tokens [d, 2d), d a power
of two; null = every answer position):
    accuracy       share of answers whose argmax prediction is the target
    answers        how many answer positions were counted
    answer_loss    mean cross-entropy on the answer positions (position null only)

`recall_accuracy(model, batch)` computes the same rows with a forward of its own, so they can be measured
again under an intervention (hopelab.interventions). The probe does so for the write switches a model has
(WRITE_SWITCHES): those rows carry the switch's name in `component`; the rows as trained have none. Recall
that survives `all_writes_off` does not come from in-context memory.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from hopelab.data.synthetic import IGNORE_INDEX
from hopelab.probes.base import Probe
from hopelab.probes.forward import HookCalls, ProbeStep, eval_mode, read_probe_batch

WRITE_SWITCHES = ("selfmod_writes_off", "cms_writes_off", "all_writes_off")


def answer_distances(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """x, y [B, T] -> [B, T]: t − s for the last s < t with (x[s], x[s+1]) = (x[t], y[t]); −1 where y[t] is
    not an answer or the pair was not seen before."""
    B, T = x.shape
    nxt = x[:, 1:]  # [B, T-1] the token after each s < T-1
    same = (x[:, :, None] == x[:, None, :-1]) & (y[:, :, None] == nxt[:, None, :])  # [B, T(t), T-1(s)]
    t = torch.arange(T, device=x.device)
    earlier = t[None, :-1] < t[:, None]  # [T, T-1] s < t
    s_idx = torch.arange(1, T, device=x.device)  # 1-based s, so 0 means "none"
    last = ((same & earlier) * s_idx).amax(dim=-1) - 1  # [B, T] last matching s, −1 when none
    return torch.where((last >= 0) & (y != IGNORE_INDEX), t - last, -1)


def distance_bucket(d: torch.Tensor) -> torch.Tensor:
    """Lower edge 2^floor(log2 d) of each distance d >= 1."""
    return torch.pow(2, torch.floor(torch.log2(d.double()))).long()


def recall_rows(logits: torch.Tensor, y: torch.Tensor, distances: torch.Tensor) -> list[dict[str, Any]]:
    """logits [B, T, V], y [B, T], distances [B, T] (answer_distances) -> the probe's rows."""
    answer = y != IGNORE_INDEX  # [B, T]
    n = int(answer.sum())
    if n == 0:
        return []
    correct = (logits.argmax(-1) == y) & answer  # [B, T]
    loss = F.cross_entropy(logits.flatten(0, 1).float(), y.flatten(), ignore_index=IGNORE_INDEX)  # no [n, V] copy
    rows = [
        {"metric": "accuracy", "value": float(correct.sum()) / n},
        {"metric": "answers", "value": float(n)},
        {"metric": "answer_loss", "value": float(loss)},
    ]
    has = answer & (distances > 0)
    buckets = distance_bucket(distances[has])  # [n_with_distance]
    hits = correct[has]
    for edge in torch.unique(buckets).tolist():
        inside = buckets == edge
        rows.append({"metric": "accuracy", "position": int(edge), "value": float(hits[inside].float().mean())})
        rows.append({"metric": "answers", "position": int(edge), "value": float(inside.sum())})
    return rows


def recall_accuracy(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> list[dict[str, Any]]:
    """The recall rows of `model` on `batch` (x, y [B, T]), from a forward of its own in eval mode; of a stream
    [B, K·T], its last window's, read as the probe forward reads it."""
    x, y = batch
    device = next(model.parameters()).device
    x, y = x.to(device), y.to(device)
    with eval_mode(model):
        logits = read_probe_batch(model, x, HookCalls())  # [B, T, V]
    T = logits.shape[1]
    x, y = x[:, -T:], y[:, -T:]  # [B, T]
    return recall_rows(logits, y, answer_distances(x, y))


class RecallProbe(Probe):
    name = "recall"

    def collect(self, at: ProbeStep) -> list[dict[str, Any]]:
        from hopelab.interventions import applies, switched  # imports the models: not at module level

        fwd = at.forward()
        x = at.batch[0][:, -fwd.targets.shape[1] :].to(fwd.targets.device)  # a stream's last window
        rows = recall_rows(fwd.logits, fwd.targets, answer_distances(x, fwd.targets))
        if not any(r["metric"] == "answers" and r["value"] < x.numel() for r in rows):
            return rows  # a corpus: every position is an answer, the rows are next-token accuracy
        for name in WRITE_SWITCHES:
            if applies(at.model, name):
                with switched(at.model, name):
                    rows += [{**r, "component": name} for r in recall_accuracy(at.model, at.batch)]
        return rows
