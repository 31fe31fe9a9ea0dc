"""Fast (in-context) state: the meta-learned initial states of every memory, and a trace of the states a
forward pass reaches (for the self-modification probes)."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Iterator

import torch
from torch import nn

from hopelab.layers.cms import CMSLevel
from hopelab.layers.self_ref_titans import SelfReferentialTitans
from hopelab.layers.titans import TitansMemory
from hopelab.ops.cms import cms_level

_MEMORY_LAYERS = (SelfReferentialTitans, TitansMemory)


@dataclass
class FastStateRecord:
    key: str  # e.g. "blocks.0.titans.memory" or "blocks.1.cms.levels.0"
    position: int  # tokens consumed when this state was reached
    states: dict[str, torch.Tensor]  # name -> [B, *initial state shape]


@dataclass
class FastStateTrace:
    records: list[FastStateRecord] = field(default_factory=list)


def initial_states(model: nn.Module) -> dict[str, dict[str, torch.Tensor]]:
    """Meta-learned initial states keyed like the trace: {key: {name: tensor (a view of a parameter)}}."""
    out: dict[str, dict[str, torch.Tensor]] = {}
    for name, mod in model.named_modules():
        if isinstance(mod, _MEMORY_LAYERS):
            for comp, st in mod.initial_states().items():
                out[f"{name}.{comp}"] = st
        elif isinstance(mod, CMSLevel):
            out[name] = mod.initial_states()
    return out


@contextlib.contextmanager
def trace_fast_states(model: nn.Module) -> Iterator[FastStateTrace]:
    """Inside: every forward appends FastStateRecords at chunk ends (Titans) and CMS period ends."""
    trace = FastStateTrace()
    touched = []
    try:
        for name, mod in model.named_modules():
            if isinstance(mod, _MEMORY_LAYERS):
                mod._trace = lambda comp, pos, st, _n=name: trace.records.append(FastStateRecord(f"{_n}.{comp}", pos, st))
                touched.append(mod)
            elif isinstance(mod, CMSLevel):
                mod._trace = lambda pos, st, _n=name: trace.records.append(FastStateRecord(_n, pos, st))
                touched.append(mod)
        yield trace
    finally:
        for mod in touched:
            mod._trace = None


def set_impl(model: nn.Module, impl: str) -> None:
    """Switch every in-context memory between the chunked fast path and the token-by-token reference."""
    if impl not in ("chunked", "reference"):
        raise ValueError(f"impl must be 'chunked' or 'reference', got {impl!r}")
    for mod in model.modules():
        if isinstance(mod, (*_MEMORY_LAYERS, CMSLevel)):
            mod.impl = impl


def compile_chunks(model: nn.Module, **options) -> int:
    """torch.compile the chunk step of every self-referential Titans layer (fused kernels for its ~80 small
    ops per chunk) and the step of every CMS level (hopelab.ops.cms.cms_level over a few whole blocks, as
    cms_level_stepped runs it). The loops stay in Python, so one graph serves every full chunk (step) at a
    given batch size and device; layers of the same config share it through torch's compile cache. Training
    steps use them; inference and a short last chunk (step) run eager. Numerics match the eager path to
    float32 rounding (tests/test_compile.py): the eager path runs the same steps uncompiled. Returns the
    number of modules compiled. `options` go to torch.compile."""
    options = {"dynamic": False, **options}
    n = 0
    for mod in model.modules():
        if isinstance(mod, SelfReferentialTitans):
            mod.compiled_chunk = torch.compile(mod._chunk, **options)
            n += 1
        elif isinstance(mod, CMSLevel):
            mod.compiled_step = torch.compile(cms_level, **options)
            n += 1
    return n


def recompute_chunks(model: nn.Module, enabled: bool = True) -> int:
    """Keep only the inputs of every SR-Titans chunk step and every CMS step for backward and recompute the
    rest there (hopelab.layers.recompute): 28.4 -> 4.9 GiB saved for backward in a `small` hope step, the same
    numbers, for one more forward of the memories. Composes with compile_chunks. Returns the number of
    modules switched."""
    n = 0
    for mod in model.modules():
        if isinstance(mod, (SelfReferentialTitans, CMSLevel)):
            mod.recompute = enabled
            n += 1
    return n
