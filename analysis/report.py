"""Render a study: figures (PNG + PDF), tables (Markdown, LaTeX, CSV) and `<out>/README.md`.

    study = load_results("runs/ablation")
    render_report(study, "reports/ablation", command="hopelab report runs/ablation")

A figure or table whose data is absent is skipped with a note in the report, never a crash.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from analysis.artifacts import FigureOut, Skipped, TableOut, markdown_table
from analysis.comparisons import fmt_count
from analysis.findings import compute_findings, finding_thresholds
from analysis.load import StudyResults, failure_label
from analysis.registry import FIGURES, TABLES, FigureSpec
from analysis.style import DPI
from hopelab.errors import UserError

Progress = Callable[[str], None]


def parse_only(text: str | None, valid: dict[int, FigureSpec]) -> list[int]:
    """"1,3" -> [1, 3]; None -> every number. Anything else is a UserError naming the valid numbers."""
    if text is None or not str(text).strip():
        return sorted(valid)
    out = []
    for part in str(text).split(","):
        part = part.strip()
        if not part.isdigit() or int(part) not in valid:
            choices = ", ".join(f"{n} ({spec.name})" for n, spec in valid.items())
            raise UserError(f"--only: {part!r} is not a figure number; choose from {choices}")
        out.append(int(part))
    return sorted(set(out))


def render_figures(study: StudyResults, out_dir: str | Path, only: list[int] | None = None, dpi: int = DPI,
                   progress: Progress | None = None) -> list[FigureOut | Skipped]:
    results: list[FigureOut | Skipped] = []
    for number in only or sorted(FIGURES):
        if progress:
            progress(f"Figure {number}: {FIGURES[number].name}")
        results += FIGURES[number].render(study, Path(out_dir), study.scales, dpi)
    return results


def render_tables(study: StudyResults, out_dir: str | Path,
                  progress: Progress | None = None) -> list[TableOut | Skipped]:
    results: list[TableOut | Skipped] = []
    for number, spec in TABLES.items():
        if progress:
            progress(f"Table {number}: {spec.name}")
        results.append(spec.render(study, Path(out_dir), study.scales))
    return results


def _hms(seconds: float) -> str:
    if seconds is None or math.isnan(seconds):
        return "n/a"
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h {m:02d}m {s:02d}s" if h else f"{m}m {s:02d}s"


def _span(runs: pd.DataFrame) -> str:
    start = pd.to_datetime(runs["started"], errors="coerce", utc=True).min()
    end = pd.to_datetime(runs["ended"], errors="coerce", utc=True).max()
    if pd.isna(start) or pd.isna(end):
        return ""
    return f"; first start {start:%Y-%m-%d %H:%M} UTC, last end {end:%Y-%m-%d %H:%M} UTC"


def _shown_path(path: Path) -> str:
    """A path as a report may show it: relative to the working directory when under it, else its last part.
    A committed report names no folder of the machine that made it."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return path.name


def setup_lines(study: StudyResults, command: str | None) -> list[str]:
    runs = study.runs
    lines = []
    if command:
        lines.append(f"- **Report command:** `{command}`")
    commands = study.meta.get("commands") or ([study.meta["command"]] if study.meta.get("command") else [])
    if commands:
        label = "Study command" if len(commands) == 1 else "Study commands"
        lines.append(f"- **{label}:** " + "; ".join(f"`{c}`" for c in commands))
    lines.append(f"- **Study:** `{study.name}` at `{_shown_path(study.root)}`"
                 + (f" (study.json updated {study.meta['updated']})" if study.meta.get("updated") else ""))
    for scale in study.scales:
        r = study.runs_at(scale)
        first = r.dropna(subset=["dim"]).iloc[0] if r["dim"].notna().any() else None
        arch = ""
        if first is not None:
            arch = (f"dim {first['dim']}, {first['n_layers']} layer{'s' if first['n_layers'] != 1 else ''}, "
                    f"{first['n_heads']} heads, context "
                    f"{first['context_len']}, batch {first['batch_size']}, lr {first['lr']:g}")
            if not pd.isna(first["cms_periods"]):
                arch += f", CMS periods {first['cms_periods']}"
            if not pd.isna(first["chunk_size"]):
                arch += f", chunk {first['chunk_size']}"
        steps = sorted({int(s) for s in r["steps"].dropna()})
        seeds = sorted({int(s) for s in r["seed"].dropna()})
        lines.append(f"- **Scale {scale}:** {arch}; steps {', '.join(map(str, steps)) or 'n/a'}; seeds "
                     f"{', '.join(map(str, seeds))}; {r['run_name'].nunique()} run names, {len(r)} runs")
    counts = runs["status"].value_counts()
    lines.append("- **Runs:** " + ", ".join(f"{int(n)} {s}" for s, n in counts.items()))
    hw = runs["hardware"].dropna().unique()
    lines.append("- **Hardware:** " + ("; ".join(f"`{h}`" for h in hw) if len(hw) else "not recorded"))
    total = runs["wall_time_s"].sum(min_count=1)
    per_scale = ", ".join(f"{s} {_hms(study.runs_at(s)['wall_time_s'].sum(min_count=1))}" for s in study.scales)
    lines.append(f"- **Wall time:** {_hms(total)} summed over runs ({per_scale}){_span(runs)}")
    shas = runs["git_sha"].dropna().unique()
    if len(shas):
        lines.append("- **Code:** git " + ", ".join(f"`{s[:12]}`" for s in shas))
    return lines


