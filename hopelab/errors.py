"""One exception type for bad user input: the CLI prints it as one line and exits 2."""

from __future__ import annotations


class UserError(Exception):
    """Bad input from a user (a path, a name, a file). Shown as one line, exit code 2, no traceback."""

    exit_code = 2
