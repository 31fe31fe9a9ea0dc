"""One training run, start to finish: `train_one(spec) -> RunState`. Used by `hopelab train`, the study runner
and the benchmark.

    resolve   the configs (bad variant/scale/override -> UserError before anything is written)
    RunDir    a done run is returned as is; a folder holding another run is refused
    build     prepare the data, build the model under torch.manual_seed(seed), find the last good checkpoint
    train     write config.json and a running manifest, fit with metrics + probes + checkpoints
    finish    evaluate the final val loss and mark the run done (or failed, naming the step and the quantity,
              when a loss goes NaN/inf)
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import time
import traceback
from collections.abc import Callable
from typing import Any

import lightning.pytorch as pl

from hopelab.config import ModelConfig, TrainConfig, to_dict
from hopelab.data.references import references
from hopelab.errors import UserError
from hopelab.lit.datamodule import StepDataModule
from hopelab.lit.metrics import TrainMetrics, evaluate
from hopelab.lit.module import LitLM, NonFiniteError
from hopelab.lit.trainer import Schedule, StepCheckpoint, last_good_checkpoint, make_logger, make_trainer
from hopelab.models import Execution, count_parameters, fast_memory_layers
from hopelab.models.cudagraphs import check_cudagraphs, compile_whole
from hopelab.probes import ProbeCallback, RunLabels, make_probes
from hopelab.run.identity import git_sha, hardware, normalise, now, run_identity, spec_identity, versions
from hopelab.run.rundir import RunDir
from hopelab.run.spec import RunSpec, resolve_configs
from hopelab.run.state import STATUS_DONE, STATUS_FAILED, STATUS_RUNNING, RunState

ProgressFn = Callable[[int, int, float], None]


def train_one(spec: RunSpec, progress: ProgressFn | None = None, cache_dir: str | None = None) -> RunState:
    """Train (or resume, or just report) one run. `progress(step, total, loss)` is called every step on rank 0;
    without it a progress bar is shown. Bad input raises UserError; a failing run returns status failed."""
    model_cfg, train_cfg = resolve_configs(spec)
    run_dir = RunDir(spec.run_dir)
    identity = run_identity(spec, model_cfg, train_cfg)
    existing = run_dir.read_config()
    _refuse_another_run(run_dir, existing, identity)
    rank0 = _is_rank_zero()
    manifest = _Manifest(run_dir, spec.run_id, write=rank0)
    if manifest.state.status == STATUS_DONE and existing is not None:
        return manifest.state

    from hopelab.data import prepare

    data = prepare(corpus=spec.data, tokenizer=model_cfg.tokenizer, vocab_size=model_cfg.vocab_size,
                   cache_dir=cache_dir, progress=progress is None and rank0)
    module, config, executed = _build_model(spec, data, model_cfg, train_cfg, identity)
    model_cfg = module.model.config  # resolved: the variant's switches applied (matched width solved)
    ckpt = last_good_checkpoint(run_dir, rename_corrupt=rank0)
    resume_step = ckpt[0] if ckpt else 0

    dm = StepDataModule(
        data, model_cfg.context_len, train_cfg.batch_size, spec.seed, train_cfg.val_batches, train_cfg.probe_seed,
        train_cfg.segments,
    )
    schedule = Schedule(train_cfg.ckpt_every, train_cfg.steps)
    labels = RunLabels(spec.run_id, spec.study, spec.variant, spec.scale, spec.seed,
                       tokens_per_step=train_cfg.batch_size * model_cfg.context_len)
    probes = make_probes(run_dir.probes, schedule, dm.probe, labels, probe_set=dm.probe_set) if spec.probes else None
    on_step, bar = (progress, contextlib.nullcontext()) if progress is not None or not rank0 else _step_bar(
        f"{spec.variant} {spec.scale} seed{spec.seed}", train_cfg.steps, resume_step)
    callbacks: list[pl.Callback] = [TrainMetrics(labels, schedule, run_dir.metrics, dm.val, on_step)]
    if probes is not None:
        callbacks.append(probes)
    # last: a step's rows are on disk before its checkpoint
    callbacks.append(StepCheckpoint(run_dir, schedule, on_saved=lambda step: manifest.saved(step, probes)))
    trainer = make_trainer(max_steps=train_cfg.steps, callbacks=callbacks, accelerator=spec.accelerator,
                           devices=spec.devices, precision=spec.precision, strategy=spec.strategy,
                           logger=make_logger(spec.logger, run_dir))
    if rank0:  # only now that every setting is known to be valid
        if existing is not None and normalise(existing.get("model")) != normalise(config["model"]):
            raise UserError(f"{run_dir.path} holds a run on different data (model config {existing.get('model')})")
        run_dir.write_config(config)
        manifest.start(resume_step, {**hardware(trainer), **executed})

    try:
        with bar:
            trainer.fit(module, datamodule=dm, ckpt_path=str(ckpt[1]) if ckpt else None)
    except NonFiniteError as err:
        return manifest.fail(str(err), err.step, probes)
    except (KeyboardInterrupt, SystemExit):  # Lightning turns Ctrl+C into SystemExit(1)
        manifest.fail("interrupted", None, probes)
        raise
    except UserError as err:
        manifest.fail(str(err), None, probes)
        raise
    except Exception as err:  # noqa: BLE001 - the run fails, the caller (a study) goes on
        if rank0:
            run_dir.write_error(traceback.format_exc())
        first_line = (str(err).strip().splitlines() or [""])[0][:300]
        reason = f"{type(err).__name__}: {first_line} (traceback in {run_dir.error_log.name})"
        return manifest.fail(reason, None, probes)

    if not trainer.is_global_zero:
        return RunState(spec.run_id, STATUS_RUNNING, last_step=trainer.global_step)
    final = evaluate(module.model, dm.val, module.device, trainer)
    if not math.isfinite(final):
        return manifest.fail(f"non-finite final val_loss ({final}) at step {trainer.global_step}",
                             trainer.global_step, probes)
    return manifest.done(final, trainer.global_step, probes, train_cfg.ckpt_every)


def _refuse_another_run(run_dir: RunDir, existing: dict[str, Any] | None, identity: dict[str, Any]) -> None:
    """A folder whose config.json holds another identity is another run: never train over it."""
    if existing is None:
        return
    theirs = spec_identity(existing.get("spec", {}))
    if theirs != identity:
        diff = sorted(k for k in set(identity) | set(theirs) if identity.get(k) != theirs.get(k))
        raise UserError(
            f"{run_dir.path} already holds a run with different settings ({', '.join(diff)}); "
            "choose another --out, --study or tag, or delete that directory"
        )


def _build_model(spec: RunSpec, data, model_cfg: ModelConfig, train_cfg: TrainConfig, identity: dict[str, Any]):
    """The LightningModule under the run's seed, its config.json (also stored in every checkpoint), and how
    it executes (compiled / recomputed module counts, recorded with the hardware)."""
    base_cfg = dataclasses.replace(model_cfg, vocab_size=int(data.vocab_size))  # the model must match the data
    pl.seed_everything(spec.seed, workers=True, verbose=False)  # model init is a function of the seed
    execution = Execution(compile=spec.compile, recompute=spec.recompute)
    module = LitLM(spec.variant, base_cfg, train_cfg, execution=execution)
    if spec.cudagraphs:  # the training step's forward, compiled whole (traced at its first call, on its device)
        check_cudagraphs(spec.accelerator, spec.compile)
        if train_cfg.segments > 1:  # a streamed step takes and returns the carried state: not the captured call
            raise UserError("--cudagraphs compiles the step of independent windows; drop it with segments > 1")
        module.compiled_forward = compile_whole(module.model)
    n_fast = len(fast_memory_layers(module.model))
    executed = {"compiled_modules": n_fast if spec.compile else 0,
                "recomputed_modules": n_fast if spec.recompute else 0, "cudagraphs": spec.cudagraphs}
    refs = references(data)
    config = {
        "spec": normalise(dataclasses.asdict(spec)),
        "model": to_dict(module.model.config),
        "train": to_dict(train_cfg),
        "variant": spec.variant,
        "scale": spec.scale,
        "n_params": count_parameters(module.model),
        "identity": identity,
        "data": {**{k: data.meta.get(k) for k in ("key", "documents", "train_tokens", "val_tokens") if k in data.meta},
                 "references": refs.to_dict() if refs else None},  # unigram/bigram val loss: the report's scale
    }
    module.run_config = config
    return module, config, executed


def _step_bar(label: str, total: int, start: int) -> tuple[ProgressFn, Any]:
    """A progress bar of the run's steps (step/total, loss, time left) and the callback that moves it."""
    from hopelab.data.progress import progress_bar

    bar = progress_bar(kind="steps")
    task = bar.add_task(label, total=total, completed=start, loss="-")
    return (lambda step, total, loss: bar.update(task, completed=step, total=total, loss=f"{loss:.4f}")), bar


