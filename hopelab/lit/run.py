"""One training run, start to finish: `train_one(spec) -> RunResult`. Used by `hopelab train` and the study
runner.

    resolve the configs (bad variant/scale/override -> UserError before anything is written)
    a done run is returned as is; otherwise prepare the data, write config.json and a running manifest,
    build the model under torch.manual_seed(seed), resume from the last good checkpoint if there is one,
    train with metrics + probes + checkpoints, then evaluate the final val loss and mark the run done
    (or failed, naming the step and the quantity, when a loss goes NaN/inf).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import importlib.metadata
import json
import logging
import os
import platform
import subprocess
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import lightning.pytorch as pl
import torch

from hopelab.config import (
    ModelConfig,
    TrainConfig,
    apply_overrides,
    get_scale,
    parse_set_options,
    split_overrides,
    to_dict,
)
from hopelab.errors import UserError
from hopelab.lit.datamodule import StepDataModule
from hopelab.lit.metrics import TrainMetrics, evaluate
from hopelab.lit.module import LitLM, NonFiniteError
from hopelab.lit.trainer import Schedule, StepCheckpoint, last_good_checkpoint, make_trainer
from hopelab.models import check_variant, compile_chunks, count_parameters, recompute_chunks, variant_config
from hopelab.probes import RunLabels, make_probes
from hopelab.runs import STATUS_DONE, STATUS_FAILED, STATUS_RUNNING, RunSpec
from hopelab.tables import write_json_atomic

log = logging.getLogger("hopelab.train")

ProgressFn = Callable[[int, int, float], None]


@dataclass
class RunResult:
    status: str  # done | failed
    final_val_loss: float | None
    wall_time_s: float | None
    reason: str | None
    last_step: int | None
    run_dir: Path


# ----------------------------------------------------------------------------------------------------------
# configs


def resolve_configs(spec: RunSpec) -> tuple[ModelConfig, TrainConfig]:
    """The scale preset with the spec's overrides; the model config before the data fixes vocab_size and
    before the variant's switches (see `variant_config`). Raises UserError on any bad name or value."""
    check_variant(spec.variant)
    scale = get_scale(spec.scale)
    model = apply_overrides(scale.model, dict(spec.model_overrides), "model config")
    train_over = dict(spec.train_overrides)
    if spec.steps is not None:
        train_over["steps"] = spec.steps
    train_over["seed"] = spec.seed
    if "betas" in train_over:
        train_over["betas"] = tuple(train_over["betas"])
    train = apply_overrides(scale.train, train_over, "train config")
    check_train_config(train)
    variant_config(spec.variant, model)  # validates the variant's config early (e.g. matched width)
    return model, train


def check_train_config(t: TrainConfig) -> None:
    for name in ("steps", "batch_size", "ckpt_every", "val_batches"):
        if int(getattr(t, name)) < 1:
            raise UserError(f"{name} must be >= 1, got {getattr(t, name)}")
    if not t.lr > 0:
        raise UserError(f"lr must be > 0, got {t.lr}")
    if t.schedule not in ("constant", "cosine"):
        raise UserError(f"unknown schedule {t.schedule!r}; choose constant or cosine")
    if t.warmup_steps < 0 or t.grad_clip < 0 or t.weight_decay < 0:
        raise UserError("warmup_steps, grad_clip and weight_decay must be >= 0")


def parse_overrides(items: list[str] | tuple[str, ...]) -> tuple[dict[str, Any], dict[str, Any]]:
    """`key=value` strings -> (model overrides, train overrides), values typed like the field's default.
    Unknown keys and unparsable values are a UserError."""
    return split_overrides(parse_set_options(list(items)), "--set")


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _git_sha() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for pkg in ("hopelab", "torch", "lightning", "numpy", "pandas", "pyarrow", "tokenizers"):
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            out[pkg] = None
    return out


def hardware(trainer: pl.Trainer | None = None) -> dict[str, Any]:
    hw: dict[str, Any] = {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": platform.processor() or None,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda_available": torch.cuda.is_available(),
        "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
    }
    if trainer is not None:
        hw.update(
            accelerator=type(trainer.accelerator).__name__,
            num_devices=trainer.num_devices,
            world_size=trainer.world_size,
            precision=str(trainer.precision),
            strategy=type(trainer.strategy).__name__,
        )
    return hw


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def _normalise(obj: Any) -> Any:
    return json.loads(json.dumps(obj, sort_keys=True, default=str))


def spec_identity(spec: RunSpec | dict[str, Any]) -> dict[str, Any]:
    """What a run computes, from a RunSpec or a config.json "spec" dict: a run directory holding another
    identity is another run. Used by train_one and by the study planner (one rule for both). An unreadable
    spec has the empty identity (it matches nothing)."""
    if isinstance(spec, dict):
        known = {f.name for f in dataclasses.fields(RunSpec)}
        try:
            spec = RunSpec(**{k: v for k, v in spec.items() if k in known})
        except TypeError:
            return {}
    try:
        model_cfg, train_cfg = resolve_configs(spec)
    except UserError:
        return {}
    return run_identity(spec, model_cfg, train_cfg)


