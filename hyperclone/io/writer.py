"""Streaming safetensors writer: shard headers are known from the plan, bytes are written as produced.

Why not safetensors.torch.save_file: it needs every tensor of a shard in memory at once. Here the
header is computed from shapes alone, then each tensor's row chunks go straight to disk, so peak
memory is one chunk, whatever the model or shard size.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import re
import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import torch

from hyperclone.dtypes import SAFETENSORS_NAME

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"


@dataclass(frozen=True)
class TensorSlot:
    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


def parse_size(text: str | int) -> int:
    """'5GB', '500MB', '2GiB' or a byte count."""
    if isinstance(text, int):
        if text < 1:
            raise ValueError(f"{text} is not a usable size: it must be at least one byte")
        return text
    units = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([A-Z]*)", text.strip().upper().replace(" ", ""))
    if not match or match.group(2) not in units:
        raise ValueError(f"not a size: {text!r} (write e.g. 5GB or 500MB)")
    size = int(float(match.group(1)) * units[match.group(2)])
    if size < 1:
        raise ValueError(f"{text!r} is not a usable size: it must be at least one byte (write e.g. 5GB or 500MB)")
    return size


def format_size(count: float) -> str:
    """Bytes in the largest decimal unit that keeps the figure above 1 (1.23 GB, 456 kB, 12 B)."""
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(count) >= scale:
            return f"{count / scale:.2f} {unit}"
    return f"{count:.0f} B"


def assign_shards(slots: list[TensorSlot], shard_bytes: int) -> list[list[TensorSlot]]:
    """Greedy, in order; a tensor larger than a shard gets one of its own."""
    shards: list[list[TensorSlot]] = [[]]
    size = 0
    for slot in slots:
        if shards[-1] and size + slot.nbytes > shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(slot)
        size += slot.nbytes
    return shards


def shard_names(count: int) -> list[str]:
    if count == 1:
        return [SINGLE_FILE]
    return [f"model-{i + 1:05d}-of-{count:05d}.safetensors" for i in range(count)]


def _header(slots: list[TensorSlot]) -> bytes:
    entries: dict = {"__metadata__": {"format": "pt"}}
    offset = 0
    for slot in slots:
        entries[slot.name] = {"dtype": SAFETENSORS_NAME[slot.dtype], "shape": list(slot.shape), "data_offsets": [offset, offset + slot.nbytes]}
        offset += slot.nbytes
    raw = json.dumps(entries, separators=(",", ":")).encode()
    return raw + b" " * (-len(raw) % 8)


@dataclass(frozen=True)
class Shard:
    """One output file: its name, its tensors in order, and its header (known before any byte is made)."""

    file: str
    slots: tuple[TensorSlot, ...]
    header: bytes

    @property
    def file_bytes(self) -> int:
        return 8 + len(self.header) + sum(s.nbytes for s in self.slots)


def plan_shards(slots: list[TensorSlot], shard_bytes: int) -> list[Shard]:
    groups = assign_shards(slots, shard_bytes)
    return [Shard(name, tuple(group), _header(group)) for name, group in zip(shard_names(len(groups)), groups)]


Chunk = Callable[[], torch.Tensor]  # a task that makes one row chunk of a tensor


def _in_order(tasks: Iterator[Chunk], pool: ThreadPoolExecutor, window: int) -> Iterator[torch.Tensor]:
    """Run chunk tasks on the shared producer pool, up to `window` ahead, and yield their results in order.

    Why: producing a chunk is arithmetic (numpy and torch, which release the GIL), so the chunks
    of one shard can be made on every core while this thread writes and hashes the ones before.
    """
    pending: deque = deque()
    try:
        for task in tasks:
            pending.append(pool.submit(task))
            if len(pending) >= window:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        for future in pending:  # an abandoned shard: drop the work not yet started
            future.cancel()


def _shard_bytes(shard: Shard, produce: Callable[[TensorSlot], Iterator[Chunk]], pool: ThreadPoolExecutor,
                 window: int) -> Iterator[memoryview]:
    """The shard's tensor bytes in order, checked against the header's sizes."""
    for slot in shard.slots:
        count = 0
        for chunk in _in_order(produce(slot), pool, window):
            data = chunk.contiguous().reshape(-1).view(torch.uint8).numpy()
            count += data.nbytes
            yield memoryview(data)
        if count != slot.nbytes:
            raise RuntimeError(f"internal error: {slot.name} produced {count} bytes, expected {slot.nbytes}")


def write_shard(directory: Path, shard: Shard, produce: Callable[[TensorSlot], Iterator[Chunk]], on_bytes: Callable[[int], None],
                pool: ThreadPoolExecutor, window: int = 8) -> dict:
    """Write one shard as `<file>.partial`, fsync it, rename it into place; return {file, bytes, sha256}.

    A shard file under its final name is therefore always complete: an interrupted run leaves at
    most `.partial` files, which a resumed run overwrites. Chunks are made on `pool`, hashed in a
    thread of their own, and written here, all at once.
    """
    digest = hashlib.sha256()
    partial = directory / (shard.file + ".partial")
    with open(partial, "wb", buffering=0) as fh, ThreadPoolExecutor(1, thread_name_prefix="hyperclone-sha256") as hasher:
        hashed = hasher.submit(digest.update, len(shard.header).to_bytes(8, "little") + shard.header)
        fh.write(len(shard.header).to_bytes(8, "little") + shard.header)
        on_bytes(8 + len(shard.header))
        for data in _shard_bytes(shard, produce, pool, window):
            hashed.result()  # in order, one chunk at a time, beside the writes
            hashed = hasher.submit(digest.update, data)
            rest = data
            while rest:  # a raw write may take fewer bytes than given
                rest = rest[fh.write(rest):]
            on_bytes(len(data))
        hashed.result()
        os.fsync(fh.fileno())  # on disk before the name says it is complete
    os.replace(partial, directory / shard.file)
    return {"file": shard.file, "bytes": shard.file_bytes, "sha256": digest.hexdigest()}


def write_shards(
    directory: Path,
    shards: list[Shard],
    produce: Callable[[TensorSlot], Iterator[Chunk]],
    on_bytes: Callable[[int], None] = lambda n: None,
    *,
    workers: int = 1,
    done: dict[str, dict] | None = None,
    on_shard: Callable[[dict], None] = lambda record: None,
) -> list[dict]:
    """Write every shard not already in `done` (file -> record), `workers` at a time; return all records in order.

    Chunks of every shard are made by one shared pool of `workers` threads, so even a single shard
    is computed on every worker; each shard's own thread only writes and hashes, beside them.
    """
    done = dict(done or {})
    lock = threading.Lock()

    def locked_bytes(count: int) -> None:
        with lock:
            on_bytes(count)

    todo = [s for s in shards if s.file not in done]
    with ThreadPoolExecutor(workers, thread_name_prefix="hyperclone-produce") as pool:

        def one(shard: Shard) -> dict:
            record = write_shard(directory, shard, produce, locked_bytes, pool)
            with lock:
                on_shard(record)
            return record

        if workers <= 1:
            fresh = [one(s) for s in todo]
        else:
            with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="hyperclone-shard") as writers:
                futures = [writers.submit(one, s) for s in todo]
                try:
                    fresh = [f.result() for f in futures]
                except BaseException:
                    for f in futures:  # stop queued shards; running ones finish (each is atomic)
                        f.cancel()
                    raise
    done.update({r["file"]: r for r in fresh})
    if len(shards) > 1:
        index = {
            "metadata": {"total_size": sum(slot.nbytes for s in shards for slot in s.slots)},
            "weight_map": {slot.name: s.file for s in shards for slot in s.slots},
        }
        (directory / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")
    return [done[s.file] for s in shards]
