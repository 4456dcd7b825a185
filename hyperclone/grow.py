"""The growth API that notebooks use directly and the CLI wraps."""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch

from hyperclone.card import CARD, grown_card
from hyperclone.errors import UserError
from hyperclone.goals import Goal, check_goal, load_target, solve_goal
from hyperclone.io.guard import LOCK_INFO, MANIFEST, DirectoryLock
from hyperclone.io.output import (PROGRESS_FILE, TOKENIZER_FILES, check_output, copy_side_files, partial_directory,
                                  resumable_directory)
from hyperclone.io.reader import open_checkpoint
from hyperclone.io.writer import Shard, TensorSlot, parse_size, plan_shards, write_shards
from hyperclone.loading import load_model
from hyperclone.manifest import build_manifest, sha256_file, source_files, tool_version
from hyperclone.ops import chunk_tasks
from hyperclone.plan import GrowthPlan, OutTensor, build_plan
from hyperclone.progress import byte_progress
from hyperclone.targets import Target

SMALL_FILES_ALLOWANCE = 1 << 20  # config.json, growth.json, the index: well under a megabyte


def default_workers() -> int:
    """Shards written at once by default: one per CPU core this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return max(1, os.cpu_count() or 1)


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
    if isinstance(tgt, Goal):
        tgt, choice = solve_goal(ckpt, tgt)
        growth = build_plan(ckpt, tgt)
        growth.goal = check_goal(growth, choice)
        return growth
    return build_plan(ckpt, tgt)


def tensor_chunks(growth: GrowthPlan, tensor: OutTensor):
    """Row chunks of one output tensor, each a task that makes it: the single producer behind every output path."""
    return chunk_tasks(tensor.segments, growth.source.rows, growth.dtype_of(tensor), growth.target.seed)


def output_shards(growth: GrowthPlan, shard_size: str | int = "5GB") -> list[Shard]:
    """The files a grow writes, with their headers: known from the plan alone."""
    try:
        shard_bytes = parse_size(shard_size)
    except ValueError as exc:
        raise UserError(f"--shard-size: {exc}") from None
    return plan_shards([TensorSlot(t.name, t.shape, growth.dtype_of(t)) for t in growth.tensors], shard_bytes)


def output_figures(growth: GrowthPlan, shard_size: str | int = "5GB", shards: list[Shard] | None = None) -> dict:
    """bytes, shards and the free disk a grow needs (shards, index, config, manifest, tokenizer files)."""
    shards = shards if shards is not None else output_shards(growth, shard_size)
    side = sum((growth.source.directory / n).stat().st_size for n in TOKENIZER_FILES if (growth.source.directory / n).is_file())
    return {"bytes": growth.nbytes, "shards": len(shards),
            "free_bytes_needed": sum(s.file_bytes for s in shards) + side + SMALL_FILES_ALLOWANCE}


def _fingerprint(growth: GrowthPlan, shards: list[Shard]) -> str:
    """What a resumed run must share with the interrupted one: the plan, the shard layout, the source files."""
    summary = {k: v for k, v in growth.summary().items() if k not in ("goal",)}
    files = [(f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in source_files(growth)]
    layout = [(s.file, hashlib.sha256(s.header).hexdigest()) for s in shards]
    blob = json.dumps({"plan": summary, "files": files, "layout": layout, "version": tool_version()}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def _resume_state(partial: Path, fingerprint: str) -> dict:
    """The interrupted run's record of finished shards; refused if that run grew something else."""
    try:
        state = json.loads((partial / PROGRESS_FILE).read_text())
    except (OSError, ValueError):
        return {}
    if state.get("fingerprint") != fingerprint:
        raise UserError(f"{partial} holds an interrupted grow of a different plan (source, target or options changed): "
                        "rerun with the same arguments, or with --force to start over")
    return state


def _finished_shards(tmp: Path, state: dict, shards: list[Shard], progress: bool) -> dict[str, dict]:
    """Shards of an interrupted run that are complete and still match their recorded checksum."""
    sizes = {s.file: s.file_bytes for s in shards}
    records = [r for r in state.get("shards", {}).values() if (tmp / r["file"]).exists() and sizes.get(r["file"]) == r["bytes"]]
    finished = {}
    with byte_progress("checking finished shards", sum(r["bytes"] for r in records), progress) as advance:
        for record in records:
            if sha256_file(tmp / record["file"], advance) == record["sha256"]:
                finished[record["file"]] = record
    return finished


