"""What hyperclone may replace, and one writer per output.

Why this exists: `--force` is a promise to replace an earlier hyperclone result, not a licence to
delete whatever sits at a path. So an output may be replaced only when every file in it is one that
hyperclone wrote (a grown checkpoint names its files in growth.json; a training run directory
carries a run marker and holds only what the loop writes), and never when it is, contains or lies
inside the input it is made from. And two processes must never write one output: each holds an
OS lock (flock) on the directory it writes into, and a second one is told who holds it.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import re
import socket
import sys
from pathlib import Path
from typing import Iterable

from hyperclone.errors import UserError

try:
    import fcntl
except ImportError:  # Windows: no flock; outputs are still never replaced unless hyperclone wrote them
    fcntl = None

LOCK_INFO = ".hyperclone-lock"  # who holds the lock: read only when the lock itself is held
MANIFEST = "growth.json"
RUN_MARKER = "hyperclone_run.json"
# What the training loop writes at the top of a run directory ("hyperclone" is tensorboard's project folder).
RUN_ENTRIES = frozenset({RUN_MARKER, RUN_MARKER + ".tmp", LOCK_INFO, "checkpoints", "final", ".final.tmp",
                         ".final.dcp.tmp",  # --fsdp: each process's shards of the final model, streamed into final/
                         "stable", ".stable.tmp",  # --save-stable: the model where the WSD decay begins
                         "metrics.jsonl", "loss.png", "expert_load.png", "hyperclone", "README.md",
                         "diloco_position.json", "diloco_position.json.tmp"})  # a DiLoCo group's last committed place
TUNE_MARKER = "hyperclone_tune.json"
TUNE_ENTRIES = frozenset({TUNE_MARKER, LOCK_INFO, "tune.json", "tune.png", "recipe.yaml", "runs"})  # what `tune` writes
SHARD = re.compile(r"model(-\d{5}-of-\d{5})?\.safetensors(\.partial)?")


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def _both(path: Path) -> set[Path]:
    """A path as given and with its links followed: an output must overlap neither."""
    return {path.absolute(), path.resolve()}


def refuse_overlap(out: Path, inputs: Iterable[Path], what: str = "the source") -> None:
    """Refuse an output that is, contains or lies inside an input directory, or contains an input file."""
    out_paths = _both(out)
    for given in inputs:
        for src in _both(Path(given)):
            for o in out_paths:
                if _inside(src, o):
                    raise UserError(f"{out} is or contains {what} ({given}): hyperclone never writes over its input; choose another -o")
                if src.is_dir() and _inside(o, src):
                    raise UserError(f"{out} lies inside {what} ({given}): keep outputs out of model directories; choose another -o")


def _grown_files(out: Path) -> set[str] | None:
    """The files a grown checkpoint's growth.json says hyperclone wrote; None if it is not one."""
    try:
        manifest = json.loads((out / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("shards"), list):
        return None
    if isinstance(manifest.get("files"), list):
        return {str(f) for f in manifest["files"]}
    # growth.json before it listed its files: the shards, the index, config, itself and the copied side files
    shards = [s.get("file") for s in manifest["shards"] if isinstance(s, dict)]
    return {*map(str, shards), *map(str, manifest.get("copied_files", [])), "config.json", MANIFEST,
            "model.safetensors.index.json", "README.md"}


def _foreign(out: Path, owned: set[str] | frozenset[str]) -> str | None:
    return next((p.name for p in sorted(out.iterdir()) if p.name not in owned), None)


def check_replaceable(out: Path, kind: str) -> None:
    """Refuse (one line) to replace `out` unless hyperclone wrote everything in it.

    `kind` is "grow" (a grown checkpoint, known by its growth.json), "run" (a training run directory,
    known by its run marker) or "tune" (a learning-rate search, known by its marker). An empty
    directory holds nothing to lose and may be reused.
    """
    if not out.is_dir():
        raise UserError(f"{out} exists and is not a directory: hyperclone replaces only its own output directories; choose another -o")
    if not any(out.iterdir()):
        return
    cwd = Path.cwd().resolve()
    if _inside(cwd, out.resolve()):
        raise UserError(f"{out} is the current directory or contains it: hyperclone will not replace it; choose another -o")
    markers = {"run": (RUN_MARKER, RUN_ENTRIES, "a training run"), "tune": (TUNE_MARKER, TUNE_ENTRIES, "a learning-rate search")}
    if kind == "grow":
        owned, what = _grown_files(out), f"a grown checkpoint (no {MANIFEST})"
    else:
        marker, entries, name = markers[kind]
        owned, what = (entries if (out / marker).is_file() else None), f"{name} (no {marker})"
    if owned is None:
        raise UserError(f"{out} is not {what} written by hyperclone, and holds {_foreign(out, frozenset())}: --force only "
                        "replaces hyperclone's own outputs; move it away yourself or choose another -o")
    stranger = _foreign(out, owned)
    if stranger is not None:
        raise UserError(f"{out} holds {stranger}, which hyperclone did not write: --force will not delete it; "
                        "move it away yourself or choose another -o")


def check_partial(partial: Path, known: Iterable[str]) -> None:
    """An interrupted grow's hidden directory may be removed only if it holds nothing but its own files."""
    stranger = next((p.name for p in sorted(partial.iterdir()) if p.name not in set(known) and not SHARD.fullmatch(p.name)), None)
    if stranger is not None:
        raise UserError(f"{partial} holds {stranger}, which hyperclone did not write: it is not an interrupted grow "
                        "that --force may remove; move it away yourself or choose another -o")


class DirectoryLock:
    """An exclusive, non-blocking flock on a directory, held while this process writes into it.

    The kernel drops the lock when the process dies, so a SIGKILLed run never leaves a stale lock;
    LOCK_INFO beside it only says who holds a live one.
    """

    def __init__(self, directory: Path, what: str):
        self.directory, self.what, self.fd = directory, what, None

    def acquire(self) -> "DirectoryLock":
        if fcntl is None:
            return self
        fd = os.open(self.directory, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise self.held() from None
        self.fd = fd
        info = {"pid": os.getpid(), "host": socket.gethostname(), "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:3]]),
                "since": dt.datetime.now().isoformat(timespec="seconds")}
        (self.directory / LOCK_INFO).write_text(json.dumps(info) + "\n")
        return self

    def held(self) -> UserError:
        """The refusal for a directory another process holds, naming that process."""
        try:
            info = json.loads((self.directory / LOCK_INFO).read_text())
            holder = f"pid {info['pid']} on {info['host']}, `{info['command']}`, since {info['since']}"
        except (OSError, ValueError, KeyError, TypeError):
            holder = "pid unknown"
        return UserError(f"{self.what} is being written by another hyperclone process ({holder}): "
                         "wait for it to finish or stop it; --resume and --force wait for nothing")

    def refuse_if_held(self) -> None:
        """Refuse now, before reading anything the holder is writing, if another process holds the lock."""
        if fcntl is None or not self.directory.is_dir():
            return
        fd = os.open(self.directory, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            fcntl.flock(fd, fcntl.LOCK_UN)
        except BlockingIOError:
            raise self.held() from None
        finally:
            os.close(fd)

    def forget_info(self) -> None:
        """Remove the holder note (before the directory becomes a finished output); the lock stays held."""
        (self.directory / LOCK_INFO).unlink(missing_ok=True)

    def release(self) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> "DirectoryLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
