"""The `hopelab` command line. Each command group lives beside the code it drives and is added here."""

from __future__ import annotations

import sys

import typer

from hopelab.errors import UserError
from hopelab.malloc import keep_freed_memory

app = typer.Typer(
    name="hopelab",
    help="Take HOPE (Nested Learning) apart: train variants with probes, run studies, audit any "
    "HOPE/Titans implementation, render paper-style reports.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _register() -> None:
    # One line per command group; each module exposes `register(app)`.
    # >>> command groups (keep this marker; add one import + call per group)
    from hopelab.study.cli import register as register_study

    register_study(app)
    from hopelab.data.cli import register as register_data

    register_data(app)
    from hopelab.train_cli import register as register_train

    register_train(app)
    from hopelab.audit.cli import register as register_audit

    register_audit(app)
    from hopelab.report_cli import register as register_report

    register_report(app)
    from hopelab.bench_cli import register as register_bench

    register_bench(app)
    # <<< command groups


_register()


def main() -> None:
    """Console entry point. Click handles usage errors, exit codes and Ctrl-C itself (standalone mode);
    a UserError (bad input found by our code) becomes one line on stderr and exit code 2."""
    keep_freed_memory()  # before any training: freed CPU buffers stay in the process for the next step
    try:
        app()
    except UserError as err:
        typer.echo(f"error: {err}", err=True)
        sys.exit(err.exit_code)


if __name__ == "__main__":
    main()
