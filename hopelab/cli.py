"""The `hopelab` command line. Each command group lives beside the code it drives and is added here."""

from __future__ import annotations

import sys

import typer

from hopelab.errors import UserError

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
    """Console entry point: a UserError becomes one line on stderr and exit code 2."""
    try:
        app(standalone_mode=False)
    except UserError as err:
        typer.echo(f"error: {err}", err=True)
        sys.exit(err.exit_code)
    except (typer.Exit, SystemExit) as err:  # typer/click exit codes pass through
        code = getattr(err, "exit_code", getattr(err, "code", 0))
        sys.exit(code if isinstance(code, int) else 0)
    except Exception as err:  # click usage errors and aborts
        import click

        if isinstance(err, click.exceptions.ClickException):
            err.show()
            sys.exit(err.exit_code)
        if isinstance(err, click.exceptions.Abort):
            typer.echo("aborted", err=True)
            sys.exit(130)
        raise


if __name__ == "__main__":
    main()
