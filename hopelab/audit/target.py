"""How the audit reaches a model it has never seen: targets, inputs, the call and the default loss.

- TARGET `package.module:factory` or `path/to/file.py:factory`; `factory(**kwargs)` returns an `nn.Module`
  (a class works: `titans_pytorch:NeuralMemory` with `--kw dim=64`). A file's own folder is put on `sys.path`
  so it can import its siblings. `--kw key=value` values are parsed as JSON, else kept as strings.
- Inputs: hopelab.audit.inputs (`tokens`, `float:DIM`, named ones passed by keyword, tokens per step).
- Call: `fn(model, x) -> output` (default `model(x)`, or `model(**x)` for named inputs). An output may be a
  tensor, a tuple/list (first tensor) or a dict (`logits`, `output`, `out`, `y`, else the first tensor value);
  it must be [B, T, ...] ([B, T·N, ...] with N tokens per step).
- Default loss (next-token; x is the primary input, the output as the model returned it):
    tokens and output [B, T, V] with V >= vocab: cross-entropy of output[:, :-1] against x[:, 1:];
    float input and output [B, T, DIM]: MSE of output[:, :-1] against x[:, 1:];
    any other output shape: MSE of the output against a fixed standard-normal target of the output's shape
    (seeded), so every output element gets a generic, non-degenerate gradient.
  A user loss `fn(output, x) -> scalar` (or `fn(output, x, model)`) replaces it.
"""

from __future__ import annotations

import importlib
import inspect
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from hopelab.audit.inputs import InputSpec
from hopelab.errors import UserError
from hopelab.userfiles import UserFileError, exec_user_file

CallFn = Callable[[nn.Module, torch.Tensor], Any]
LossFn = Callable[..., torch.Tensor]


def load_object(spec: str, what: str = "target") -> Any:
    """`package.module:attr` or `path/to/file.py:attr` -> the attribute (a UserError names the problem)."""
    if not isinstance(spec, str) or ":" not in spec:
        raise UserError(f"{what} {spec!r} must look like package.module:name or path/to/file.py:name")
    mod_part, _, attr = spec.rpartition(":")
    if not mod_part or not attr:
        raise UserError(f"{what} {spec!r} must look like package.module:name or path/to/file.py:name")
    if mod_part.endswith(".py") or "/" in mod_part or "\\" in mod_part:
        path = Path(mod_part).expanduser().resolve()
        if not path.is_file():
            raise UserError(f"{what} file {mod_part!r} does not exist")
        try:
            module = exec_user_file(path, keep=True)
        except UserFileError as err:
            raise UserError(f"cannot import {what} file {mod_part!r}: {err.reason}") from None
    else:
        try:
            module = importlib.import_module(mod_part)
        except Exception as err:
            raise UserError(f"cannot import {what} module {mod_part!r}: {type(err).__name__}: {err}") from err
    if not hasattr(module, attr):
        public = sorted(n for n in vars(module) if not n.startswith("_") and callable(getattr(module, n)))
        raise UserError(f"{what} {mod_part!r} has no attribute {attr!r}; callables there: {', '.join(public[:20])}")
    return getattr(module, attr)


