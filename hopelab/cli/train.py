"""`hopelab train`: train one variant at one scale, with probes, resumable; rerun the same command to resume."""

from __future__ import annotations

from typing import Annotated

import typer

from hopelab.cli.options import CompileOpt, CudaGraphsOpt, LoggerOpt, RecomputeOpt
from hopelab.errors import CommandFailed


def train_command(
    variant: Annotated[str, typer.Option("--variant", help="hope, hope_no_cms, hope_no_selfmod, hope_no_surprise, "
                                         "hope_attention, titans, transformer, transformer_matched")],
    scale: Annotated[str, typer.Option("--scale", help="tiny, small or scaled")] = "tiny",
    steps: Annotated[int | None, typer.Option("--steps", help="Optimizer steps [default: the scale's]")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the model init and of the batch order")] = 0,
    data: Annotated[str | None, typer.Option("--data", help="A corpus file or directory, or a synthetic task like "
                                                "'synthetic:mqar?pairs=16&len=128' (hopelab.data.synthetic) "
                                                "[default: the embedded Wikipedia sample]")] = None,
    out: Annotated[str, typer.Option("--out", help="Root of all run directories")] = "runs",
    study: Annotated[str, typer.Option("--study", help="Study name (the run lives in "
                                       "<out>/<study>/<scale>/...)")] = "adhoc",
    tag: Annotated[str, typer.Option("--tag", help="Distinguishes runs of one variant with different "
                                     "overrides")] = "",
    set_: Annotated[list[str], typer.Option("--set", help="Model or train override key=value (repeatable), e.g. "
                                            "--set surprise_threshold=0.05 --set lr=1e-3")] = [],
    accelerator: Annotated[str, typer.Option("--accelerator", help="cpu, gpu, cuda, mps or auto")] = "auto",
    devices: Annotated[str, typer.Option("--devices", help="auto, a count, or indices like 0,1")] = "auto",
    precision: Annotated[str | None, typer.Option("--precision", help="e.g. 32-true, bf16-mixed, "
                                                     "16-mixed")] = None,
    strategy: Annotated[str, typer.Option("--strategy", help="auto, ddp, ...")] = "auto",
    probes: Annotated[bool, typer.Option("--probes/--no-probes", help="Run the cms/selfmod/surprise/gradflow "
                                         "probes")] = True,
    compile_: CompileOpt = False,
    recompute: RecomputeOpt = False,
    logger: LoggerOpt = None,
    cudagraphs: CudaGraphsOpt = False,
) -> None:
    """Train one run (or resume it from its last good checkpoint; a finished run is not retrained)."""
    from rich.console import Console

    from hopelab.models.cudagraphs import check_cudagraphs
    from hopelab.run import STATUS_DONE, STATUS_FAILED, RunSpec, parse_overrides, train_one

    if cudagraphs:
        check_cudagraphs(accelerator, compile_)
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
        logger=logger,
        cudagraphs=cudagraphs,
    )
    state = train_one(spec)
    if state.status == STATUS_FAILED:
        raise CommandFailed(f"[red]failed[/red]: {spec.run_id}: {state.reason}")
    if state.status == STATUS_DONE:  # (another DDP rank than 0 reports nothing)
        loss = f"{state.final_val_loss:.4f}" if state.final_val_loss is not None else "?"
        wall = f"{state.wall_time_s:.1f} s" if state.wall_time_s is not None else "?"
        Console(stderr=True, soft_wrap=True).print(
            f"done: {spec.run_id}  final val loss {loss}  wall {wall}  -> {spec.run_dir}")


def register(app: typer.Typer) -> None:
    app.command("train")(train_command)
