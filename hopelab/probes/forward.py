"""The probe forward: one pass of the model over the fixed probe batch, shared by every probe of a step.

It runs in eval mode under no_grad and the training precision, reads the hook points of every memory site
(SR-Titans' surprise and gate, each CMS level's output), and traces the fast state at every chunk end,
keeping of each traced state only its per-sample drift from the meta-learned initial state.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn

from hopelab.layers.hooks import attach_hooks
from hopelab.models import trace_fast_states
from hopelab.models.sites import MemorySite
from hopelab.models.streaming import read_window
from hopelab.probes.measure import rel_drift_per_sample, tensors_norm

# the hook points the probes read, by site kind: f"{site.name}.{point}"
SITE_HOOKS: dict[str, tuple[str, ...]] = {
    "selfmod": ("hook_surprise", "hook_gate"),  # [B, T] each (surprise probe)
    "cms": ("hook_out",),  # [B, T, D], what the level adds (cms probe)
}


def sites_of(model: nn.Module) -> list[MemorySite]:
    """The model's memory sites; a model without `memory_sites()` (the Transformer) has none."""
    fn = getattr(model, "memory_sites", None)
    return list(fn()) if callable(fn) else []


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():  # no_grad (not inference_mode): a model may re-enable grad for inner steps
            yield
    finally:
        model.train(was_training)


def forward_context(trainer: pl.Trainer | None):
    """The precision context training uses (autocast under *-mixed), so probes see the trained numerics."""
    if trainer is None:
        return contextlib.nullcontext()
    return trainer.precision_plugin.forward_context()


class HookCalls:
    """Every call of the attached hook points during a forward, by name."""

    def __init__(self) -> None:
        self.calls: dict[str, list[torch.Tensor]] = {}

    def keep(self, name: str, t: torch.Tensor) -> None:
        self.calls.setdefault(name, []).append(t.detach())

    def tensors(self) -> dict[str, torch.Tensor]:
        """name -> output; a hook called once per chunk is concatenated over T (dim 1)."""
        return {n: ts[0] if len(ts) == 1 else torch.cat(ts, dim=1) for n, ts in self.calls.items()}


@dataclass
class FastDrift:
    key: str  # an initial_states() key, e.g. f"{site.name}.k"
    position: int  # tokens consumed when the fast state was reached
    drift: torch.Tensor  # [B] ‖θ_fast[b] − θ_meta‖ / ‖θ_meta‖


def to_drift(record, metas: Mapping[str, Mapping[str, torch.Tensor]]) -> FastDrift:
    if isinstance(record, FastDrift):
        return record
    drift = rel_drift_per_sample(record.states, metas[record.key])  # [B]
    return FastDrift(record.key, int(record.position), drift)


class DriftRecords(list):
    """Stands in for `trace.records` during the probe forward: of each FastStateRecord it keeps only the
    per-sample relative drift, not the state ([B, ...] at every chunk end: gigabytes at the small scale)."""

    def __init__(self, metas: Mapping[str, Mapping[str, torch.Tensor]]) -> None:
        super().__init__()
        self.metas = metas

    def append(self, record) -> None:
        super().append(to_drift(record, self.metas))


@dataclass
class ProbeForward:
    logits: torch.Tensor  # [B, T, V]
    targets: torch.Tensor  # [B, T]
    hooks: dict[str, torch.Tensor]  # hook name -> output, calls within one forward concatenated over T
    records: list[FastDrift]  # the relative drift of every fast state the forward reached
    trace_error: str | None = None


def read_probe_batch(model: nn.Module, x: torch.Tensor, hooks: HookCalls) -> torch.Tensor:
    """x [B, T] -> logits [B, T, V]. A stream x [B, K·T] (`segments` K > 1) is read window by window with the
    fast state carried (hopelab.models.streaming) -> the last window's logits [B, T, V], `hooks` keeping that
    window's calls only: the probes read the window whose state the K − 1 before it have shaped."""
    context = model.config.context_len
    if x.shape[1] <= context:
        return model(x)
    *first, last = x.split(context, dim=1)
    state = None
    for window in first:
        _, state = read_window(model, window, state)
    hooks.calls.clear()
    return read_window(model, last, state)[0]


