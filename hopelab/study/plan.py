"""Expand a Study into the runs it means (one RunSpec per scale x cell x seed) and shard them.

    runs = plan_runs(study, scales=["small"], seeds=2, overrides={"dim": "32"})
    mine = shard_runs(runs, "2/4")     # every 4th run, starting with the 2nd
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hopelab.config import apply_overrides, check_scale, get_scale, split_overrides
from hopelab.errors import UserError
from hopelab.run import RunDir, RunSpec
from hopelab.run.spec import data_overrides
from hopelab.study.definition import FORBIDDEN_KEYS, Cell, Study


@dataclass
class PlannedRun:
    spec: RunSpec
    cell: Cell
    steps: int
    batch_size: int
    context_len: int
    tokenizer: str
    vocab_size: int

    @property
    def tokens(self) -> int:
        """Training tokens this run sees: steps x batch x context."""
        return self.steps * self.batch_size * self.context_len

    @property
    def dir(self) -> RunDir:
        return RunDir(self.spec.run_dir)


def resolve_scales(study: Study, scales: list[str] | None) -> list[str]:
    """`--scale small --scale scaled` or `--scale small,scaled`; none given: the study's own scales."""
    names = [s.strip() for item in (scales or []) for s in item.split(",") if s.strip()]
    for s in names:
        check_scale(s)
    return list(dict.fromkeys(names)) or list(study.scales)


def plan_runs(
    study: Study,
    scales: list[str] | None = None,
    seeds: int | None = None,
    overrides: dict[str, Any] | None = None,
    steps: int | None = None,
    out: str = "runs",
    data: str | None = None,
    accelerator: str = "auto",
    devices: str | int = "auto",
    precision: str | None = None,
    compile: bool = False,
    recompute: bool = False,
    logger: str | None = None,
    cudagraphs: bool = False,
) -> list[PlannedRun]:
    """Every run of the study, in a fixed order: scale, then cell (definition order), then seed.

    `overrides` (flat, from `--set`) apply to every cell after the cell's own; `steps` (`--steps`) last.
    `data` (`--data`) is the data of every cell that does not name its own (a synthetic task's cells do).
    """
    if seeds is not None and seeds < 1:
        raise UserError(f"--seeds must be >= 1, got {seeds}")
    if steps is not None and steps < 1:
        raise UserError(f"--steps must be >= 1, got {steps}")
    set_model, set_train = split_overrides(overrides or {}, "--set", FORBIDDEN_KEYS)
    if steps is not None:
        set_train["steps"] = steps
    runs: list[PlannedRun] = []
    for scale_name in resolve_scales(study, scales):
        scale = get_scale(scale_name)
        cells = study.cells_at(scale_name)
        if not cells:
            raise UserError(f"study {study.name!r} has no cells at scale {scale_name!r}")
        for cell in cells:
            model_ov = {**cell.model, **set_model}
            train_ov = {**cell.train, **set_train}
            where = f"study {study.name!r}, cell {cell.run_name!r} at {scale_name}"
            run_data = cell.data if cell.data is not None else data
            try:  # the resolved configs must be valid (e.g. dim divisible by n_heads)
                model_cfg = apply_overrides(scale.model, {**model_ov, **data_overrides(run_data)}, "model config")
                train_cfg = apply_overrides(scale.train, train_ov, "train config")
            except UserError as err:
                raise UserError(f"{where}: {err}") from None
            run_steps = train_ov.pop("steps", train_cfg.steps)  # steps live in RunSpec.steps only
            for seed in range(seeds if seeds is not None else study.seeds_at(scale_name)):
                spec = RunSpec(
                    variant=cell.variant,
                    scale=scale_name,
                    seed=seed,
                    study=study.name,
                    steps=run_steps,
                    data=run_data,
                    out=str(out),
                    model_overrides=dict(model_ov),
                    train_overrides=dict(train_ov),
                    tag=cell.tag,
                    accelerator=accelerator,
                    devices=devices,
                    precision=precision,
                    compile=compile,
                    recompute=recompute,
                    logger=logger,
                    cudagraphs=cudagraphs,
                )
                runs.append(
                    PlannedRun(
                        spec, cell, run_steps, train_cfg.batch_size, model_cfg.context_len,
                        model_cfg.tokenizer, model_cfg.vocab_size,
                    )
                )
    return runs


def parse_shard(shard: str | None) -> tuple[int, int] | None:
    """"2/4" -> (2, 4): the 2nd of 4 shards (1-based, like `--array=1-4`)."""
    if shard is None:
        return None
    try:
        i, n = (int(x) for x in shard.split("/"))
    except ValueError:
        raise UserError(f"--shard {shard!r}: expected I/N with 1 <= I <= N, e.g. --shard 1/4") from None
    if n < 1 or not 1 <= i <= n:
        raise UserError(f"--shard {shard!r}: expected I/N with 1 <= I <= N, e.g. --shard 1/4")
    return i, n


def shard_runs(runs: list[PlannedRun], shard: str | tuple[int, int] | None) -> list[PlannedRun]:
    """Shard i of n takes runs i-1, i-1+n, i-1+2n, ... of the plan: every run lands in exactly one shard,
    the same one on every machine given the same command, and shards get near-equal mixes of variants."""
    parsed = parse_shard(shard) if isinstance(shard, str) or shard is None else shard
    if parsed is None:
        return list(runs)
    i, n = parsed
    return [run for k, run in enumerate(runs) if k % n == i - 1]


def check_same_config(run: PlannedRun) -> None:
    """Resuming (or reporting) a run started with other overrides, steps or data would mix two experiments
    in one directory: refuse before anything starts. Same rule as train_one's own check."""
    if not run.dir.config.exists():
        return
    from hopelab.run.identity import spec_identity  # torch: only when there is a run to check

    saved = spec_identity((run.dir.read_config() or {}).get("spec", {}))
    want = spec_identity(run.spec)
    diff = [k for k in want if want[k] != saved.get(k)]
    if diff:
        parts = ", ".join(f"{k} {saved.get(k)} -> {want[k]}" for k in diff)
        raise UserError(
            f"run {run.spec.run_id} in {run.spec.out} was started with different settings ({parts}); "
            "use another --out, or delete that run directory to start it again"
        )
