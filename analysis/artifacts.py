"""What a figure or table module returns, and the Markdown/LaTeX writer every table uses."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd


@dataclass
class FigureOut:
    number: int
    stem: str  # file name without extension, e.g. "fig1_cms_small"
    title: str
    caption: str
    paths: list[Path]  # PNG then PDF
    scale: str | None = None


@dataclass
class TableOut:
    number: int
    stem: str
    title: str
    caption: str
    markdown: str  # the table itself (header + rows + footnotes), without the caption
    latex: str
    data: pd.DataFrame  # the numbers behind the cells
    paths: list[Path] = field(default_factory=list)  # .md, .tex, .csv


@dataclass
class Skipped:
    """A figure or table not drawn because its data is absent; the report says why."""

    number: int
    what: str  # "Figure 1 (CMS dynamics)"
    reason: str
    scale: str | None = None


def bold(text: str) -> str:
    return f"**{text}**"


def markdown_table(header: list[str], rows: list[list[str]], align: list[str] | None = None) -> str:
    align = align or ["l"] + ["r"] * (len(header) - 1)
    sep = {"l": ":---", "r": "---:", "c": ":---:"}
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(sep[a] for a in align) + "|"]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return "\n".join(lines)


_LATEX_SPECIAL = {"&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{", "}": r"\}",
                  "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "\\": r"\textbackslash{}"}
_LATEX_UNICODE = {"ᵖ": r"$^{p}$", "ʷ": r"$^{w}$", "±": r"$\pm$", "Δ": r"$\Delta$", "τ": r"$\tau$", "—": "---",
                  "−": "$-$", "†": r"$^\dagger$",
                  "‡": r"$^\ddagger$", "≥": r"$\geq$", "≤": r"$\leq$", "×": r"$\times$", "<": r"$<$", ">": r"$>$"}


def latex_escape(text: str) -> str:
    out = "".join(_LATEX_SPECIAL.get(ch, ch) for ch in text)
    for uni, tex in _LATEX_UNICODE.items():
        out = out.replace(uni, tex)
    return out


def latex_cell(text: str) -> str:
    """Markdown bold (**x**) becomes \\textbf{x}; everything else is escaped."""
    parts = re.split(r"\*\*(.+?)\*\*", text)  # odd indices were inside ** **
    return "".join(r"\textbf{" + latex_escape(p) + "}" if i % 2 else latex_escape(p) for i, p in enumerate(parts))


def latex_table(header: list[str], rows: list[list[str]], caption: str, label: str,
                align: list[str] | None = None, notes: list[str] | None = None) -> str:
    align = align or ["l"] + ["r"] * (len(header) - 1)
    lines = [
        r"% requires \usepackage{booktabs}",
        r"\begin{table}[t]",
        r"\centering",
        r"\small",
        r"\begin{tabular}{" + "".join(align) + "}",
        r"\toprule",
        " & ".join(latex_cell(h) for h in header) + r" \\",
        r"\midrule",
    ]
    lines += [" & ".join(latex_cell(c) for c in row) + r" \\" for row in rows]
    lines += [r"\bottomrule", r"\end{tabular}"]
    for note in notes or []:
        lines.append(r"\par\smallskip{\footnotesize " + latex_escape(note) + "}")
    lines += [r"\caption{" + latex_escape(caption) + "}", r"\label{" + label + "}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def write_table(table: TableOut, out_dir: Path) -> TableOut:
    out_dir.mkdir(parents=True, exist_ok=True)
    md = out_dir / f"{table.stem}.md"
    tex = out_dir / f"{table.stem}.tex"
    csv = out_dir / f"{table.stem}.csv"
    md.write_text(f"**Table {table.number}: {table.title}.** {table.caption}\n\n{table.markdown}\n")
    tex.write_text(table.latex)
    table.data.to_csv(csv, index=False)
    table.paths = [md, tex, csv]
    return table
