"""`hopelab audit TARGET`: exit 0 (no critical finding), 1 (critical findings), 2 (usage error)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from hopelab.errors import CommandFailed, UserError


def audit_command(
    target: Annotated[str, typer.Argument(help="package.module:factory or path/to/file.py:factory; "
                                          "factory(**kw) -> nn.Module (a class works)")],
    kw: Annotated[list[str], typer.Option("--kw", help="key=value passed to the factory (repeatable; JSON, else "
                                          "a string), e.g. --kw dim=64")] = [],
    vocab: Annotated[int | None, typer.Option(help="vocabulary size for token input (default: model.config."
                                                 "vocab_size or the first nn.Embedding)")] = None,
    seq_len: Annotated[int, typer.Option("--seq-len", help="sequence length T")] = 64,
    batch: Annotated[int, typer.Option(help="batch size B (>= 2 to test batch independence)")] = 2,
    input: Annotated[list[str], typer.Option("--input", help="[NAME=]tokens | tokens:V | float:D | float:NxD "
                                             "(repeatable; named inputs go to forward(NAME=...))")] = ["tokens"],
    tokens_per_step: Annotated[int, typer.Option("--tokens-per-step", help="N tokens per step on the sequence axis "
                                                 "(e.g. a frame's patches): steps are judged, not tokens")] = 1,
    call: Annotated[str | None, typer.Option(help="module:fn or path/to/file.py:fn, fn(model, x) -> output "
                                                "[B, T, ...] (default model(x)); e.g. a reset, then model(x); x is "
                                                "a dict {name: tensor} with named --input")] = None,
    loss: Annotated[str | None, typer.Option(help="module:fn, fn(output, x) -> scalar "
                                                "(default: next-token loss)")] = None,
    memory_params: Annotated[list[str], typer.Option("--memory-params", help="glob of parameter names to audit as "
                                                     "memory / η / α parameters (repeatable)")] = [],
    dtype: Annotated[str, typer.Option(help="auto (float64 when the model runs in it and has <= 5M parameters, "
                                       "else float32) | float64 | float32")] = "auto",
    json_path: Annotated[Path | None, typer.Option("--json", help="write the report as JSON")] = None,
    markdown_path: Annotated[Path | None, typer.Option("--markdown", help="write the report as Markdown")] = None,
    device: Annotated[str, typer.Option(help="cpu | cuda | cuda:N")] = "cpu",
    seed: Annotated[int, typer.Option(help="seed for inputs and perturbations")] = 0,
    threads: Annotated[int | None, typer.Option(help="torch CPU threads (1 is fastest on a busy machine)")] = None,
) -> None:
    """Gradient-flow and memory audit of any HOPE / Titans / fast-weight model, without editing its code."""
    from rich.console import Console

    from hopelab.audit.checks import audit
    from hopelab.audit.target import build_target, parse_kwargs
    from hopelab.records import atomic_path, write_json_atomic

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
        model = build_target(target, parse_kwargs(kw))
        report = audit(model, vocab=vocab, seq_len=seq_len, batch=batch, input=input, call=call, loss=loss,
                       tokens_per_step=tokens_per_step,
                       device=device, seed=seed, memory_params=memory_params, dtype=dtype, target=target,
                       progress=lambda msg: status.update(msg))
    report.render(Console())
    if json_path is not None:
        write_json_atomic(report.to_dict(), json_path)
        console.print(f"wrote {json_path}")
    if markdown_path is not None:
        with atomic_path(markdown_path) as tmp:
            tmp.write_text(report.to_markdown(), encoding="utf-8")
        console.print(f"wrote {markdown_path}")
    if report.exit_code:
        raise CommandFailed(exit_code=report.exit_code)  # the report above says why


def register(app: typer.Typer) -> None:
    app.command("audit")(audit_command)