def run_identity(spec: RunSpec, model_cfg: ModelConfig, train_cfg: TrainConfig) -> dict[str, Any]:
    """What a run computes: a run directory holding another identity is a different run. Resolved configs
    (not the raw overrides), so `--steps 300` and the scale's default 300 are the same run."""
    flat = {
        "variant": spec.variant,
        "scale": spec.scale,
        "seed": spec.seed,
        "study": spec.study,
        "tag": spec.tag,
        "data": os.path.abspath(spec.data) if spec.data else None,
        **{f"model.{k}": v for k, v in to_dict(model_cfg).items()},
        **{f"train.{k}": v for k, v in to_dict(train_cfg).items()},
    }
    return _normalise(flat)


def _is_rank_zero() -> bool:
    """Before the Trainer exists: a DDP worker process started by Lightning has a non-zero rank in its env."""
    for key in ("RANK", "LOCAL_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK"):
        if key in os.environ:
            return int(os.environ[key]) == 0
    return True


class Manifest:
    """manifest.json of one run, rewritten atomically on every change (rank 0 only)."""

    def __init__(self, run_dir: Path, run_id: str, enabled: bool = True) -> None:
        self.path = Path(run_dir) / "manifest.json"
        self.enabled = enabled
        self.data: dict[str, Any] = read_json(self.path) or {}
        self.data.setdefault("run_id", run_id)
        self.base_wall = float(self.data.get("wall_time_s") or 0.0) if self.data.get("status") != STATUS_DONE else 0.0
        self.t0 = time.perf_counter()

    def wall(self) -> float:
        return self.base_wall + (time.perf_counter() - self.t0)

    def update(self, **fields: Any) -> None:
        self.data.update(fields)
        if self.enabled:
            write_json_atomic(self.data, self.path)


# ----------------------------------------------------------------------------------------------------------
# the run


