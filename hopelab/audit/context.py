"""The audit context: the user's options, the model copies, the input, the call, the loss and the budgets that
every pass shares.

The audit works on deep copies (the caller's model is never touched), in float64 when the model runs in it
(tolerance 1e-10 relative to the output's RMS; float32: 1e-5; dtype "auto" uses float32 above 5M parameters,
where float64 costs ~2x the time), with dropout modules switched off and the RNG reseeded before every
forward, so two forwards differ only by what a pass changed.

Two copies of the model are kept:
- the *base* copy: the parameters as given;
- the *generic* copy: every parameter moved by a small random step (σ = 0.05·rms(p) + 0.01). Zero-initialised
  gates make a model degenerate at initialisation (the gated path gets exactly zero gradient, its receptive
  field vanishes); the generic copy is a nearby point where only real structure still shows. Every pass after
  the first uses it.
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from hopelab.audit.inputs import Batch, Inputs
from hopelab.audit.target import DefaultLoss, as_output, load_object, user_loss
from hopelab.errors import UserError

TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-5}
AUTO_FLOAT64_MAX_PARAMS = 5_000_000  # dtype "auto": float64 up to this size, float32 above (speed)
DTYPE_CHOICES = {"auto": (torch.float64, torch.float32), "float64": (torch.float64,), "float32": (torch.float32,)}
_SIGMA_REL, _SIGMA_ABS = 0.05, 0.01  # the generic copy's step: σ = 0.05·rms(p) + 0.01


class ModelFailed(Exception):
    """The model (or the user's call / loss) raised during the first forward and backward."""


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype) -> Iterator[None]:
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def relative_change(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / rms(b)."""
    a, b = a.detach().double(), b.detach().double()
    scale = b.pow(2).mean().sqrt().item()
    return (a - b).abs().max().item() / (scale + 1e-30)


def grad_state(g: torch.Tensor | None) -> str:
    """"none" (no gradient), "zero" (all zero) or "ok"."""
    if g is None:
        return "none"
    return "ok" if bool(g.detach().ne(0).any()) else "zero"


def is_finite(t: torch.Tensor | None) -> bool:
    return t is None or bool(torch.isfinite(t.detach()).all())


def perturb_(params: list[nn.Parameter], gen: torch.Generator) -> None:
    """Move each floating-point parameter in place by a random step of σ = 0.05·rms(p) + 0.01."""
    with torch.no_grad():
        for p in params:
            if not p.is_floating_point():
                continue
            rms = p.detach().double().pow(2).mean().sqrt().item() if p.numel() else 0.0
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float64).to(p.device, p.dtype)
            p.add_(noise * (_SIGMA_REL * rms + _SIGMA_ABS))


def mode_name(train: bool) -> str:
    return "train" if train else "eval"


@dataclass(frozen=True)
class AuditOptions:
    """What the user asked for, validated (a UserError names the bad argument)."""

    inputs: Inputs
    seq_len: int  # steps T
    batch: int
    call: Callable | None  # fn(model, x) -> output; None: model(x) (model(**x) for named inputs)
    loss: Callable | None  # fn(output, x) -> scalar; None: the default next-token loss
    device: str
    seed: int
    memory_globs: list[str]
    dtype: str  # a key of DTYPE_CHOICES

    @classmethod
    def parse(cls, model: nn.Module, *, vocab: int | None, seq_len: int, batch: int, input: str | list[str],
              call: Callable | str | None, loss: Callable | str | None, device: str, seed: int,
              memory_params: list[str] | tuple[str, ...] | str, dtype: str, tokens_per_step: int = 1) -> AuditOptions:
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
        inputs = Inputs.parse(input, vocab, model, tokens_per_step)
        if dtype not in DTYPE_CHOICES:
            raise UserError(f"dtype {dtype!r} is not valid; choose one of: {', '.join(DTYPE_CHOICES)}")
        return cls(inputs, seq_len, batch, call, loss, device, seed, globs, dtype)

    def dtypes(self, n_params: int) -> tuple[tuple[torch.dtype, ...], list[str]]:
        """The dtypes to try in order (the next one when the model fails in the previous), and a note on why."""
        if self.dtype == "auto" and n_params > AUTO_FLOAT64_MAX_PARAMS:
            note = (f"{n_params:,} parameters: audited in float32 (tolerance {TOLERANCE[torch.float32]:g}) for "
                    f"speed; a leak below that needs --dtype float64 (about 2x slower), or audit a small "
                    f"configuration of the same code")
            return (torch.float32,), [note]
        return DTYPE_CHOICES[self.dtype], []


class AuditContext:
    """The copies of one model in one dtype, its input, and the forward / loss / gradient every pass runs."""

    def __init__(self, model: nn.Module, options: AuditOptions, dtype: torch.dtype) -> None:
        self.options = options
        self.inputs = options.inputs
        self.T, self.B = options.seq_len, options.batch
        self.device, self.seed, self.dtype = options.device, options.seed, dtype
        self.tol = TOLERANCE[dtype]
        self.call = options.call or options.inputs.call
        self.folded = False  # the output holds N tokens per step and is folded to [B, T, N, ...]
        self._current: nn.Module | None = None  # the copy being run, for a loss fn(output, x, model)
        self.default_loss = DefaultLoss(options.inputs.primary_spec, options.seed) if options.loss is None else None
        self.loss = self.default_loss or user_loss(options.loss, lambda: self._current)
        try:
            self.base = copy.deepcopy(model).to(device=options.device, dtype=dtype)
        except Exception as err:
            raise UserError(f"cannot deep-copy the model ({type(err).__name__}: {err}); the audit works on "
                            "copies so it never changes yours") from err
        self.gen = torch.Generator().manual_seed(options.seed)  # inputs, positions and probes, in this order
        self.x = options.inputs.make(options.batch, options.seq_len, self.gen, options.device, dtype)
        self.trainable = [n for n, p in self.base.named_parameters() if p.requires_grad]
        self.frozen = [n for n, p in self.base.named_parameters() if not p.requires_grad]
        self.generic = copy.deepcopy(self.base)
        perturb_(list(self.generic.parameters()), torch.Generator().manual_seed(options.seed + 1))
        self.row_cost = math.inf  # fastest measured forward time per sequence: budgets the sweeps and FD

    @property
    def loss_kind(self) -> str:
        """Which loss ran (the default loss knows once it has seen an output)."""
        return self.default_loss.kind if self.default_loss else "user loss (--loss)"

    def copy(self, m: nn.Module) -> nn.Module:
        return copy.deepcopy(m)

    def forward(self, m: nn.Module, x: Batch, *, train: bool, grad: bool, **extra) -> torch.Tensor:
        """The call's output [B, T, ...], dropout off and the RNG reseeded; checks the shape and dtype."""
        return self.call_raw(m, x, train=train, grad=grad, **extra)[1]

    def call_raw(self, m: nn.Module, x: Batch, *, train: bool, grad: bool, **extra) -> tuple[Any, torch.Tensor]:
        """(what the call returned, its output tensor folded per step). `extra`: keyword arguments for the
        model (the default call only), e.g. a state it returned before."""
        m.train(train)
        for mod in m.modules():
            if isinstance(mod, nn.modules.dropout._DropoutNd):
                mod.eval()
        torch.manual_seed(self.seed)
        self._current = m
        B, T = self.inputs.batch_size(x), self.inputs.steps(x)
        t0 = time.perf_counter()
        with torch.set_grad_enabled(grad):
            if extra:
                result = m(**x, **extra) if self.inputs.named else m(x, **extra)
            else:
                result = self.call(m, x)
            out = as_output(result)
        self.row_cost = min(self.row_cost, (time.perf_counter() - t0) / B)
        self.folded = self.inputs.folds(out, T)
        out = self.inputs.fold(out, T)
        if out.ndim < 2 or out.shape[0] != B or out.shape[1] != T:
            n = self.inputs.tokens_per_step
            want = f"T={T}" if n == 1 else f"T={T} steps (or T·N={T * n} tokens)"
            raise UserError(f"the model's output has shape {tuple(out.shape)}, not [B={B}, {want}, ...]; pass "
                            "--call module:fn to return a [B, T, ...] tensor (--tokens-per-step N: N tokens a step)")
        if not out.is_floating_point():
            raise UserError(f"the model's output has dtype {out.dtype}; a floating-point tensor is needed")
        return result, out

    def loss_of(self, out: torch.Tensor, x: Batch) -> torch.Tensor:
        """The loss of an output as `forward` returned it (unfolded again for the loss)."""
        if self.folded:
            out = out.flatten(1, 2)
        value = self.default_loss(out, self.inputs.primary(x)) if self.default_loss else self.loss(out, x)
        if not isinstance(value, torch.Tensor) or value.numel() != 1:
            raise UserError("the loss must return a scalar tensor")
        return value.reshape(())

    def grads(self, loss: torch.Tensor, m: nn.Module, retain: bool = False) -> dict[str, torch.Tensor | None]:
        """d(loss)/d(p) for every trainable parameter of `m` (None where the loss does not reach it)."""
        named = dict(m.named_parameters())
        params = [named[n] for n in self.trainable]
        if not params or not loss.requires_grad:
            return {n: None for n in self.trainable}
        gs = torch.autograd.grad(loss, params, retain_graph=retain, allow_unused=True)
        return dict(zip(self.trainable, gs))
