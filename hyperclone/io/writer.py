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
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import torch

from hyperclone.io.reader import DTYPE_NAMES

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
        return text
    units = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([A-Z]*)", text.strip().upper().replace(" ", ""))
    if not match or match.group(2) not in units:
        raise ValueError(f"not a size: {text!r} (write e.g. 5GB or 500MB)")
    return int(float(match.group(1)) * units[match.group(2)])

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
        entries[slot.name] = {"dtype": DTYPE_NAMES[slot.dtype], "shape": list(slot.shape), "data_offsets": [offset, offset + slot.nbytes]}
        offset += slot.nbytes
    raw = json.dumps(entries, separators=(",", ":")).encode()
    return raw + b" " * (-len(raw) % 8)


def write_shards(
    directory: Path,
    slots: list[TensorSlot],
    produce: Callable[[TensorSlot], Iterator[torch.Tensor]],
    shard_bytes: int,
    on_bytes: Callable[[int], None] = lambda n: None,
) -> list[dict]:
    """Write every slot's bytes into HF-format shards in `directory`; return [{file, bytes, sha256}]."""
    groups = assign_shards(slots, shard_bytes)
    names = shard_names(len(groups))
    written = []
    for file_name, group in zip(names, groups):
        digest = hashlib.sha256()
        header = _header(group)
        with open(directory / file_name, "wb") as fh:
            for block in (len(header).to_bytes(8, "little"), header):
                fh.write(block)
                digest.update(block)
            for slot in group:
                count = 0
                for chunk in produce(slot):
                    data = chunk.contiguous().reshape(-1).view(torch.uint8).numpy()
                    fh.write(data)
                    digest.update(data)
                    count += data.nbytes
                    on_bytes(data.nbytes)
                if count != slot.nbytes:
                    raise RuntimeError(f"internal error: {slot.name} produced {count} bytes, expected {slot.nbytes}")
            fh.flush()
            os.fsync(fh.fileno())  # on disk before the directory is renamed into place
        written.append({"file": file_name, "bytes": (directory / file_name).stat().st_size, "sha256": digest.hexdigest()})
    if len(groups) > 1:
        index = {
            "metadata": {"total_size": sum(s.nbytes for s in slots)},
            "weight_map": {slot.name: name for name, group in zip(names, groups) for slot in group},
        }
        (directory / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")
    return written
