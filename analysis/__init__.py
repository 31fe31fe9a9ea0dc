"""Paper-style figures, tables and a README report from a study directory.

    from analysis import load_study, render_report
    study = load_study("runs/ablation")            # or "runs/ablation/small"; scale="small" to restrict
    study.runs, study.metrics, study.probes          # tidy DataFrames (analysis.load dtypes)
    render_report(study, "reports/ablation")         # figures/, tables/, README.md

Modules: load (study dir -> DataFrames), style (palette, names), stats (intervals, tests), summary (the
numbers behind tables/figure 4/findings), fig1_cms, fig2_selfmod, fig3_surprise, fig4_importance, fig5_curves,
table1_ablation, table2_sweep, findings, report. CLI: `hopelab report|figures|tables` (hopelab/cli/report.py).
"""

from analysis.load import Study, load_study
from analysis.report import render_figures, render_report, render_tables
from analysis.summary import ablation_summary, sweep_summary

__all__ = ["Study", "load_study", "render_report", "render_figures", "render_tables", "ablation_summary",
           "sweep_summary"]
