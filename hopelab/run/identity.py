"""A run's identity (what it computes: a folder holding another identity is another run) and its provenance
(git SHA, package versions, hardware, times), written into config.json and manifest.json."""

from __future__ import annotations

import dataclasses
import datetime as _dt
import importlib.metadata
import json
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import torch

from hopelab.config import ModelConfig, TrainConfig, to_dict
from hopelab.errors import UserError
from hopelab.run.spec import RunSpec, resolve_configs


def normalise(obj: Any) -> Any:
    """`obj` as it reads back from JSON (tuples as lists, keys sorted, anything else as str)."""
    return json.loads(json.dumps(obj, sort_keys=True, default=str))


def run_identity(spec: RunSpec, model_cfg: ModelConfig, train_cfg: TrainConfig) -> dict[str, Any]:
    """What a run computes: a run directory holding another identity is a different run. Resolved configs
    (not the raw overrides), so `--steps 300` and the scale's default 300 are the same run."""
    flat = {
        "variant": spec.variant,
        "scale": spec.scale,
        "seed": spec.seed,
        "study": spec.study,
        "tag": spec.tag,
        "data": data_identity(spec.data),
        **{f"model.{k}": v for k, v in to_dict(model_cfg).items()},
        **{f"train.{k}": v for k, v in to_dict(train_cfg).items()},
    }
    return normalise(flat)


def data_identity(data: str | None) -> str | None:
    """A corpus by its absolute path; a synthetic task by its canonical spelling (parameter order and
    defaults do not matter)."""
    from hopelab.data.synthetic import canonical, is_synthetic, parse_synthetic

    if is_synthetic(data):
        return canonical(parse_synthetic(data))
    return os.path.abspath(data) if data else None


def spec_identity(spec: RunSpec | dict[str, Any]) -> dict[str, Any]:
    """`run_identity` from a RunSpec or a config.json "spec" dict: one rule for `train_one` and the study
    planner. An unreadable spec has the empty identity (it matches nothing)."""
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


# ---------------------------------------------------------------------------------------------- provenance
def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def git_sha() -> str | None:
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


def hardware(trainer: Any = None) -> dict[str, Any]:
    """The machine, and with a Lightning Trainer, how it runs (accelerator, devices, precision, strategy)."""
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
