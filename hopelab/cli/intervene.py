"""`hopelab intervene RUN_DIR`: evaluate a finished run's checkpoint with its in-context writes switched off.

    hopelab intervene runs/ablation/tiny/hope/seed0                        # every switch, last checkpoint
    hopelab intervene runs/ablation/tiny/hope/seed0 --step 250 --switch cms_writes_off --switch all_writes_off

The rows go into the run's probes folder as `intervene-step<k>.parquet` (replacing the probe's own rows of
that step), so `hopelab report` reads them; a table of Δ = loss(switch) − loss(none) with its 95% bootstrap
interval over the probe sequences is printed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from hopelab.errors import UserError


def intervene_command(
    run_dir: Annotated[Path, typer.Argument(help="a run's folder (it holds manifest.json and checkpoints/)")],
    step: Annotated[int | None, typer.Option("--step", help="checkpoint step [default: the last kept]")] = None,
    switch: Annotated[list[str] | None, typer.Option("--switch", metavar="NAME", help="a switch (repeatable) "
                                                     "[default: every switch the model has]")] = None,
    sequences: Annotated[int | None, typer.Option(
        "--sequences", help="validation sequences of the probe set [default: 64 windows; 16 streams for a run "
                            "trained on streams]")] = None,
) -> None:
    """Δ loss per switch (none, selfmod_writes_off, memory_writes_off, cms_writes_off, all_writes_off,
    gate_open, gate_closed, reset_every_R, cms_writes_off_from_R) on a fixed probe set, paired by sequence.
    A run trained on streams (`segments` K > 1) is evaluated on streams of K windows, read as trained."""
    import torch
    from rich.console import Console

    from hopelab.interventions import (
        NONE,
        applicable_switches,
        evaluate_switches,
        intervention,
        probe_set,
        switch_effects,
    )
    from hopelab.probes.base import probe_path, write_probe_rows
    from hopelab.run import RunDir
    from hopelab.run.trained import load_trained

    if not (run_dir / "checkpoints").is_dir():
        raise UserError(f"{run_dir} is not a run folder (no checkpoints/)")
    if sequences is not None and sequences < 2:
        raise UserError(f"--sequences must be >= 2, got {sequences}")
    for name in switch or []:
        intervention(name)  # an unknown name is a UserError before anything is loaded
    trained = load_trained(RunDir(run_dir), step)
    model = trained.model.to("cuda" if torch.cuda.is_available() else "cpu")
    have = applicable_switches(model)
    asked = switch or have
    console = Console(stderr=True, soft_wrap=True)
    if have == [NONE]:
        console.print(f"{trained.spec.variant} has no in-context memory: only `none` applies (its loss is written)")
    skipped = [n for n in asked if n not in have]
    if skipped:
        console.print(f"not in {trained.spec.variant} (no rows): {', '.join(skipped)}")
    x, y = probe_set(trained.data(), model.config.context_len, trained.train.probe_seed, sequences,
                     trained.train.segments)
    losses = evaluate_switches(model, (x, y), [n for n in asked if n in have])
    rows, kept = _merged_rows(probe_path(trained.run_dir.probes, "intervene", trained.step), losses)
    if kept:
        console.print(f"kept the rows already there of: {', '.join(kept)}")
    path = write_probe_rows(trained.run_dir.probes, trained.labels, "intervene", trained.step, rows)
    wide = Console(soft_wrap=True, width=max(Console().width, 100))
    _print_table(wide, trained, losses[NONE], switch_effects(losses))
    console.print(f"rows -> {path}")


def _merged_rows(path, losses) -> tuple[list[dict], list[str]]:
    """This evaluation's rows, plus the rows already at `path` (the probe's, or an earlier `hopelab intervene`)
    of the switches not evaluated now, when those were measured on the same sequences (their per-sequence
    losses as trained equal this evaluation's, so Δs stay paired); otherwise this evaluation's alone.
    -> (rows, the switches kept)."""
    import math

    from hopelab.interventions import NONE, intervention_rows
    from hopelab.records import PROBE_SCHEMA, read_parquet

    rows = intervention_rows(losses)
    if not path.exists():
        return rows, []
    old = read_parquet(path, PROBE_SCHEMA).to_pylist()
    old_none = sorted((r["level"], r["value"]) for r in old if r["component"] == NONE and r["metric"] == "seq_loss")
    new_none = losses[NONE].double().mean(dim=1).tolist()  # per sequence, as intervention_rows writes it
    same = len(old_none) == len(new_none) and all(
        math.isclose(v, new_none[i], rel_tol=1e-4) for i, v in old_none)
    kept = [r for r in old if same and r["component"] not in losses]
    return rows + kept, sorted({r["component"] for r in kept})


def _print_table(console, trained, none, effects) -> None:
    from rich.table import Table

    table = Table(title=f"{trained.spec.run_id} step {trained.step}: Δ loss vs none (nats), {none.shape[0]} "
                        f"sequences × {none.shape[1]} tokens, loss(none) = {float(none.mean()):.4f}")
    for col in ("switch", "Δ", "95% CI", "Δ first bucket", "Δ last bucket"):
        table.add_column(col, justify="left" if col == "switch" else "right", no_wrap=True)  # never cut a name
    for e in effects:
        first, last = e.buckets[0], e.buckets[-1]
        table.add_row(e.switch, f"{e.delta.mean:+.4f}", f"[{e.delta.lo:+.4f}, {e.delta.hi:+.4f}]",
                      f"{first[2].mean:+.4f} (t<{first[1]})", f"{last[2].mean:+.4f} (t≥{last[0]})")
    console.print(table)


def register(app: typer.Typer) -> None:
    app.command("intervene")(intervene_command)
