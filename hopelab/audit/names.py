"""Name heuristics: which parameters are in-context memory states, which modules produce η / α.

The audit never sees the author's intent, only names. It splits every dotted name into words (on `.`, `_`,
digits and camelCase: `blocks.0.M_eta.w1` -> blocks, M, eta, w) and matches them against two word lists:

- memory words (check 3 "gradient through in-context updates" audits these parameters):
  memory, mem, init, initial, state, fast, eta, lr, alpha, decay, gate, theta, beta, momentum, forget, keep,
  and a standalone capital `M` (`M_k`, `M_memory`: the paper's notation for a memory). A state noun (memory,
  mem, state, init, ...) directly followed by a word naming a network that *processes* it (`state_encoder`,
  `memory_proj`, `state_embed`: PROCESSOR_WORDS) does not count: that is an encoder of states, not a state.
- η/α producer words (check 8 "learning rate / decay collapse" records these modules' outputs):
  eta, lr, alpha, decay, theta, beta, momentum, forget, keep. Only the module's own name counts (`M_eta`,
  `eta_proj`, `hook_eta`), not its parent's, so the Linear inside `M_eta` is not a second producer.

A model may say it exactly: `model.initial_states()` (hopelab's contract: {key: {name: Parameter}}) marks
memory initial states, and `--memory-params GLOB` (fnmatch on parameter names) adds to the heuristics.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable

from torch import nn

MEMORY_WORDS = frozenset(
    "memory memories mem mems init initial state states fast eta lr alpha decay gate gates theta beta "
    "momentum forget keep".split()
)
STATE_NOUNS = frozenset("memory memories mem mems state states init initial".split())
PROCESSOR_WORDS = frozenset(
    "encoder encoders enc embed embedding embeddings emb decoder dec proj projection head norm tokenizer".split()
)
PRODUCER_WORDS = frozenset("eta lr alpha decay theta beta momentum forget keep".split())

_SPLIT = re.compile(r"[^A-Za-z]+")
_CAMEL = re.compile(r"(?<=[a-z])(?=[A-Z])")


def words(name: str) -> list[str]:
    """`blocks.0.M_eta.w1` -> ['blocks', 'M', 'eta', 'w']; camelCase splits too; case is kept."""
    out: list[str] = []
    for part in _SPLIT.split(name):
        out.extend(w for w in _CAMEL.split(part) if w)
    return out


def is_memory_name(name: str) -> bool:
    ws = words(name)
    for i, w in enumerate(ws):
        follower = ws[i + 1].lower() if i + 1 < len(ws) else ""
        if w.lower() in STATE_NOUNS and follower in PROCESSOR_WORDS:
            continue
        if w == "M" or w.lower() in MEMORY_WORDS:
            return True
    return False


def is_producer_name(module_name: str) -> bool:
    """Only the last dotted segment counts: the module's own name."""
    return any(w.lower() in PRODUCER_WORDS for w in words(module_name.rsplit(".", 1)[-1]))


def declared_initial_states(model: nn.Module) -> set[int]:
    """ids of the Parameters a model declares via `initial_states()` (hopelab's contract); empty if none."""
    fn = getattr(model, "initial_states", None)
    if not callable(fn):
        return set()
    try:
        states = fn()
    except Exception:  # a foreign model may have a method of that name with another meaning
        return set()
    found: set[int] = set()

    def walk(obj) -> None:
        if isinstance(obj, nn.Parameter):
            found.add(id(obj))
        elif isinstance(obj, dict):
            for v in obj.values():
                walk(v)
        elif isinstance(obj, (list, tuple)):
            for v in obj:
                walk(v)

    walk(states)
    return found


def memory_parameters(
    model: nn.Module, globs: Iterable[str] = (), producer_modules: Iterable[str] = ()
) -> dict[str, str]:
    """{parameter name: why} for the parameters check 3 audits."""
    declared = declared_initial_states(model)
    globs = list(globs)
    producers = [p + "." for p in producer_modules]
    out: dict[str, str] = {}
    for name, p in model.named_parameters():
        if id(p) in declared:
            out[name] = "initial_states()"
        elif any(fnmatch.fnmatchcase(name, g) for g in globs):
            out[name] = "--memory-params"
        elif any(name.startswith(pre) for pre in producers):
            out[name] = "η/α producer"
        elif is_memory_name(name):
            out[name] = "name"
    return out


def producer_modules(model: nn.Module) -> list[str]:
    """Modules whose own name says they produce an inner learning rate, decay or momentum."""
    return [n for n, m in model.named_modules() if n and is_producer_name(n) and not isinstance(m, nn.ModuleList)]


def _row_owner(model: nn.Module, param_name: str) -> tuple[str, nn.Module | None]:
    """(row name, owning leaf module or None when the parameter gets its own row)."""
    owner = param_name.rpartition(".")[0]
    module = model.get_submodule(owner) if owner else model
    if owner and not any(True for _ in module.children()):
        return owner, module
    return param_name, None


def owner_type(model: nn.Module, param_name: str) -> str:
    """`Linear`, `LayerNorm`, ... for parameters of a leaf module; `Parameter` for a bare one."""
    module = _row_owner(model, param_name)[1]
    return type(module).__name__ if module is not None else "Parameter"


def component_of(model: nn.Module, param_name: str) -> str:
    """The gradient-flow table's row: the owning module, layer indices replaced by `*`.

    Parameters owned by a leaf module (Linear, LayerNorm, a ParameterDict) are grouped under it; a
    parameter held directly by a module with children (an initial state next to projections) gets its own row.
    """
    row = _row_owner(model, param_name)[0]
    return re.sub(r"(?<=\.)\d+(?=\.|$)|^\d+(?=\.|$)", "*", row)
