"""What the audit feeds a model: one input or several named ones, and how steps map onto the sequence axis.

`--input` (repeatable), each `[NAME=]KIND`:
    tokens          LongTensor [B, T] in [0, vocab) (vocab: --vocab, model.config.vocab_size or the first
                    nn.Embedding); `tokens:V` gives this input its own vocabulary
    float:D         FloatTensor [B, T, D], standard normal
    float:NxD       FloatTensor [B, T, N, D] (any grid after the step axis: float:3x32x32 is [B, T, 3, 32, 32])
One unnamed input is passed positionally, `model(x)`; named inputs are passed as keyword arguments,
`model(x=..., actions=...)`, and a `--call fn(model, x)` receives them as a dict {name: tensor}. The first
input is the *primary* one: the default loss predicts it.

Steps and positions. Every check reasons about steps t = 0..T-1 (`--seq-len T`): changing step j must not
change outputs before j, the last step's output should depend on early steps. `--tokens-per-step N` is for
vision-style models whose sequence axis holds N tokens per step (a frame's patches, step-major: T·N
positions): inputs without a grid get T·N positions, changing step j changes its N tokens together, and an
output with T·N positions is folded to [B, T, N, ...] before it is compared, so tokens of one step may see
each other (block-causal) while no step sees a later one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from hopelab.errors import UserError

Batch = Any  # a tensor (one unnamed input) or a dict {name: tensor} (named inputs)


@dataclass(frozen=True)
class InputSpec:
    kind: str  # "tokens" | "float"
    vocab: int | None = None
    shape: tuple[int, ...] = ()  # float: the shape after [B, T] (D, or N x D ...)

    @property
    def dim(self) -> int | None:
        return self.shape[-1] if self.shape else None

    @property
    def grid(self) -> bool:
        """A grid per step ([B, T, N, D]): its step axis is never unfolded into tokens."""
        return len(self.shape) > 1

    def describe(self) -> str:
        if self.kind == "tokens":
            return f"tokens (vocab {self.vocab})"
        return "float:" + "x".join(map(str, self.shape))

    def make(self, batch: int, length: int, gen: torch.Generator, device: str, dtype: torch.dtype) -> torch.Tensor:
        if self.kind == "tokens":
            return torch.randint(0, self.vocab, (batch, length), generator=gen).to(device)
        return torch.randn(batch, length, *self.shape, generator=gen, dtype=torch.float64).to(device, dtype)

    def perturb(self, x: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """A copy of x with x[rows[i], cols[i]] changed (another token, or fresh noise on its whole grid)."""
        out = x.clone()
        if self.kind == "tokens":
            shift = torch.randint(1, self.vocab, (len(rows),), generator=gen).to(x.device)
            out[rows, cols] = (x[rows, cols] + shift) % self.vocab
        else:
            noise = torch.randn(len(rows), *x.shape[2:], generator=gen, dtype=torch.float64).to(x.device, x.dtype)
            out[rows, cols] = x[rows, cols] + noise
        return out


def parse_input(spec: str, vocab: int | None, model: nn.Module) -> InputSpec:
    """`tokens`, `tokens:V`, `float:D` or `float:NxD` (without the NAME= part)."""
    if spec == "tokens" or spec.startswith("tokens:"):
        if spec != "tokens":
            vocab = _positive(spec, spec.split(":", 1)[1], "tokens:V")[0]
        vocab = vocab or infer_vocab(model)
        if vocab is None or vocab < 2:
            raise UserError("cannot tell the vocabulary size of this model: pass --vocab N (or --input tokens:V)")
        return InputSpec("tokens", vocab=int(vocab))
    if spec.startswith("float:"):
        return InputSpec("float", shape=_positive(spec, spec.split(":", 1)[1], "float:32 or float:16x64"))
    raise UserError(f"--input {spec!r} is not valid; choose tokens, tokens:V, float:D or float:NxD (NAME= in front "
                    "to pass it by name)")


def _positive(spec: str, text: str, example: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(s) for s in text.split("x"))
    except ValueError:
        sizes = (0,)
    if not sizes or min(sizes) < 1:
        raise UserError(f"--input {spec!r}: sizes must be positive integers, e.g. {example}")
    return sizes


def infer_vocab(model: nn.Module) -> int | None:
    """model.config.vocab_size / model.vocab_size, else the first nn.Embedding's size."""
    for holder in (getattr(model, "config", None), model):
        v = getattr(holder, "vocab_size", None)
        if isinstance(v, int):
            return v
    for m in model.modules():
        if isinstance(m, nn.Embedding):
            return m.num_embeddings
    return None


