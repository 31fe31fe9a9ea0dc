"""Where one run stands: `RunState`, the one record of a run's status.

It is what manifest.json holds (read and written by `RunDir`), what `train_one` returns, and what a study
lists and records in study.json. Statuses:

    pending   not started, or stopped midway (killed, interrupted, crashed): the next invocation resumes it
    running   being trained (by this process, or by another that holds the run's lock)
    done      finished, with a final val loss
    failed    its loss went non-finite at `failed_step` (a result, not retried); or, with no `failed_step`,
              it crashed or was interrupted (retried by the next invocation)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

STATUS_PENDING = "pending"
STATUS_RUNNING = "running"
STATUS_DONE = "done"
STATUS_FAILED = "failed"


@dataclass
class RunState:
    run_id: str  # <study>/<scale>/<run_name>/seed<k>
    status: str = STATUS_PENDING
    reason: str | None = None  # why it failed, or who is training it, or where it stopped
    failed_step: int | None = None  # the step whose loss went non-finite; None for any other failure
    last_step: int | None = None  # the step of the last complete checkpoint
    final_val_loss: float | None = None
    wall_time_s: float | None = None  # all attempts together
    started: str | None = None  # ISO times, UTC
    ended: str | None = None
    attempts: list[dict[str, Any]] = field(default_factory=list)  # {"started", "from_step"} per invocation
    git_sha: str | None = None
    versions: dict[str, str | None] | None = None
    hardware: dict[str, Any] | None = None
    probe_errors: list[str] | None = None
    probe_time_s: float | None = None
    ckpt_every: int | None = None
    skipped: bool = False  # not on disk: finished before this invocation, so not trained by it

    @property
    def final(self) -> bool:
        """A result: done, or failed by itself (a non-finite loss). Anything else is trained again."""
        return self.status == STATUS_DONE or (self.status == STATUS_FAILED and self.failed_step is not None)

    @property
    def crashed(self) -> bool:
        """Failed by an unexpected exception (its traceback is in the run's error.txt), or interrupted."""
        return self.status == STATUS_FAILED and self.failed_step is None

    def to_manifest(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "skipped"}

    @classmethod
    def from_manifest(cls, data: dict[str, Any], run_id: str) -> RunState:
        """A manifest's fields (unknown keys ignored; a manifest without run_id takes `run_id`)."""
        known = {f.name for f in dataclasses.fields(cls)} - {"skipped"}
        return cls(**{"run_id": run_id, **{k: v for k, v in data.items() if k in known}})
