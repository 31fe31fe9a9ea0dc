"""Probes: Lightning callbacks that measure HOPE's mechanisms at every checkpoint and write long-format Parquet.

Each probe runs on one fixed held-out probe batch (drawn from val with `TrainConfig.probe_seed`, the same for
every variant), in eval mode under no_grad, and writes `probes/<probe>-step<k>.parquet` (PROBE_SCHEMA)
atomically, so a probe run again at the same step replaces its rows instead of adding duplicates.

    cms       per layer, level: param_norm, drift_prev, drift_init; per level pair: cos_sim of the levels'
              outputs (section 4.2: do fast and slow levels learn different things?); plus
              rel_drift_meta_fast per level (does a level's fast state move away from its meta init?)
    selfmod   per layer, component (k, v, q, eta, alpha, memory): drift_init and norm of the meta-learned
              initial state, rel_drift_meta_fast = ‖θ_fast − θ_meta‖/‖θ_meta‖ after the probe batch and at
              every chunk end (`position`): initialisation shift vs continual adaptation (section 4.3)
    surprise  per layer: quantiles of the per-token surprise in the gate's own units, gate_pass_rate at the
              configured threshold (component "gate": what the model did, from hook_gate) and over a fixed
              threshold grid; ce_* quantiles of the per-token LM cross-entropy (layer null), kept apart
              from surprise so the two are never confused (section 4.4)
    gradflow  per parameter tensor: grad_norm (null when there is no grad), grad_is_none, grad_is_zero, read
              before the optimizer step that leads to the checkpoint; counts n_params_total, n_grad_none,
              n_grad_zero

The model forward on the probe batch is shared by cms, selfmod and surprise (one forward per checkpoint).
A probe never crashes a run: an error becomes a logged warning (and a line in the manifest), and a variant
without a mechanism simply has no rows for it.
"""

from __future__ import annotations

import abc
import contextlib
import logging
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback
from torch import nn

from hopelab.layers.hooks import attach_hooks
from hopelab.lit.module import lm_loss
from hopelab.lit.trainer import Schedule
from hopelab.tables import PROBE_SCHEMA, rows_to_table, write_parquet_atomic

log = logging.getLogger("hopelab.probes")

# log-spaced 1-2-5 grid from 0.001 to 100; it contains the study's sweep 0.005, 0.01, 0.02, 0.05, 0.1
THRESHOLD_GRID: tuple[float, ...] = tuple(
    round(m * 10.0**e, 6) for e in range(-3, 3) for m in (1, 2, 5) if m * 10.0**e <= 100
)
QUANTILES = (("p10", 0.1), ("p50", 0.5), ("p90", 0.9))

CMS_LEVEL_RE = re.compile(r"^blocks\.(\d+)\.cms\.levels\.(\d+)$")
TITANS_STATE_RE = re.compile(r"^blocks\.(\d+)\.titans\.(\w+)$")
LAYER_RE = re.compile(r"^blocks\.(\d+)\.")
HOOK_PATTERNS = (
    "blocks.*.cms.levels.*.hook_out",
    "blocks.*.titans.hook_surprise",
    "blocks.*.titans.hook_gate",
)


# ----------------------------------------------------------------------------------------------------------
# pure measurements (unit-tested directly)


def tensors_norm(tensors: Iterable[torch.Tensor]) -> float:
    """L2 norm of the concatenation of all tensors."""
    total = sum((t.detach().float().pow(2).sum() for t in tensors), torch.tensor(0.0))
    return float(torch.as_tensor(total).sqrt())


