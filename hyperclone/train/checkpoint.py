"""The run's checkpoints: when to save, how many to keep, atomic writes, checksums, and what to resume from.

A checkpoint is Accelerate's save_state written into a hidden sibling, then our state file (the
step, tokens and data position, plus the size and sha256 of every file beside it) written last,
then one rename: a directory named step-N is complete, and its checksums tell a later resume
whether its bytes are still the ones written.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Callable

from hyperclone.errors import UserError
from hyperclone.manifest import sha256_file

STATE_FILE = "hyperclone_state.json"  # written last: a checkpoint without it is incomplete


def _files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*") if p.is_file() and p.name != STATE_FILE)


def damage(checkpoint: Path) -> str | None:
    """What is wrong with a complete-looking checkpoint, or None when its files are the ones recorded."""
    try:
        state = json.loads((checkpoint / STATE_FILE).read_text())
        records = state.get("files", {})
        int(state["step"]), int(state["batches"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return f"its {STATE_FILE} is unreadable"
    for rel, (size, digest) in records.items():
        path = checkpoint / rel
        if not path.is_file():
            return f"{rel} is missing"
        if path.stat().st_size != size:
            return f"{rel} has {path.stat().st_size} bytes, {size} were written"
        if sha256_file(path) != digest:
            return f"{rel} changed after it was written (sha256 differs)"
    return None


class Checkpointer:
    """Saves every `every` steps into out/checkpoints/step-N, keeps the newest `keep`, and picks the
    newest intact one to resume from."""

    def __init__(self, out: Path, accelerator, every: int, keep: int, say: Callable[[str], None]):
        self.root, self.accelerator, self.every, self.keep, self.say = out / "checkpoints", accelerator, every, keep, say

    def complete(self) -> list[Path]:
        """Checkpoints whose state file was written (so the rename happened), oldest first."""
        found = [p for p in self.root.glob("step-*") if (p / STATE_FILE).exists() and p.name[5:].isdigit()] if self.root.exists() else []
        return sorted(found, key=lambda p: int(p.name[5:]))

    def due(self, step: int, last_step: int) -> bool:
        return bool(self.every) and step % self.every == 0 and step < last_step

    def save(self, state: dict) -> None:
        """accelerate's save_state into a temporary sibling, our state file last, then a rename."""
        acc = self.accelerator
        final, tmp = self.root / f"step-{state['step']}", self.root / f".step-{state['step']}.tmp"
        if acc.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
            self.root.mkdir(parents=True, exist_ok=True)
        acc.wait_for_everyone()
        acc.save_state(str(tmp))
        acc.wait_for_everyone()
        if acc.is_main_process:
            files = {str(p.relative_to(tmp)): [p.stat().st_size, sha256_file(p)] for p in _files(tmp)}
            (tmp / STATE_FILE).write_text(json.dumps({**state, "files": files}))
            shutil.rmtree(final, ignore_errors=True)
            tmp.rename(final)
            for old in self.complete()[:-self.keep] if self.keep > 0 else []:
                shutil.rmtree(old, ignore_errors=True)
        acc.wait_for_everyone()

    def resume_point(self) -> Path:
        """The newest intact checkpoint; a damaged newer one is named, and skipped only when an older one is intact."""
        found = self.complete()
        if not found:
            raise UserError(f"--resume: {self.root.parent} has no complete checkpoint to continue from")
        problems: dict[Path, str] = {}
        for candidate in reversed(found):
            problem = damage(candidate)
            if problem is None:
                if problems:
                    newer = ", ".join(f"{p.name} ({why})" for p, why in problems.items())
                    self.say(f"resuming from {candidate.name}, the newest intact checkpoint: {newer} is damaged "
                             "and will be replaced when the run passes that step again")
                return candidate
            problems[candidate] = problem
        newest = found[-1]
        older = "no older intact one exists" if len(found) == 1 else "every older one is damaged too"
        raise UserError(f"--resume: checkpoint {newest} is damaged ({problems[newest]}) and {older}: "
                        "restore its files or start over with --force")

    @staticmethod
    def require_intact(checkpoint: Path) -> Path:
        """A checkpoint named by the user (--decay-from) must be complete and unchanged."""
        if not (checkpoint / STATE_FILE).exists():
            raise UserError(f"{checkpoint} is not a complete hyperclone checkpoint")
        problem = damage(checkpoint)
        if problem is not None:
            raise UserError(f"checkpoint {checkpoint} is damaged ({problem}): give an intact one")
        return checkpoint

    @staticmethod
    def state_of(checkpoint: Path) -> dict:
        """The run state a checkpoint was saved at (step, tokens, data position)."""
        state = json.loads((checkpoint / STATE_FILE).read_text())
        state.pop("files", None)
        return state

    def load(self, checkpoint: Path) -> None:
        """Restore model, optimizer, schedule and RNG from an intact `checkpoint`."""
        try:
            self.accelerator.load_state(str(checkpoint))
        except Exception as exc:  # torch and accelerate raise many types for unreadable files
            raise UserError(f"checkpoint {checkpoint} cannot be loaded ({type(exc).__name__}: "
                            f"{' '.join(str(exc).split())[:200]}): resume from an older one or start over with --force") from None
