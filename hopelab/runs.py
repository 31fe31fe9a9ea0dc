"""What one training run is, and where it lives on disk. Shared by `hopelab train` and `hopelab study`.

Run directory: `<out>/<study>/<scale>/<variant>/seed<k>/` holding
    config.json       the resolved ModelConfig + TrainConfig + RunSpec (also inside every checkpoint)
    manifest.json     status running|done|failed (and why), git SHA, package versions, start/end times
    checkpoints/      Lightning checkpoints every `ckpt_every` steps
    probes/           long-format probe Parquet (hopelab.tables.PROBE_SCHEMA)
    metrics.parquet   long-format training metrics (hopelab.tables.METRICS_SCHEMA)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

STATUS_RUNNING = "running"
STATUS_DONE = "done"
STATUS_FAILED = "failed"

COMPILE_HELP = ("torch.compile the SR-Titans chunk step and the CMS step: fused kernels, the same numbers; "
                "a one-off compile (about two minutes on CPU, cached on disk)")
RECOMPUTE_HELP = ("keep only each SR-Titans chunk's and CMS step's inputs for backward and recompute the rest: "
                  "about 6x less activation memory, the same numbers, ~1.5x the step time")


@dataclass
class RunSpec:
    """One (study, scale, variant, seed) cell with its overrides. Everything a run needs to start."""

    variant: str
    scale: str
    seed: int = 0
    study: str = "adhoc"
    steps: int | None = None  # None: the scale's default
    data: str | None = None  # user corpus path; None: the embedded Wikipedia sample
    out: str = "runs"
    model_overrides: dict[str, Any] = field(default_factory=dict)
    train_overrides: dict[str, Any] = field(default_factory=dict)
    tag: str = ""  # distinguishes cells of one variant with different overrides (e.g. "tau0.01")
    accelerator: str = "auto"
    devices: str | int = "auto"
    precision: str | None = None
    strategy: str = "auto"
    probes: bool = True
    compile: bool = False  # hopelab.models.compile_chunks: how the run executes, not what it computes
    recompute: bool = False  # hopelab.models.recompute_chunks: likewise

    @property
    def run_name(self) -> str:
        return f"{self.variant}-{self.tag}" if self.tag else self.variant

    @property
    def run_id(self) -> str:
        return f"{self.study}/{self.scale}/{self.run_name}/seed{self.seed}"

    @property
    def run_dir(self) -> Path:
        return Path(self.out) / self.study / self.scale / self.run_name / f"seed{self.seed}"


def run_dir_for(out: str | Path, study: str, scale: str, run_name: str, seed: int) -> Path:
    return Path(out) / study / scale / run_name / f"seed{seed}"
