"""`hopelab audit TARGET`: exit 0 (no critical finding), 1 (critical findings), 2 (usage error)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from hopelab.errors import UserError


def audit_command(
    target: str = typer.Argument(..., help="package.module:factory or path/to/file.py:factory; factory() -> nn.Module"),
    vocab: Optional[int] = typer.Option(None, help="vocabulary size for token input (default: model.config."
                                        "vocab_size or the first nn.Embedding)"),
    seq_len: int = typer.Option(64, "--seq-len", help="sequence length T"),
    batch: int = typer.Option(2, help="batch size B (>= 2 to test batch independence)"),
    input: str = typer.Option("tokens", "--input", help="tokens | float:DIM"),
    call: Optional[str] = typer.Option(None, help="module:fn, fn(model, x) -> output [B, T, ...] (default model(x))"),
    loss: Optional[str] = typer.Option(None, help="module:fn, fn(output, x) -> scalar (default: next-token loss)"),
    memory_params: list[str] = typer.Option([], "--memory-params", help="glob of parameter names to audit as "
                                            "memory / η / α parameters (repeatable)"),
    dtype: str = typer.Option("auto", help="auto (float64 when the model runs in it and has <= 5M parameters, "
                                "else float32) | float64 | float32"),
    json_path: Optional[Path] = typer.Option(None, "--json", help="write the report as JSON"),
    markdown_path: Optional[Path] = typer.Option(None, "--markdown", help="write the report as Markdown"),
    device: str = typer.Option("cpu", help="cpu | cuda | cuda:N"),
    seed: int = typer.Option(0, help="seed for inputs and perturbations"),
    threads: Optional[int] = typer.Option(None, help="torch CPU threads (1 is fastest on a busy machine)"),
) -> None:
    """Gradient-flow and memory audit of any HOPE / Titans / fast-weight model, without editing its code."""
    from rich.console import Console

    from hopelab.audit.checks import audit
    from hopelab.audit.target import build_target
    from hopelab.tables import write_json_atomic

    console = Console(stderr=True)
    if threads is not None:
        if threads < 1:
            raise UserError(f"--threads must be at least 1, got {threads}")
        import torch

        torch.set_num_threads(threads)
    for p in (json_path, markdown_path):
        if p is not None and not p.parent.exists():
            raise UserError(f"output folder {str(p.parent)!r} does not exist")
    with console.status("loading target") as status:
        model = build_target(target)
        report = audit(model, vocab=vocab, seq_len=seq_len, batch=batch, input=input, call=call, loss=loss,
                       device=device, seed=seed, memory_params=memory_params, dtype=dtype, target=target,
                       progress=lambda msg: status.update(msg))
    report.render(Console())
    if json_path is not None:
        write_json_atomic(report.to_dict(), json_path)
        console.print(f"wrote {json_path}")
    if markdown_path is not None:
        tmp = markdown_path.with_name(markdown_path.name + ".tmp")
        tmp.write_text(report.to_markdown(), encoding="utf-8")
        tmp.replace(markdown_path)
        console.print(f"wrote {markdown_path}")
    raise typer.Exit(report.exit_code)


def register(app: typer.Typer) -> None:
    app.command("audit")(audit_command)
