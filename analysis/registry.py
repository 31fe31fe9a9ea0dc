"""Every figure and table of the report, by number: what `hopelab report | figures | tables` draws, in order.

A figure module draws one figure per scale (`render_scale`) or one across every scale (`render_all`); a table
module builds its table (`build`). Whatever lacks its data comes back as `Skipped`, with the reason.
Adding a figure: write its module, then one line in FIGURES.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from analysis import (
    fig1_cms,
    fig2_selfmod,
    fig3_surprise,
    fig4_importance,
    fig5_curves,
    fig6_interventions,
    fig7_recall,
    table1_ablation,
    table2_sweep,
    table3_interventions,
    table4_capacity,
)
from analysis.artifacts import FigureOut, Skipped, TableOut, write_table
from analysis.load import StudyResults

RenderScale = Callable[[StudyResults, str, Path, int], "FigureOut | Skipped"]  # (study, scale, out_dir, dpi)
RenderAll = Callable[[StudyResults, Path, list[str], int], "FigureOut | Skipped"]  # (study, out_dir, scales, dpi)
BuildTable = Callable[[StudyResults, list[str]], "TableOut | Skipped"]  # (study, scales)


@dataclass(frozen=True)
class FigureSpec:
    number: int
    name: str
    render_scale: RenderScale | None = None  # one figure per scale
    render_all: RenderAll | None = None  # one figure across every scale

    def render(self, study: StudyResults, out_dir: Path, scales: list[str], dpi: int) -> list[FigureOut | Skipped]:
        if self.render_all is not None:
            return [self.render_all(study, out_dir, scales, dpi)]
        return [self.render_scale(study, scale, out_dir, dpi) for scale in scales]


@dataclass(frozen=True)
class TableSpec:
    number: int
    name: str
    build: BuildTable

    def render(self, study: StudyResults, out_dir: Path, scales: list[str]) -> TableOut | Skipped:
        """Build the table and write its .md, .tex and .csv into `out_dir`."""
        table = self.build(study, scales)
        return write_table(table, out_dir) if isinstance(table, TableOut) else table


FIGURES: dict[int, FigureSpec] = {spec.number: spec for spec in [
    FigureSpec(fig1_cms.NUMBER, fig1_cms.TITLE, render_scale=fig1_cms.render_scale),
    FigureSpec(fig2_selfmod.NUMBER, fig2_selfmod.TITLE, render_scale=fig2_selfmod.render_scale),
    FigureSpec(fig3_surprise.NUMBER, fig3_surprise.TITLE, render_scale=fig3_surprise.render_scale),
    FigureSpec(fig4_importance.NUMBER, fig4_importance.TITLE, render_all=fig4_importance.render_all),
    FigureSpec(fig5_curves.NUMBER, fig5_curves.TITLE, render_scale=fig5_curves.render_scale),
    FigureSpec(fig6_interventions.NUMBER, fig6_interventions.TITLE, render_scale=fig6_interventions.render_scale),
    FigureSpec(fig7_recall.NUMBER, fig7_recall.TITLE, render_scale=fig7_recall.render_scale),
]}
TABLES: dict[int, TableSpec] = {spec.number: spec for spec in [
    TableSpec(table1_ablation.NUMBER, table1_ablation.TITLE, table1_ablation.build),
    TableSpec(table2_sweep.NUMBER, table2_sweep.TITLE, table2_sweep.build),
    TableSpec(table3_interventions.NUMBER, table3_interventions.TITLE, table3_interventions.build),
    TableSpec(table4_capacity.NUMBER, table4_capacity.TITLE, table4_capacity.build),
]}
