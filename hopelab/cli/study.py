"""`hopelab study`: list, show and run studies (built-in ones in `studies/`, or a user's file).

    hopelab study list
    hopelab study show ablation --scale scaled
    hopelab study ablation --scale small              # same as: hopelab study run ablation --scale small
    hopelab study run my_study.py --scale tiny --jobs 2

Exit codes of a run: 0 when every run of the invocation finished (a run that failed by itself, e.g. a NaN
loss, is a result: it is recorded and listed, and the study goes on); 1 when a run crashed with an
unexpected exception (its traceback is in the run's error.txt; the next invocation retries it); 2 for bad
input; 130 when interrupted.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Annotated

import typer
from typer.core import TyperGroup

from hopelab.cli.options import (
    CompileOpt,
    CudaGraphsOpt,
    LoggerOpt,
    RecomputeOpt,
    SeedsOpt,
    StepsOpt,
    StudyNameArg,
    StudyScalesOpt,
    StudySetOpt,
)
from hopelab.config import parse_set_options
from hopelab.data.synthetic import is_synthetic
from hopelab.errors import CommandFailed, UserError
from hopelab.run import STATUS_DONE, STATUS_FAILED, RunDir
from hopelab.study.loader import LoadedStudy, builtin_names, load_study
from hopelab.study.plan import PlannedRun, check_same_config, parse_shard, plan_runs, shard_runs
from hopelab.study.study_json import STUDY_JSON, study_root


class StudyGroup(TyperGroup):
    """`hopelab study NAME ...` is `hopelab study run NAME ...`: a first word that is not a command is a
    study name (or a definition file)."""

    def resolve_command(self, ctx: typer.Context, args: list[str]):
        if args and not args[0].startswith("-") and args[0] not in self.commands:
            args = ["run", *args]
        return super().resolve_command(ctx, args)


study_app = typer.Typer(
    cls=StudyGroup,
    name="study",
    no_args_is_help=True,
    subcommand_metavar="NAME [OPTIONS] | list | show NAME | run NAME [OPTIONS]",
    help="Run a study: every variant x scale x seed of one definition, with probes, resumably.\n\n"
    "[bold]hopelab study ablation --scale small[/]  trains Table 1 of the dissection study into "
    "runs/ablation/ (rerun the same command to resume).\n\n"
    "NAME is a built-in study (see [bold]hopelab study list[/]) or a .py file defining "
    "STUDY = Study(...); [bold]hopelab study NAME[/] is short for [bold]hopelab study run NAME[/].",
    epilog="Exit codes: 0 all runs finished (failed runs, e.g. NaN, are listed), 1 a run crashed, "
    "2 bad input, 130 interrupted.",
)


def _plan(
    name: str,
    scale: list[str] | None,
    seeds: int | None,
    steps: int | None,
    set_: list[str] | None,
    out: str = "runs",
    data: str | None = None,
    accelerator: str = "auto",
    devices: str = "auto",
    precision: str | None = None,
    compile_: bool = False,
    recompute: bool = False,
    logger: str | None = None,
    cudagraphs: bool = False,
) -> tuple[LoadedStudy, list[PlannedRun]]:
    loaded = load_study(name)
    runs = plan_runs(
        loaded.study,
        scales=scale,
        seeds=seeds,
        overrides=parse_set_options(set_),
        steps=steps,
        out=out,
        data=data,
        accelerator=accelerator,
        devices=int(devices) if str(devices).isdigit() else devices,
        precision=precision,
        compile=compile_,
        recompute=recompute,
        logger=logger,
        cudagraphs=cudagraphs,
    )
    return loaded, runs


def _console():
    from rich.console import Console

    return Console(highlight=False)


def _tokens(n: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.3g}{unit}"
    return str(n)


def _overrides_text(run: PlannedRun) -> str:
    ov = {**({"data": run.cell.data} if run.cell.data else {}), **run.spec.model_overrides,
          **run.spec.train_overrides}
    return " ".join(f"{k}={','.join(map(str, v)) if isinstance(v, tuple) else v}" for k, v in ov.items()) or "-"


# ------------------------------------------------------------------------------------ list / show
@study_app.command("list")
def list_cmd() -> None:
    """The built-in studies (files in studies/)."""
    from rich.table import Table

    table = Table(title="built-in studies: hopelab study NAME [--scale S]", title_justify="left", show_lines=True)
    table.add_column("name", no_wrap=True)
    table.add_column("what", overflow="fold", ratio=1)
    for name in builtin_names():
        study = load_study(name).study
        facts = [
            f"{len(study.cells)} cells",
            f"seeds {study.seeds_text}",
            f"default scale {','.join(study.scales)}",
        ]
        what = f"{study.description}\n[dim]{' · '.join(facts)}" + (f" · {study.reference}" if study.reference else "")
        table.add_row(name, what + "[/]")
    _console().print(table)


@study_app.command("show")
def show_cmd(
    name: StudyNameArg,
    scale: StudyScalesOpt = None,
    seeds: SeedsOpt = None,
    steps: StepsOpt = None,
    set_: StudySetOpt = None,
) -> None:
    """What a study would run: cells, seeds, steps and training tokens (steps x batch x context)."""
    loaded, runs = _plan(name, scale, seeds, steps, set_)
    _print_plan(loaded, runs, per_run=False)


def _print_plan(loaded: LoadedStudy, runs: list[PlannedRun], per_run: bool, shard: str | None = None) -> None:
    from rich.table import Table

    console = _console()
    study = loaded.study
    console.print(f"[bold]{study.name}[/] ({loaded.source}): {study.description}")
    if study.reference:
        console.print(f"regenerates: {study.reference}")
    scales = list(dict.fromkeys(r.spec.scale for r in runs))
    for scale in scales:
        at = [r for r in runs if r.spec.scale == scale]
        table = Table(title=f"scale {scale}" + (f", shard {shard}" if shard else ""), title_justify="left")
        table.add_column("run", no_wrap=True)
        for col in ("seed" if per_run else "seeds", "steps", "batch×ctx", "tokens"):
            table.add_column(col, justify="right", no_wrap=True)
        table.add_column("overrides", overflow="fold", ratio=1)
        if per_run:
            table.add_column("status", overflow="fold", min_width=9, ratio=1)
            for r in at:
                state = r.dir.state()
                status = state.status + (f" ({state.reason})" if state.reason else "")
                table.add_row(r.spec.run_name, str(r.spec.seed), str(r.steps),
                              f"{r.batch_size}×{r.context_len}", _tokens(r.tokens), _overrides_text(r), status)
        else:
            by_cell: dict[str, list[PlannedRun]] = {}
            for r in at:
                by_cell.setdefault(r.spec.run_name, []).append(r)
            for run_name, cell_runs in by_cell.items():
                r = cell_runs[0]
                seeds = ",".join(str(c.spec.seed) for c in cell_runs)
                table.add_row(run_name, seeds, str(r.steps), f"{r.batch_size}×{r.context_len}",
                              _tokens(r.tokens), _overrides_text(r))
        console.print(table)
        console.print(f"  {len(at)} runs at {scale}, {_tokens(sum(r.tokens for r in at))} training tokens")
    console.print(f"[bold]total[/]: {len(runs)} runs, {_tokens(sum(r.tokens for r in runs))} training tokens")


# ------------------------------------------------------------------------------------ run
@study_app.command("run", no_args_is_help=True)
def run_cmd(
    ctx: typer.Context,
    name: StudyNameArg,
    scale: StudyScalesOpt = None,
    seeds: SeedsOpt = None,
    steps: StepsOpt = None,
    out: Annotated[
        str, typer.Option("--out", "-o", metavar="DIR", help="study directories go under OUT/<study>/")
    ] = "runs",
    data: Annotated[
        str | None,
        typer.Option("--data", metavar="PATH", help="corpus: .txt/.jsonl/.parquet or a directory, or a synthetic "
                     "task synthetic:TASK?...; default: embedded (cells that name their own data keep it)"),
    ] = None,
    jobs: Annotated[
        int | None, typer.Option("--jobs", "-j", metavar="N", help="runs trained at once: worker processes; with "
                                 "--launcher, jobs at once (default there: 1 local, all on SLURM)")
    ] = None,
    threads: Annotated[
        int | None, typer.Option("--threads", metavar="N", help="torch CPU threads per run [default: the cores / "
                                 "--jobs]; 1 when something else is running (threads that wait on busy cores stall)")
    ] = None,
    accelerator: Annotated[str, typer.Option(help="Lightning accelerator: auto, cpu, gpu, ...")] = "auto",
    devices: Annotated[str, typer.Option(help="Lightning devices: auto, a count, ...")] = "auto",
    precision: Annotated[str | None, typer.Option(help="Lightning precision, e.g. bf16-mixed")] = None,
    compile_: CompileOpt = False,
    recompute: RecomputeOpt = False,
    cudagraphs: CudaGraphsOpt = False,
    shard: Annotated[
        str | None, typer.Option(metavar="I/N", help="run only shard I of N (1-based), e.g. one per array job")
    ] = None,
    set_: StudySetOpt = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="show the runs and their state; train nothing")] = False,
    logger: LoggerOpt = None,
    launcher: Annotated[
        str | None, typer.Option("--launcher", metavar="local|slurm", rich_help_panel="Cluster (submitit)",
                                 help="one submitit job per pending run: slurm, or local processes")
    ] = None,
    partition: Annotated[str | None, typer.Option(metavar="NAME", rich_help_panel="Cluster (submitit)",
                                                  help="SLURM partition")] = None,
    gpus_per_job: Annotated[int, typer.Option(metavar="N", rich_help_panel="Cluster (submitit)",
                                              help="GPUs per job (N > 1: one task per GPU, Lightning DDP)")] = 0,
    cpus_per_job: Annotated[int | None, typer.Option(metavar="N", rich_help_panel="Cluster (submitit)",
                                                     help="CPUs per job (also torch's threads)")] = None,
    mem_gb: Annotated[float | None, typer.Option(metavar="GB", rich_help_panel="Cluster (submitit)",
                                                 help="memory per job")] = None,
    time_min: Annotated[int, typer.Option("--time", metavar="MIN", rich_help_panel="Cluster (submitit)",
                                          help="time limit per job; a job that hits it is requeued and resumes")] = 240,
    slurm: Annotated[list[str] | None, typer.Option(metavar="KEY=VALUE", rich_help_panel="Cluster (submitit)",
                                                    help="any other sbatch option (repeatable), e.g. "
                                                    "--slurm account=abc --slurm constraint=a100")] = None,
    wait: Annotated[bool, typer.Option("--wait/--no-wait", rich_help_panel="Cluster (submitit)",
                                       help="watch the jobs to the end (--no-wait: submit and exit; SLURM)")] = True,
) -> None:
    """Train every run of a study not yet finished (rerun to resume); write OUT/<study>/study.json.

    Finished runs are skipped and partial ones resume from their last checkpoint.

    A run whose loss goes non-finite is recorded as failed and the study goes on. Examples:

    [bold]hopelab study ablation --scale small --jobs 2[/]

    [bold]hopelab study scaling --shard 3/8 --accelerator gpu[/]  (one of 8 array jobs)

    [bold]hopelab study run my_study.py --scale tiny --set dim=32 --set steps=50 --dry-run[/]

    [bold]hopelab study ablation --scale small --launcher slurm --partition gpu --gpus-per-job 1 --time 120[/]
    """
    if jobs is not None and jobs < 1:
        raise UserError(f"--jobs must be >= 1, got {jobs}")
    if threads is not None and threads < 1:
        raise UserError(f"--threads must be >= 1, got {threads}")
    launch = _launch_options(launcher, partition, gpus_per_job, cpus_per_job, mem_gb, time_min, jobs, slurm)
    if data is not None and not is_synthetic(data) and not Path(data).exists():
        raise UserError(f"--data {data}: no such file or directory")
    parse_shard(shard)
    if cudagraphs:
        from hopelab.models.cudagraphs import check_cudagraphs

        check_cudagraphs(accelerator, compile_)
    loaded, runs = _plan(name, scale, seeds, steps, set_, out, data, accelerator, devices, precision, compile_,
                         recompute, logger, cudagraphs)
    mine = shard_runs(runs, shard)
    for run in mine:  # before anything starts: a finished run with other settings is not this request
        check_same_config(run)
    console = _console()
    if dry_run:
        _print_plan(loaded, mine, per_run=True, shard=shard)
        return
    from hopelab.study.progress import describe
    from hopelab.study.runner import run_all
    from hopelab.study.study_json import register_study, run_record

    root = study_root(out, loaded.study.name)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"--out {out}: cannot create {root}: {err.strerror}") from None
    shard_note = f" (shard {shard}: {len(mine)} of {len(runs)})" if shard else ""
    scales = ",".join(dict.fromkeys(r.spec.scale for r in runs))
    console.print(f"[bold]study {loaded.study.name}[/] ({loaded.source}) at {scales}: {len(runs)} runs{shard_note}")
    console.print(f"study directory: {root}")
    states = [r.dir.state() for r in mine]
    todo = [r for r, st in zip(mine, states) if not st.final]
    _print_corpus_note(console, todo)
    definition = {
        **loaded.study.to_dict(), "source": loaded.source, "source_sha256": loaded.sha256, "source_text": loaded.text
    }
    register_study(root, definition, _command_line(ctx, name), [run_record(r, st) for r, st in zip(mine, states)])
    if launch is not None and not wait:
        _submit_only(console, todo, root, launch)
        return
    try:
        outcomes = run_all(mine, root, console, f"{loaded.study.name} {scales}", jobs=jobs or 1, launch=launch,
                           threads=threads)
    except KeyboardInterrupt:
        raise CommandFailed("[yellow]interrupted[/]: rerun the same command to resume", exit_code=130) from None
    _print_summary(console, mine, outcomes)
    console.print(f"study.json: {root / STUDY_JSON}")
    crashed = [o for o in outcomes if o.crashed]
    elsewhere = [o for o in outcomes if o.status not in (STATUS_DONE, STATUS_FAILED)]
    if elsewhere:
        busy = "; ".join(describe(o) for o in elsewhere[:3])
        console.print(f"{len(elsewhere)} run(s) are being trained by another process: {busy}")
    if crashed:
        raise CommandFailed(f"[red]{len(crashed)} run(s) crashed[/]: see {RunDir.ERROR_LOG} in their run "
                            "directories; rerun to retry")


def _launch_options(launcher, partition, gpus, cpus, mem_gb, time_min, jobs, slurm):
    """The submitit options of `--launcher` (None without it); scheduler options without it are an error."""
    if launcher is None:
        given = [flag for flag, value in (("--partition", partition), ("--gpus-per-job", gpus),
                                          ("--cpus-per-job", cpus), ("--mem-gb", mem_gb), ("--slurm", slurm)) if value]
        if given:
            raise UserError(f"{', '.join(given)} need --launcher slurm (or local)")
        return None
    from hopelab.study.launch import LaunchOptions

    extra = {}
    for item in slurm or []:
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise UserError(f"--slurm {item!r}: expected KEY=VALUE, e.g. --slurm account=abc")
        extra[key.strip().replace("-", "_")] = value
    return LaunchOptions(launcher, partition=partition, gpus_per_job=gpus, cpus_per_job=cpus, mem_gb=mem_gb,
                         time_min=time_min, parallel=jobs, extra=extra)


def _submit_only(console, todo: list[PlannedRun], root: Path, launch) -> None:
    from hopelab.study.launch import launch_jobs

    launch_jobs(todo, root, launch, display=None, wait=False)
    console.print(f"submitted {len(todo)} job(s); logs under {root / '.submitit'}. Each job records its run in "
                  f"{root / STUDY_JSON} as it ends; see where they stand with the same command and --dry-run")


def _print_summary(console, runs: list[PlannedRun], outcomes) -> None:
    from rich.table import Table

    table = Table(title="summary", title_justify="left")
    table.add_column("scale", no_wrap=True)
    table.add_column("run", no_wrap=True)
    for col in ("seed", "final val loss"):
        table.add_column(col, justify="right", no_wrap=True)
    table.add_column("status", overflow="fold", ratio=1)
    table.add_column("wall time", justify="right", no_wrap=True)
    for run, o in zip(runs, outcomes):
        loss = f"{o.final_val_loss:.4f}" if o.final_val_loss is not None else "-"
        wall = f"{o.wall_time_s:.1f} s" if o.wall_time_s is not None else "-"
        status = o.status + (f" ({o.reason})" if o.reason and o.status != STATUS_DONE else "")
        style = {"done": "green", "failed": "red"}.get(o.status, "yellow")
        table.add_row(run.spec.scale, run.spec.run_name, str(run.spec.seed), loss, f"[{style}]{status}[/]", wall)
    console.print(table)


def _command_line(ctx: typer.Context, name: str) -> str:
    """The invocation, as a user would type it (stored in study.json)."""
    parts = ["hopelab", "study", name]
    for param in ctx.command.params:
        if param.name == "name" or param.param_type_name != "option":
            continue
        value = ctx.params.get(param.name)
        if value is None or value == param.default or value == [] or value is False:
            continue
        flag = max(param.opts, key=len)
        for v in value if isinstance(value, (list, tuple)) else [value]:
            parts += [flag] if v is True else [flag, str(v)]
    return shlex.join(parts)


def _print_corpus_note(console, runs: list[PlannedRun]) -> None:
    """Prepare (tokenize, cache) each corpus once, and say how many epochs of it each run repeats."""
    from hopelab.data import prepare

    repeats = embedded = False
    synthetic = sorted({r.spec.data for r in runs if is_synthetic(r.spec.data)})
    if synthetic:
        console.print(f"data: {len(synthetic)} synthetic task(s), fresh sequences every step, e.g. {synthetic[0]}")
    runs = [r for r in runs if not is_synthetic(r.spec.data)]
    for (data, tokenizer, vocab_size), group in _by_tokenizer(runs).items():
        prepared = prepare(corpus=data, tokenizer=tokenizer, vocab_size=vocab_size, progress=True)
        train_tokens = int(prepared.meta["train_tokens"])
        most = max(r.tokens for r in group)
        epochs = most / max(train_tokens, 1)
        repeats |= epochs > 1
        embedded |= data is None
        style = "yellow" if epochs > 1 else "default"
        console.print(
            f"data: {prepared.meta.get('corpus', data)}, {tokenizer} tokens: {_tokens(train_tokens)} train tokens; "
            f"a run of {_tokens(most)} tokens repeats it [{style}]{epochs:.3g} epochs[/]"
        )
    if repeats and embedded:
        console.print(
            "[yellow]the embedded corpus is small, so runs see it several times (the dissection study trained "
            "on OpenWebText); pass --data PATH for a larger corpus[/]"
        )


def _by_tokenizer(runs: list[PlannedRun]) -> dict[tuple[str | None, str, int], list[PlannedRun]]:
    groups: dict[tuple[str | None, str, int], list[PlannedRun]] = {}
    for r in runs:
        groups.setdefault((r.spec.data, r.tokenizer, r.vocab_size), []).append(r)
    return groups


def register(app: typer.Typer) -> None:
    app.add_typer(study_app, name="study")
