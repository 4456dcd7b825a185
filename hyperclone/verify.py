"""Prove function preservation with transformers' own model classes, never our own forward pass."""
from __future__ import annotations

import math
import os
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch

from hyperclone.consistency import check_config_matches_weights
from hyperclone.display import VerifyResult
from hyperclone.errors import UserError
from hyperclone.io.reader import Checkpoint, open_checkpoint, read_config
from hyperclone.io.resolve import resolve_source
from hyperclone.memory import available_memory
from hyperclone.verdict import TOLERANCE, check_options, damaged_shards, embedding_max_abs_diff, verdict
from hyperclone.verify_stream import streamed_logits

# Largest grown model (float32 bytes) verified whole in memory by default; above it, one decoder
# layer at a time, so a default verify stays within a few GB at any size.
IN_MEMORY_LIMIT = 1 << 30


@contextmanager
def as_model_directory(ckpt: Checkpoint) -> Iterator[Path]:
    """A directory transformers can load: the checkpoint's own, or links to its files plus its config."""
    path = ckpt.path
    if path.is_dir() and ckpt.config_file == path / "config.json" and read_config(ckpt.config_file) == ckpt.config:
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="hyperclone-verify-") as tmp:
        files = ckpt.weight_files()
        if len(files) > 1:
            index = path / "model.safetensors.index.json"
            os.symlink(index, Path(tmp) / index.name)
            for f in files:
                os.symlink(f.absolute(), Path(tmp) / f.name)
        else:
            os.symlink(files[0].absolute(), Path(tmp) / ("model.safetensors" if files[0].suffix == ".safetensors" else files[0].name))
        from transformers import AutoConfig

        config = dict(ckpt.config)
        model_type = config.pop("model_type")
        AutoConfig.for_model(model_type, **config).save_pretrained(tmp)
        yield Path(tmp)


def _logits(directory: Path, tokens: torch.Tensor) -> tuple[torch.Tensor, int]:
    from hyperclone.loading import load_model

    model = load_model(directory, dtype=torch.float32, reference=True)
    model.eval()
    try:
        with torch.no_grad():
            logits = model(input_ids=tokens).logits.float()
    except RuntimeError as exc:
        raise UserError(f"transformers failed to run {directory}: {str(exc).splitlines()[0]}") from None
    params = sum(p.numel() for p in model.parameters())
    del model
    return logits, params


def _tokens(small: Checkpoint, big: Checkpoint, batch: int, seq_len: int, seed: int) -> torch.Tensor:
    """Seeded random token ids that both models accept."""
    limit = big.config.get("max_position_embeddings")
    if limit and seq_len > limit:
        raise UserError(f"--seq-len {seq_len} is beyond the model's max_position_embeddings {limit}")
    if small.config["vocab_size"] < big.config["vocab_size"]:
        raise UserError(f"the source has a vocabulary of {small.config['vocab_size']}, smaller than the grown model's "
                        f"{big.config['vocab_size']}")
    return torch.randint(0, big.config["vocab_size"], (batch, seq_len), generator=torch.Generator().manual_seed(seed))


def _float32_bytes(ckpt: Checkpoint) -> int:
    return sum(4 * math.prod(t.shape) for t in ckpt.tensors.values())


def verify(
    source: str | os.PathLike,
    grown: str | os.PathLike,
    *,
    batch: int = 2,
    seq_len: int = 32,
    seed: int = 0,
    tolerance: float = TOLERANCE,
    config: str | os.PathLike | None = None,
    overrides: dict | None = None,
    allow_pickle: bool = False,
    stream: bool | None = None,
    checksums: bool = True,
    progress: bool = False,
    experts: str = "auto",
    memory_budget: int | None = None,
) -> VerifyResult:
    """Does `grown` compute what `source` computes? `passed` is the verdict, the rest its figures.

    In order: the grown shards against the sha256 growth.json records (`checksums`), both configs
    against their weights, every token id's embedding row, then float32 logits of both models on
    seeded random tokens through transformers' own classes. `stream` runs one decoder layer at a
    time (None: when the grown model in float32 exceeds IN_MEMORY_LIMIT or a quarter of free memory);
    `experts` and `memory_budget` steer how it loads MoE experts (see hyperclone.verify_stream).
    """
    check_options(batch, seq_len, tolerance)
    start = time.perf_counter()
    grown_path = resolve_source(grown, "grown model")
    checked = 0
    if checksums:
        damaged, checked = damaged_shards(grown_path if grown_path.is_dir() else grown_path.parent, progress)
        if damaged:
            return VerifyResult(passed=False, damaged_shards=damaged, shards_checked=checked, tolerance=tolerance,
                                seconds=round(time.perf_counter() - start, 3))
    big = open_checkpoint(grown_path, role="grown model")
    small = open_checkpoint(source, config_path=config, overrides=overrides, allow_pickle=allow_pickle)
    for ckpt, what in ((small, "the source"), (big, "the grown model")):
        check_config_matches_weights(ckpt, what)
    tokens = _tokens(small, big, batch, seq_len, seed)
    if stream is None:
        stream = _float32_bytes(big) > min(IN_MEMORY_LIMIT, available_memory() // 4)
    if stream:
        source_logits, grown_logits, figures = streamed_logits(small, big, tokens, memory_budget, experts)
    else:
        with as_model_directory(big) as grown_dir:
            grown_logits, grown_params = _logits(grown_dir, tokens)
        with as_model_directory(small) as source_dir:
            source_logits, source_params = _logits(source_dir, tokens)
        figures = dict(source_params=source_params, grown_params=grown_params)
    return VerifyResult(verdict(source_logits, grown_logits, tolerance, embedding_max_abs_diff(small, big), seed=seed,
                                shards_checked=checked, streamed=stream, **figures, seconds=round(time.perf_counter() - start, 3)))
