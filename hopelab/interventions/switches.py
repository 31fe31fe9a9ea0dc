"""The named intervention switches and which of them a model has.

    applicable_switches(model)           # ["none", "selfmod_writes_off", ..., "reset_every_64"] for hope
    with switched(model, "cms_writes_off"):
        logits = model(x)                # the CMS levels keep their meta-learned initial fast weights

A switch is an `Intervention` (hopelab.layers.fast_memory): the layers read it where their mechanism is
computed, so a switch is never a patched method. A switch that names a mechanism the model lacks does not
apply to it (the Transformer has `none` only; hope_attention, whose attention reads the whole context whatever
the memories do, has `none` and `cms_writes_off`: all_writes_off and reset_every_R promise a model with no
context beyond its memories):

    none                 as trained
    selfmod_writes_off   all six SR-Titans memories (k, v, q, η, α, memory) keep their initial state
    memory_writes_off    only M_memory (SR-Titans) or the Titans memory is frozen
    cms_writes_off       every CMS level keeps its initial fast weights
    all_writes_off       every in-context memory frozen
    gate_open            the surprise gate passes every token (gated variants)
    gate_closed          the surprise gate passes none: no SR-Titans write
    reset_every_R        the fast weights go back to their initial state every R tokens, R ∈ {C, 2C, 4C}
    cms_writes_off_from_R  the CMS levels with periods of R tokens or more keep their state, the faster ones
                         write; listed with R = the context length (the persistent levels: a level updates at
                         the end of each period, so only a stream read across windows reads what those write)
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator

from torch import nn

from hopelab.errors import UserError
from hopelab.layers.fast_memory import Intervention, with_intervention
from hopelab.layers.self_ref_titans import COMPONENTS
from hopelab.models.sites import MemorySite
from hopelab.models.transformer import CausalSelfAttention

NONE = "none"
RESET_PREFIX = "reset_every_"
CMS_FROM_PREFIX = "cms_writes_off_from_"
RESET_CHUNKS = (1, 2, 4)  # reset_every_R for R = chunk_size × these
SWITCH_HELP = ("none, selfmod_writes_off, memory_writes_off, cms_writes_off, all_writes_off, gate_open, "
               "gate_closed, reset_every_R (R in tokens, e.g. reset_every_16), cms_writes_off_from_R (e.g. "
               "cms_writes_off_from_128)")

_FIXED: dict[str, Intervention] = {
    NONE: Intervention(),
    "selfmod_writes_off": Intervention(frozen=COMPONENTS),
    "memory_writes_off": Intervention(frozen=("memory",)),
    "cms_writes_off": Intervention(frozen=("cms",)),
    "all_writes_off": Intervention(frozen=(*COMPONENTS, "cms")),
    "gate_open": Intervention(gate="open"),
    "gate_closed": Intervention(gate="closed"),
}
_RESET_RE = re.compile(rf"^{RESET_PREFIX}(\d+)$")
_CMS_FROM_RE = re.compile(rf"^{CMS_FROM_PREFIX}(\d+)$")


def intervention(name: str) -> Intervention:
    """The Intervention a switch name stands for; an unknown name is a UserError."""
    if name in _FIXED:
        return _FIXED[name]
    m = _RESET_RE.match(name)
    if m and int(m.group(1)) > 0:
        return Intervention(reset_every=int(m.group(1)))
    m = _CMS_FROM_RE.match(name)
    if m and int(m.group(1)) > 0:
        return Intervention(cms_frozen_from=int(m.group(1)))
    raise UserError(f"unknown switch {name!r}; choose from: {SWITCH_HELP}")


def _sites(model: nn.Module) -> list[MemorySite]:
    fn = getattr(model, "memory_sites", None)
    return list(fn()) if callable(fn) else []


def applies(model: nn.Module, name: str) -> bool:
    """Whether switch `name` names a mechanism `model` has (and, for a reset, one its steps can honour)."""
    iv = intervention(name)
    sites = _sites(model)
    if name == NONE:
        return True
    if not sites:
        return False
    kinds = {s.kind for s in sites}
    if name == "selfmod_writes_off":
        return any(s.kind == "selfmod" and len(s.components) > 1 for s in sites)
    if name == "memory_writes_off":
        return bool(kinds & {"selfmod", "titans"})
    if name == "cms_writes_off":
        return "cms" in kinds
    if iv.cms_frozen_from is not None:  # some level is frozen and some other still writes
        periods = [s.module.period for s in sites if s.kind == "cms"]
        return any(p >= iv.cms_frozen_from for p in periods) and any(p < iv.cms_frozen_from for p in periods)
    if any(isinstance(m, CausalSelfAttention) for m in model.modules()):
        return False  # all_writes_off, reset_every_R: attention still reads every earlier token
    if iv.gate != "learned":
        return "selfmod" in kinds and model.config.surprise_mode != "off"
    if iv.reset_every is not None:
        return all(_reset_fits(s, iv.reset_every) for s in sites)
    return True  # all_writes_off


def _reset_fits(site: MemorySite, every: int) -> bool:
    """A reset falls between two steps of the layer (hopelab.layers.fast_memory.FastMemory.run_chunks)."""
    step = site.module.chunk_tokens
    if site.kind == "cms" and every < step:  # the level then runs in steps of `every` tokens
        period = site.module.period
        return every % period == 0 or period % every == 0
    return every % step == 0


def reset_switches(model: nn.Module) -> list[str]:
    """reset_every_R for R = C, 2C, 4C (C the model's chunk size)."""
    chunk = getattr(getattr(model, "config", None), "chunk_size", None)
    return [f"{RESET_PREFIX}{m * chunk}" for m in RESET_CHUNKS] if chunk else []


def persistent_cms_switches(model: nn.Module) -> list[str]:
    """cms_writes_off_from_R for R = the context length (it applies when a CMS level's period is a window or more)."""
    context = getattr(getattr(model, "config", None), "context_len", None)
    return [f"{CMS_FROM_PREFIX}{context}"] if context else []


def applicable_switches(model: nn.Module) -> list[str]:
    """Every switch that applies to `model`, `none` first."""
    names = [*_FIXED, *reset_switches(model), *persistent_cms_switches(model)]
    return [n for n in names if applies(model, n)]


@contextlib.contextmanager
def switched(model: nn.Module, name: str) -> Iterator[nn.Module]:
    """Inside: `model` runs with switch `name` (a UserError when it does not apply to the model)."""
    if not applies(model, name):
        have = ", ".join(applicable_switches(model))
        raise UserError(f"switch {name!r} does not apply to this model; it has: {have}")
    with with_intervention(model, intervention(name)):
        yield model
