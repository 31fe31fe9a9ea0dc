"""`hopelab report | figures | tables`: paper-style output from a study directory (the `analysis` package).

    hopelab report runs/ablation                      # -> reports/ablation/{README.md, figures/, tables/}
    hopelab report runs/ablation/small                # one scale's directory -> reports/ablation-small/
    hopelab figures runs/ablation --only 1,3 --out figs
    hopelab tables runs/ablation --out tabs
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Annotated

import typer

from hopelab.cli.options import DpiOpt, OnlyScaleOpt, StudyDirArg
from hopelab.errors import UserError


def _command_line() -> str:
    return "hopelab " + shlex.join(sys.argv[1:])


def _load(study_dir: Path, scale: str | None):
    import matplotlib

    matplotlib.use("Agg", force=True)  # no display needed, ever
    from analysis.load import load_results

    return load_results(study_dir, scale)


def _default_out(study, sub: str = "") -> Path:
    name = study.name + (f"-{study.scale}" if study.scale else "")
    out = Path("reports") / name
    return out / sub if sub else out


def _check_dpi(dpi: int) -> None:
    if not 20 <= dpi <= 1200:
        raise UserError(f"--dpi must be between 20 and 1200, got {dpi}")


class _Progress:
    """A progress bar over named steps, on stderr: called with the name of each step as it starts."""

    def __init__(self, total: int):
        from hopelab.data.progress import progress_bar

        self.bar = progress_bar(kind="items", transient=True)
        self.task = self.bar.add_task("loading", total=total)
        self.started = False

    def __enter__(self):
        self.bar.__enter__()
        return self

    def __exit__(self, *exc):
        self.bar.__exit__(*exc)

    def __call__(self, what: str) -> None:
        if self.started:
            self.bar.advance(self.task)
        self.started = True
        self.bar.update(self.task, description=what)


def _summary(results, out: Path) -> str:
    from analysis.artifacts import FigureOut, Skipped, TableOut

    n_fig = sum(isinstance(r, FigureOut) for r in results)
    n_tab = sum(isinstance(r, TableOut) for r in results)
    skipped = [r for r in results if isinstance(r, Skipped)]
    parts = [f"{n_fig} figure(s)"] if n_fig else []
    parts += [f"{n_tab} table(s)"] if n_tab else []
    text = (", ".join(parts) or "nothing") + f" to {out}"
    for s in skipped:
        text += f"\n  skipped {s.what}: {s.reason}"
    return text


def report(
    study_dir: StudyDirArg,
    out: Annotated[Path | None, typer.Option("--out", help="output directory [default: reports/<study>]")] = None,
    scale: Annotated[str | None, typer.Option("--scale", help="report only this scale")] = None,
    dpi: DpiOpt = 200,
) -> None:
    """Render every figure and table and a README.md with setup, findings and captions."""
    _check_dpi(dpi)
    study = _load(study_dir, scale)
    from analysis.report import FIGURES, TABLES, render_report

    out = out or _default_out(study)
    with _Progress(len(FIGURES) + len(TABLES) + 1) as progress:
        readme = render_report(study, out, command=_command_line(), dpi=dpi, progress=progress)
    typer.echo(f"wrote {readme}")


def figures(
    study_dir: StudyDirArg,
    out: Annotated[Path | None, typer.Option("--out", help="output directory "
                                                "[default: reports/<study>/figures]")] = None,
    only: Annotated[str | None, typer.Option("--only", help="figure numbers, e.g. 1,3 (1 CMS, 2 self-mod, "
                                                "3 surprise, 4 importance, 5 curves)")] = None,
    scale: OnlyScaleOpt = None,
    dpi: DpiOpt = 200,
) -> None:
    """Render figures (PNG and PDF) only."""
    _check_dpi(dpi)
    from analysis.report import FIGURES, parse_only, render_figures

    numbers = parse_only(only, FIGURES)  # before loading: a bad --only fails fast
    study = _load(study_dir, scale)
    out = out or _default_out(study, "figures")
    with _Progress(len(numbers)) as progress:
        results = render_figures(study, out, numbers, dpi=dpi, progress=progress)
    typer.echo(f"wrote {_summary(results, out)}")


def tables(
    study_dir: StudyDirArg,
    out: Annotated[Path | None, typer.Option("--out", help="output directory "
                                                "[default: reports/<study>/tables]")] = None,
    scale: OnlyScaleOpt = None,
) -> None:
    """Render tables (Markdown, LaTeX, CSV) only."""
    study = _load(study_dir, scale)
    from analysis.report import render_tables

    out = out or _default_out(study, "tables")
    results = render_tables(study, out)
    typer.echo(f"wrote {_summary(results, out)}")


def register(app: typer.Typer) -> None:
    app.command("report")(report)
    app.command("figures")(figures)
    app.command("tables")(tables)
