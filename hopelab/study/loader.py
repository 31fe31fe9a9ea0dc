"""Find study definitions: the built-in ones in `studies/` (one file per study) or a user's own file.

A definition file is Python that builds `STUDY = Study(...)` from `hopelab.study`.
"""

from __future__ import annotations

import hashlib
import importlib
import pkgutil
from dataclasses import dataclass
from pathlib import Path

from hopelab.errors import UserError
from hopelab.study.definition import Study
from hopelab.userfiles import UserFileError, exec_user_file


@dataclass
class LoadedStudy:
    study: Study
    source: str  # "studies/ablation.py" or the user's path
    text: str  # the definition file as written (stored in study.json)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()


def builtin_names() -> list[str]:
    import studies

    return sorted(m.name for m in pkgutil.iter_modules(studies.__path__) if not m.name.startswith("_"))


def _study_from_module(module, source: str) -> Study:
    study = getattr(module, "STUDY", None)
    if not isinstance(study, Study):
        found = type(study).__name__ if study is not None else "nothing"
        raise UserError(f"study file {source} must define STUDY = Study(...) (hopelab.study); found {found}")
    return study


def _exec_file(path: Path) -> Study:
    try:
        module = exec_user_file(path)
    except UserFileError as err:
        raise UserError(f"malformed study file {path}: {err.reason}") from None
    except UserError as err:
        raise UserError(f"study file {path}: {err}") from None
    return _study_from_module(module, str(path))


def load_study(name_or_path: str) -> LoadedStudy:
    """A built-in study by name (`ablation`) or a user's definition file (`my_study.py`)."""
    looks_like_path = name_or_path.endswith(".py") or "/" in name_or_path or Path(name_or_path).is_file()
    if looks_like_path:
        path = Path(name_or_path)
        if not path.is_file():
            raise UserError(f"study file {name_or_path} does not exist")
        return LoadedStudy(_exec_file(path), str(path), path.read_text())
    names = builtin_names()
    if name_or_path not in names:
        raise UserError(
            f"unknown study {name_or_path!r}; choose one of: {', '.join(names)} (or pass a .py file defining STUDY)"
        )
    try:
        module = importlib.import_module(f"studies.{name_or_path}")
    except UserError as err:
        raise UserError(f"built-in study {name_or_path}: {err}") from None
    path = Path(module.__file__)
    return LoadedStudy(_study_from_module(module, f"studies/{path.name}"), f"studies/{path.name}", path.read_text())
