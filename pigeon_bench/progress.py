"""One progress-bar factory for the whole toolkit: rich bars on stderr, so stdout stays clean for reports."""

from __future__ import annotations

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

console = Console(stderr=True, soft_wrap=True)


def progress(*, info: bool = False, transient: bool = True, enabled: bool = True) -> Progress:
    """A bar with description, count, elapsed time and ETA; ``info`` adds the task's ``info`` field (the
    loss)."""
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("ETA"), TimeRemainingColumn()]
    if info:
        columns.append(TextColumn("{task.fields[info]}"))
    return Progress(*columns, console=console, transient=transient, disable=not enabled)
