"""The run's checkpoints: when to save, how many to keep, atomic writes, checksums, and what to resume from.

A checkpoint is written into a hidden sibling — Accelerate's save_state, or with `--checkpoint-format
dcp` torch.distributed.checkpoint's sharded files (each rank writes its own shards; a later run on any
number of processes reshards them on load; `hyperclone consolidate` turns one into a model directory)
— then our state file (the step, tokens and data position, plus the size and sha256 of every file
beside it) written last, then one rename: a directory named step-N is complete, and its checksums tell
a later resume whether its bytes are still the ones written. With `--async-checkpoint` a DCP save
copies the state and returns; the files are written in the background while training goes on, and
the state file and rename follow when they are done (at the next save or the end of the run).
"""
from __future__ import annotations

import json
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Callable, Iterator

from hyperclone.errors import UserError
from hyperclone.manifest import sha256_file

STATE_FILE = "hyperclone_state.json"  # written last: a checkpoint without it is incomplete
SCHEDULE_FILE = "schedule.json"  # DCP checkpoints: the learning-rate schedule's position
READ_BYTES = 256 * 2**20  # consolidate reads this much of the checkpoint at a time (or one tensor, when larger)
RNG_PREFIX = "rng-"  # DCP checkpoints: each rank's random state, rng-<rank>.safetensors
# DCP warns, from its background writer too, that it works in one process whenever no process group
# exists: that is the intent in a single-process run, not news to the user
warnings.filterwarnings("ignore", message="torch.distributed is disabled")


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

    def __init__(self, out: Path, accelerator, every: int, keep: int, say: Callable[[str], None], fmt: str = "accelerate",
                 async_save: bool = False):
        self.root, self.accelerator, self.every, self.keep, self.say = out / "checkpoints", accelerator, every, keep, say
        self.fmt, self.async_save = fmt, async_save
        self.parts = None  # DCP: (model, optimizer, scheduler, model directory), see track()
        self.pending = None  # an asynchronous DCP save still writing: (future, tmp, final, state)
        self._group = None

    def track(self, model, optimizer, scheduler, model_dir: Path) -> None:
        """What a DCP checkpoint holds (Accelerate's own saves know their registered objects)."""
        self.parts = (model, optimizer, scheduler, model_dir)

    def complete(self) -> list[Path]:
        """Checkpoints whose state file was written (so the rename happened), oldest first."""
        found = [p for p in self.root.glob("step-*") if (p / STATE_FILE).exists() and p.name[5:].isdigit()] if self.root.exists() else []
        return sorted(found, key=lambda p: int(p.name[5:]))

    def due(self, step: int, last_step: int) -> bool:
        return bool(self.every) and step % self.every == 0 and step < last_step

    def save(self, state: dict) -> None:
        """The checkpoint's files into a temporary sibling, our state file last, then a rename."""
        self.wait()
        acc = self.accelerator
        final, tmp = self.root / f"step-{state['step']}", self.root / f".step-{state['step']}.tmp"
        if acc.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
            self.root.mkdir(parents=True, exist_ok=True)
        acc.wait_for_everyone()
        if self.fmt == "dcp":
            future = self._save_dcp(tmp)
            if future is not None:
                self.pending = (future, tmp, final, state)
                return
        else:
            acc.save_state(str(tmp))
        self._seal(tmp, final, state)

    def wait(self) -> None:
        """Finish an asynchronous save still writing (before the next one, and before the run ends)."""
        if self.pending is not None:
            future, tmp, final, state = self.pending
            self.pending = None
            future.result()
            self._seal(tmp, final, state)

    def _seal(self, tmp: Path, final: Path, state: dict) -> None:
        acc = self.accelerator
        acc.wait_for_everyone()
        if acc.is_main_process:
            files = {str(p.relative_to(tmp)): [p.stat().st_size, sha256_file(p)] for p in _files(tmp)}
            (tmp / STATE_FILE).write_text(json.dumps({**state, "files": files}))
            shutil.rmtree(final, ignore_errors=True)
            tmp.rename(final)
            for old in self.complete()[:-self.keep] if self.keep > 0 else []:
                shutil.rmtree(old, ignore_errors=True)
        acc.wait_for_everyone()

    def _save_dcp(self, tmp: Path):
        """Each rank writes its shards; the main process adds the schedule and what consolidate needs to
        rebuild the model (config, tokenizer). Returns the future of an asynchronous save, else None."""
        import torch.distributed as dist
        import torch.distributed.checkpoint as dcp

        model, optimizer, scheduler, model_dir = self.parts
        if self.accelerator.is_main_process:
            from hyperclone.io.output import copy_side_files

            self.accelerator.unwrap_model(model).config.save_pretrained(str(tmp))
            copy_side_files(model_dir, tmp)
            (tmp / SCHEDULE_FILE).write_text(json.dumps(scheduler.state_dict()))
        _save_rng(tmp)
        payload = _payload(model, optimizer)
        if not self.async_save:
            dcp.save(payload, checkpoint_id=str(tmp), no_dist=not dist.is_initialized())
            return None
        if dist.is_initialized() and self._group is None:  # its own group: the background writer's collectives
            self._group = dist.new_group(backend="gloo")  # never interleave with training's
        return dcp.async_save(payload, checkpoint_id=str(tmp), process_group=self._group, no_dist=not dist.is_initialized())

    def resume_point(self) -> Path:
        """The newest intact checkpoint; a damaged newer one is named, and skipped only when an older one is intact."""
        found = self.complete()
        if not found:
            run = self.root.parent
            how = (f"it finished without one (--save-every): train {run / 'final'} further with --model, or start over with --force"
                   if (run / "final").is_dir() else "start over with --force")
            raise UserError(f"--resume: {run} has no complete checkpoint to continue from: {how}")
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
            steps = sorted((checkpoint / "checkpoints").glob("step-*"), key=lambda p: (len(p.name), p.name))  # step-10 after step-9
            how = f"it is a run: give one of its checkpoints, e.g. {steps[-1]}" if steps else "give a run's checkpoints/step-N"
            raise UserError(f"{checkpoint} is not a complete hyperclone checkpoint: {how}")
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
        """Restore model, optimizer and schedule (and RNG, from Accelerate's) from an intact `checkpoint`,
        in the format it was written in: a DCP checkpoint loads on any number of processes."""
        try:
            if (checkpoint / SCHEDULE_FILE).is_file():
                _load_dcp(checkpoint, *self.parts[:3])
                saved_on = _load_rng(checkpoint)
                if saved_on:
                    self.say(f"the random state was saved by {saved_on} processes, not restored on "
                             f"{self.accelerator.num_processes}: dropout masks will differ from an uninterrupted run")
            else:
                self.accelerator.load_state(str(checkpoint))
        except Exception as exc:  # torch and accelerate raise many types for unreadable files
            raise UserError(f"checkpoint {checkpoint} cannot be loaded ({type(exc).__name__}: "
                            f"{' '.join(str(exc).split())[:200]}): resume from an older one or start over with --force") from None