def run_probe_forward(
    model: nn.Module, sites: list[MemorySite], x: torch.Tensor, y: torch.Tensor, trainer: pl.Trainer | None = None
) -> ProbeForward:
    """x, y [B, T] -> the forward the probes read. Tracing is optional: if it fails, a plain forward. Of a stream
    [B, K·T] the probes see the last window (logits, targets, hooks); the trace covers the whole stream, at
    positions counted from its start, so CMS levels with periods up to K·T show their updates."""
    device = next(model.parameters()).device
    x, y = x.to(device), y.to(device)
    y = y[:, -model.config.context_len :]  # [B, T]: the (last) window the logits are of
    hooks = HookCalls()
    points = [f"{site.name}.{point}" for site in sites for point in SITE_HOOKS.get(site.kind, ())]
    with eval_mode(model), forward_context(trainer), attach_hooks(model, {p: hooks.keep for p in points}):
        if not sites:  # nothing to trace
            return ProbeForward(read_probe_batch(model, x, hooks).detach(), y, hooks.tensors(), [])
        try:
            metas = model.initial_states()
            with trace_fast_states(model) as trace:
                trace.records = DriftRecords(metas)
                logits = read_probe_batch(model, x, hooks)  # [B, T, V]
            return ProbeForward(logits.detach(), y, hooks.tensors(), [to_drift(r, metas) for r in trace.records])
        except Exception as err:  # noqa: BLE001 - tracing is optional; fall back to a plain forward
            hooks.calls.clear()
            logits = read_probe_batch(model, x, hooks)  # [B, T, V]
            return ProbeForward(logits.detach(), y, hooks.tensors(), [], f"trace_fast_states failed: {err!r}")


class ProbeStep:
    """What every probe sees at one probe step: the model, its memory sites, and the probe forward, run on
    first use and then shared by the probes of this step (an error is raised to every probe that asks)."""

    def __init__(
        self, model: nn.Module, step: int, batch: tuple[torch.Tensor, torch.Tensor], trainer: pl.Trainer | None = None,
        probe_set: tuple[torch.Tensor, torch.Tensor] | None = None, final: bool = False,
    ) -> None:
        self.model = model
        self.step = step
        self.sites = sites_of(model)
        self.batch = batch  # x [B, T], y [B, T]
        self.trainer = trainer
        self.probe_set = probe_set if probe_set is not None else batch  # x, y [N, T]: the intervention probe set
        self.final = final  # the run's last step
        self._result: ProbeForward | Exception | None = None

    def forward(self) -> ProbeForward:
        if self._result is None:
            try:
                self._result = run_probe_forward(self.model, self.sites, *self.batch, self.trainer)
            except Exception as err:  # noqa: BLE001 - each probe that needs it reports it
                self._result = err
        if isinstance(self._result, Exception):
            raise self._result
        return self._result


def fast_drift_rows(
    key: str, meta: Mapping[str, torch.Tensor], records: list[FastDrift], where: dict
) -> list[dict[str, Any]]:
    """rel_drift_meta_fast (mean over samples) at every recorded position of `key`, and after the whole
    probe batch (position null, the last record). Null where the meta state is all zeros."""
    mine = sorted((r for r in records if r.key == key), key=lambda r: r.position)
    if not mine:
        return []
    meta_norm = tensors_norm(meta.values())
    rows = []
    for r in mine:
        value = float(r.drift.mean()) if meta_norm > 0 else None
        rows.append({**where, "metric": "rel_drift_meta_fast", "position": int(r.position), "value": value})
    rows.append({**rows[-1], "position": None})
    return rows
