"""Paper-style figures, tables and a README report from a study directory.

    from analysis import load_results, render_report
    study = load_results("runs/ablation")            # or "runs/ablation/small"; scale="small" to restrict
    study.runs, study.metrics, study.probes          # tidy DataFrames (analysis.load dtypes)
    render_report(study, "reports/ablation")         # figures/, tables/, README.md

Modules: load (study dir -> StudyResults: DataFrames), select (rows and seed bands for a figure), style
(palette, names, panels, band lines), stats (intervals, tests), summary (the numbers behind tables/figure
4/findings), fig1_cms, fig2_selfmod, fig3_surprise, fig4_importance, fig5_curves, table1_ablation, table2_sweep,
registry (every figure and table by number), findings, report. CLI: `hopelab report|figures|tables`
(hopelab/cli/report.py).
"""

from analysis.load import StudyResults, load_results
from analysis.report import render_figures, render_report, render_tables
from analysis.summary import ablation_summary, sweep_summary

__all__ = ["StudyResults", "load_results", "render_report", "render_figures", "render_tables", "ablation_summary",
           "sweep_summary"]
