"""Rich progress bars on stderr for the long steps of `prepare` (or a silent stand-in)."""

from __future__ import annotations

from typing import Any


class NoProgress:
    """Same calls as rich.progress.Progress, does nothing (progress=False, tests)."""

    def __enter__(self) -> "NoProgress":
        return self

    def __exit__(self, *exc: Any) -> None:
        return None

    def add_task(self, description: str, total: float | None = None, **kwargs: Any) -> int:
        return 0

    def advance(self, task_id: int, advance: float = 1) -> None:
        return None

    def update(self, task_id: int, **kwargs: Any) -> None:
        return None


def progress_bar(enabled: bool):
    """A rich Progress on stderr when enabled, else NoProgress. Tasks with a total count bytes and show
    size and speed; tasks added with total=None are plain spinners (e.g. BPE merges)."""
    if not enabled:
        return NoProgress()
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        ProgressColumn,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
        TransferSpeedColumn,
    )
    from rich.text import Text

    class BytesOnly(ProgressColumn):
        """Render the wrapped column only for byte-counting tasks."""

        def __init__(self, column: ProgressColumn):
            super().__init__()
            self.column = column

        def render(self, task):
            return Text("") if task.fields.get("spinner") else self.column.render(task)

    return Progress(
        SpinnerColumn(),
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        BytesOnly(DownloadColumn()),
        BytesOnly(TransferSpeedColumn()),
        TimeElapsedColumn(),
        console=Console(stderr=True),
    )