def _runs_table(study: StudyResults) -> str:
    rows = []
    for _, r in study.runs.sort_values(["scale", "run_name", "seed"]).iterrows():
        loss = f"{r['final_val_loss']:.4f}" if not pd.isna(r["final_val_loss"]) else "—"
        status = r["status"] if r["status"] == "done" else failure_label(r)
        steps = f"{r['last_step']}/{r['steps']}" if not pd.isna(r["steps"]) else (
            str(r["last_step"]) if not pd.isna(r["last_step"]) else "—")
        rows.append([str(r["run_id"]), status, steps, loss, _hms(r["wall_time_s"]),
                     fmt_count(r["n_params"]) if not pd.isna(r["n_params"]) else "—"])
    return markdown_table(["run", "status", "steps", "final val loss", "wall time", "params"], rows,
                          align=["l", "l", "r", "r", "r", "r"])


def write_readme(study: StudyResults, out: Path, figures: list, tables: list, command: str | None) -> Path:
    scope = f" — {study.scale} scale" if study.scale else ""
    md = [f"# {study.name}: results{scope}", "",
          f"_Generated by hopelab's `analysis` package on {dt.datetime.now():%Y-%m-%d %H:%M}. Every number below "
          "is computed from the run directories; regenerate rather than edit._", "", "## Setup", ""]
    md += setup_lines(study, command)
    md += ["", "## Findings", ""]
    findings = compute_findings(study)
    md += [f"- {f.text}" for f in findings] or ["- No finished runs to draw findings from."]
    md += ["", "<details><summary>Thresholds used for the wording</summary>", ""]
    md += [f"- {t}" for t in finding_thresholds(findings)] + ["", "</details>", "", "## Tables", ""]
    for t in tables:
        if isinstance(t, TableOut):
            links = " · ".join(f"[{p.suffix[1:]}]({p.relative_to(out).as_posix()})" for p in t.paths)
            md += [f"### Table {t.number}: {t.title}", "", t.markdown, "", f"*{t.caption}* ({links})", ""]
    md += ["## Figures", ""]
    for f in figures:
        if isinstance(f, FigureOut):
            png, pdf = (p.relative_to(out).as_posix() for p in f.paths)
            md += [f"### Figure {f.number}: {f.title}", "", f"![Figure {f.number}: {f.title}]({png})", "",
                   f"*{f.caption}* ([PDF]({pdf}))", ""]
    skipped = [s for s in list(figures) + list(tables) if isinstance(s, Skipped)]
    probe_errors = study.runs.dropna(subset=["probe_errors"])
    probe_errors = probe_errors[probe_errors["probe_errors"] != ""]
    if skipped or study.notes or len(probe_errors):
        md += ["## Notes", ""]
        md += [f"- {s.what} skipped: {s.reason}." for s in skipped]
        md += [f"- {n}" for n in study.notes]
        md += [f"- probe errors in {r['run_id']}: {r['probe_errors'][:300]}" for _, r in probe_errors.iterrows()]
        md.append("")
    md += ["## Runs", "", _runs_table(study), ""]
    path = out / "README.md"
    path.write_text("\n".join(md))
    return path


def render_report(study: StudyResults, out: str | Path, command: str | None = None, dpi: int = DPI,
                  only: list[int] | None = None, progress: Progress | None = None) -> Path:
    """Everything into `out`: figures/, tables/, README.md. Returns the README's path."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tables = render_tables(study, out / "tables", progress)
    figures = render_figures(study, out / "figures", only, dpi, progress)
    if progress:
        progress("README.md")
    return write_readme(study, out, figures, tables, command)
