"""What one training run is: `RunSpec`, and the configs it resolves to. Shared by `hopelab train`, `hopelab
study` and the benchmark. What lies inside the run's folder is `hopelab.run.rundir`'s business."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hopelab.config import ModelConfig, TrainConfig, apply_overrides, get_scale, parse_set_options, split_overrides
from hopelab.errors import UserError


@dataclass
class RunSpec:
    """One (study, scale, variant, seed) cell with its overrides. Everything a run needs to start."""

    variant: str
    scale: str
    seed: int = 0
    study: str = "adhoc"
    steps: int | None = None  # None: the scale's default
    data: str | None = None  # corpus path or "synthetic:TASK?..." (hopelab.data.synthetic); None: embedded sample
    out: str = "runs"
    model_overrides: dict[str, Any] = field(default_factory=dict)
    train_overrides: dict[str, Any] = field(default_factory=dict)
    tag: str = ""  # distinguishes cells of one variant with different overrides (e.g. "tau0.01")
    accelerator: str = "auto"
    devices: str | int = "auto"
    precision: str | None = None
    strategy: str = "auto"
    probes: bool = True
    compile: bool = False  # how the run executes, not what it computes (hopelab.models.Execution)
    recompute: bool = False  # likewise
    logger: str | None = None  # also log the metrics to Lightning's csv or tensorboard logger (make_logger)
    cudagraphs: bool = False  # likewise: the training step's forward compiled whole and replayed as CUDA graphs

    @property
    def run_name(self) -> str:
        return f"{self.variant}-{self.tag}" if self.tag else self.variant

    @property
    def run_id(self) -> str:
        return f"{self.study}/{self.scale}/{self.run_name}/seed{self.seed}"

    @property
    def run_dir(self) -> Path:
        """The run's folder: `<out>/<run_id>` (open it with `RunDir(spec.run_dir)`)."""
        return Path(self.out) / self.run_id


_RUN_ID = re.compile(r"^(?P<study>[^/]+)/(?P<scale>[^/]+)/(?P<run_name>[^/]+)/seed(?P<seed>\d+)$")


def parse_run_id(run_id: str) -> dict[str, Any] | None:
    """`<study>/<scale>/<run_name>/seed<k>` -> {study, scale, run_name, seed, variant, tag}; None if it is not
    one. A run name is the variant, or `variant-tag` (variant names have no hyphen)."""
    m = _RUN_ID.match(run_id)
    if m is None:
        return None
    variant, _, tag = m.group("run_name").partition("-")
    return {**m.groupdict(), "seed": int(m.group("seed")), "variant": variant, "tag": tag}


def resolve_configs(spec: RunSpec) -> tuple[ModelConfig, TrainConfig]:
    """The scale preset with the spec's overrides; the model config before the data fixes vocab_size and
    before the variant's switches (see `variant_config`). Raises UserError on any bad name or value."""
    from hopelab.models import check_variant, variant_config  # torch: only once a run is resolved

    check_variant(spec.variant)
    scale = get_scale(spec.scale)
    model = apply_overrides(scale.model, {**spec.model_overrides, **data_overrides(spec.data)}, "model config")
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


def data_overrides(data: str | None) -> dict[str, Any]:
    """What the data fixes in the model config before it is built: a synthetic task given `len` sets the
    context length (the vocabulary size is set from the prepared data in train_one)."""
    from hopelab.data.synthetic import data_context_len

    context_len = data_context_len(data)
    return {"context_len": context_len} if context_len is not None else {}


def check_train_config(t: TrainConfig) -> None:
    for name in ("steps", "batch_size", "ckpt_every", "val_batches"):
        if int(getattr(t, name)) < 1:
            raise UserError(f"{name} must be >= 1, got {getattr(t, name)}")
    if not t.lr > 0:
        raise UserError(f"lr must be > 0, got {t.lr}")
    if t.schedule not in ("constant", "cosine"):
        raise UserError(f"unknown schedule {t.schedule!r}; choose constant or cosine")
    if t.optimizer not in ("adamw", "m3", "m3_ema"):
        raise UserError(f"unknown optimizer {t.optimizer!r}; choose adamw, m3 or m3_ema")
    if t.warmup_steps < 0 or t.grad_clip < 0 or t.weight_decay < 0:
        raise UserError("warmup_steps, grad_clip and weight_decay must be >= 0")


def parse_overrides(items: list[str] | tuple[str, ...]) -> tuple[dict[str, Any], dict[str, Any]]:
    """`key=value` strings -> (model overrides, train overrides), values typed like the field's default.
    Unknown keys and unparsable values are a UserError."""
    return split_overrides(parse_set_options(list(items)), "--set")
