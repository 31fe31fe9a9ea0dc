"""The audit engine: nine behavioural checks on a model the audit has never seen.

Every check works on deep copies (the caller's model is never touched), in float64 when the model runs in
it (tolerance 1e-10 relative to the output's RMS; float32: 1e-5; dtype "auto" uses float32 above 5M
parameters, where float64 costs ~2x the time), with dropout modules switched off and the RNG reseeded before
every forward, so two forwards differ only by what the check changed.

Two copies of the model are used:
- the *base* copy: the parameters as given;
- the *generic* copy: every parameter moved by a small random step (σ = 0.05·rms(p) + 0.01). Zero-initialised
  gates make a model degenerate at initialisation (the gated path gets exactly zero gradient, its receptive
  field vanishes); the generic copy is a nearby point where only real structure still shows. Checks 3-8 use it.

Passes (few forwards; batch 2, seq_len 64 by default):
  A  base, train mode: forward, next-token loss, backward                      -> check 1/2 gradients, NaN
  B  generic, train mode, traced (ForwardTracer + hooks on η/α producers):
     loss on the last quarter of positions only; the full loss too when some
     parameter had no gradient in pass A                                       -> checks 2, 3, 8, NaN
  C  a second identical call (train: on pass B's copy), train and eval         -> check 7 (state across calls)
  D  sample 0 replaced, train and eval                                         -> check 6
  E  one batched forward of many copies of sample 0, copy j with position j
     changed, in train (grad on) and eval (no_grad)                            -> checks 4, 5, 7
  F  finite differences on parameters that got no gradient (group testing)    -> check 1 (used vs unused)
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch
from torch import nn

from hopelab.audit import names as N
from hopelab.audit.report import AuditReport, CheckResult, Finding, FlowRow
from hopelab.audit.target import (
    DefaultLoss,
    InputSpec,
    as_output,
    default_call,
    load_object,
    parse_input,
    user_loss,
)
from hopelab.audit.tracing import GRAPH_CUTTING, ForwardTracer, module_output
from hopelab.errors import UserError

CHECKS: dict[str, str] = {
    "gradient_flow": "1 gradient flow (unused vs disconnected)",
    "zero_gradients": "2 all-zero gradients (re-checked at a perturbed point)",
    "in_context_grad": "3 gradient through in-context updates",
    "receptive_field": "4 receptive field",
    "causality": "5 causality",
    "batch_independence": "6 batch independence",
    "eval_vs_train": "7 eval vs train, state across calls",
    "eta_alpha": "8 η/α collapse",
    "nonfinite": "9 NaN / inf",
}
TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-5}
VARIES = 1e-6  # relative std above which an η/α value "varies"
_SIGMA_REL, _SIGMA_ABS = 0.05, 0.01
_MAX_ROW_ELEMS = 16_000_000  # output elements per batched forward in the sweeps
AUTO_FLOAT64_MAX_PARAMS = 5_000_000  # dtype "auto": float64 up to this size, float32 above (speed)
SWEEP_BUDGET_S = 6.0  # seconds each sweep (train, eval) may spend; at least 8 positions are always probed
FD_BUDGET_S = 6.0


class _ModelFailed(Exception):
    pass


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype) -> Iterator[None]:
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / rms(b)."""
    a, b = a.detach().double(), b.detach().double()
    scale = b.pow(2).mean().sqrt().item()
    return (a - b).abs().max().item() / (scale + 1e-30)


def _grad_state(g: torch.Tensor | None) -> str:
    if g is None:
        return "none"
    return "ok" if bool(g.detach().ne(0).any()) else "zero"


def _finite(t: torch.Tensor | None) -> bool:
    return t is None or bool(torch.isfinite(t.detach()).all())


def _perturb_(params: list[nn.Parameter], gen: torch.Generator) -> None:
    with torch.no_grad():
        for p in params:
            if not p.is_floating_point():
                continue
            rms = p.detach().double().pow(2).mean().sqrt().item() if p.numel() else 0.0
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float64).to(p.device, p.dtype)
            p.add_(noise * (_SIGMA_REL * rms + _SIGMA_ABS))


@dataclass
class _Sweep:
    """Pass E in one mode: diffs[j] = per-position relative change of the output when position j changes."""

    positions: list[int]
    diffs: dict[int, torch.Tensor]  # j -> [T]
    batched: bool
    nonfinite: bool = False

    def reach(self, T: int, tol: float) -> int:
        """How far back the last position's output depends on the input (0 = only its own token)."""
        deps = [j for j in self.positions if j < T - 1 and self.diffs[j][T - 1] > tol]
        return T - 1 - min(deps) if deps else 0

    def violations(self, tol: float) -> list[dict]:
        out = []
        for j in self.positions:
            before = self.diffs[j][:j]
            if j > 0 and before.numel() and before.max().item() > tol:
                bad = (before > tol).nonzero().flatten()
                out.append({"perturbed_position": j, "earliest_changed": int(bad[0]),
                            "n_changed": int(bad.numel()), "max_rel_change": float(before.max())})
        return out

    def largest_noncausal(self) -> float:
        vals = [self.diffs[j][:j].max().item() for j in self.positions if j > 0]
        return max(vals) if vals else 0.0


