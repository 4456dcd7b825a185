"""rich progress bars on stderr (stdout stays clean for --json)."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator

from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, ProgressColumn, Task, TextColumn, TimeRemainingColumn, TransferSpeedColumn
from rich.text import Text

stderr = Console(stderr=True)


@contextmanager
def byte_progress(description: str, total: int, enabled: bool = True) -> Iterator[Callable[[int], None]]:
    """Yield a callback that advances a bytes bar (rate and ETA shown); a no-op when disabled."""
    if not enabled or total <= 0:  # nothing to show for no bytes (e.g. no finished shards to check)
        yield lambda n: None
        return
    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=stderr) as bar:
        task = bar.add_task(description, total=total)
        yield lambda n: bar.advance(task, n)


class _TokenRate(ProgressColumn):
    def render(self, task: Task) -> Text:
        return Text(f"{task.speed:,.0f} tok/s" if task.speed else "? tok/s")


@contextmanager
def token_progress(description: str, total: int, enabled: bool = True) -> Iterator[Callable[[int, int], None]]:
    """Yield advance(tokens, more_total): a tokens bar (count, rate, ETA) whose total may grow as work is added."""
    if not enabled or total <= 0:
        yield lambda n, more=0: None
        return
    columns = (TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed:,.0f}/{task.total:,.0f} tokens"),
               _TokenRate(), TimeRemainingColumn())
    with Progress(*columns, console=stderr) as bar:
        task = bar.add_task(description, total=total)

        def advance(tokens: int, more: int = 0) -> None:
            bar.update(task, advance=tokens, total=bar.tasks[task].total + more)

        yield advance