@dataclass(frozen=True)
class Inputs:
    """The inputs of one audit: (name or None, spec) in order, and the tokens per step."""

    specs: tuple[tuple[str | None, InputSpec], ...]
    tokens_per_step: int = 1

    @classmethod
    def parse(cls, items: str | list[str] | tuple[str, ...], vocab: int | None, model: nn.Module,
              tokens_per_step: int = 1) -> Inputs:
        items = [items] if isinstance(items, str) else list(items or ["tokens"])
        specs = []
        for item in items:
            name, sep, kind = item.partition("=")
            if not sep:
                name, kind = None, item
            elif not name.strip().isidentifier():
                raise UserError(f"--input {item!r}: NAME must be a Python identifier (the forward's argument)")
            specs.append((name.strip() if name else None, parse_input(kind.strip(), vocab, model)))
        names = [n for n, _ in specs]
        if len(specs) > 1 and None in names:
            raise UserError("with several --input, name each one: --input x=float:16 --input actions=float:3")
        if len(set(names)) < len(names):
            raise UserError(f"--input names repeat: {', '.join(str(n) for n in names)}")
        if tokens_per_step < 1:
            raise UserError(f"--tokens-per-step must be at least 1, got {tokens_per_step}")
        return cls(tuple(specs), tokens_per_step)

    @property
    def named(self) -> bool:
        return self.specs[0][0] is not None

    @property
    def names(self) -> list[str]:
        return [n or "x" for n, _ in self.specs]

    @property
    def primary_spec(self) -> InputSpec:
        return self.specs[0][1]

    def describe(self) -> str:
        parts = [f"{n}={s.describe()}" if n else s.describe() for n, s in self.specs]
        steps = f", {self.tokens_per_step} tokens per step" if self.tokens_per_step > 1 else ""
        return ", ".join(parts) + steps

    # --- batches: a tensor, or a dict {name: tensor} ---------------------------------------------------------
    def tensors(self, x: Batch) -> dict[str, torch.Tensor]:
        return dict(x) if self.named else {"x": x}

    def _pack(self, tensors: dict[str, torch.Tensor]) -> Batch:
        return tensors if self.named else tensors["x"]

    def _per_step(self, spec: InputSpec) -> int:
        """Positions of one step on this input's sequence axis."""
        return 1 if spec.grid else self.tokens_per_step

    def make(self, batch: int, steps: int, gen: torch.Generator, device: str, dtype: torch.dtype) -> Batch:
        return self._pack({name: spec.make(batch, steps * self._per_step(spec), gen, device, dtype)
                           for name, (_, spec) in zip(self.names, self.specs)})

    def call(self, model: nn.Module, x: Batch) -> Any:
        """The default call: model(x), or model(**x) for named inputs."""
        return model(**x) if self.named else model(x)

    def primary(self, x: Batch) -> torch.Tensor:
        return self.tensors(x)[self.names[0]]

    def batch_size(self, x: Batch) -> int:
        return self.primary(x).shape[0]

    def rows(self, x: Batch, index: slice) -> Batch:
        return self._pack({n: t[index] for n, t in self.tensors(x).items()})

    def cat(self, xs: list[Batch]) -> Batch:
        parts = [self.tensors(x) for x in xs]
        return self._pack({n: torch.cat([p[n] for p in parts]) for n in self.names})

    def perturb(self, x: Batch, rows: torch.Tensor, steps: torch.Tensor, gen: torch.Generator,
                only: str | None = None) -> Batch:
        """A copy of x with step steps[i] of sample rows[i] changed in every input (or in input `only`)."""
        out = {}
        for name, (_, spec) in zip(self.names, self.specs):
            t = self.tensors(x)[name]
            if only is not None and name != only:
                out[name] = t
                continue
            n = self._per_step(spec)
            r = rows.repeat_interleave(n)
            c = (steps.unsqueeze(1) * n + torch.arange(n)).flatten()  # the step's n tokens
            out[name] = spec.perturb(t, r, c, gen)
        return self._pack(out)

    def perturb_input(self, x: Batch, name: str, gen: torch.Generator) -> Batch:
        """A copy of x with every step of every sample of input `name` changed."""
        B, T = self.batch_size(x), self.steps(x)
        rows = torch.arange(B).repeat_interleave(T)
        steps = torch.arange(T).repeat(B)
        return self.perturb(x, rows, steps, gen, only=name)

    def steps(self, x: Batch) -> int:
        spec = self.primary_spec
        return self.primary(x).shape[1] // self._per_step(spec)

    # --- outputs --------------------------------------------------------------------------------------------
    def folds(self, out: torch.Tensor, steps: int) -> bool:
        """Does this output hold N tokens per step on its sequence axis ([B, T·N, ...])?"""
        return self.tokens_per_step > 1 and out.ndim >= 2 and out.shape[1] == steps * self.tokens_per_step

    def fold(self, out: torch.Tensor, steps: int) -> torch.Tensor:
        """[B, T·N, ...] -> [B, T, N, ...] with N tokens per step; anything else unchanged."""
        if self.folds(out, steps):
            return out.reshape(out.shape[0], steps, self.tokens_per_step, *out.shape[2:])
        return out