def parse_kwargs(items: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """`["dim=64", "name=mlp", "sizes=[1,2]"]` -> {"dim": 64, "name": "mlp", "sizes": [1, 2]} (JSON, else a string)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip().isidentifier():
            raise UserError(f"--kw {item!r} must look like key=value (a Python identifier, then =)")
        try:
            out[key.strip()] = json.loads(value)
        except ValueError:
            out[key.strip()] = value
    return out


def build_target(spec: str, kwargs: dict[str, Any] | None = None) -> nn.Module:
    factory = load_object(spec, "target")
    kwargs = kwargs or {}
    if isinstance(factory, nn.Module):
        if kwargs:
            raise UserError(f"target {spec!r} is a module instance; --kw {', '.join(kwargs)} cannot be passed to it")
        return factory
    if not callable(factory):
        raise UserError(f"target {spec!r} is neither an nn.Module nor a factory returning one")
    try:
        inspect.signature(factory).bind(**kwargs)
    except TypeError as err:  # names the argument: "unexpected keyword argument 'dimm'", "missing ... 'dim'"
        raise UserError(f"factory {spec!r} does not take these arguments: {err}") from None
    except ValueError:  # no signature to check (a builtin): calling it will tell
        pass
    try:
        model = factory(**kwargs)
    except UserError:
        raise
    except Exception as err:
        given = f" with {', '.join(f'{k}={v!r}' for k, v in kwargs.items())}" if kwargs else ""
        raise UserError(f"factory {spec!r} failed{given}: {type(err).__name__}: {err}") from err
    if not isinstance(model, nn.Module):
        raise UserError(f"factory {spec!r} returned {type(model).__name__}, not an nn.Module")
    return model


def entry_points(model: nn.Module, words: tuple[str, ...] = ("reset", "init")) -> list[str]:
    """`Class.method()` for the model's own methods whose name has one of `words` (torch's own excluded)."""
    found = set()
    for cls in {type(m) for m in model.modules()}:
        for attr in dir(cls):
            if attr.startswith("__") or hasattr(nn.Module, attr) or attr == "reset_parameters":
                continue
            if any(w in attr.lower() for w in words) and callable(getattr(cls, attr, None)):
                found.add(f"{cls.__name__}.{attr}()")
    return sorted(found)


def forward_signature(model: nn.Module) -> str:
    """`forward(x, state=None)` as the model declares it."""
    try:
        return f"forward{inspect.signature(model.forward)}"
    except (TypeError, ValueError):
        return "forward(...)"


def as_output(result: Any) -> torch.Tensor:
    """The output tensor inside whatever a call returned."""
    if isinstance(result, torch.Tensor):
        return result
    if isinstance(result, dict):
        for key in ("logits", "output", "out", "y"):
            if isinstance(result.get(key), torch.Tensor):
                return result[key]
        for v in result.values():
            if isinstance(v, torch.Tensor):
                return v
    if isinstance(result, (tuple, list)):
        for v in result:
            if isinstance(v, torch.Tensor):
                return v
    raise UserError(f"the model returned {type(result).__name__} with no tensor in it; pass --call module:fn")


class DefaultLoss:
    """The documented next-token loss (see the module docstring)."""

    def __init__(self, spec: InputSpec, seed: int) -> None:
        self.spec = spec
        self.seed = seed
        self._targets: dict[tuple, torch.Tensor] = {}
        self.kind = "unset"

    def __call__(self, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if self.spec.kind == "tokens" and out.ndim == 3 and out.shape[-1] >= self.spec.vocab:
            self.kind = "next-token cross-entropy (output[:, :-1] vs x[:, 1:])"
            return F.cross_entropy(out[:, :-1].reshape(-1, out.shape[-1]), x[:, 1:].reshape(-1))
        if self.spec.kind == "float" and out.shape[2:] == x.shape[2:]:
            self.kind = "next-step MSE (output[:, :-1] vs x[:, 1:])"
            return F.mse_loss(out[:, :-1], x[:, 1:])
        self.kind = f"MSE against a fixed random target of the output's shape {tuple(out.shape[2:])}"
        key = (tuple(out.shape[1:]), out.dtype, str(out.device))
        if key not in self._targets:
            gen = torch.Generator().manual_seed(self.seed + 7)
            target = torch.randn(out.shape[1:], generator=gen, dtype=torch.float64)
            self._targets[key] = target.to(out.device, out.dtype)
        return F.mse_loss(out, self._targets[key].expand_as(out))


def user_loss(fn: LossFn, model_ref: Callable[[], nn.Module]) -> LossFn:
    """Wrap `fn(output, x)` or `fn(output, x, model)` into `loss(output, x)`."""
    try:
        n_args = len(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        n_args = 2
    if n_args >= 3:
        return lambda out, x: fn(out, x, model_ref())
    return fn
