"""The contract of the layers whose weights learn in context: self-referential Titans, the Titans baseline and
each CMS level.

A fast-memory layer has
- meta-learned initial states, parameters: `initial_states()` -> {sub-key: {name: tensor}} (views of them);
- a typed state, where a sequence stands: `initial_state(batch)`, carried across calls when streaming;
- `step(carry, *chunk)`: one chunk of tokens, from the fast weights `carry` -> (outputs, the new carry).

`run_chunks` is the one loop over chunks. How each step runs is the model's `Execution`, fixed when it is built:
- compiled: torch.compile of `step`, one graph for every full chunk while gradients are recorded; a short last
  chunk and inference run eager (each would be one more graph);
- recomputed: only the step's inputs are kept for backward, and the step runs again there
  (torch.utils.checkpoint, non-reentrant): the same numbers for far less memory;
- traced: inside `trace_fast_states(model)` every step runs eager and reports each fast state it reaches.

What each step may write is the Execution's `Intervention` (default: everything, as trained): a memory it
freezes keeps its meta-learned initial state, the surprise gate can be forced, and the fast weights can be put
back to their initial state every R tokens. `with_intervention(model, ...)` sets it on a built model (e.g. one
loaded from a checkpoint); hopelab.interventions names the switches and measures what each one costs.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import functools
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

Carry = Any  # what a step carries from chunk to chunk: a tuple of fast-weight tensors
Record = Callable[[int, Carry], None]  # record(tokens into the chunk, carry)

PROJECTION_STD = 0.02  # GPT-2's init of a projection


@dataclass(frozen=True)
class Intervention:
    """What the in-context mechanisms may write, read by each layer where its mechanism is computed. The default
    changes nothing. The named switches (hopelab.interventions.switches) are instances of it."""

    # memories that keep their meta-learned initial state (their reads still happen): SR-Titans / Titans
    # component names ("k", "v", "eta", "alpha", "q", "memory") and "cms" (every CMS level)
    frozen: tuple[str, ...] = ()
    gate: Literal["learned", "open", "closed"] = "learned"  # the surprise gate as computed, or forced to 1 / 0
    reset_every: int | None = None  # fast weights back to their initial state every this many tokens
    # CMS levels whose period is this many tokens or more keep their state (with the context length: the
    # persistent levels, whose writes only a stream read across windows reads); the faster levels write
    cms_frozen_from: int | None = None

    def __post_init__(self) -> None:
        if self.gate not in ("learned", "open", "closed"):
            raise ValueError(f"gate must be 'learned', 'open' or 'closed', got {self.gate!r}")
        if self.reset_every is not None and self.reset_every < 1:
            raise ValueError(f"reset_every must be >= 1, got {self.reset_every}")
        if self.cms_frozen_from is not None and self.cms_frozen_from < 1:
            raise ValueError(f"cms_frozen_from must be >= 1, got {self.cms_frozen_from}")

    def freezes(self, memory: str) -> bool:
        return memory in self.frozen

    def freezes_cms_level(self, period: int) -> bool:
        return self.freezes("cms") or (self.cms_frozen_from is not None and period >= self.cms_frozen_from)


NO_INTERVENTION = Intervention()


@dataclass(frozen=True)
class Execution:
    """How the fast-memory layers run, given when the model is built (`build_model(..., execution=)`), like
    fla's `mode`. It changes how a model computes, not what: compile to float rounding, recompute bit for bit,
    and `impl="reference"` to float rounding (it exists to check the fast path)."""

    impl: Literal["chunked", "reference"] = "chunked"  # reference: token by token inside each step (Eq 88, 71)
    compile: bool = False  # torch.compile each layer's step (the chunked path only)
    recompute: bool = False  # keep only each step's inputs for backward and run the step again there
    intervention: Intervention = NO_INTERVENTION  # what the fast weights may write (evaluation switches)

    def __post_init__(self) -> None:
        if self.impl not in ("chunked", "reference"):
            raise ValueError(f"impl must be 'chunked' or 'reference', got {self.impl!r}")
        if self.compile and self.impl == "reference":
            raise ValueError("compile applies to the chunked path; the reference runs eager")


DEFAULT_EXECUTION = Execution()  # the chunked fast path, eager, keeping what backward needs


class FastMemory(nn.Module):
    """Base of the fast-memory layers. A subclass sets `chunk_tokens` (the tokens of a full step) and defines
    `initial_states`, `initial_state`, `fast_states`, `reset_carry` and `step` (every layer does: SR-Titans,
    Titans, CMSLevel). They raise NotImplementedError here rather than being abc.abstractmethods: an ABCMeta
    nn.Module changed how torch.compile guards the chunk step (tests/test_compile.py counts its graphs)."""

    chunk_tokens: int

    def __init__(self, execution: Execution) -> None:
        super().__init__()
        self.execution = execution

    def initial_states(self) -> dict[str, dict[str, torch.Tensor]]:
        """The meta-learned initial states: {sub-key ("" for the layer itself): {name: view of a parameter}}."""
        raise NotImplementedError

    def initial_state(self, batch: int):
        """The layer's typed state at the start of a sequence of `batch` samples."""
        raise NotImplementedError

    def fast_states(self, carry: Carry) -> dict[str, dict[str, torch.Tensor]]:
        """The fast weights in `carry`, keyed and shaped like initial_states() with a leading batch dim."""
        raise NotImplementedError

    def reset_carry(self, carry: Carry) -> Carry:
        """`carry` with its fast weights back at their initial state (Intervention.reset_every)."""
        raise NotImplementedError

    def step(self, carry: Carry, *chunk, record: Record | None = None) -> tuple[Any, Carry]:
        """One chunk -> (its outputs, the carry at its end). When tracing, `record(tokens into the chunk, carry)`
        is called for every state a complete update reaches."""
        raise NotImplementedError

    def run_chunks(self, carry: Carry, chunks: Sequence[tuple[int, tuple]], position: int) -> tuple[list, Carry]:
        """The chunks in order, each (its tokens, its step's arguments), from `carry` at token `position`.
        -> (the steps' outputs, the carry after the last)."""
        record = fast_state_recorder(self, position)
        grad = torch.is_grad_enabled()
        compiled = _compiled(type(self).step) if self.execution.compile and grad and record is None else None
        reset = self.execution.intervention.reset_every
        outs, start = [], 0
        for n, args in chunks:
            if reset is not None:  # back to the initial state at every multiple of `reset` tokens
                at = position + start
                if (at + n - 1) // reset * reset > at:
                    raise ValueError(f"reset_every={reset} falls inside a step of {n} tokens at token {at}")
                if at and at % reset == 0:
                    carry = self.reset_carry(carry)
            if record is not None:  # traced: eager, the step reports the states it reaches
                out, carry = self.step(carry, *args, record=functools.partial(record, start))
            else:
                step = functools.partial(compiled, self) if compiled and n == self.chunk_tokens else self.step
                if self.execution.recompute and grad:
                    out, carry = checkpoint(step, carry, *args, use_reentrant=False)
                else:
                    out, carry = step(carry, *args)
            outs.append(out)
            start += n
        return outs, carry