@dataclass
class _State:
    """Everything the passes measured, for the analysis step."""

    grads_a: dict[str, str] = field(default_factory=dict)  # name -> ok | zero | none
    grads_b: dict[str, str] = field(default_factory=dict)
    grads_q: dict[str, str] = field(default_factory=dict)
    accesses: dict[str, dict[str, int]] = field(default_factory=dict)
    producers: dict[str, list[torch.Tensor]] = field(default_factory=dict)
    collapsed: dict[str, str] = field(default_factory=dict)
    escapes: list[dict] = field(default_factory=list)
    stateful: dict[str, float] = field(default_factory=dict)  # mode -> rel diff of two identical calls
    coupling: dict[str, float] = field(default_factory=dict)  # mode -> rel change of samples 1.. (check 6)
    own_change: dict[str, float] = field(default_factory=dict)
    sweeps: dict[str, _Sweep] = field(default_factory=dict)
    influence: dict[str, tuple[bool, str]] = field(default_factory=dict)  # name -> (changes output, how)
    nonfinite: list[str] = field(default_factory=list)


class _Session:
    def __init__(self, model: nn.Module, spec: InputSpec, *, seq_len: int, batch: int, call, loss, device: str,
                 seed: int, dtype: torch.dtype) -> None:
        self.spec, self.T, self.B = spec, seq_len, batch
        self.device, self.seed, self.dtype = device, seed, dtype
        self.tol = TOLERANCE[dtype]
        self.call = call or default_call
        self._current: nn.Module | None = None
        self.default_loss = DefaultLoss(spec, seed) if loss is None else None
        self.loss = self.default_loss or user_loss(loss, lambda: self._current)
        try:
            self.base = copy.deepcopy(model).to(device=device, dtype=dtype)
        except Exception as err:
            raise UserError(f"cannot deep-copy the model ({type(err).__name__}: {err}); the audit works on "
                            "copies so it never changes yours") from err
        self.gen = torch.Generator().manual_seed(seed)
        self.x = spec.make(batch, seq_len, self.gen, device, dtype)
        self.trainable = [n for n, p in self.base.named_parameters() if p.requires_grad]
        self.frozen = [n for n, p in self.base.named_parameters() if not p.requires_grad]
        self.st = _State()
        self.row_cost = math.inf  # fastest measured forward time per sequence: budgets the sweeps and FD
        self.out_numel_row = 0

    # --- running the model --------------------------------------------------------------------------
    def forward(self, m: nn.Module, x: torch.Tensor, *, train: bool, grad: bool) -> torch.Tensor:
        m.train(train)
        for mod in m.modules():
            if isinstance(mod, nn.modules.dropout._DropoutNd):
                mod.eval()
        torch.manual_seed(self.seed)
        self._current = m
        t0 = time.perf_counter()
        with torch.set_grad_enabled(grad):
            out = as_output(self.call(m, x))
        self.row_cost = min(self.row_cost, (time.perf_counter() - t0) / x.shape[0])
        if out.ndim < 2 or out.shape[0] != x.shape[0] or out.shape[1] != x.shape[1]:
            raise UserError(f"the model's output has shape {tuple(out.shape)}, not [B={x.shape[0]}, "
                            f"T={x.shape[1]}, ...]; pass --call module:fn to return a [B, T, ...] tensor")
        if not out.is_floating_point():
            raise UserError(f"the model's output has dtype {out.dtype}; a floating-point tensor is needed")
        return out

    def loss_of(self, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        value = self.loss(out, x)
        if not isinstance(value, torch.Tensor) or value.numel() != 1:
            raise UserError("the loss must return a scalar tensor")
        return value.reshape(())

    def grads(self, loss: torch.Tensor, m: nn.Module, retain: bool = False) -> dict[str, torch.Tensor | None]:
        named = dict(m.named_parameters())
        params = [named[n] for n in self.trainable]
        if not params or not loss.requires_grad:
            return {n: None for n in self.trainable}
        gs = torch.autograd.grad(loss, params, retain_graph=retain, allow_unused=True)
        return dict(zip(self.trainable, gs))

    def copy(self, m: nn.Module) -> nn.Module:
        return copy.deepcopy(m)

    # --- pass A -------------------------------------------------------------------------------------
    def pass_a(self) -> None:
        """Base copy: forward + loss + backward. Any failure here is the model's (or the call's) problem."""
        m = self.copy(self.base)
        try:
            out = self.forward(m, self.x, train=True, grad=True)
            loss = self.loss_of(out, self.x)
            grads = self.grads(loss, m)
        except UserError:
            raise
        except Exception as err:
            raise _ModelFailed(f"{type(err).__name__}: {err}") from err
        self.out_numel_row = out[0].numel()
        self.loss_kind = self.default_loss.kind if self.default_loss else "user loss (--loss)"
        self.st.grads_a = {n: _grad_state(g) for n, g in grads.items()}
        if not _finite(out):
            self.st.nonfinite.append("output (base parameters)")
        if not _finite(loss):
            self.st.nonfinite.append("loss (base parameters)")
        bad = [n for n, g in grads.items() if not _finite(g)]
        if bad:
            self.st.nonfinite.append(f"gradients of {len(bad)} parameter(s) (base), e.g. {bad[0]}")

    # --- pass B -------------------------------------------------------------------------------------
    def make_generic(self) -> None:
        self.generic = self.copy(self.base)
        _perturb_(list(self.generic.parameters()), torch.Generator().manual_seed(self.seed + 1))

    def pass_b(self) -> None:
        m = self.copy(self.generic)
        named = dict(m.named_parameters())
        tracer = ForwardTracer({id(p): (n, p) for n, p in named.items()}, self.B)
        self.producer_names = N.producer_modules(m)
        records: dict[str, list[torch.Tensor]] = defaultdict(list)
        handles = []
        modules = dict(m.named_modules())
        for name in self.producer_names:
            def hook(_mod, _inp, out, _name=name):
                t = module_output(out)
                if t is not None:
                    tracer.label(t, _name)
                    records[_name].append(t.detach().clone())
            handles.append(modules[name].register_forward_hook(hook))
        try:
            with tracer:
                out = self.forward(m, self.x, train=True, grad=True)
        finally:
            for h in handles:
                h.remove()
        self.st.accesses = {n: dict(c) for n, c in tracer.accesses.items()}
        self.st.producers = dict(records)
        self.st.collapsed = tracer.collapsed_in(out)
        self.st.escapes = tracer.escapes
        self.memory = N.memory_parameters(m, self.memory_globs, self.producer_names)
        late = torch.zeros(1, self.T, *([1] * (out.ndim - 2)), dtype=torch.bool, device=out.device)
        late[:, self.T - max(1, self.T // 4):] = True
        loss_q = self.loss_of(torch.where(late, out, out.detach()), self.x)
        # the full loss at this point matters only for parameters without a gradient at the base point
        need_full = any(v != "ok" for v in self.st.grads_a.values())
        g_q = self.grads(loss_q, m, retain=need_full)
        if need_full:
            try:
                g_b = self.grads(self.loss_of(out, self.x), m)
            except RuntimeError:  # a graph that cannot be walked twice: forward again for the full loss
                m2 = self.copy(self.generic)
                g_b = self.grads(self.loss_of(self.forward(m2, self.x, train=True, grad=True), self.x), m2)
            self.st.grads_b = {n: _grad_state(g) for n, g in g_b.items()}
            bad = [n for n, g in g_b.items() if not _finite(g)]
            if bad:
                self.st.nonfinite.append(f"gradients of {len(bad)} parameter(s) (perturbed), e.g. {bad[0]}")
        else:
            self.st.grads_b = dict(self.st.grads_a)
        self.st.grads_q = {n: _grad_state(g) for n, g in g_q.items()}
        if not _finite(out):
            self.st.nonfinite.append("output (perturbed parameters)")
        self._b_model, self._b_out = m, out.detach()

    # --- pass C, D: state across calls, batch independence ----------------------------------------
    def pass_state(self) -> None:
        """Two identical calls on one fresh copy per mode; the first is every later check's reference."""
        self.work: dict[bool, nn.Module] = {}
        self.ref: dict[bool, torch.Tensor] = {}
        for train in (True, False):
            if train:  # pass B was the first call of its fresh copy
                m, o1 = self._b_model, self._b_out
            else:
                m = self.copy(self.generic)
                o1 = self.forward(m, self.x, train=train, grad=train).detach()
            o2 = self.forward(m, self.x, train=train, grad=train).detach()
            self.st.stateful["train" if train else "eval"] = _rel(o2, o1)
            self.ref[train] = o1
            self.work[train] = m  # reused only when calls do not carry state
        del self._b_model

    def is_stateful(self, train: bool) -> bool:
        return self.st.stateful["train" if train else "eval"] > self.tol

    def run_fresh(self, x: torch.Tensor, train: bool) -> torch.Tensor:
        """A forward that no earlier forward can influence (a fresh copy if the model keeps state)."""
        m = self.copy(self.generic) if self.is_stateful(train) else self.work[train]
        return self.forward(m, x, train=train, grad=train).detach()

    def pass_batch(self) -> None:
        if self.B < 2:
            return
        T = self.T
        x2 = self.spec.perturb(self.x, torch.zeros(T, dtype=torch.long), torch.arange(T), self.gen)
        for train in (True, False):
            mode = "train" if train else "eval"
            out = self.run_fresh(x2, train)
            self.st.coupling[mode] = _rel(out[1:], self.ref[train][1:])
            self.st.own_change[mode] = _rel(out[:1], self.ref[train][:1])

    # --- pass E: perturbation sweeps ------------------------------------------------------------------
    def positions(self, budget_rows: int) -> list[int]:
        T = self.T
        if budget_rows >= T:
            return list(range(T))
        n = max(8, budget_rows)
        fixed = sorted({0, 1, T // 2, T - 1})
        rest = [j for j in torch.randperm(T, generator=self.gen).tolist() if j not in fixed][: n - len(fixed)]
        return sorted(set(fixed) | set(rest))

    def sweep(self, train: bool) -> _Sweep:
        mode = "train" if train else "eval"
        coupled = self.st.coupling.get(mode, 0.0) > self.tol
        positions = self.positions(int(SWEEP_BUDGET_S / max(self.row_cost, 1e-5)))
        x0 = self.x[:1]
        probes = [self.spec.perturb(x0, torch.zeros(1, dtype=torch.long), torch.tensor([j]), self.gen)
                  for j in positions]
        diffs: dict[int, torch.Tensor] = {}
        nonfinite = False

        def per_pos(out: torch.Tensor, ref: torch.Tensor, scale: float) -> torch.Tensor:
            d = (out - ref).abs()
            return d.reshape(d.shape[0], d.shape[1], -1).amax(-1).double() / (scale + 1e-30)  # [R, T]

        batched = not coupled
        if batched:
            rows = max(2, min(len(probes) + 1, _MAX_ROW_ELEMS // max(self.out_numel_row, 1)))
            done = 0
            while done < len(probes):
                chunk = probes[done: done + rows - (1 if done == 0 else 0)]
                lead = [x0] if done == 0 else []
                xs = torch.cat(lead + chunk + [x0] * (rows - len(lead) - len(chunk)))  # same shape every time
                out = self.run_fresh(xs, train)
                nonfinite |= not _finite(out)
                if done == 0:
                    ref = out[:1]
                    scale = ref.double().pow(2).mean().sqrt().item()
                    # sample 0 alone in a batch of copies must match sample 0 of the original batch
                    if _rel(ref, self.ref[train][:1]) > self.tol:
                        batched = False
                        break
                d = per_pos(out[len(lead): len(lead) + len(chunk)], ref, scale)
                for k, j in enumerate(positions[done: done + len(chunk)]):
                    diffs[j] = d[k]
                done += len(chunk)
        if not batched:  # one sequence per forward: batch-coupled or row-nondeterministic models
            positions = positions if len(positions) <= 16 else self.positions(16)
            probes = [self.spec.perturb(x0, torch.zeros(1, dtype=torch.long), torch.tensor([j]), self.gen)
                      for j in positions]
            ref = self.run_fresh(x0, train)
            scale = ref.double().pow(2).mean().sqrt().item()
            for j, xp in zip(positions, probes):
                out = self.run_fresh(xp, train)
                nonfinite |= not _finite(out)
                diffs[j] = per_pos(out, ref, scale)[0]
        return _Sweep(positions, diffs, batched=not coupled and batched, nonfinite=nonfinite)

    # --- pass F: finite differences on parameters without gradient --------------------------------
    def influence(self, names: list[str]) -> None:
        """Does moving these parameters change the output? Group testing with a forward budget."""
        if not names:
            return
        stateful = self.is_stateful(True)
        work = self.work[True]
        named = dict(work.named_parameters())
        ref = self.ref[True]
        budget = max(4, min(48, int(FD_BUDGET_S / max(self.row_cost * self.B, 1e-5))))
        used = 0

        def changes(group: list[str]) -> bool:
            nonlocal used
            used += 1
            gen = torch.Generator().manual_seed(self.seed + 2 + used)
            if stateful:
                m = self.copy(self.generic)
                params = dict(m.named_parameters())
                _perturb_([params[n] for n in group], gen)
                out = self.forward(m, self.x, train=True, grad=True).detach()
                return _rel(out, ref) > self.tol
            saved = {n: named[n].detach().clone() for n in group}
            _perturb_([named[n] for n in group], gen)
            try:
                out = self.forward(work, self.x, train=True, grad=True).detach()
            finally:
                with torch.no_grad():
                    for n in group:
                        named[n].copy_(saved[n])
            return _rel(out, ref) > self.tol

        groups: dict[str, list[str]] = defaultdict(list)
        for n in names:
            groups[n.rpartition(".")[0]].append(n)
        queue = list(groups.values())
        if not changes(list(names)):
            for n in names:
                self.st.influence[n] = (False, "moving all of them together leaves the output unchanged")
            return
        if len(queue) == 1:  # already known to change the output as a whole
            queue = [queue[0][: len(names) // 2], queue[0][len(names) // 2:]] if len(names) > 1 else []
            if not queue:
                self.st.influence[names[0]] = (True, "moving it changes the output")
        while queue:
            group = queue.pop(0)
            if used >= budget:
                for n in group:
                    self.st.influence[n] = (True, "attributed by group (forward budget spent)")
                continue
            if changes(group):
                if len(group) == 1:
                    self.st.influence[group[0]] = (True, "moving it changes the output")
                else:
                    half = len(group) // 2
                    queue[:0] = [group[:half], group[half:]]
            else:
                for n in group:
                    self.st.influence[n] = (False, "moving it leaves the output unchanged")


# ============================================================================================================
# analysis: measurements -> findings, check results, the gradient-flow table
# ============================================================================================================


def _analyse(s: _Session, numel: dict[str, int]) -> tuple[list[Finding], list[CheckResult], list[FlowRow]]:
    st, T, tol = s.st, s.T, s.tol
    findings: list[Finding] = []
    checks: list[CheckResult] = []

    # --- checks 1 and 2 -------------------------------------------------------------------------------
    status: dict[str, str] = {}
    transient, persistent = [], []
    for n in s.trainable:
        if st.grads_a[n] == "ok":
            status[n] = "ok"
        elif st.grads_b.get(n) == "ok":
            status[n] = "zero_at_init"
            transient.append(n)
        else:
            persistent.append(n)
    disconnected, unused, dead, detached_access = [], [], [], []
    for n in persistent:
        changes, how = st.influence.get(n, (False, "not tested"))
        ops = st.accesses.get(n, {})
        if changes:
            status[n] = "disconnected"
            disconnected.append(n)
        elif not ops:
            status[n] = "unused"
            unused.append(n)
        elif set(ops) <= GRAPH_CUTTING:
            status[n] = "detached_access"
            detached_access.append(n)
        else:
            status[n] = "dead"
            dead.append(n)

    def access_evidence(names: list[str]) -> dict[str, Any]:
        return {n: {"grad_base": st.grads_a[n], "grad_perturbed": st.grads_b.get(n),
                    "ops_in_forward": st.accesses.get(n, {}), "finite_difference": st.influence.get(n, (None, ""))[1]}
                for n in names[:24]}

    if disconnected:
        findings.append(Finding(
            "disconnected_params", "critical",
            f"{len(disconnected)} parameter(s) change the output but get no gradient (their value reaches the "
            "forward only through detached copies or detached outputs)",
            {"parameters": access_evidence(disconnected),
             "why": "finite difference: moving the parameter changes the output, yet d(loss)/d(param) is "
                    "None or exactly zero at both the base and a perturbed point, so the outer optimizer can "
                    "never train it (e.g. `.detach().clone()` of an initial state, a detached target)"},
            disconnected))
    if detached_access:
        findings.append(Finding(
            "detached_access", "warning",
            f"{len(detached_access)} parameter(s) are read in the forward only through graph-cutting ops "
            "(detach, .data, item) and do not affect this output",
            {"parameters": access_evidence(detached_access),
             "why": "diagnostics are harmless; a stale detached copy (taken once, e.g. at reset outside "
                    "forward) is the review's bug: pass --call to run the reset as training does"},
            detached_access))
    if dead:
        findings.append(Finding(
            "dead_params", "warning",
            f"{len(dead)} parameter(s) are used in the forward but never reach the output: no "
            "gradient (also at a perturbed point) and moving them changes nothing (e.g. writes made after "
            "the last read)",
            {"parameters": access_evidence(dead)}, dead))
    if unused:
        evidence = {"parameters": access_evidence(unused)}
        resets = _reset_methods(s.base)
        if resets:
            evidence["hint"] = (f"the model defines {', '.join(resets[:4])}: if training calls a reset before the "
                                "forward (copying parameters into active state), pass --call fn(model, x) that "
                                "does the same, or the audit cannot see what the reset does")
        findings.append(Finding(
            "unused_params", "info",
            f"{len(unused)} parameter(s) are never used in the forward (e.g. a registered template whose "
            "copy is the real state)",
            evidence, unused))
    if transient:
        findings.append(Finding(
            "zero_grad_at_init", "info",
            f"{len(transient)} parameter(s) have a zero gradient at initialisation only (e.g. behind a "
            "zero-initialised gate); it becomes non-zero at a perturbed point",
            {"parameters": {n: {"grad_base": st.grads_a[n], "grad_perturbed": st.grads_b[n]} for n in transient[:24]}},
            transient))
    if s.frozen:
        findings.append(Finding("frozen_params", "info",
                                f"{len(s.frozen)} parameter(s) have requires_grad=False and were not audited",
                                {}, list(s.frozen)))
    n_ok = sum(1 for v in status.values() if v in ("ok", "zero_at_init"))
    checks.append(CheckResult(
        "gradient_flow", CHECKS["gradient_flow"],
        "fail" if disconnected else ("warn" if detached_access else "pass"),
        f"{n_ok}/{len(s.trainable)} trainable parameters get a gradient; {len(disconnected)} disconnected, "
        f"{len(unused)} unused, {len(detached_access)} read only through detached copies, {len(dead)} dead"))
    checks.append(CheckResult(
        "zero_gradients", CHECKS["zero_gradients"], "warn" if dead else "pass",
        f"{len(transient)} zero only at init (resolved at a perturbed point), {len(persistent)} persistently "
        f"without gradient ({len(dead)} of them on a dead path)"))

    # --- check 3 ------------------------------------------------------------------------------------------
    memory = s.memory
    unreached = [n for n in memory if n in st.grads_b and st.grads_b[n] == "ok" and st.grads_q.get(n) != "ok"]
    if not memory:
        checks.append(CheckResult("in_context_grad", CHECKS["in_context_grad"], "skipped",
                                  "no memory / η / α parameters identified (names, initial_states(), "
                                  "--memory-params)"))
    else:
        if unreached:
            findings.append(Finding(
                "in_context_grad", "critical",
                f"a loss on the last quarter of positions does not reach {len(unreached)} memory / η / α "
                "parameter(s) that the full loss does reach: the gradient does not flow through the "
                "in-context updates (state detached between chunks?)",
                {"late_positions": [T - max(1, T // 4), T - 1],
                 "parameters": {n: {"why_audited": memory[n], "grad_full_loss": st.grads_b[n],
                                    "grad_late_loss": st.grads_q.get(n)} for n in unreached[:24]}},
                unreached))
        no_grad_at_all = [n for n in memory if st.grads_b.get(n) != "ok"]
        checks.append(CheckResult(
            "in_context_grad", CHECKS["in_context_grad"], "fail" if unreached else "pass",
            f"{len(memory) - len(unreached) - len(no_grad_at_all)}/{len(memory)} memory/η/α parameters reached "
            f"by a loss on positions ≥ {T - max(1, T // 4)}"
            + (f"; {len(no_grad_at_all)} get no gradient at all (check 1)" if no_grad_at_all else "")))

    # --- checks 4-7: meaningless on NaN outputs ---------------------------------------------------------
    unusable = any(w.startswith("output") for w in st.nonfinite) or any(sw.nonfinite for sw in st.sweeps.values())
    if unusable:
        for name in ("receptive_field", "causality", "batch_independence", "eval_vs_train"):
            checks.append(CheckResult(name, CHECKS[name], "skipped", "skipped: the outputs are not finite (check 9)"))
    else:
        findings_47, checks_47 = _sequence_checks(s, memory)
        findings += findings_47
        checks += checks_47

    # --- check 8 ------------------------------------------------------------------------------------------
    eta_status = "pass"
    collapsed_by = sorted(set(st.collapsed) | {p for e in st.escapes for p in e["producers"]})
    if collapsed_by:
        findings.append(Finding(
            "eta_alpha_collapse", "critical",
            "an inner learning rate / decay is collapsed to one number for the whole batch before the memory "
            "update uses it",
            {"collapsed_reaching_output": st.collapsed, "python_scalar_escapes": st.escapes[:8],
             "why_critical": "a batch scalar removes the per-token, per-sample η_t/α_t of the paper and "
                             "couples the samples of a batch (one sequence's update depends on the others)"},
            collapsed_by))
        eta_status = "fail"
    constant, per_seq = {}, {}
    for name, outs in st.producers.items():
        info = _variation(outs, s.B)
        if info["per_token"] is False and info["per_sample"] is False:
            constant[name] = info
        elif info["per_token"] is False:
            per_seq[name] = info
    if constant:
        findings.append(Finding(
            "eta_alpha_constant", "warning",
            f"{len(constant)} η/α producer(s) output the same value for every token and sample",
            {"producers": constant}, list(constant)))
        eta_status = "fail" if eta_status == "fail" else "warn"
    if per_seq:
        findings.append(Finding(
            "eta_alpha_per_sequence", "warning",
            f"{len(per_seq)} η/α producer(s) give one value per sequence, not per token",
            {"producers": per_seq}, list(per_seq)))
        eta_status = "fail" if eta_status == "fail" else "warn"
    if not st.producers and not collapsed_by:
        checks.append(CheckResult("eta_alpha", CHECKS["eta_alpha"], "skipped",
                                  "no η/α producer modules identified by name"))
    else:
        checks.append(CheckResult("eta_alpha", CHECKS["eta_alpha"], eta_status,
                                  f"{len(st.producers)} producer(s) traced; {len(collapsed_by)} collapsed to a "
                                  f"batch scalar, {len(constant)} constant, {len(per_seq)} per-sequence"))

    # --- check 9 ------------------------------------------------------------------------------------------
    nonfinite = list(st.nonfinite) + [f"sweep outputs ({m})" for m, sw in st.sweeps.items() if sw.nonfinite]
    if nonfinite:
        findings.append(Finding("nonfinite", "critical", "NaN or inf in " + "; ".join(nonfinite),
                                {"where": nonfinite}))
    checks.append(CheckResult("nonfinite", CHECKS["nonfinite"], "fail" if nonfinite else "pass",
                              "; ".join(nonfinite) or "outputs, losses and gradients are finite"))

    late_ok = {n: st.grads_q.get(n) == "ok" for n in memory}
    rows = _flow_table(s, status, late_ok, numel)
    return findings, checks, rows


def _sequence_checks(s: _Session, memory: dict[str, str]) -> tuple[list[Finding], list[CheckResult]]:
    """Checks 4-7 from the sweeps, the batch pass and the repeated calls."""
    st, T, tol = s.st, s.T, s.tol
    findings: list[Finding] = []
    checks: list[CheckResult] = []
    is_memory_model = bool(memory)
    sw_train, sw_eval = st.sweeps.get("train"), st.sweeps.get("eval")
    reach_train = sw_train.reach(T, tol) if sw_train else None
    reach_eval = sw_eval.reach(T, tol) if sw_eval else None
    short = T // 2
    rf_ev = {"reach_train": reach_train, "reach_eval": reach_eval, "seq_len": T,
             "probed_positions": sw_train.positions if sw_train else [],
             "dependence_train": {j: float(sw_train.diffs[j][T - 1]) for j in sw_train.positions} if sw_train else {},
             "tolerance": tol}
    if reach_train is not None and reach_train < short:
        sev = "critical" if is_memory_model else "info"
        findings.append(Finding(
            "receptive_field", sev,
            f"the last position's output depends only on the last {reach_train + 1} input position(s) "
            f"(of {T}): no memory across the sequence"
            + ("" if is_memory_model else " (no memory parameters identified, so not judged)"),
            rf_ev))
    checks.append(CheckResult(
        "receptive_field", CHECKS["receptive_field"],
        "fail" if reach_train is not None and reach_train < short and is_memory_model else "pass",
        f"last output depends on inputs up to {reach_train} positions back in train mode, {reach_eval} in eval"))

    viol = []
    for mode, sw in (("train", sw_train), ("eval", sw_eval)):
        if sw:
            viol += [dict(v, mode=mode) for v in sw.violations(tol)]
    largest = max((sw.largest_noncausal() for sw in (sw_train, sw_eval) if sw), default=0.0)
    if viol:
        findings.append(Finding(
            "causality", "critical",
            f"future tokens change earlier outputs ({len(viol)} perturbed position(s) over train/eval; "
            f"largest relative change "
            f"{largest:.2e}, tolerance {tol:g} in {str(s.dtype).replace('torch.', '')})",
            {"violations": viol[:32], "tolerance": tol, "dtype": str(s.dtype),
             "one_forward_for_all_probes": sw_train.batched if sw_train else None,
             "probed_positions": sw_train.positions if sw_train else []}))
    checks.append(CheckResult(
        "causality", CHECKS["causality"], "fail" if viol else "pass",
        f"{len(sw_train.positions) if sw_train else 0} positions probed per mode; largest change before the "
        f"perturbed position {largest:.1e} (tolerance {tol:g})"))

    # --- check 6 ------------------------------------------------------------------------------------------
    if s.B < 2:
        checks.append(CheckResult("batch_independence", CHECKS["batch_independence"], "skipped",
                                  "batch 1: nothing to compare"))
    else:
        coupled = {m: v for m, v in st.coupling.items() if v > tol}
        has_bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in s.base.modules())
        if coupled:
            sev = "warning" if set(coupled) == {"train"} and has_bn else "critical"
            findings.append(Finding(
                "batch_independence", sev,
                f"changing sample 0 changes the other samples' outputs ({', '.join(coupled)} mode): "
                "state or statistics shared across the batch"
                + (" (BatchNorm in train mode)" if sev == "warning" else ""),
                {"rel_change_other_samples": st.coupling, "rel_change_sample0": st.own_change, "tolerance": tol}))
        checks.append(CheckResult(
            "batch_independence", CHECKS["batch_independence"], "fail" if coupled else "pass",
            "samples 1.. change by " + ", ".join(f"{v:.1e} ({m})" for m, v in st.coupling.items())
            + " when sample 0 changes"))

    ev_notes = []
    if reach_train is not None and reach_eval is not None and reach_eval < short <= reach_train:
        findings.append(Finding(
            "eval_memory", "warning",
            f"memory stops updating in eval: the receptive field is {reach_train} positions in train mode but "
            f"{reach_eval} in eval / no_grad",
            {"reach_train": reach_train, "reach_eval": reach_eval, "seq_len": T}))
        ev_notes.append("receptive field collapses in eval")
    carried = {m: v for m, v in st.stateful.items() if v > tol}
    if carried:
        findings.append(Finding(
            "state_across_calls", "warning",
            f"two identical calls give different outputs ({', '.join(carried)} mode): state is carried across "
            "calls, so results depend on what ran before",
            {"rel_diff_second_call": st.stateful, "tolerance": tol}))
        ev_notes.append("state carried across calls")
    checks.append(CheckResult("eval_vs_train", CHECKS["eval_vs_train"], "warn" if ev_notes else "pass",
                              "; ".join(ev_notes) or "eval keeps the train-mode receptive field; calls are "
                              "independent"))

    return findings, checks


def _reset_methods(model: nn.Module) -> list[str]:
    """`Class.reset_*` methods a model defines beyond torch's own (`reset_parameters`)."""
    found = []
    for mod in {type(m) for m in model.modules()}:
        for attr in dir(mod):
            if "reset" in attr.lower() and attr != "reset_parameters" and not hasattr(nn.Module, attr):
                if callable(getattr(mod, attr, None)):
                    found.append(f"{mod.__name__}.{attr}()")
    return sorted(found)


def _variation(outs: list[torch.Tensor], B: int) -> dict[str, Any]:
    """Does a producer's output vary across tokens and across samples?"""
    batched = [o.double() for o in outs if o.ndim >= 1 and o.shape[0] == B]
    if not batched:
        return {"per_token": False, "per_sample": False, "shape": list(outs[0].shape), "note": "no batch axis"}
    scale = max(o.abs().mean().item() for o in batched) + 1e-12
    per_sample = B > 1 and any(o.std(dim=0).max().item() / scale > VARIES for o in batched)
    tok = [o.std(dim=1).max().item() / scale for o in batched if o.ndim >= 2 and o.shape[1] > 1]
    flat = [o.reshape(B, -1) for o in batched]
    if len(flat) > 1 and all(f.shape == flat[0].shape for f in flat):  # one call per token / chunk
        tok.append(torch.stack(flat, 1).std(dim=1).max().item() / scale)
    per_token = any(v > VARIES for v in tok) if tok else None
    return {"per_token": per_token, "per_sample": per_sample, "shape": list(batched[0].shape),
            "calls": len(outs), "mean": float(sum(o.mean().item() for o in batched) / len(batched))}


def _flow_table(s: _Session, status: dict[str, str], late_ok: dict[str, bool], numel: dict[str, int]) -> list[FlowRow]:
    groups: dict[str, list[str]] = defaultdict(list)
    for n in s.trainable + s.frozen:
        groups[N.component_of(s.base, n)].append(n)
    labels = {
        "ok": "yes", "zero_at_init": "zero at init only", "disconnected": "no: detached (changes the output)",
        "detached_access": "no: read only via detached copies", "dead": "no: never reaches the output",
        "unused": "no: never used",
        "frozen": "frozen (requires_grad=False)",
    }
    rows = []
    for comp, names in groups.items():
        st_names = [status.get(n, "frozen") for n in names]
        kinds = sorted(set(st_names), key=list(labels).index)
        leaves = sorted({n.rpartition(".")[2] for n in names})
        copies = len(names) // max(len(leaves), 1)
        mtype = N.owner_type(s.base, names[0])
        parameters = (f"{mtype}: {', '.join(leaves)}" + (f" ×{copies}" if copies > 1 else "")
                      + f" ({sum(numel[n] for n in names):,} values)")
        if len(kinds) == 1:
            gradient = labels[kinds[0]]
        else:
            gradient = "; ".join(f"{sum(1 for k in st_names if k == kind)}× {labels[kind]}" for kind in kinds)
        mem = [n for n in names if n in late_ok]
        if not mem:
            late = "—"
        elif all(late_ok[n] for n in mem):
            late = "yes"
        elif not any(late_ok[n] for n in mem):
            late = "no"
        else:
            late = f"{sum(late_ok[n] for n in mem)}/{len(mem)}"
        late_bug = any(not late_ok[n] and status.get(n) == "ok" for n in mem)
        if "disconnected" in kinds:
            state, ok = "BUG: used but disconnected", False
        elif late_bug:
            state, ok = "BUG: not reached through the in-context updates", False
        elif "detached_access" in kinds:
            state, ok = "suspect: read only via detached copies", False
        elif "dead" in kinds:
            state, ok = "dead path", False
        elif kinds == ["unused"]:
            state, ok = "unused (not a bug by itself)", True
        elif kinds == ["frozen"]:
            state, ok = "frozen", True
        elif "zero_at_init" in kinds:
            state, ok = "correct (gated at init)", True
        else:
            state, ok = "correct", True
        rows.append(FlowRow(comp, parameters, gradient, late, state, ok))
    return rows


# ============================================================================================================
# the public entry point
# ============================================================================================================


def audit(
    model: nn.Module,
    *,
    vocab: int | None = None,
    seq_len: int = 64,
    batch: int = 2,
    input: str = "tokens",
    call: Callable | str | None = None,
    loss: Callable | str | None = None,
    device: str = "cpu",
    seed: int = 0,
    memory_params: list[str] | tuple[str, ...] | str = (),
    dtype: str = "auto",
    target: str | None = None,
    progress: Callable[[str], None] | None = None,
):
    """Audit `model` (never modified) and return an AuditReport. See hopelab.audit for the checks.

    call: fn(model, x) -> output [B, T, ...] (default model(x)); loss: fn(output, x) -> scalar (default: the
    next-token loss of hopelab.audit.target); both may be given as "module:fn" strings. dtype: "auto"
    (float64 when the model runs in it and has at most 5M parameters, else float32), "float64", "float32".
    """
    t_start = time.perf_counter()
    progress = progress or (lambda _msg: None)
    if not isinstance(model, nn.Module):
        raise UserError(f"audit needs an nn.Module, got {type(model).__name__}")
    if seq_len < 4:
        raise UserError(f"--seq-len must be at least 4, got {seq_len}")
    if batch < 1:
        raise UserError(f"--batch must be at least 1, got {batch}")
    if isinstance(call, str):
        call = load_object(call, "--call")
    if isinstance(loss, str):
        loss = load_object(loss, "--loss")
    globs = [memory_params] if isinstance(memory_params, str) else list(memory_params or [])
    globs = [g for pat in globs for g in pat.split(",") if g]
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device {device!r} is not available on this machine; use --device cpu")
    spec = parse_input(input, vocab, model)
    choices = {"auto": [torch.float64, torch.float32], "float64": [torch.float64], "float32": [torch.float32]}
    if dtype not in choices:
        raise UserError(f"dtype {dtype!r} is not valid; choose one of: {', '.join(choices)}")

    session, failure, notes = None, None, []
    n_params = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    if dtype == "auto" and n_params > AUTO_FLOAT64_MAX_PARAMS:
        choices["auto"] = [torch.float32]
        notes.append(f"{n_params:,} parameters: audited in float32 (tolerance {TOLERANCE[torch.float32]:g}) for "
                     f"speed; a leak below that needs --dtype float64 (about 2x slower), or audit a small "
                     f"configuration of the same code")
    for dt in choices[dtype]:
        with _default_dtype(dt):
            try:
                s = _Session(model, spec, seq_len=seq_len, batch=batch, call=call, loss=loss, device=device,
                             seed=seed, dtype=dt)
                progress(f"pass A: forward + backward ({str(dt).replace('torch.', '')})")
                s.pass_a()
                session = s
                break
            except _ModelFailed as err:
                failure = str(err)
                if dt == torch.float64 and dtype == "auto":
                    notes.append(f"the model does not run in float64 ({failure}); audited in float32 with "
                                 f"tolerance {TOLERANCE[torch.float32]:g}")
    if session is None:
        raise UserError(f"calling the model failed: {failure} (pass --call module:fn if it needs more than "
                        "model(x), --input/--vocab/--seq-len for other inputs)")
    s = session
    s.memory_globs = globs
    timings: dict[str, float] = {"pass_a": time.perf_counter() - t_start}
    with _default_dtype(s.dtype):

        def phase(key: str, message: str, fn: Callable[[], None]) -> None:
            progress(message)
            t = time.perf_counter()
            try:
                fn()
            except UserError:
                raise
            except Exception as err:  # the model broke under a check that pass A did not exercise
                raise UserError(f"the model failed during '{message}': {type(err).__name__}: {err}") from err
            timings[key] = timings.get(key, 0.0) + time.perf_counter() - t

        phase("pass_b", "pass B: perturbed point, traced, late-position loss",
              lambda: (s.make_generic(), s.pass_b()))
        phase("state_batch", "state across calls, batch independence", lambda: (s.pass_state(), s.pass_batch()))

        def sweep(train: bool) -> None:
            s.st.sweeps["train" if train else "eval"] = s.sweep(train)

        phase("sweeps", "receptive field and causality sweep (train)", lambda: sweep(True))
        phase("sweeps", "receptive field and causality sweep (eval)", lambda: sweep(False))
        no_grad = [n for n in s.trainable if s.st.grads_a[n] != "ok" and s.st.grads_b.get(n) != "ok"]
        phase("finite_differences", f"finite differences on {len(no_grad)} parameter(s) without gradient",
              lambda: s.influence(no_grad))
        numel = {n: p.numel() for n, p in s.base.named_parameters()}
        findings, checks, rows = _analyse(s, numel)
    timings["total"] = time.perf_counter() - t_start
    settings = {
        "input": spec.describe(), "batch": batch, "seq_len": seq_len, "device": device, "seed": seed,
        "dtype": str(s.dtype).replace("torch.", ""), "tolerance": s.tol, "loss": s.loss_kind,
        "call": getattr(call, "__name__", "model(x)") if call else "model(x)", "memory_params": globs,
        "n_params": sum(numel.values()), "memory_parameters_audited": len(s.memory),
        "eta_alpha_producers": s.producer_names,
    }
    return AuditReport(target or type(model).__name__, settings, findings, checks, rows,
                       {k: round(v, 3) for k, v in timings.items()}, notes)
