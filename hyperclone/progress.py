"""rich progress bars on stderr (stdout stays clean for --json)."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator

from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

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
