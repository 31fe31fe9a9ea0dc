"""What a forward does, seen from inside: which parameters it touches, and where η / α values go.

`ForwardTracer` is a TorchFunctionMode: every torch call of the forward (including `.detach()`, `.data`,
`.clone()`, `.item()` and `torch.autograd.grad`) passes through it, so it records

- parameter accesses: which op took a Parameter object as an argument (`linear`, `detach`, `__get__` for
  `.data`, ...). A parameter whose only accesses cut the graph (detach, .data, item) can never get a gradient;
- η/α provenance: outputs of producer modules get a label, and every op passes the union of its inputs'
  labels on to its outputs. A label stays *pure* while the value is still "the η itself" (elementwise ops,
  reshapes, reductions, mixing only with tensors no larger than it: `softplus(eta_raw.mean(-1)) * 0.01`);
  once η is mixed into something larger (`eta * err`, the memory state) it becomes *mixed*. A reduction that
  folds the batch axis of a pure η (`eta.mean()`, `alpha.sum(0)`) marks it *collapsed*; `.item()` /
  `float()` on a pure η is an *escape* to a Python scalar. A collapsed label reaching the model's output, or
  an escape, means the memory update used one η / α for the whole batch. (Averaging the memory state
  itself over the batch is not an η collapse: check 6 reports that.)

`torch.autograd.grad` turns collapsed labels back into mixed ones: summing an inner loss before
differentiating it is how per-sample gradients are normally taken, not a collapse.
"""

from __future__ import annotations

import weakref
from collections import Counter, defaultdict
from typing import Any

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

# ops through which a parameter's value reaches the computation without its gradient
GRAPH_CUTTING = frozenset({"detach", "detach_", ".data", "item", "tolist", "numpy", "__float__", "__int__"})
# property reads that carry the value (`p.data`, `p.T`); others (`p.shape`, `p.grad`) are metadata
_VALUE_PROPERTIES = frozenset({"data", "T", "mT", "H", "mH", "real", "imag"})
_REDUCTIONS = frozenset(
    "mean sum amax amin max min prod std var norm logsumexp median nansum nanmean std_mean var_mean "
    "count_nonzero".split()
)
_ESCAPES = frozenset({"item", "tolist", "numpy", "__float__"})

Label = tuple[str, str]  # (producer module name, "pure" | "mixed" | the collapsing op, e.g. "mean()")
_PLAIN = ("pure", "mixed")


def _name(func: Any) -> str | None:
    """The op's name; property reads are `.data`, `.T`; None for metadata reads (`.shape`, `.grad`)."""
    name = getattr(func, "__name__", str(func))
    if name == "__get__":
        prop = getattr(getattr(func, "__self__", None), "__name__", "")
        return f".{prop}" if prop in _VALUE_PROPERTIES else None
    return name


def _reduced_dims(args: tuple, kwargs: dict, ndim: int) -> set[int] | None:
    """Dims a reduction folds; None for a full reduction."""
    dim = kwargs.get("dim", args[1] if len(args) > 1 and isinstance(args[1], (int, tuple, list)) else None)
    if dim is None:
        return None
    dims = [dim] if isinstance(dim, int) else list(dim)
    return {d % ndim for d in dims} if ndim else set()


class ForwardTracer(TorchFunctionMode):
    def __init__(self, params: dict[int, tuple[str, torch.nn.Parameter]], batch: int) -> None:
        super().__init__()
        self.params = params  # id -> (name, the Parameter itself)
        self.batch = batch
        self.accesses: dict[str, Counter] = defaultdict(Counter)  # param name -> op name -> count
        self.escapes: list[dict] = []  # η/α values turned into Python numbers
        self._labels: dict[int, tuple[weakref.ref, frozenset[Label]]] = {}

    # --- labels -------------------------------------------------------------------------------------
    def label(self, tensor: Any, producer: str) -> None:
        if isinstance(tensor, torch.Tensor):
            self._set(tensor, self.labels_of(tensor) | {(producer, "pure")})

    def labels_of(self, tensor: torch.Tensor) -> frozenset[Label]:
        entry = self._labels.get(id(tensor))
        if entry is None or entry[0]() is not tensor:
            return frozenset()
        return entry[1]

    def _set(self, tensor: torch.Tensor, labels: frozenset[Label]) -> None:
        try:
            self._labels[id(tensor)] = (weakref.ref(tensor), frozenset(labels))
        except TypeError:  # tensors that cannot be weak-referenced are not tracked
            pass

    # --- the mode -------------------------------------------------------------------------------------
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name = _name(func)
        if name is None:
            return out
        inputs = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        for t in inputs:
            hit = self.params.get(id(t))
            if hit is not None and hit[1] is t:
                self.accesses[hit[0]][name] += 1
        labels: frozenset[Label] = frozenset()
        pure_size = 0  # the largest input that is still a pure η
        for t in inputs:
            lab = self.labels_of(t)
            labels |= lab
            if any(kind == "pure" for _, kind in lab):
                pure_size = max(pure_size, t.numel())
        if not labels:
            return out
        pure_in = {p for p, kind in labels if kind == "pure"}
        if name in _ESCAPES:  # η itself (pure or already collapsed) becomes a Python number
            unmixed = sorted({p for p, kind in labels if kind != "mixed"})
            if unmixed:
                self.escapes.append({"op": name, "producers": unmixed})
            return out
        outs = [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]
        stays_pure = (
            pure_size > 0
            and all(t.numel() <= pure_size for t in inputs)
            and all(t.numel() <= pure_size for t in outs)
        )
        collapse = ""
        if name in _REDUCTIONS and inputs and pure_in:
            src = inputs[0]
            dims = _reduced_dims(args, kwargs, src.ndim)
            folds_batch = self.batch > 1 and src.ndim >= 1 and src.shape[0] == self.batch
            if folds_batch and (dims is None or 0 in dims):
                collapse = f"{name}()"
        new: set[Label] = set()
        for p, kind in labels:
            if kind == "pure":
                kind = collapse if (collapse and p in pure_in) else ("pure" if stays_pure else "mixed")
            elif func is torch.autograd.grad:
                kind = "mixed"
            new.add((p, kind))
        labels = frozenset(new)
        for t in outs:
            self._set(t, self.labels_of(t) | labels)
        return out

    def collapsed_in(self, tensor: torch.Tensor) -> dict[str, str]:
        """{producer: collapsing op} for collapse marks carried by `tensor` (the model's output)."""
        return {p: c for p, c in sorted(self.labels_of(tensor)) if c not in _PLAIN}


def module_output(out: Any) -> torch.Tensor | None:
    """The tensor a module returned (the first one, for tuple outputs)."""
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    return None
