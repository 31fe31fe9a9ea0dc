"""Run a user's Python file as a module: study definitions (`hopelab study my_study.py`) and audit targets
(`hopelab audit their_model.py:factory`) both come in this way."""

from __future__ import annotations

import hashlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from hopelab.errors import UserError


class UserFileError(UserError):
    """The file could not be run; `reason` says why in one line (`line 3: invalid syntax`, `NameError: ...`)."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = path, reason


def exec_user_file(path: Path, keep: bool = False) -> ModuleType:
    """Execute `path` as a fresh module. Its folder goes on sys.path first, so it can import its siblings.
    `keep`: leave it in sys.modules, so later look-ups of the same file (a factory, then its call and loss
    functions) share one module and its classes; otherwise every call runs the file anew. A UserError the
    file raises itself passes through unchanged."""
    path = Path(path).expanduser().resolve()
    name = f"_hopelab_user_{path.stem}_{hashlib.sha1(str(path).encode()).hexdigest()[:10]}"
    if keep and name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise UserFileError(path, "not a Python file")
    folder = str(path.parent)
    if folder not in sys.path:
        sys.path.insert(0, folder)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except UserError:
        sys.modules.pop(name, None)
        raise
    except SyntaxError as err:
        sys.modules.pop(name, None)
        raise UserFileError(path, f"line {err.lineno}: {err.msg}") from None
    except Exception as err:  # a user's file can fail in any way; say how, in one line
        sys.modules.pop(name, None)
        raise UserFileError(path, f"{type(err).__name__}: {err}") from None
    if not keep:
        sys.modules.pop(name, None)
    return module
