"""The verdict both verify paths share, and the checks that make "PASS" cover every weight.

Random tokens reach only the embedding rows they name (64 of a 150k vocabulary by default), so the
embedding is compared row by row for every token id, as the residual stream receives it. The
lm_head needs no such pass: every one of its rows makes a logit at every position. Bytes that
changed after growth are caught first, by the sha256 of each shard that growth.json records.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from hyperclone.arch import family_for
from hyperclone.errors import UserError
from hyperclone.io.reader import Checkpoint
from hyperclone.manifest import sha256_file
from hyperclone.progress import byte_progress

TOLERANCE = 1e-4
CHUNK_ELEMENTS = 1 << 22  # float64 elements of each embedding chunk compared (32 MB)


def check_options(batch: int, seq_len: int, tolerance: float) -> None:
    for flag, value in (("--batch", batch), ("--seq-len", seq_len)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise UserError(f"{flag} must be a whole number >= 1, got {value}")
    if not (isinstance(tolerance, (int, float)) and math.isfinite(tolerance) and tolerance >= 0):
        raise UserError(f"--tolerance must be a finite number >= 0, got {tolerance}")


def damaged_shards(directory: Path, progress: bool = False) -> tuple[list[str], int]:
    """(what differs from growth.json's shard records, how many shards were checked); nothing without growth.json."""
    try:
        records = json.loads((directory / "growth.json").read_text())["shards"]
        records = [(str(r["file"]), int(r["bytes"]), str(r["sha256"])) for r in records]
    except (OSError, ValueError, KeyError, TypeError):
        return [], 0
    present = [(directory / f, size, digest) for f, size, digest in records if (directory / f).is_file()]
    damaged = [f"{f} is missing" for f, _, _ in records if not (directory / f).is_file()]
    damaged += [f"{p.name} has {p.stat().st_size} bytes where growth.json records {size}" for p, size, _ in present if p.stat().st_size != size]
    whole = [(p, digest) for p, size, digest in present if p.stat().st_size == size]
    with byte_progress("checking shards", sum(p.stat().st_size for p, _ in whole), progress) as advance:
        damaged += [f"{p.name}'s sha256 differs from the one growth.json records" for p, digest in whole if sha256_file(p, advance) != digest]
    return damaged, len(records)


def _embedding(ckpt: Checkpoint) -> tuple[str, float]:
    """The embedding's tensor name and the factor the model multiplies its rows by (gemma: sqrt(hidden))."""
    fam = family_for(ckpt.config.get("model_type"))
    name = fam.embed + ".weight"
    if name not in ckpt.tensors:
        raise UserError(f"{ckpt.path} has no {name}: the checkpoint is incomplete")
    hidden = ckpt.tensors[name].shape[1]
    return name, math.sqrt(hidden) if fam.embed_scale_sqrt_hidden else 1.0


def embedding_max_abs_diff(small: Checkpoint, big: Checkpoint) -> tuple[float, int]:
    """Largest difference between each token's grown embedding (n copies, as the residual stream gets
    it) and the source's, over every token id, in float64 and a few MB at a time; and how many ids that is."""
    (name_s, scale_s), (name_b, scale_b) = _embedding(small), _embedding(big)
    (vocab, d), (vocab_b, d_b) = small.tensors[name_s].shape, big.tensors[name_b].shape
    if vocab != vocab_b:
        raise UserError(f"the grown model has a vocabulary of {vocab_b}, the source {vocab}: growth keeps the vocabulary")
    if d_b % d:
        raise UserError(f"the grown model's hidden size {d_b} is not a multiple of the source's {d}: it is not a growth of it")
    step, worst = max(1, CHUNK_ELEMENTS // d_b), 0.0
    for r0 in range(0, vocab, step):
        r1 = min(vocab, r0 + step)
        source = small.rows(name_s, r0, r1).to(torch.float64) * scale_s
        grown = big.rows(name_b, r0, r1).to(torch.float64).view(r1 - r0, d_b // d, d) * scale_b
        worst = max(worst, float((grown - source[:, None, :]).abs().max()))
    return worst, vocab


def verdict(source_logits: torch.Tensor, grown_logits: torch.Tensor, tolerance: float, embedding: tuple[float, int],
            **figures) -> dict:
    """The contract's verdict (logits and every embedding row within tolerance, same argmax) and its figures."""
    embedding_diff, embedding_rows = embedding
    if source_logits.shape != grown_logits.shape:
        raise UserError(f"the models' logits differ in shape {list(source_logits.shape)} vs {list(grown_logits.shape)}")
    diff = (source_logits - grown_logits).abs()
    same = source_logits.argmax(-1) == grown_logits.argmax(-1)
    max_diff = float(diff.max())
    return {
        "passed": bool(max_diff <= tolerance and bool(same.all()) and embedding_diff <= tolerance),
        "max_abs_diff": max_diff,
        "mean_abs_diff": float(diff.mean()),
        "argmax_agreement": float(same.float().mean()),
        "embedding_max_abs_diff": embedding_diff,
        "embedding_rows": embedding_rows,
        "tolerance": tolerance,
        "tokens": source_logits.shape[0] * source_logits.shape[1],
        "per_token_max_abs_diff": diff.amax(-1).flatten().tolist(),  # for the notebook's histogram
        **figures,
    }
