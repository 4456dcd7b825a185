"""The growth API that notebooks use directly and the CLI wraps."""
from __future__ import annotations

import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch

from hyperclone.errors import UserError
from hyperclone.io.output import atomic_directory, check_output, copy_side_files
from hyperclone.io.reader import open_checkpoint
from hyperclone.io.writer import TensorSlot, parse_size, write_shards
from hyperclone.manifest import build_manifest, sha256_file, source_files
from hyperclone.ops import produce_rows
from hyperclone.plan import GrowthPlan, OutTensor, build_plan
from hyperclone.progress import byte_progress
from hyperclone.targets import Target, load_target


def plan(
    source: str | os.PathLike,
    target: str | os.PathLike | dict | Target,
    *,
    width: int | None = None,
    ffn: int | None = None,
    layers: int | str | None = None,
    noise: float | None = None,
    seed: int | None = None,
    dtype: str | None = None,
    config: str | os.PathLike | None = None,
    overrides: dict | None = None,
    allow_pickle: bool = False,
) -> GrowthPlan:
    """Resolve what growing `source` to `target` produces, reading only tensor headers."""
    tgt = load_target(target, dict(width=width, ffn=ffn, layers=layers, noise=noise, seed=seed, dtype=dtype))
    ckpt = open_checkpoint(source, config_path=config, overrides=overrides, allow_pickle=allow_pickle)
    return build_plan(ckpt, tgt)


def tensor_chunks(growth: GrowthPlan, tensor: OutTensor):
    """Row chunks of one output tensor: the single producer behind every output path."""
    return produce_rows(tensor.segments, growth.source.rows, growth.dtype_of(tensor), growth.target.seed)


def write_plan(growth: GrowthPlan, out: Path, *, force: bool = False, shard_size: str | int = "5GB", progress: bool = True) -> Path:
    """Stream the grown checkpoint into `out` (atomically) with config, tokenizer and growth.json."""
    out = Path(out)
    try:
        shard_bytes = parse_size(shard_size)
    except ValueError as exc:
        raise UserError(f"--shard-size: {exc}") from None
    check_output(out.absolute(), force, needed_bytes=growth.nbytes)
    by_name = {t.name: t for t in growth.tensors}
    slots = [TensorSlot(t.name, t.shape, growth.dtype_of(t)) for t in growth.tensors]
    with atomic_directory(out, force) as tmp:
        files = source_files(growth)
        with byte_progress("hashing source", sum(f.stat().st_size for f in files), progress) as advance:
            hashes = {f: sha256_file(f, advance) for f in files}
        with byte_progress("growing", growth.nbytes, progress) as advance:
            shards = write_shards(tmp, slots, lambda slot: tensor_chunks(growth, by_name[slot.name]), shard_bytes, advance)
        (tmp / "config.json").write_text(json.dumps(growth.config, indent=2, sort_keys=True) + "\n")
        copied = copy_side_files(growth.source.directory, tmp)
        manifest = build_manifest(growth, hashes, shards, copied)
        (tmp / "growth.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return out


def load_model(directory: str | os.PathLike, dtype: torch.dtype | None = None, reference: bool = False):
    """Load a checkpoint with transformers' own class, strictly: missing or unexpected keys are an error.

    `reference` picks transformers' eager attention and experts code: the plainest implementation,
    and free of fused-kernel shape limits (grouped_mm wants 16-byte strides, for one).
    """
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    options = dict(attn_implementation="eager", experts_implementation="eager") if reference else {}
    try:
        model, info = AutoModelForCausalLM.from_pretrained(str(directory), dtype=dtype, output_loading_info=True, **options)
    except (OSError, ValueError, RuntimeError, KeyError) as exc:
        raise UserError(f"transformers cannot load {directory}: {str(exc).splitlines()[0]}") from None
    problems = {k: sorted(v) for k, v in info.items() if k in ("missing_keys", "unexpected_keys", "mismatched_keys") and v}
    if problems:
        raise UserError(f"{directory} does not load strictly with transformers: {problems}")
    return model


def grow(
    source: str | os.PathLike,
    target: str | os.PathLike | dict | Target,
    out: str | os.PathLike | None = None,
    *,
    force: bool = False,
    dry_run: bool = False,
    shard_size: str | int = "5GB",
    progress: bool = True,
    **plan_options: Any,
):
    """Grow `source` to `target`.

    Returns the GrowthPlan when `dry_run`, the output Path when `out` is given, and otherwise a
    transformers model in memory. The in-memory model is produced by the same streaming writer
    into a temporary directory and loaded by transformers, so it goes through transformers' own
    on-disk-to-memory key mapping and is bit-identical to what `out` would hold.
    """
    growth = plan(source, target, **plan_options)
    for message in growth.warnings:
        warnings.warn(message, stacklevel=2)
    if dry_run:
        return growth
    if out is not None:
        return write_plan(growth, Path(out), force=force, shard_size=shard_size, progress=progress)
    with tempfile.TemporaryDirectory(prefix="hyperclone-") as tmp:
        path = write_plan(growth, Path(tmp) / "grown", shard_size=shard_size, progress=progress)
        model = load_model(path)
        # Detach the weights from the temporary files before they disappear.
        for p in model.parameters():
            p.data = p.data.clone()
        return model
