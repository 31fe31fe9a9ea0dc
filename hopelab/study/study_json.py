"""`<out>/<study>/study.json`: the study's definition, the commands that ran it, and every run's state.

Many writers share it (scales run one after another, shards on other machines, `--jobs` workers), so each
update re-reads the file under a lock, changes only its own runs, and writes it atomically.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hopelab.errors import UserError
from hopelab.records import read_json, write_json_atomic
from hopelab.run import RunState
from hopelab.run.lock import FileLock
from hopelab.study.plan import PlannedRun

STUDY_JSON = "study.json"
_LOCK_WAIT_S = 120.0


def study_root(out: str | Path, study_name: str) -> Path:
    return Path(out) / study_name


def read_study_json(root: Path) -> dict[str, Any]:
    path = Path(root) / STUDY_JSON
    try:
        data = read_json(path)
    except json.JSONDecodeError as err:
        raise UserError(f"{path} is not valid JSON ({err.msg} at line {err.lineno}); fix or delete it") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"{path} is not a study.json (expected an object)")
    return data


def update_study_json(root: Path, change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    """Re-read, apply `change` in place, stamp `updated`, write atomically; all under the study's lock."""
    root = Path(root)
    with FileLock(root / f".{STUDY_JSON}.lock", wait=_LOCK_WAIT_S):
        data = read_study_json(root)
        change(data)
        data["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        write_json_atomic(data, root / STUDY_JSON)
    return data


def run_record(run: PlannedRun, state: RunState) -> dict[str, Any]:
    """One entry of study.json's "runs": the planned run and where it stands."""
    s = run.spec
    overrides = {**s.model_overrides, **s.train_overrides}
    return {
        "run_id": s.run_id,
        "run_name": s.run_name,
        "variant": s.variant,
        "tag": s.tag,
        "scale": s.scale,
        "seed": s.seed,
        "overrides": {k: list(v) if isinstance(v, tuple) else v for k, v in overrides.items()},
        "steps": run.steps,
        "tokens": run.tokens,
        "path": run.dir.relative,
        "status": state.status,
        "final_val_loss": state.final_val_loss,
        "wall_time_s": state.wall_time_s,
        "reason": state.reason,
    }


def _upsert(data: dict[str, Any], records: list[dict[str, Any]]) -> None:
    runs = data.setdefault("runs", [])
    index = {r.get("run_id"): i for i, r in enumerate(runs)}
    for rec in records:
        if rec["run_id"] in index:
            runs[index[rec["run_id"]]] = rec
        else:
            index[rec["run_id"]] = len(runs)
            runs.append(rec)


def register_study(root: Path, definition: dict, command: str, records: list[dict[str, Any]]) -> None:
    """At the start of an invocation: the definition, the command, and the state of each planned run."""

    def change(data: dict[str, Any]) -> None:
        data["study"] = definition["name"]
        data["definition"] = definition
        data["command"] = command
        commands = data.setdefault("commands", [])
        if command not in commands:
            commands.append(command)
        _upsert(data, records)

    update_study_json(root, change)


def record_runs(root: Path, records: list[dict[str, Any]]) -> None:
    update_study_json(root, lambda data: _upsert(data, records))
