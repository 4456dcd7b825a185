"""Prove function preservation with transformers' own model classes, never our own forward pass."""
from __future__ import annotations

import json
import os
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch

from hyperclone.errors import UserError
from hyperclone.io.reader import open_checkpoint

TOLERANCE = 1e-4


@contextmanager
def as_model_directory(source: str | os.PathLike, **open_options) -> Iterator[Path]:
    """A directory transformers can load: the source itself, or links to a bare file plus its config."""
    ckpt = open_checkpoint(source, **open_options)
    path = ckpt.path
    if path.is_dir() and (path / "config.json").exists() and not open_options.get("overrides"):
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
    from hyperclone.grow import load_model

    model = load_model(directory, dtype=torch.float32, reference=True)
    model.eval()
    vocab = model.config.vocab_size
    if int(tokens.max()) >= vocab:
        raise UserError(f"{directory} has a vocabulary of {vocab}, smaller than the other model's")
    try:
        with torch.no_grad():
            logits = model(input_ids=tokens).logits.float()
    except RuntimeError as exc:
        raise UserError(f"transformers failed to run {directory}: {str(exc).splitlines()[0]}") from None
    params = sum(p.numel() for p in model.parameters())
    del model
    return logits, params


def _float32_bytes(path: str | os.PathLike) -> int:
    import math

    return sum(4 * math.prod(t.shape) for t in open_checkpoint(path).tensors.values())


def available_memory() -> int:
    import psutil

    return psutil.virtual_memory().available


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
) -> dict:
    """Compare float32 logits of both models on seeded random tokens; `passed` is the verdict.

    `stream` loads one decoder layer at a time (hyperclone.verify_stream); None picks it when the
    grown model in float32 would take more than half of the available memory.
    """
    if stream is None:
        stream = _float32_bytes(grown) > available_memory() // 2
    if stream:
        from hyperclone.verify_stream import verify_streamed

        return verify_streamed(source, grown, batch=batch, seq_len=seq_len, seed=seed, tolerance=tolerance,
                               config=config, overrides=overrides, allow_pickle=allow_pickle)
    start = time.perf_counter()
    with as_model_directory(grown) as grown_dir:
        grown_cfg = json.loads((grown_dir / "config.json").read_text())
        vocab = grown_cfg.get("vocab_size")
        limit = grown_cfg.get("max_position_embeddings")
        if limit and seq_len > limit:
            raise UserError(f"--seq-len {seq_len} is beyond the model's max_position_embeddings {limit}")
        gen = torch.Generator().manual_seed(seed)
        tokens = torch.randint(0, vocab, (batch, seq_len), generator=gen)
        grown_logits, grown_params = _logits(grown_dir, tokens)
    with as_model_directory(source, config_path=config, overrides=overrides, allow_pickle=allow_pickle) as source_dir:
        source_logits, source_params = _logits(source_dir, tokens)
    return verdict(source_logits, grown_logits, tolerance, seed=seed, source_params=source_params,
                   grown_params=grown_params, streamed=False, seconds=round(time.perf_counter() - start, 3))


def verdict(source_logits: torch.Tensor, grown_logits: torch.Tensor, tolerance: float, **figures) -> dict:
    """The contract's verdict (max |difference| within tolerance, same argmax) and its figures."""
    if source_logits.shape != grown_logits.shape:
        raise UserError(f"the models' logits differ in shape {list(source_logits.shape)} vs {list(grown_logits.shape)}")
    diff = (source_logits - grown_logits).abs()
    same = source_logits.argmax(-1) == grown_logits.argmax(-1)
    max_diff = float(diff.max())
    return {
        "passed": bool(max_diff <= tolerance and bool(same.all())),
        "max_abs_diff": max_diff,
        "mean_abs_diff": float(diff.mean()),
        "argmax_agreement": float(same.float().mean()),
        "tolerance": tolerance,
        "tokens": source_logits.shape[0] * source_logits.shape[1],
        **figures,
    }