def tensors_distance(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> float:
    """‖a − b‖ over the concatenation of the tensors named in `a` (both must hold the same names)."""
    return tensors_norm(a[n].detach().float() - b[n].detach().float().to(a[n].device) for n in a)


def rel_drift_per_sample(fast: Mapping[str, torch.Tensor], meta: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """‖θ_fast[b] − θ_meta‖ / ‖θ_meta‖ per sample b. fast: {name: [B, ...]}, meta: {name: [...]} -> [B]."""
    num = None
    den = torch.tensor(0.0)
    for name, m in meta.items():
        m = m.detach().float()
        f = fast[name].detach().float().to(m.device)  # [B, ...]
        sq = (f - m.unsqueeze(0)).pow(2).flatten(1).sum(1)  # [B]
        num = sq if num is None else num + sq
        den = den.to(m.device) + m.pow(2).sum()
    return num.sqrt() / den.sqrt()


def summary_stats(values: torch.Tensor) -> dict[str, float]:
    """mean, std, min, p10, p50, p90, max of all entries."""
    v = values.detach().float().flatten()
    if v.numel() > (1 << 24):  # torch.quantile's input limit; a fixed stride keeps it deterministic
        v = v[:: math.ceil(v.numel() / (1 << 24))]
    qs = torch.quantile(v, torch.tensor([q for _, q in QUANTILES], device=v.device))
    stats = torch.stack([v.mean(), v.std(), v.min(), *qs, v.max()]).tolist()
    return dict(zip(["mean", "std", "min", *[n for n, _ in QUANTILES], "max"], stats))


def mean_token_cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """a, b [B, T, D] -> mean over tokens of cos(a[b, t], b[b, t])."""
    return float(F.cosine_similarity(a.float(), b.float(), dim=-1).mean())


# ----------------------------------------------------------------------------------------------------------
# what a model exposes


def _param_names(model: nn.Module) -> dict[int, str]:
    return {id(p): n for n, p in model.named_parameters()}


def initial_states(model: nn.Module) -> dict[str, dict[str, torch.Tensor]]:
    fn = getattr(model, "initial_states", None)
    return dict(fn()) if callable(fn) else {}


def cms_level_params(model: nn.Module) -> dict[tuple[int, int], dict[str, torch.Tensor]]:
    """(layer, level) -> {param name: param}: everything under blocks.i.cms.levels.l plus its initial state."""
    out: dict[tuple[int, int], dict[str, torch.Tensor]] = {}
    names = _param_names(model)
    for name, p in model.named_parameters():
        m = re.match(r"^blocks\.(\d+)\.cms\.levels\.(\d+)\.", name)
        if m:
            out.setdefault((int(m.group(1)), int(m.group(2))), {})[name] = p
    for key, states in initial_states(model).items():
        m = CMS_LEVEL_RE.match(key)
        if m:
            group = out.setdefault((int(m.group(1)), int(m.group(2))), {})
            for sub, p in states.items():
                group.setdefault(names.get(id(p), f"{key}.{sub}"), p)
    return out


def selfmod_states(model: nn.Module) -> dict[tuple[int, str], dict[str, torch.Tensor]]:
    """(layer, component) -> the meta-learned initial state of that in-context memory."""
    out = {}
    for key, states in initial_states(model).items():
        m = TITANS_STATE_RE.match(key)
        if m:
            out[(int(m.group(1)), m.group(2))] = dict(states)
    return out


def snapshot(groups: Mapping[Any, Mapping[str, torch.Tensor]]) -> dict[Any, dict[str, torch.Tensor]]:
    return {k: {n: t.detach().clone() for n, t in g.items()} for k, g in groups.items()}


# ----------------------------------------------------------------------------------------------------------
# the shared context: identity columns, probe batch, one cached forward per step


@dataclass
class FastDrift:
    key: str  # an initial_states() key, e.g. "blocks.0.titans.k"
    position: int  # tokens consumed when the fast state was reached
    drift: torch.Tensor  # [B] ‖θ_fast[b] − θ_meta‖ / ‖θ_meta‖


class DriftRecords(list):
    """Stands in for `trace.records` during the probe forward: of each FastStateRecord it keeps only the
    per-sample relative drift, not the state ([B, ...] at every chunk end: gigabytes at the small scale)."""

    def __init__(self, metas: Mapping[str, Mapping[str, torch.Tensor]]) -> None:
        super().__init__()
        self.metas = metas

    def append(self, record) -> None:
        super().append(to_drift(record, self.metas))


def to_drift(record, metas: Mapping[str, Mapping[str, torch.Tensor]]) -> FastDrift:
    if isinstance(record, FastDrift):
        return record
    drift = rel_drift_per_sample(record.states, metas[record.key])  # [B]
    return FastDrift(record.key, int(record.position), drift)


@dataclass
class ProbeForward:
    logits: torch.Tensor  # [B, T, V]
    targets: torch.Tensor  # [B, T]
    hooks: dict[str, torch.Tensor]  # hook name -> output, calls within one forward concatenated over T
    records: list[FastDrift]  # the relative drift of every fast state the forward reached
    trace_error: str | None = None


class HookCalls:
    """Every call of the attached hook points during a forward, by name."""

    def __init__(self) -> None:
        self.calls: dict[str, list[torch.Tensor]] = {}

    def keep(self, name: str, t: torch.Tensor) -> None:
        self.calls.setdefault(name, []).append(t.detach())

    def tensors(self) -> dict[str, torch.Tensor]:
        """name -> output; a hook called once per chunk is concatenated over T (dim 1)."""
        return {n: ts[0] if len(ts) == 1 else torch.cat(ts, dim=1) for n, ts in self.calls.items()}


@contextlib.contextmanager
def collect_hooks(model: nn.Module, patterns: Iterable[str]) -> Iterator[HookCalls]:
    record = HookCalls()
    with attach_hooks(model, {p: record.keep for p in patterns}):
        yield record


@dataclass
class ProbeContext:
    """What every probe shares: who the run is, where rows go, the probe batch and the schedule."""

    run_id: str
    study: str
    variant: str
    scale: str
    seed: int
    tokens_per_step: int
    probe_dir: Path
    schedule: Schedule
    probe_x: torch.Tensor  # [B, T]
    probe_y: torch.Tensor  # [B, T]
    errors: list[str] = field(default_factory=list)
    probe_time_s: float = 0.0  # wall time spent inside the probes (for the overhead benchmark)
    _cache: tuple[int, Any] | None = None

    def base_row(self, step: int, probe: str) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "study": self.study,
            "variant": self.variant,
            "scale": self.scale,
            "seed": self.seed,
            "step": step,
            "tokens": step * self.tokens_per_step,
            "probe": probe,
        }

    def path(self, probe: str, step: int) -> Path:
        return self.probe_dir / f"{probe}-step{step:06d}.parquet"

    def write(self, probe: str, step: int, rows: list[dict[str, Any]]) -> None:
        base = self.base_row(step, probe)
        table = rows_to_table(({**base, **r} for r in rows), PROBE_SCHEMA)
        write_parquet_atomic(table, self.path(probe, step))

    def clear(self) -> None:
        self._cache = None

    def warn(self, message: str) -> None:
        log.warning(message)
        if len(self.errors) < 50:
            self.errors.append(message)

    def forward(self, trainer: pl.Trainer, pl_module: pl.LightningModule, step: int) -> ProbeForward:
        """The probe-batch forward of this step (computed once, shared by the probes; errors are re-raised
        to every probe that asks)."""
        if self._cache is None or self._cache[0] != step:
            try:
                self._cache = (step, self._forward(trainer, pl_module))
            except Exception as err:  # noqa: BLE001
                self._cache = (step, err)
        value = self._cache[1]
        if isinstance(value, Exception):
            raise value
        return value

    def _forward(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> ProbeForward:
        model = pl_module.model
        x = self.probe_x.to(pl_module.device)
        y = self.probe_y.to(pl_module.device)
        with eval_mode(model), forward_context(trainer), collect_hooks(model, HOOK_PATTERNS) as hooks:
            records: list = []
            trace_error = None
            tracer = _tracer(model)
            if tracer is None:
                logits = model(x)
            else:
                try:
                    metas = initial_states(model)
                    with tracer as trace:
                        trace.records = DriftRecords(metas)
                        logits = model(x)  # [B, T, V]
                    records = [to_drift(r, metas) for r in trace.records]
                except Exception as err:  # noqa: BLE001 - tracing is optional; fall back to a plain forward
                    trace_error = f"trace_fast_states failed: {err!r}"
                    hooks.calls.clear()
                    logits = model(x)
        return ProbeForward(logits.detach(), y, hooks.tensors(), records, trace_error)


def _tracer(model: nn.Module):
    if not initial_states(model):
        return None
    try:
        from hopelab.models import trace_fast_states
    except ImportError:
        return None
    return trace_fast_states(model)


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


# ----------------------------------------------------------------------------------------------------------
# the probe callbacks


class Probe(Callback, abc.ABC):
    """Base: at every probe step (on rank 0) `collect` rows and write them; errors become warnings."""

    name = "probe"
    runs_at_step0 = True

    def __init__(self, ctx: ProbeContext) -> None:
        self.ctx = ctx

    @abc.abstractmethod
    def collect(self, trainer: pl.Trainer, pl_module: pl.LightningModule, step: int) -> list[dict[str, Any]]:
        """The rows of this probe at `step` (without the identity columns)."""

    def setup(self, trainer, pl_module, stage) -> None:
        # before a checkpoint is restored: the module holds the weights it was built with under the run's
        # seed, i.e. step 0's, also when resuming (the model is rebuilt under the same seed)
        self.remember_init(pl_module)

    def remember_init(self, pl_module: pl.LightningModule) -> None:
        """Keep what drift_init is measured from."""

    def on_train_start(self, trainer, pl_module) -> None:
        self.start(pl_module)
        if trainer.global_step == 0 and self.runs_at_step0:
            self.run(trainer, pl_module, 0)

    def start(self, pl_module: pl.LightningModule) -> None:
        """Called once the model holds its restored (or initial) weights."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if self.ctx.schedule.is_probe_step(step):
            self.run(trainer, pl_module, step)

    def run(self, trainer: pl.Trainer, pl_module: pl.LightningModule, step: int) -> None:
        if not trainer.is_global_zero:
            return
        t0 = time.perf_counter()
        try:
            rows = self.collect(trainer, pl_module, step)
            if rows:
                self.ctx.write(self.name, step, rows)
        except Exception as err:  # noqa: BLE001 - a probe never crashes a run
            self.ctx.warn(f"probe {self.name} failed at step {step}: {err!r}")
        finally:
            self.ctx.probe_time_s += time.perf_counter() - t0


class CMSProbe(Probe):
    """Section 4.2: are the CMS levels different? norms, drifts, output cosine, fast-state drift."""

    name = "cms"

    def remember_init(self, pl_module: pl.LightningModule) -> None:
        self.init = snapshot(cms_level_params(pl_module.model))

    def start(self, pl_module: pl.LightningModule) -> None:
        self.prev = snapshot(cms_level_params(pl_module.model))

    def collect(self, trainer, pl_module, step):
        model = pl_module.model
        groups = cms_level_params(model)
        if not groups:
            return []
        rows: list[dict[str, Any]] = []
        for (layer, level), params in sorted(groups.items()):
            where = {"layer": layer, "level": level}
            rows.append({**where, "metric": "param_norm", "value": tensors_norm(params.values())})
            rows.append({**where, "metric": "drift_prev", "value": tensors_distance(params, self.prev[(layer, level)])})
            rows.append({**where, "metric": "drift_init", "value": tensors_distance(params, self.init[(layer, level)])})
        self.prev = snapshot(groups)
        fwd = self.ctx.forward(trainer, pl_module, step)
        outs: dict[int, dict[int, torch.Tensor]] = {}
        for name, t in fwd.hooks.items():
            m = re.match(r"^blocks\.(\d+)\.cms\.levels\.(\d+)\.hook_out$", name)
            if m:
                outs.setdefault(int(m.group(1)), {})[int(m.group(2))] = t
        for layer, levels in sorted(outs.items()):
            ids = sorted(levels)
            for i, a in enumerate(ids):
                for b in ids[i + 1 :]:
                    cos = mean_token_cosine(levels[a], levels[b])
                    rows.append({"layer": layer, "level": a, "level_other": b, "metric": "cos_sim", "value": cos})
        metas = initial_states(model)
        for key, meta in metas.items():
            m = CMS_LEVEL_RE.match(key)
            if m:
                where = {"layer": int(m.group(1)), "level": int(m.group(2))}
                rows += fast_drift_rows(key, meta, fwd.records, where)
        return rows


class SelfModProbe(Probe):
    """Section 4.3: does the meta-learned initial state drift, and does the fast state move away from it?"""

    name = "selfmod"

    def remember_init(self, pl_module: pl.LightningModule) -> None:
        self.init = snapshot(selfmod_states(pl_module.model))

    def collect(self, trainer, pl_module, step):
        groups = selfmod_states(pl_module.model)
        if not groups:
            return []
        fwd = self.ctx.forward(trainer, pl_module, step)
        if fwd.trace_error:
            raise RuntimeError(fwd.trace_error)
        rows: list[dict[str, Any]] = []
        for (layer, comp), state in sorted(groups.items()):
            where = {"layer": layer, "component": comp}
            rows.append({**where, "metric": "drift_init", "value": tensors_distance(state, self.init[(layer, comp)])})
            rows.append({**where, "metric": "norm", "value": tensors_norm(state.values())})
            rows += fast_drift_rows(f"blocks.{layer}.titans.{comp}", state, fwd.records, where)
        return rows


def fast_drift_rows(key: str, meta: Mapping[str, torch.Tensor], records: list[FastDrift], where: dict) -> list[dict]:
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


class SurpriseProbe(Probe):
    """Section 4.4: the surprise distribution in the gate's units, the gate's pass rates, and (apart) the LM
    cross-entropy."""

    name = "surprise"

    def collect(self, trainer, pl_module, step):
        fwd = self.ctx.forward(trainer, pl_module, step)
        cfg = pl_module.model.config
        rows: list[dict[str, Any]] = []
        ce = lm_loss(fwd.logits, fwd.targets, reduction="none")  # [B*T]
        rows += [{"metric": f"ce_{k}", "value": v} for k, v in summary_stats(ce).items()]
        for name, s in sorted(fwd.hooks.items()):
            if not name.endswith(".titans.hook_surprise"):
                continue
            layer = int(LAYER_RE.match(name).group(1))
            s = s.float()  # [B, T]
            rows += [{"layer": layer, "metric": k, "value": v} for k, v in summary_stats(s).items()]
            configured = float(cfg.surprise_threshold)
            gate = fwd.hooks.get(name.replace("hook_surprise", "hook_gate"))
            if gate is not None:  # what the model really did
                rate = float((gate.float() > 0.5).float().mean())
                rows.append(
                    {"layer": layer, "metric": "gate_pass_rate", "component": "gate", "threshold": configured, "value": rate}
                )
            grid = [t for t in THRESHOLD_GRID if gate is None or t != configured]
            # compared in the surprise's dtype, as the gate compares (s > τ)
            taus = torch.tensor(grid, dtype=s.dtype, device=s.device)  # [G]
            rates = (s.flatten().unsqueeze(0) > taus.unsqueeze(1)).float().mean(1).tolist()  # [G]
            rows += [
                {"layer": layer, "metric": "gate_pass_rate", "threshold": t, "value": r} for t, r in zip(grid, rates)
            ]
        return rows


class GradFlowProbe(Probe):
    """Which parameters get gradient at all: per-tensor grad norms before the optimizer step that leads to
    a checkpoint (the step before it), plus counts."""

    name = "gradflow"
    runs_at_step0 = False

    def __init__(self, ctx: ProbeContext) -> None:
        super().__init__(ctx)
        self.pending: tuple[int, list[dict[str, Any]]] | None = None

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        step = trainer.global_step + 1  # the step this update leads to
        if not self.ctx.schedule.is_ckpt_step(step) or not trainer.is_global_zero:
            return
        t0 = time.perf_counter()
        try:
            self.pending = (step, gradflow_rows(pl_module.model))
        except Exception as err:  # noqa: BLE001
            self.pending = None
            self.ctx.warn(f"probe gradflow failed at step {step}: {err!r}")
        finally:
            self.ctx.probe_time_s += time.perf_counter() - t0

    def collect(self, trainer, pl_module, step):
        if self.pending is None or self.pending[0] != step:
            return []
        rows = self.pending[1]
        self.pending = None
        return rows


def gradflow_rows(model: nn.Module) -> list[dict[str, Any]]:
    named = list(model.named_parameters())
    with_grad = [(n, p.grad) for n, p in named if p.grad is not None]
    norms = (
        torch.stack([g.detach().float().norm() for _, g in with_grad]).tolist() if with_grad else []
    )  # one device sync for all tensors
    norm_of = dict(zip((n for n, _ in with_grad), norms))
    rows: list[dict[str, Any]] = []
    n_none = n_zero = 0
    for name, _ in named:
        m = LAYER_RE.match(name)
        where = {"param": name, "layer": int(m.group(1)) if m else None}
        none = name not in norm_of
        zero = (not none) and norm_of[name] == 0.0
        n_none += none
        n_zero += zero
        rows.append({**where, "metric": "grad_norm", "value": None if none else norm_of[name]})
        rows.append({**where, "metric": "grad_is_none", "value": float(none)})
        rows.append({**where, "metric": "grad_is_zero", "value": float(zero)})
    rows.append({"metric": "n_params_total", "value": float(len(named))})
    rows.append({"metric": "n_grad_none", "value": float(n_none)})
    rows.append({"metric": "n_grad_zero", "value": float(n_zero)})
    return rows


PROBES: dict[str, type[Probe]] = {p.name: p for p in (CMSProbe, SelfModProbe, SurpriseProbe, GradFlowProbe)}


def make_probes(ctx: ProbeContext, names: Iterable[str] = tuple(PROBES)) -> list[Probe]:
    return [PROBES[n](ctx) for n in names]
