"""A training run's output directory: refused when using it would destroy something, locked while the run writes.

The same promise as a grow's output: `--force` starts over only in a directory hyperclone's training
wrote (it carries the run marker and nothing else of note), never in or around the model being
trained; a second run into a directory another process is training in is refused, `--resume`
included; and a run that fails before its first step leaves no directory it created behind.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import shutil
from pathlib import Path

from hyperclone.errors import UserError
from hyperclone.io.guard import LOCK_INFO, RUN_ENTRIES, RUN_MARKER, DirectoryLock, check_replaceable, refuse_overlap
from hyperclone.manifest import tool_version


class RunDirectory:
    def __init__(self, out: Path, model: Path | None, resume: bool, force: bool):
        self.out, self.resume, self.force = out, resume, force
        self.lock: DirectoryLock | None = None
        self.created = False
        if model is not None:
            refuse_overlap(out, [model], "the model being trained")
        holds_run = out.is_dir() and any(out.iterdir())
        if out.exists() and not out.is_dir():
            raise UserError(f"{out} exists and is not a directory: choose another -o")
        if holds_run and not resume:
            if not force:
                raise UserError(f"{out} already holds a run: pass --resume to continue it, --force to start over, or another -o")
            check_replaceable(out, "run")

    def open(self, settings: dict) -> None:
        """Create (if needed) and lock the directory, clear an old run when forced, and mark it as a run.
        Called by the main process only."""
        try:
            self.out.mkdir(parents=True)
            self.created = True
        except FileExistsError:
            pass
        except OSError as exc:
            raise UserError(f"cannot create {self.out}: {exc.strerror or exc}; choose another -o") from None
        self.lock = DirectoryLock(self.out, str(self.out)).acquire()
        if self.force and not self.resume:
            for child in self.out.iterdir():
                if child.name in RUN_ENTRIES and child.name not in (LOCK_INFO, RUN_MARKER):
                    shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
        marker = {"hyperclone_version": tool_version(), "started": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                  "settings": settings}
        # whole or absent: a concurrent command reads it to decide what it may replace
        tmp = self.out / (RUN_MARKER + ".tmp")
        tmp.write_text(json.dumps(marker, indent=2, default=str) + "\n")
        os.replace(tmp, self.out / RUN_MARKER)

    def close(self, failed_before_training: bool = False) -> None:
        """Release the lock; a directory this run created and failed to use is removed."""
        if self.lock is None:
            return
        if failed_before_training and self.created:
            shutil.rmtree(self.out, ignore_errors=True)
        else:
            self.lock.forget_info()
        self.lock.release()
        self.lock = None