def _payload(model, optimizer) -> dict:
    """Model and optimizer state keyed by parameter name, as DCP saves and reshards them (DDP or FSDP alike)."""
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_state, optimizer_state = get_state_dict(model, optimizer)
    return {"model": model_state, "optimizer": optimizer_state}


def _save_rng(tmp: Path) -> None:
    """This rank's torch random state (CPU, and each GPU's) beside its shards, as Accelerate's checkpoints keep
    theirs: dropout masks after a resume are then the uninterrupted run's."""
    import torch
    import torch.distributed as dist
    from safetensors.torch import save_file

    rank = dist.get_rank() if dist.is_initialized() else 0
    states = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        states.update({f"cuda{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    tmp.mkdir(parents=True, exist_ok=True)
    save_file(states, str(tmp / f"{RNG_PREFIX}{rank}.safetensors"))


def _load_rng(checkpoint: Path) -> int | None:
    """Restore this rank's random state; when the checkpoint was written by another number of processes
    (resharded on load) there is none to take: returns how many wrote it, else None."""
    import torch
    import torch.distributed as dist
    from safetensors.torch import load_file

    saved = len(list(checkpoint.glob(f"{RNG_PREFIX}*.safetensors")))
    world, rank = (dist.get_world_size(), dist.get_rank()) if dist.is_initialized() else (1, 0)
    if saved == 0:  # written before random states were kept
        return None
    if saved != world:
        return saved
    states = load_file(str(checkpoint / f"{RNG_PREFIX}{rank}.safetensors"))
    torch.set_rng_state(states["cpu"])
    if torch.cuda.is_available():
        torch.cuda.set_rng_state_all([states[f"cuda{i}"] for i in range(torch.cuda.device_count()) if f"cuda{i}" in states])
    return None


def _load_dcp(checkpoint: Path, model, optimizer, scheduler) -> None:
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import set_state_dict

    payload = _payload(model, optimizer)  # the shapes to read into (this run's sharding)
    dcp.load(payload, checkpoint_id=str(checkpoint), no_dist=not dist.is_initialized())
    set_state_dict(model, optimizer, model_state_dict=payload["model"], optim_state_dict=payload["optimizer"])
    scheduler.load_state_dict(json.loads((checkpoint / SCHEDULE_FILE).read_text()))


def consolidate(checkpoint: str | Path, out: str | Path, shard_size: str | int = "5GB", progress: bool = True,
                read_bytes: int = READ_BYTES) -> Path:
    """A DCP checkpoint as a model directory transformers loads (safetensors, config, tokenizer), in one
    process and in bounded memory (`write_weights`), so a model larger than this machine's memory consolidates."""
    from transformers import AutoConfig

    from hyperclone.io.output import copy_side_files
    from hyperclone.io.writer import parse_size

    checkpoint, out = Checkpointer.require_intact(Path(checkpoint)), Path(out)
    if out.exists():
        raise UserError(f"{out} already exists: consolidate writes a new directory, give another -o")
    if not (checkpoint / SCHEDULE_FILE).is_file():
        raise UserError(f"{checkpoint} was not written with --checkpoint-format dcp: its final/ directory, "
                        "or Accelerate's own tools, give the model")
    try:
        shard_bytes = parse_size(shard_size)
    except ValueError as exc:
        raise UserError(f"--shard-size: {exc}") from None
    # a fresh hidden sibling of our own (never a name that may already hold someone's files), renamed when complete
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        write_weights(checkpoint, AutoConfig.from_pretrained(str(checkpoint)), tmp, shard_bytes, progress, read_bytes)
        shutil.copy2(checkpoint / "config.json", tmp / "config.json")
        copy_side_files(checkpoint, tmp)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def write_weights(checkpoint: Path, config, out: Path, shard_bytes: int = 5 * 10**9, progress: bool = True,
                  read_bytes: int = READ_BYTES) -> None:
    """The model weights of a DCP checkpoint as transformers' safetensors shards (and index) in `out`.

    Memory stays bounded whatever the model's size: tensors are read a group of `read_bytes` at a
    time (one tensor, when it is larger) and streamed into the shards by grow's own writer."""
    from hyperclone.io.writer import plan_shards, write_shards
    from hyperclone.progress import byte_progress

    shards = plan_shards(_model_slots(checkpoint, config), shard_bytes)
    reader = _GroupReader(checkpoint, [slot for shard in shards for slot in shard.slots], read_bytes)
    with byte_progress("writing weights", sum(s.file_bytes for s in shards), progress) as advance:
        write_shards(out, shards, reader.chunks, advance)


def _model_slots(checkpoint: Path, config) -> list:
    """The tensors transformers saves for `config` (tied copies left out: it ties them again on load),
    with the shapes and dtypes the checkpoint holds them in."""
    import torch
    from torch.distributed.checkpoint import FileSystemReader
    from transformers import AutoModelForCausalLM

    from hyperclone.io.writer import TensorSlot

    with torch.device("meta"):  # names only: no memory
        model = AutoModelForCausalLM.from_config(config)
    tied = getattr(model, "all_tied_weights_keys", None) or {}
    names = [name for name in model.state_dict() if name not in tied]
    stored = FileSystemReader(str(checkpoint)).read_metadata().state_dict_metadata
    missing = [name for name in names if f"model.{name}" not in stored]
    if missing:
        raise UserError(f"{checkpoint} lacks {len(missing)} of its config's tensors (first {missing[0]}): "
                        "it was not written by hyperclone train with this config.json")
    return [TensorSlot(name, tuple(stored[f"model.{name}"].size), stored[f"model.{name}"].properties.dtype) for name in names]


class _GroupReader:
    """The model's tensors read from a DCP checkpoint in the order the shards are written, a group at a
    time: one dcp.load per `read_bytes` rather than per tensor, and never more than that group in memory."""

    def __init__(self, checkpoint: Path, slots: list, read_bytes: int):
        self.checkpoint, self.slots, self.read_bytes = checkpoint, slots, read_bytes
        self.index = {slot.name: i for i, slot in enumerate(slots)}
        self.loaded: dict = {}

    def chunks(self, slot) -> Iterator[Callable]:
        yield lambda: self._take(slot)  # one chunk per tensor: it is whole in memory once read

    def _take(self, slot):
        if slot.name not in self.loaded:  # the group before was written whole: read the next one
            self.loaded = self._read(self.index[slot.name])
        return self.loaded.pop(slot.name)

    def _read(self, first: int) -> dict:
        import torch
        import torch.distributed.checkpoint as dcp

        group, size = {}, 0
        for slot in self.slots[first:]:
            if group and size + slot.nbytes > self.read_bytes:
                break
            group[slot.name], size = torch.empty(slot.shape, dtype=slot.dtype), size + slot.nbytes
        dcp.load({"model": group}, checkpoint_id=str(self.checkpoint), no_dist=True)  # in place, from every rank's shards
        return group
