"""Output directories that appear whole or not at all."""
from __future__ import annotations

import errno
import os
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from hyperclone.errors import UserError

TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model", "spiece.model",
    "vocab.json", "merges.txt", "added_tokens.json", "chat_template.jinja", "chat_template.json", "generation_config.json",
)


def check_output(out: Path, force: bool, needed_bytes: int = 0) -> None:
    """Refuse before any work: an existing output without force, an unusable parent, too little disk."""
    if out.exists() and not force:
        raise UserError(f"{out} already exists: pass --force to replace it, or choose another -o")
    if out.exists() and not out.is_dir():
        raise UserError(f"{out} exists and is not a directory: remove it or choose another -o")
    parent = out.parent
    probe = parent
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise UserError(f"cannot write {out}: {probe} is not a writable directory; choose another -o")
    free = shutil.disk_usage(probe).free
    if needed_bytes and free < needed_bytes:
        raise UserError(
            f"not enough disk for {out}: it needs {needed_bytes / 1e9:.2f} GB and {probe} has {free / 1e9:.2f} GB free"
        )


def partial_directory(out: Path) -> Path:
    """Where a resumable grow of `out` keeps its work: a fixed hidden sibling, found again by --resume."""
    out = out.absolute()
    return out.parent / f".{out.name}.partial"


@contextmanager
def resumable_directory(out: Path, force: bool, resume: bool) -> Iterator[Path]:
    """Yield the hidden sibling `out` is built in; rename it into place only when the block succeeds.

    The sibling has a fixed name and outlives an interruption (Ctrl-C, a kill, a full disk): its
    finished shards are complete files (each renamed into place after fsync), so `--resume` keeps
    them. Bad input (a UserError) leaves nothing new behind, and `out` itself is never half-written.
    """
    out = out.absolute()
    check_output(out, force)
    partial = partial_directory(out)
    if partial.exists() and not resume:
        if not force:
            raise UserError(f"an interrupted grow left {partial}: pass --resume to continue it, or --force to start over")
        shutil.rmtree(partial)
    created = not partial.exists()
    try:
        partial.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot write {out}: {exc.strerror or exc}; choose another -o") from None
    try:
        yield partial
    except UserError:
        if created:  # never throw away the finished shards of an earlier, interrupted run
            shutil.rmtree(partial, ignore_errors=True)
        raise
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise UserError(f"the disk filled up while writing {out}; finished shards are kept in {partial}: "
                            "free some space and rerun with --resume") from None
        raise
    _replace(partial, out)


def _replace(tmp: Path, out: Path) -> None:
    if out.exists():
        trash = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
        out.rename(trash)
        tmp.rename(out)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        tmp.rename(out)


def copy_side_files(source_dir: Path, out: Path) -> list[str]:
    """Tokenizer and generation config travel unchanged: growth keeps the vocabulary."""
    copied = []
    for name in TOKENIZER_FILES:
        if (source_dir / name).is_file():
            shutil.copy2(source_dir / name, out / name)
            copied.append(name)
    return copied
