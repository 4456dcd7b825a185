"""Row-chunked production of one output tensor from source rows.

An output tensor is a vertical stack of segments; each segment maps a row range of one source
tensor to the same number of output rows, transforming columns only (tile, split, zero, ...).
That keeps every operator row-separable, so a tensor of any size is produced in bounded memory,
and chunk boundaries depend on shapes alone so the noise, seeded per chunk, is reproducible.
"""
from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from typing import Callable, Iterator

import torch

from hyperclone.ops.split import split_exact

# Output elements per chunk: 256K keeps the split's float32 working set in the CPU's caches (measured
# 1.5x faster than 1M, 3x faster than 4M). A constant, never a machine property: chunk boundaries
# seed the noise, so changing it changes the bits of the output.
CHUNK_ELEMENTS = 1 << 18

RowReader = Callable[[str, int, int], torch.Tensor]


@dataclass(frozen=True)
class Segment:
    """`rows` output rows made from source rows [start, start + rows) of `source`.

    Each source chunk goes through three steps:
      1. columns `cols` (a window of the source's columns), cast to the output dtype;
      2. share: part `part` of `share` parts that sum exactly to scale * (x + offset) - share * offset,
         with zero-sum noise `share_noise` keyed by `share_key` (so the sibling parts, written as other
         tensors, see the same draw). share=1 with scale != 1 just scales. Serves tied final norms and
         cloned experts' down projections;
      3. op: copy — as is; tile — `copies` copies side by side; split — `copies` parts side by side that
         sum exactly to it, with zero-sum `noise`.
    Ops without a source: zeros / fill (constant `value`) / normal (N(0, value^2)), `in_cols` wide.
    Output columns = in_cols * copies for tile/split, in_cols otherwise.
    `repeat` stacks the segment that many times (output rows = rows * repeat); repetition r draws its
    noise under the keys `key/r` and `share_key/r`, so a width-n tile costs one segment, not n.
    """

    op: str
    rows: int
    in_cols: int = 1
    source: str | None = None
    start: int = 0
    copies: int = 1
    noise: float = 0.0
    key: str = ""
    cols: tuple[int, int] | None = None
    share: int = 1
    part: int = 0
    scale: float = 1.0
    offset: float = 0.0
    share_noise: float = 0.0
    share_key: str = ""
    value: float = 0.0
    repeat: int = 1

    @property
    def out_rows(self) -> int:
        return self.rows * self.repeat

    @property
    def out_cols(self) -> int:
        return self.in_cols * self.copies if self.op in ("tile", "split") else self.in_cols


def _generator(seed: int, key: str, row: int) -> torch.Generator:
    digest = hashlib.sha256(f"{seed}:{key}:{row}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))


def chunk_rows(seg: Segment) -> int:
    width = max(seg.in_cols * max(seg.copies, 1), 1)
    return max(1, CHUNK_ELEMENTS // width)


def _transform(seg: Segment, x: torch.Tensor, dtype: torch.dtype, seed: int, row: int, rep: int) -> torch.Tensor:
    if seg.cols is not None:
        x = x[:, seg.cols[0] : seg.cols[1]]
    x = x.to(dtype)
    if seg.share > 1 or seg.scale != 1.0 or seg.offset != 0.0:
        gen = _generator(seed, f"{seg.share_key}/{rep}", row) if seg.share_noise > 0 else None
        parts = split_exact(x, seg.share, dtype, noise=seg.share_noise, generator=gen, scale=seg.scale, offset=seg.offset)
        x = parts[seg.part]
    if seg.op == "copy":
        return x
    if seg.op == "tile":
        return x.repeat(1, seg.copies)
    if seg.op == "split":
        gen = _generator(seed, f"{seg.key}/{rep}", row) if seg.noise > 0 else None
        return torch.cat(split_exact(x, seg.copies, dtype, noise=seg.noise, generator=gen), dim=-1)
    raise ValueError(f"unknown segment op {seg.op}")


def chunk_tasks(
    segments: list[Segment], read_rows: RowReader, dtype: torch.dtype, seed: int
) -> Iterator[Callable[[], torch.Tensor]]:
    """The output tensor as consecutive 2D row chunks in `dtype`, each a task that makes its chunk.

    Chunks depend on nothing but their segment, repetition and first row (the noise is seeded by
    those), so the tasks may run in any order or in parallel and still give the same bytes.
    """
    for seg in segments:
        for rep in range(seg.repeat):
            step = chunk_rows(seg)
            for r0 in range(0, seg.rows, step):
                yield functools.partial(_chunk, seg, rep, r0, min(seg.rows, r0 + step), read_rows, dtype, seed)


def produce_rows(segments: list[Segment], read_rows: RowReader, dtype: torch.dtype, seed: int) -> Iterator[torch.Tensor]:
    """Yield the output tensor as consecutive 2D row chunks in `dtype`, made one after another."""
    for task in chunk_tasks(segments, read_rows, dtype, seed):
        yield task()


def _chunk(seg: Segment, rep: int, r0: int, r1: int, read_rows: RowReader, dtype: torch.dtype, seed: int) -> torch.Tensor:
    """Rows [r0, r1) of one repetition of one segment."""
    shape = (r1 - r0, seg.out_cols)
    if seg.op in ("zeros", "fill"):
        return torch.full(shape, seg.value, dtype=dtype)
    if seg.op == "normal":
        gen = _generator(seed, f"{seg.key}/{rep}", r0)
        return (torch.randn(shape, dtype=torch.float32, generator=gen) * seg.value).to(dtype)
    x = read_rows(seg.source, seg.start + r0, seg.start + r1).reshape(r1 - r0, -1)
    return _transform(seg, x, dtype, seed, r0, rep)
