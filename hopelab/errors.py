"""The two ways a `hopelab` command ends in failure; `hopelab.cli.main` turns them into a message and an exit code."""

from __future__ import annotations


class UserError(Exception):
    """Bad input from a user (a path, a name, a file). Shown as one line, exit code 2, no traceback."""

    exit_code = 2


class CommandFailed(Exception):
    """A command ran and its work failed (a training run failed, a study's run crashed, an audit found a
    critical problem). Its message (rich markup; may be empty) goes to stderr, then exit `exit_code`."""

    def __init__(self, message: str = "", exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code