@functools.cache
def _compiled(step: Callable) -> Callable:
    """One compiled step per layer class, called with the module as its first argument: layers of the same config
    share its graphs, and a copied model runs its own parameters."""
    return torch.compile(step, dynamic=False)


def fast_memory_layers(model: nn.Module) -> list[FastMemory]:
    """The layers whose weights learn in context (what Execution's compile and recompute apply to)."""
    return [m for m in model.modules() if isinstance(m, FastMemory)]


@contextlib.contextmanager
def with_intervention(model: nn.Module, intervention: Intervention) -> Iterator[nn.Module]:
    """Inside: every fast-memory layer of `model` (and the model's own `execution`, when it has one) runs with
    `intervention`; the executions it had are put back after."""
    holders = [m for m in model.modules() if isinstance(getattr(m, "execution", None), Execution)]
    saved = [m.execution for m in holders]
    for m in holders:
        m.execution = dataclasses.replace(m.execution, intervention=intervention)
    try:
        yield model
    finally:
        for m, execution in zip(holders, saved):
            m.execution = execution


def memory_key(module_name: str, sub_key: str) -> str:
    """A memory's key in initial_states() and the trace: e.g. "blocks.0.mixer.k", "blocks.1.cms.levels.0"."""
    return f"{module_name}.{sub_key}" if sub_key else module_name


def logit(p: float) -> float:
    """The bias b with σ(b) = p: how the rate producers start at a chosen typical rate."""
    return math.log(p / (1.0 - p))


def init_projection(linear: nn.Linear, std: float = PROJECTION_STD) -> None:
    """GPT-2's init of a projection: weight N(0, std²), bias zero."""
    nn.init.normal_(linear.weight, 0.0, std)
    if linear.bias is not None:
        nn.init.zeros_(linear.bias)


def residual_std(n_layers: int) -> float:
    """GPT-2's std for a projection that writes into the residual stream: 0.02/√(2L)."""
    return PROJECTION_STD / math.sqrt(2 * n_layers)


# ---------------------------------------------------------------------------------------------------------
# tracing the fast states a forward reaches (the self-modification probes)


@dataclass
class FastStateRecord:
    key: str  # e.g. "blocks.0.mixer.memory" or "blocks.1.cms.levels.0"
    position: int  # tokens consumed when this state was reached
    states: dict[str, torch.Tensor]  # name -> [B, *initial state shape]


@dataclass
class FastStateTrace:
    records: list[FastStateRecord] = field(default_factory=list)


# id(layer) -> (the trace it reports to, its name in the traced model), for every trace_fast_states open
_TRACED: contextvars.ContextVar[dict[int, tuple[FastStateTrace, str]] | None] = contextvars.ContextVar(
    "traced", default=None
)


@contextlib.contextmanager
def trace_fast_states(model: nn.Module) -> Iterator[FastStateTrace]:
    """Inside: every forward of `model` appends FastStateRecords at chunk ends (Titans) and CMS period ends."""
    trace = FastStateTrace()
    layers = {id(m): (trace, name) for name, m in model.named_modules() if isinstance(m, FastMemory)}
    token = _TRACED.set({**(_TRACED.get() or {}), **layers})
    try:
        yield trace
    finally:
        _TRACED.reset(token)


def fast_state_recorder(layer: FastMemory, position: int) -> Callable[[int, int, Carry], None] | None:
    """record(chunk start, tokens into the chunk, carry) for a traced layer whose forward starts at `position`.
    None under torch.compile: a compiled forward records nothing (the probes trace the eager model), and
    ContextVar.get would split a whole-model graph at every layer (hopelab.models.cudagraphs)."""
    if torch.compiler.is_compiling():
        return None
    traced = (_TRACED.get() or {}).get(id(layer))
    if traced is None:
        return None
    trace, name = traced

    def record(start: int, offset: int, carry: Carry) -> None:
        for sub_key, states in layer.fast_states(carry).items():
            detached = {k: t.detach() for k, t in states.items()}
            # trace.records looked up at each call: a caller may replace the list (the probes keep drifts only)
            trace.records.append(FastStateRecord(memory_key(name, sub_key), position + start + offset, detached))

    return record
