"""The progress bars of hopelab (rich, on stderr by default), or a silent stand-in: one factory for `prepare`,
a training run, a study and a report."""

from __future__ import annotations

from typing import Any


class NoProgress:
    """Same calls as rich.progress.Progress, does nothing (progress=False, tests)."""

    def __enter__(self) -> NoProgress:
        return self

    def __exit__(self, *exc: Any) -> None:
        return None

    def add_task(self, description: str, total: float | None = None, **kwargs: Any) -> int:
        return 0

    def advance(self, task_id: int, advance: float = 1) -> None:
        return None

    def update(self, task_id: int, **kwargs: Any) -> None:
        return None


def progress_bar(enabled: bool = True, kind: str = "bytes", console=None, transient: bool = False):
    """A rich Progress when enabled (on `console`, default stderr), else NoProgress. `kind` picks the columns:

        bytes   `prepare`: tasks with a total count bytes and show size and speed; tasks added with
                total=None are plain spinners (e.g. BPE merges)
        steps   one training run: step/total, the task's `loss` field, time left
        runs    a study: done/total, the task's `loss` and `eta` fields, time taken
        items   a report: the item being made, done/total, time taken
    """
    if not enabled:
        return NoProgress()
    from rich.console import Console
    from rich.progress import Progress

    return Progress(*_columns(kind), console=console or Console(stderr=True), transient=transient)


def _columns(kind: str) -> list:
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        MofNCompleteColumn,
        ProgressColumn,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
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

    if kind == "bytes":
        return [SpinnerColumn(), TextColumn("[bold]{task.description}"), BarColumn(), BytesOnly(DownloadColumn()),
                BytesOnly(TransferSpeedColumn()), TimeElapsedColumn()]
    if kind == "steps":
        return [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]}"), TimeRemainingColumn()]
    if kind == "runs":
        return [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[loss]}"),
                TimeElapsedColumn(), TextColumn("{task.fields[eta]}")]
    if kind == "items":
        return [TextColumn("{task.description:<32}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                TimeElapsedColumn()]
    raise ValueError(f"unknown progress bar kind {kind!r}")
