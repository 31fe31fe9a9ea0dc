"""The `hopelab` command line: one module per command (train, study, data, audit, report, bench, intervene), each
thin (parse, call the library, print), with the options they share in `hopelab.cli.options`.
A command never exits by itself: bad input raises `UserError` (one line on stderr, exit 2); work that failed
raises `CommandFailed` (its message on stderr, exit 1 or its own code). `main` is the only place that exits.
"""

from __future__ import annotations

import sys

import typer

from hopelab.cli import audit, bench, data, intervene, report, study, train
from hopelab.errors import CommandFailed, UserError
from hopelab.malloc import keep_freed_memory

app = typer.Typer(
    name="hopelab",
    help="Take HOPE (Nested Learning) apart: train variants with probes, run studies, audit any "
    "HOPE/Titans implementation, render paper-style reports.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
for command in (train, audit, report, bench, study, data, intervene):
    command.register(app)


def main() -> None:
    """Console entry point. Click handles usage errors, exit codes and Ctrl-C itself (standalone mode)."""
    keep_freed_memory()  # before any training: freed CPU buffers stay in the process for the next step
    try:
        app()
    except UserError as err:
        typer.echo(f"error: {err}", err=True)
        sys.exit(err.exit_code)
    except CommandFailed as err:
        if str(err):
            from rich.console import Console

            Console(stderr=True, soft_wrap=True).print(str(err))
        sys.exit(err.exit_code)
