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


@contextmanager
def atomic_directory(out: Path, force: bool) -> Iterator[Path]:
    """Yield a temporary sibling of `out`; rename it into place only when the block succeeds."""
    out = out.absolute()
    check_output(out, force)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
    except OSError as exc:
        raise UserError(f"cannot write {out}: {exc.strerror or exc}; choose another -o") from None
    try:
        yield tmp
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if exc.errno == errno.ENOSPC:
            raise UserError(f"the disk filled up while writing {out}; nothing was left behind, free some space") from None
        raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
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
