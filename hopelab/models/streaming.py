"""Streaming: a long stretch of text read as consecutive context windows, every fast state carried across.

    logits, state = read_window(model, x_window, state)       # one window; state None starts a stream
    for logits in read_stream(model, x_stream, context_len):  # all windows of x [B, K·T], in order
        ...

What is carried is the model's typed state (hopelab.models.memory_lm.MemoryLMState): SR-Titans' memories,
momentum and surprise statistics, Titans' memory and momentum, each CMS level's weights and its unfinished
block's gradients. It is detached at every window boundary (truncated backpropagation through time): a
window's loss reaches the parameters through that window's own computation only, and a carried state is a
constant to it. Consequences, written here because the paper leaves them open:
- the meta-learned initial state of a memory gets gradient from the first window of each stream only, and a
  CMS level's learning rate only from windows where one of its updates happens before their last token;
- a state carried into the next window was computed with the parameters of the previous step.

Which models carry what:
- hope, its ablations and titans (MemoryLM with a fast-memory mixer): everything; streaming K windows equals
  one pass over their concatenation up to the detach points.
- hope_attention: the CMS levels only; attention sees one window (it keeps no KV cache).
- the Transformers: nothing; each window is read on its own, from its first token.

A checkpoint stores the state as a tree of plain containers and tensors (`to_tree`), so it loads with
torch.load(weights_only=True), and `from_tree` rebuilds the typed state.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

_CLASS = "__state_class__"  # the key naming a dataclass in a tree


def carries_state(model: nn.Module) -> bool:
    """Whether `model` carries anything from one window to the next (the Transformers do not)."""
    from hopelab.models.memory_lm import MemoryLM

    return isinstance(model, MemoryLM)


def map_tensors(fn: Callable[[torch.Tensor], torch.Tensor], state: Any) -> Any:
    """`state` (dataclasses, tuples, lists, dicts, tensors, numbers, None) with `fn` applied to every tensor."""
    if isinstance(state, torch.Tensor):
        return fn(state)
    if dataclasses.is_dataclass(state) and not isinstance(state, type):
        return type(state)(**{f.name: map_tensors(fn, getattr(state, f.name)) for f in dataclasses.fields(state)})
    if isinstance(state, (tuple, list)):
        return type(state)(map_tensors(fn, s) for s in state)
    if isinstance(state, dict):
        return {k: map_tensors(fn, v) for k, v in state.items()}
    return state


def detach_state(state: Any) -> Any:
    """The carried state as constants: the truncation point of backpropagation through time."""
    return map_tensors(torch.Tensor.detach, state)


def read_window(model: nn.Module, x: torch.Tensor, state: Any = None) -> tuple[torch.Tensor, Any]:
    """One window x [B, T] from `state` (None: a stream's first window) -> (logits [B, T, V], the state after
    it, detached; None for a model that carries nothing)."""
    if not carries_state(model):
        return model(x), None
    logits, new_state = model(x, state=state, return_state=True)
    return logits, detach_state(new_state)


def read_stream(model: nn.Module, x: torch.Tensor, context_len: int, state: Any = None) -> Iterator[torch.Tensor]:
    """x [B, K·T] read as K windows of `context_len` tokens in order, the state carried -> each window's logits."""
    for window in x.split(context_len, dim=1):
        logits, state = read_window(model, window, state)
        yield logits  # [B, T, V]


def to_tree(state: Any) -> Any:
    """A typed state as plain dicts, lists and tensors (a dataclass as a dict naming its class)."""
    if dataclasses.is_dataclass(state) and not isinstance(state, type):
        cls = type(state)
        return {_CLASS: f"{cls.__module__}.{cls.__qualname__}",
                **{f.name: to_tree(getattr(state, f.name)) for f in dataclasses.fields(state)}}
    if isinstance(state, tuple):
        return {_CLASS: "tuple", "items": [to_tree(s) for s in state]}
    if isinstance(state, list):
        return [to_tree(s) for s in state]
    return state


def from_tree(tree: Any) -> Any:
    """The typed state `to_tree` wrote (only hopelab's own state classes are rebuilt)."""
    if isinstance(tree, list):
        return [from_tree(t) for t in tree]
    if not isinstance(tree, dict) or _CLASS not in tree:
        return tree
    name = tree[_CLASS]
    if name == "tuple":
        return tuple(from_tree(t) for t in tree["items"])
    module, _, qualname = name.rpartition(".")
    if not module.startswith("hopelab."):
        raise ValueError(f"a carried state names a class outside hopelab: {name}")
    cls = getattr(importlib.import_module(module), qualname)
    return cls(**{k: from_tree(v) for k, v in tree.items() if k != _CLASS})
