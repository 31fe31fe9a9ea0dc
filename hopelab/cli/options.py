"""Options and arguments that more than one command takes, as `Annotated` types (one definition, one help text).
An option that a single command takes is written in that command's signature."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

# ---------------------------------------------------------------------- how a run executes (train, study)
CompileOpt = Annotated[
    bool,
    typer.Option(
        "--compile",
        help="torch.compile the SR-Titans chunk step and the CMS step: fused kernels, the same numbers; "
        "a one-off compile (about two minutes on CPU, cached on disk)",
    ),
]
RecomputeOpt = Annotated[
    bool,
    typer.Option(
        "--recompute",
        help="keep only each SR-Titans chunk's and CMS step's inputs for backward and recompute the rest: "
        "about 6x less activation memory, the same numbers, ~1.5x the step time",
    ),
]
CudaGraphsOpt = Annotated[
    bool,
    typer.Option(
        "--cudagraphs",
        help="CUDA only: torch.compile the whole model, forward and backward, and replay the step as CUDA graphs "
        "(mode=reduce-overhead): one launch per graph instead of one per kernel; a one-off compile of minutes",
    ),
]

def _logger_kind(value: str | None) -> str | None:
    from hopelab.lit.trainer import LOGGERS

    if value is not None and value not in LOGGERS:
        raise typer.BadParameter(f"{value!r}: choose one of {', '.join(LOGGERS)}")
    return value


LoggerOpt = Annotated[
    str | None,
    typer.Option(
        "--logger", metavar="csv|tensorboard", callback=_logger_kind,
        help="also log the training metrics to Lightning's CSV or TensorBoard logger, under each run's logs/ "
        "(tensorboard --logdir runs/STUDY); tensorboard is an extra: pip install 'hopelab\\[tensorboard]'",
    ),
]

# ---------------------------------------------------------------------- a study's runs (study show, run)
StudyScalesOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--scale", "-s", metavar="SCALE",
        help="tiny | small | scaled (repeat or comma-separate); default: the study's own",
    ),
]
StudyNameArg = Annotated[str, typer.Argument(metavar="NAME", help="a built-in study or a .py definition file")]
SeedsOpt = Annotated[
    int | None, typer.Option("--seeds", metavar="N", help="seeds per cell (0..N-1); default: the study's")
]
StepsOpt = Annotated[
    int | None, typer.Option("--steps", metavar="N", help="training steps per run; default: the scale's")
]
StudySetOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--set",
        metavar="KEY=VALUE",
        help="override a ModelConfig/TrainConfig field in every cell, after the study's own overrides "
        "(repeatable), e.g. --set dim=32 --set ckpt_every=3",
    ),
]

# ---------------------------------------------------------------------- paper output (report, figures, tables)
StudyDirArg = Annotated[
    Path, typer.Argument(help="study root (<out>/<study>/) or one scale's directory under it")
]
OnlyScaleOpt = Annotated[str | None, typer.Option("--scale", help="only this scale")]
DpiOpt = Annotated[int, typer.Option("--dpi", help="PNG resolution")]
