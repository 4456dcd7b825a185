"""Output directories that appear whole or not at all."""
from __future__ import annotations

import errno
import os
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator

from hyperclone.errors import UserError
from hyperclone.io.guard import LOCK_INFO, MANIFEST, DirectoryLock, check_partial, check_replaceable, refuse_overlap
from hyperclone.io.writer import format_size

TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model", "spiece.model",
    "vocab.json", "merges.txt", "added_tokens.json", "chat_template.jinja", "chat_template.json", "generation_config.json",
)


PROGRESS_FILE = ".hyperclone-progress.json"  # finished shards and their checksums, for --resume
# What an interrupted grow's work directory may hold besides its shards; anything else is not ours.
WORK_FILES = (*TOKENIZER_FILES, PROGRESS_FILE, PROGRESS_FILE + ".tmp", LOCK_INFO, MANIFEST, "config.json",
              "model.safetensors.index.json", "README.md")


def check_output(out: Path, force: bool, needed_bytes: int = 0, inputs: Iterable[Path] = ()) -> None:
    """Refuse before any work: an output overlapping the input, an existing output without force
    (or, with force, one hyperclone did not write), an unusable parent, too little disk."""
    refuse_overlap(out, inputs)
    if out.exists() or out.is_symlink():
        if not force:
            raise UserError(f"{out} already exists: pass --force to replace it (only outputs hyperclone wrote are replaced), "
                            "or choose another -o")
        check_replaceable(out, "grow")
    parent = out.parent
    probe = parent
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise UserError(f"cannot write {out}: {probe} is not a writable directory; choose another -o")
    free = shutil.disk_usage(probe).free
    if needed_bytes and free < needed_bytes:
        raise UserError(f"not enough disk for {out}: it needs {format_size(needed_bytes)} and {probe} has {format_size(free)} free")


def partial_directory(out: Path) -> Path:
    """Where a resumable grow of `out` keeps its work: a fixed hidden sibling, found again by --resume."""
    out = out.absolute()
    return out.parent / f".{out.name}.partial"


def _clear(directory: Path) -> None:
    """Empty a work directory whose lock this process holds (removing the directory would drop the lock)."""
    for child in directory.iterdir():
        shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()


@contextmanager
def resumable_directory(out: Path, force: bool, resume: bool, inputs: Iterable[Path] = (), needed_bytes: int = 0) -> Iterator[Path]:
    """Yield the hidden sibling `out` is built in, locked against other runs; rename it into place
    only when the block succeeds.

    The sibling has a fixed name and outlives an interruption (Ctrl-C, a kill, a full disk): its
    finished shards are complete files (each renamed into place after fsync), so `--resume` keeps
    them. Bad input (a UserError) leaves nothing new behind, and `out` itself is never half-written.
    """
    out = out.absolute()
    check_output(out, force, needed_bytes, inputs)
    partial = partial_directory(out)
    try:
        partial.mkdir(parents=True)
        created = True
    except FileExistsError:
        created = False
    except OSError as exc:
        raise UserError(f"cannot write {out}: {exc.strerror or exc}; choose another -o") from None
    if not partial.is_dir() or partial.is_symlink():
        raise UserError(f"{partial} exists and is not a directory hyperclone made: move it away, then rerun")
    lock = DirectoryLock(partial, str(out))
    try:
        lock.acquire()
        if not created and not resume:
            if not force:
                raise UserError(f"an interrupted grow left {partial}: pass --resume to continue it, or --force to start over")
            check_partial(partial, WORK_FILES)
            _clear(partial)
        yield partial
    except UserError:
        if created and lock.fd is not None:  # never throw away the finished shards of an earlier, interrupted run
            shutil.rmtree(partial, ignore_errors=True)
        lock.release()
        raise
    except OSError as exc:
        lock.release()
        if exc.errno == errno.ENOSPC:
            again = "--resume --force" if out.exists() else "--resume"
            raise UserError(f"the disk filled up while writing {out}; finished shards are kept in {partial}: "
                            f"free some space and rerun with {again}") from None
        raise
    except BaseException:
        lock.release()
        raise
    try:
        lock.forget_info()
        _replace(partial, out, force)
    finally:
        lock.release()


def _replace(tmp: Path, out: Path, force: bool) -> None:
    if out.exists() or out.is_symlink():
        if not force:  # it appeared while this run worked: never replace it unasked
            raise UserError(f"{out} appeared while this grow ran; the grown files are kept in {tmp}: "
                            "rerun with --resume --force to replace it, or move it away and rerun with --resume")
        check_replaceable(out, "grow")
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
