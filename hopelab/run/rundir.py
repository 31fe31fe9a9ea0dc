"""`RunDir`: one run's folder on disk. The only code that knows what lies where in it.

    <out>/<study>/<scale>/<run_name>/seed<k>/      (RunSpec.run_dir)
        config.json       the resolved ModelConfig + TrainConfig + RunSpec (also inside every checkpoint)
        manifest.json     the RunState: status and why, final numbers, git SHA, versions, hardware, times
        checkpoints/      step<k:06d>.ckpt, Lightning checkpoints every `ckpt_every` steps (the last two kept)
        probes/           long-format probe Parquet (hopelab.records.PROBE_SCHEMA)
        metrics.parquet   long-format training metrics (hopelab.records.METRICS_SCHEMA)
        error.txt         the traceback of a run that crashed
        progress.json     {step, total, loss, time} while a launched job trains it (hopelab.study.progress)
        logs/             --logger csv|tensorboard: Lightning's logger files (hopelab.lit.trainer.make_logger)
    <out>/<study>/.locks/<scale>.<run_name>.seed<k>.lock
                          held while a process trains the run (outside the folder, which training owns)
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from hopelab.records import read_json, write_json_atomic
from hopelab.run.lock import held_by_other
from hopelab.run.spec import parse_run_id
from hopelab.run.state import STATUS_PENDING, STATUS_RUNNING, RunState

_CKPT_RE = re.compile(r"^step(\d+)\.ckpt$")


class RunDir:
    ERROR_LOG = "error.txt"

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.config = self.path / "config.json"
        self.manifest = self.path / "manifest.json"
        self.checkpoints = self.path / "checkpoints"
        self.probes = self.path / "probes"
        self.metrics = self.path / "metrics.parquet"
        self.error_log = self.path / self.ERROR_LOG
        self.progress = self.path / "progress.json"
        self.logs = self.path / "logs"

    @classmethod
    def find(cls, root: str | Path) -> list[RunDir]:
        """Every run folder at or below `root` (a folder holding a manifest.json), in path order."""
        return [cls(manifest.parent) for manifest in sorted(Path(root).rglob("manifest.json"))]

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    @property
    def run_id(self) -> str:
        """`<study>/<scale>/<run_name>/seed<k>`, the last four parts of the path."""
        return "/".join(self.path.parts[-4:])

    def layout_identity(self) -> dict[str, Any]:
        """study, scale, run_name, seed, variant and tag as the folder's place in the layout says; {} when the
        folder is not at `<study>/<scale>/<run_name>/seed<k>`."""
        return (parse_run_id(self.run_id) or {}) if len(self.path.parts) >= 4 else {}

    def probe_files(self) -> list[Path]:
        """The probe Parquet files (`.<name>.tmp` files belong to an atomic write in progress)."""
        return [p for p in sorted(self.probes.glob("*.parquet")) if not p.name.startswith(".")]

    @property
    def lock(self) -> Path:
        return self.path.parents[2] / ".locks" / f"{'.'.join(self.path.parts[-3:])}.lock"

    @property
    def relative(self) -> str:
        """`<scale>/<run_name>/seed<k>`: the folder relative to its study's root."""
        return "/".join(self.path.parts[-3:])

    # ---------------------------------------------------------------------------------------- checkpoints
    def checkpoint(self, step: int) -> Path:
        return self.checkpoints / f"step{step:06d}.ckpt"

    def list_checkpoints(self) -> list[tuple[int, Path]]:
        """(step, path) of every step checkpoint, oldest first."""
        if not self.checkpoints.is_dir():
            return []
        found = [(int(m.group(1)), p) for p in self.checkpoints.iterdir() if (m := _CKPT_RE.match(p.name))]
        return sorted(found)

    # ---------------------------------------------------------------------------------------- json files
    def read_config(self) -> dict[str, Any] | None:
        """config.json, or None when there is none or it cannot be read."""
        return _read_object(self.config)

    def write_config(self, config: dict[str, Any]) -> None:
        write_json_atomic(config, self.config)

    def read_manifest(self) -> RunState | None:
        """manifest.json as written, or None when there is none or it cannot be read."""
        data = _read_object(self.manifest)
        return RunState.from_manifest(data, self.run_id) if data else None

    def write_manifest(self, state: RunState) -> None:
        write_json_atomic(state.to_manifest(), self.manifest)

    def write_error(self, text: str) -> str:
        """Write a traceback to error.txt; returns the file's name, for the reason that points to it."""
        self.path.mkdir(parents=True, exist_ok=True)
        self.error_log.write_text(text)
        return self.error_log.name

    # ---------------------------------------------------------------------------------------- state
    def state(self) -> RunState:
        """Where the run stands as a study sees it: done or failed (by itself) from its manifest; running
        only while another live process holds its lock; otherwise pending, with where it stopped (a run
        killed, interrupted or crashed midway resumes on the next invocation)."""
        manifest = self.read_manifest()
        if manifest is not None and manifest.final:
            return manifest
        state = manifest or RunState(self.run_id)
        owner = held_by_other(self.lock)
        if owner is not None:
            state.status, state.reason = STATUS_RUNNING, f"pid {owner.get('pid')} on {owner.get('host')}"
        elif manifest is not None:
            why = f"{manifest.status}: {manifest.reason}" if manifest.reason else "stopped"
            state.status, state.reason = STATUS_PENDING, f"partial ({why}) at step {manifest.last_step}; resumes"
        return state


def _read_object(path: Path) -> dict[str, Any] | None:
    try:
        data = read_json(path)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