@contextmanager
def _one_torch_thread() -> Iterator[None]:
    """Torch's intra-op threads off while shards are produced: the chunks are small and the parallelism
    comes from the shard workers and the write pipeline, which torch's own threads only contend with."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def write_plan(growth: GrowthPlan, out: Path, *, force: bool = False, shard_size: str | int = "5GB", progress: bool = True,
               workers: int | None = None, resume: bool = False) -> Path:
    """Stream the grown checkpoint into `out` with config, tokenizer and growth.json.

    Shards are written by `workers` threads, each shard atomically; `resume` continues an interrupted
    run, keeping the shards whose checksums still match. Memory stays bounded by a few row chunks
    per worker, whatever the model size.
    """
    out = Path(out)
    workers = default_workers() if workers is None else workers
    if workers < 1:
        raise UserError(f"--workers must be at least 1, got {workers}")
    shards = output_shards(growth, shard_size)
    fingerprint = _fingerprint(growth, shards)
    partial = partial_directory(out)
    DirectoryLock(partial, str(out.absolute())).refuse_if_held()  # before reading what another run is writing
    previous = _resume_state(partial, fingerprint) if resume else {}
    kept = sum(r["bytes"] for r in previous.get("shards", {}).values())
    needed = output_figures(growth, shards=shards)["free_bytes_needed"] - kept
    inputs = source_files(growth) + [growth.source.path]
    by_name = {t.name: t for t in growth.tensors}
    with resumable_directory(out, force, resume, inputs, needed) as tmp:
        finished = _finished_shards(tmp, previous, shards, progress)
        state = {"fingerprint": fingerprint, "shards": dict(finished)}

        def record(shard: dict) -> None:  # called under the writer's lock
            state["shards"][shard["file"]] = shard
            _write_json_atomic(tmp / PROGRESS_FILE, state)

        _write_json_atomic(tmp / PROGRESS_FILE, state)
        remaining = sum(s.file_bytes for s in shards if s.file not in finished)
        files = source_files(growth)
        with byte_progress("hashing source", sum(f.stat().st_size for f in files), progress) as advance:
            hashes = {f: sha256_file(f, advance) for f in files}
        with byte_progress("growing", remaining, progress) as advance, _one_torch_thread():
            written = write_shards(tmp, shards, lambda slot: tensor_chunks(growth, by_name[slot.name]), advance,
                                   workers=workers, done=finished, on_shard=record)
        (tmp / "config.json").write_text(json.dumps(growth.config, indent=2, sort_keys=True) + "\n")
        copied = copy_side_files(growth.source.directory, tmp)
        (tmp / CARD).write_text(str(grown_card(growth)))
        (tmp / PROGRESS_FILE).unlink()
        # Every file of the output is named, so a later --force knows what hyperclone wrote.
        files = sorted({p.name for p in tmp.iterdir() if p.name != LOCK_INFO} | {MANIFEST})
        manifest = build_manifest(growth, hashes, written, copied, files)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return out


def verify_into_card(growth: GrowthPlan, source, path: Path, plan_options: dict) -> dict:
    """Verify the written output and put the figures into its card; a failure is a bug, never pushed."""
    from hyperclone.verify import verify

    options = {k: plan_options[k] for k in ("config", "overrides", "allow_pickle") if k in plan_options}
    result = verify(source, path, **options)
    card = path / CARD
    card.with_name(CARD + ".tmp").write_text(str(grown_card(growth, result)))
    os.replace(card.with_name(CARD + ".tmp"), card)
    if not result["passed"]:
        raise RuntimeError(f"{path} does not compute what its source computes (max |Δlogit| {result['max_abs_diff']:.3g}, "
                           f"argmax agreement {result['argmax_agreement']:.4f}); it was not pushed")
    return result


def _write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


def check_output_early(source: str | os.PathLike, out: str | os.PathLike, force: bool) -> None:
    """The output's refusals (taken, not ours to replace, overlapping the source) before the plan, which
    builds the model and may first download the source from the Hub: seconds to hours spent before an
    answer that needs neither. The writer checks again, with the disk space the plan gives."""
    local = [] if str(source).startswith("hf://") else [Path(source)]
    check_output(Path(out).absolute(), force, inputs=local)


def grow(
    source: str | os.PathLike,
    target: str | os.PathLike | dict | Target,
    out: str | os.PathLike | None = None,
    *,
    force: bool = False,
    dry_run: bool = False,
    shard_size: str | int = "5GB",
    progress: bool = True,
    workers: int | None = None,
    resume: bool = False,
    check: bool = False,
    push_to_hub: str | None = None,
    private: bool = False,
    **plan_options: Any,
):
    """Grow `source` to `target`.

    With `check` (implied by `push_to_hub`), the written output is verified against the source and
    the figures go into its model card; it is pushed to the Hub repo `push_to_hub` only if it passed.

    Returns the GrowthPlan when `dry_run`, the output Path when `out` is given, and otherwise a
    transformers model in memory. The in-memory model is produced by the same streaming writer
    into a temporary directory and loaded by transformers, so it goes through transformers' own
    on-disk-to-memory key mapping and is bit-identical to what `out` would hold.
    """
    if push_to_hub:
        from hyperclone.hub import check_repo_id

        check_repo_id(push_to_hub)
    if out is not None and not dry_run:
        check_output_early(source, out, force)
    growth = plan(source, target, **plan_options)
    for message in growth.warnings:
        warnings.warn(message, stacklevel=2)
    if dry_run:
        return growth
    if out is not None:
        path = write_plan(growth, Path(out), force=force, shard_size=shard_size, progress=progress, workers=workers, resume=resume)
        if check or push_to_hub:
            verify_into_card(growth, source, path, plan_options)
        if push_to_hub:
            from hyperclone.hub import push

            push(path, push_to_hub, private=private)
        return path
    if check or push_to_hub:
        raise UserError("verifying and pushing need an output directory: give out (-o)")
    with tempfile.TemporaryDirectory(prefix="hyperclone-") as tmp:
        path = write_plan(growth, Path(tmp) / "grown", shard_size=shard_size, progress=progress, workers=workers)
        model = load_model(path)
        # Detach the weights from the temporary files before they disappear.
        for p in model.parameters():
            p.data = p.data.clone()
        return model