def _is_rank_zero() -> bool:
    """Before the Trainer exists: a DDP worker process started by Lightning has a non-zero rank in its env."""
    for key in ("RANK", "LOCAL_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK"):
        if key in os.environ:
            return int(os.environ[key]) == 0
    return True


class _Manifest:
    """The run's RunState, written to manifest.json on every change (by rank 0 only), and its wall clock:
    the wall time of earlier attempts plus this one's."""

    def __init__(self, run_dir: RunDir, run_id: str, write: bool) -> None:
        self.run_dir, self.write = run_dir, write
        self.state = run_dir.read_manifest() or RunState(run_id)
        self.base_wall = float(self.state.wall_time_s or 0.0) if self.state.status != STATUS_DONE else 0.0
        self.t0 = time.perf_counter()

    def wall(self) -> float:
        return round(self.base_wall + (time.perf_counter() - self.t0), 3)

    def update(self, **fields: Any) -> RunState:
        self.state = dataclasses.replace(self.state, **fields)
        if self.write:
            self.run_dir.write_manifest(self.state)
        return self.state

    def start(self, resume_step: int, hardware: dict[str, Any]) -> None:
        attempts = [*self.state.attempts, {"started": now(), "from_step": resume_step}]
        self.update(status=STATUS_RUNNING, reason=None, failed_step=None, git_sha=git_sha(), versions=versions(),
                    hardware=hardware, started=self.state.started or now(), ended=None, attempts=attempts,
                    last_step=resume_step, final_val_loss=None)

    def saved(self, step: int, probes: ProbeCallback | None) -> None:
        """Checkpoint `step` is on disk (with every row of that step before it)."""
        self.update(last_step=step, wall_time_s=self.wall(), probe_errors=_probe_errors(probes))

    def fail(self, reason: str, step: int | None, probes: ProbeCallback | None) -> RunState:
        """`step`: the step whose loss went non-finite (a result); None for any other failure (retried)."""
        return self.update(status=STATUS_FAILED, reason=reason, failed_step=step, ended=now(),
                           wall_time_s=self.wall(), probe_errors=_probe_errors(probes))

    def done(self, final_val_loss: float, step: int, probes: ProbeCallback | None, ckpt_every: int) -> RunState:
        return self.update(status=STATUS_DONE, reason=None, failed_step=None, ended=now(), wall_time_s=self.wall(),
                           last_step=step, final_val_loss=final_val_loss, probe_errors=_probe_errors(probes),
                           probe_time_s=round(probes.time_s if probes is not None else 0.0, 3), ckpt_every=ckpt_every)


def _probe_errors(probes: ProbeCallback | None) -> list[str] | None:
    return (probes.errors or None) if probes is not None else None