def train_one(spec: RunSpec, progress: ProgressFn | None = None, cache_dir: str | None = None) -> RunResult:
    """Train (or resume, or just report) one run. `progress(step, total, loss)` is called every step on rank 0;
    without it a rich progress bar is shown. Bad input raises UserError; a failing run returns status failed."""
    model_cfg, train_cfg = resolve_configs(spec)
    run_dir = spec.run_dir
    rank0 = _is_rank_zero()

    identity = run_identity(spec, model_cfg, train_cfg)
    existing = read_json(run_dir / "config.json")
    theirs = spec_identity((existing or {}).get("spec", {}))
    if existing is not None and theirs != identity:
        diff = sorted(k for k in set(identity) | set(theirs) if identity.get(k) != theirs.get(k))
        raise UserError(
            f"{run_dir} already holds a run with different settings ({', '.join(diff)}); "
            "choose another --out, --study or tag, or delete that directory"
        )
    manifest = Manifest(run_dir, spec.run_id, enabled=rank0)
    if manifest.data.get("status") == STATUS_DONE and existing is not None:
        d = manifest.data
        return RunResult(STATUS_DONE, d.get("final_val_loss"), d.get("wall_time_s"), None, d.get("last_step"), run_dir)

    from hopelab.data import prepare

    data = prepare(
        corpus=spec.data,
        tokenizer=model_cfg.tokenizer,
        vocab_size=model_cfg.vocab_size,
        cache_dir=cache_dir,
        progress=progress is None and rank0,
    )
    base_cfg = dataclasses.replace(model_cfg, vocab_size=int(data.vocab_size))  # the model must match the data

    pl.seed_everything(spec.seed, workers=True, verbose=False)  # model init is a function of the seed
    module = LitLM(spec.variant, base_cfg, train_cfg)
    model_cfg = module.model.config  # resolved: the variant's switches applied (matched width solved)
    compiled_modules = compile_chunks(module.model) if spec.compile else 0
    recomputed_modules = recompute_chunks(module.model) if spec.recompute else 0
    config = {
        "spec": _normalise(dataclasses.asdict(spec)),
        "model": to_dict(model_cfg),
        "train": to_dict(train_cfg),
        "variant": spec.variant,
        "scale": spec.scale,
        "n_params": count_parameters(module.model),
        "identity": identity,
        "data": {k: data.meta.get(k) for k in ("key", "documents", "train_tokens", "val_tokens") if k in data.meta},
    }
    module.run_config = config  # stored inside every checkpoint
    ckpt = last_good_checkpoint(run_dir / "checkpoints", rename_corrupt=rank0)
    resume_step = ckpt[0] if ckpt else 0

    dm = StepDataModule(
        data, model_cfg.context_len, train_cfg.batch_size, spec.seed, train_cfg.val_batches, train_cfg.probe_seed
    )
    schedule = Schedule(train_cfg.ckpt_every, train_cfg.steps)
    labels = RunLabels(
        run_id=spec.run_id,
        study=spec.study,
        variant=spec.variant,
        scale=spec.scale,
        seed=spec.seed,
        tokens_per_step=train_cfg.batch_size * model_cfg.context_len,
    )
    probes = make_probes(run_dir / "probes", schedule, dm.probe, labels) if spec.probes else None

    bar = None
    on_step = progress
    if progress is None and rank0:
        bar = StepBar(f"{spec.variant} {spec.scale} seed{spec.seed}", train_cfg.steps, resume_step)
        on_step = bar.update
    metrics = TrainMetrics(labels, schedule, run_dir / "metrics.parquet", dm.val, on_step)

    def probe_errors() -> list[str] | None:
        return (probes.errors or None) if probes is not None else None

    def saved(step: int) -> None:
        manifest.update(last_step=step, wall_time_s=round(manifest.wall(), 3), probe_errors=probe_errors())

    callbacks: list[pl.Callback] = [metrics]
    if probes is not None:
        callbacks.append(probes)
    callbacks.append(StepCheckpoint(run_dir / "checkpoints", schedule, on_saved=saved))
    trainer = make_trainer(
        max_steps=train_cfg.steps,
        callbacks=callbacks,
        accelerator=spec.accelerator,
        devices=spec.devices,
        precision=spec.precision,
        strategy=spec.strategy,
    )
    if rank0:  # only now that every setting is known to be valid
        if existing is not None and _normalise(existing.get("model")) != _normalise(config["model"]):
            raise UserError(f"{run_dir} holds a run on different data (model config {existing.get('model')})")
        write_json_atomic(config, run_dir / "config.json")
        attempts = list(manifest.data.get("attempts", []))
        attempts.append({"started": _now(), "from_step": resume_step})
        manifest.update(
            status=STATUS_RUNNING,
            reason=None,
            failed_step=None,
            git_sha=_git_sha(),
            versions=versions(),
            hardware={**hardware(trainer), "compiled_modules": compiled_modules,
                      "recomputed_modules": recomputed_modules},
            started=manifest.data.get("started") or _now(),
            ended=None,
            attempts=attempts,
            last_step=resume_step,
            final_val_loss=None,
        )

    def fail(reason: str, step: int | None) -> RunResult:
        wall = round(manifest.wall(), 3)
        manifest.update(
            status=STATUS_FAILED, reason=reason, failed_step=step, ended=_now(), wall_time_s=wall,
            probe_errors=probe_errors(),
        )
        return RunResult(STATUS_FAILED, None, wall, reason, manifest.data.get("last_step"), run_dir)

    try:
        with bar or contextlib.nullcontext():
            trainer.fit(module, datamodule=dm, ckpt_path=str(ckpt[1]) if ckpt else None)
    except NonFiniteError as err:
        return fail(str(err), err.step)
    except (KeyboardInterrupt, SystemExit):  # Lightning turns Ctrl+C into SystemExit(1)
        fail("interrupted", None)
        raise
    except UserError as err:
        fail(str(err), None)
        raise
    except Exception as err:  # noqa: BLE001 - the run fails, the caller (a study) goes on
        if rank0:
            (run_dir / "error.txt").write_text(traceback.format_exc())
        first_line = (str(err).strip().splitlines() or [""])[0][:300]
        return fail(f"{type(err).__name__}: {first_line} (traceback in error.txt)", None)

    if not trainer.is_global_zero:
        return RunResult(STATUS_RUNNING, None, None, None, trainer.global_step, run_dir)
    final = evaluate(module.model, dm.val, module.device, trainer)
    if final != final or abs(final) == float("inf"):
        return fail(f"non-finite final val_loss ({final}) at step {trainer.global_step}", trainer.global_step)
    wall = round(manifest.wall(), 3)
    manifest.update(
        status=STATUS_DONE,
        reason=None,
        failed_step=None,
        ended=_now(),
        wall_time_s=wall,
        last_step=trainer.global_step,
        final_val_loss=final,
        probe_errors=probe_errors(),
        probe_time_s=round(probes.time_s if probes is not None else 0.0, 3),
        ckpt_every=train_cfg.ckpt_every,
    )
    return RunResult(STATUS_DONE, final, wall, None, trainer.global_step, run_dir)


class StepBar:
    """A rich progress bar on stderr: step/total, loss, ETA."""

    def __init__(self, label: str, total: int, start: int) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"),
            TimeRemainingColumn(),
            console=Console(stderr=True),
        )
        self.task = self.progress.add_task(label, total=total, completed=start, loss="-")

    def update(self, step: int, total: int, loss: float) -> None:
        self.progress.update(self.task, completed=step, total=total, loss=f"{loss:.4f}")

    def __enter__(self) -> "StepBar":
        self.progress.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.progress.stop()

