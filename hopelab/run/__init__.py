"""One training run: what it is, where it lives, where it stands, and training it.

    from hopelab.run import RunSpec, RunDir, train_one
    spec = RunSpec(variant="hope", scale="tiny", seed=0)
    state = train_one(spec)                       # RunState: status, final_val_loss, wall_time_s, ...
    RunDir(spec.run_dir).state()                  # the same, read back from the run's folder

Modules: spec (RunSpec, resolve_configs), rundir (RunDir: the folder layout), state (RunState and the
statuses), identity (what a run computes; git SHA, versions, hardware), lock (lock files), training
(train_one: resolve configs -> RunDir -> build -> train -> finish).
"""

from __future__ import annotations

from hopelab.run.rundir import RunDir
from hopelab.run.spec import RunSpec, parse_overrides, resolve_configs
from hopelab.run.state import STATUS_DONE, STATUS_FAILED, STATUS_PENDING, STATUS_RUNNING, RunState


def __getattr__(name: str):
    if name == "train_one":  # imported on first use: it pulls in Lightning and the models
        from hopelab.run.training import train_one

        return train_one
    raise AttributeError(f"module 'hopelab.run' has no attribute {name!r}")


__all__ = [
    "RunDir",
    "RunSpec",
    "RunState",
    "STATUS_DONE",
    "STATUS_FAILED",
    "STATUS_PENDING",
    "STATUS_RUNNING",
    "parse_overrides",
    "resolve_configs",
    "train_one",
]
