"""Probe points in the TransformerLens style.

A `HookPoint` is an identity module placed on a tensor worth reading (`blocks.3.cms.levels.1.hook_out`).
It costs one Python call when nothing is attached. Hooks are attached only inside `attach_hooks`, which
always removes them, even when the forward raises.
"""

from __future__ import annotations

import contextlib
import fnmatch
from collections.abc import Callable, Iterator, Mapping

import torch
from torch import nn

HookFn = Callable[[str, torch.Tensor], None]


class HookPoint(nn.Module):
    """Identity. Its dotted name in the model is the probe point's name."""

    @property
    def has_hooks(self) -> bool:
        """Whether a hook is attached: a layer may skip building a tensor only a hook would read."""
        return bool(self._forward_hooks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def hook_names(model: nn.Module) -> list[str]:
    return [name for name, mod in model.named_modules() if isinstance(mod, HookPoint)]


@contextlib.contextmanager
def attach_hooks(model: nn.Module, hooks: Mapping[str, HookFn]) -> Iterator[list[str]]:
    """Attach `fn(name, tensor)` to every hook point whose name matches a key (glob patterns allowed).

    Yields the names that were attached. Unknown exact names raise KeyError (a typo must not pass silently).
    """
    handles = []
    attached: list[str] = []
    names = hook_names(model)
    modules = dict(model.named_modules())
    try:
        for pattern, fn in hooks.items():
            matched = [n for n in names if fnmatch.fnmatchcase(n, pattern)]
            if not matched and not any(ch in pattern for ch in "*?["):
                raise KeyError(f"no hook point named {pattern!r}")
            for name in matched:
                handles.append(
                    modules[name].register_forward_hook(lambda _m, _i, out, _n=name, _f=fn: _f(_n, out))
                )
                attached.append(name)
        yield attached
    finally:
        for h in handles:
            h.remove()


@contextlib.contextmanager
def record_hooks(model: nn.Module, patterns: list[str] | tuple[str, ...] = ("*",)) -> Iterator[dict]:
    """Record detached outputs of matching hook points into a dict {name: tensor} (last call wins)."""
    store: dict[str, torch.Tensor] = {}

    def keep(name: str, t: torch.Tensor) -> None:
        store[name] = t.detach()

    with attach_hooks(model, {p: keep for p in patterns}):
        yield store
