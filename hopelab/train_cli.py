"""`hopelab train`: train one variant at one scale, with probes, resumable; rerun the same command to resume."""

from __future__ import annotations

import sys
from typing import List, Optional

import typer

from hopelab.runs import COMPILE_HELP, RECOMPUTE_HELP


def train_command(
    variant: str = typer.Option(..., "--variant", help="hope, hope_no_cms, hope_no_selfmod, hope_no_surprise, "
                                "titans, transformer, transformer_matched"),
    scale: str = typer.Option("tiny", "--scale", help="tiny, small or scaled"),
    steps: Optional[int] = typer.Option(None, "--steps", help="Optimizer steps [default: the scale's]"),
    seed: int = typer.Option(0, "--seed", help="Seed of the model init and of the batch order"),
    data: Optional[str] = typer.Option(None, "--data", help="A corpus file or directory [default: the embedded "
                                       "Wikipedia sample]"),
    out: str = typer.Option("runs", "--out", help="Root of all run directories"),
    study: str = typer.Option("adhoc", "--study", help="Study name (the run lives in <out>/<study>/<scale>/...)"),
    tag: str = typer.Option("", "--tag", help="Distinguishes runs of one variant with different overrides"),
    set_: List[str] = typer.Option([], "--set", help="Model or train override key=value (repeatable), e.g. "
                                   "--set surprise_threshold=0.05 --set lr=1e-3"),
    accelerator: str = typer.Option("auto", "--accelerator", help="cpu, gpu, cuda, mps or auto"),
    devices: str = typer.Option("auto", "--devices", help="auto, a count, or indices like 0,1"),
    precision: Optional[str] = typer.Option(None, "--precision", help="e.g. 32-true, bf16-mixed, 16-mixed"),
    strategy: str = typer.Option("auto", "--strategy", help="auto, ddp, ..."),
    probes: bool = typer.Option(True, "--probes/--no-probes", help="Run the cms/selfmod/surprise/gradflow probes"),
    compile_: bool = typer.Option(False, "--compile", help=COMPILE_HELP),
    recompute: bool = typer.Option(False, "--recompute", help=RECOMPUTE_HELP),
) -> None:
    """Train one run (or resume it from its last good checkpoint; a finished run is not retrained)."""
    from rich.console import Console

    from hopelab.lit.run import parse_overrides, train_one
    from hopelab.runs import RunSpec

    model_over, train_over = parse_overrides(set_)
    spec = RunSpec(
        variant=variant,
        scale=scale,
        seed=seed,
        study=study,
        steps=steps,
        data=data,
        out=out,
        model_overrides=model_over,
        train_overrides=train_over,
        tag=tag,
        accelerator=accelerator,
        devices=devices,
        precision=precision,
        strategy=strategy,
        probes=probes,
        compile=compile_,
        recompute=recompute,
    )
    result = train_one(spec)
    console = Console(stderr=True, soft_wrap=True)
    if result.status == "done":
        loss = f"{result.final_val_loss:.4f}" if result.final_val_loss is not None else "?"
        wall = f"{result.wall_time_s:.1f} s" if result.wall_time_s is not None else "?"
        console.print(f"done: {spec.run_id}  final val loss {loss}  wall {wall}  -> {result.run_dir}")
    elif result.status == "failed":
        console.print(f"[red]failed[/red]: {spec.run_id}: {result.reason}")
        sys.exit(1)  # not typer.Exit: with standalone_mode=False click returns its code instead of exiting


def register(app: typer.Typer) -> None:
    app.command("train")(train_command)
