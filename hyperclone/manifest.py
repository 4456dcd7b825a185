"""growth.json: what was grown from what, so a grown checkpoint can be traced and reproduced."""
from __future__ import annotations

import datetime as dt
import hashlib
from importlib import metadata
from pathlib import Path
from typing import Callable

from hyperclone.card import hub_id
from hyperclone.plan import GrowthPlan


def tool_version() -> str:
    try:
        return metadata.version("hyperclone")
    except metadata.PackageNotFoundError:
        return "0+unknown"


def sha256_file(path: Path, on_bytes: Callable[[int], None] = lambda n: None) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 24):
            digest.update(block)
            on_bytes(len(block))
    return digest.hexdigest()


def source_files(plan: GrowthPlan) -> list[Path]:
    ckpt = plan.source
    files = list(ckpt.weight_files())
    if ckpt.config_file is not None:
        files.append(ckpt.config_file)
    return files


def source_name(path: Path) -> str:
    """hf://org/name@commit for a snapshot in the Hub cache (or a file in one), else the file or directory's name."""
    repo = hub_id(path)
    if not repo:
        return path.name
    parts = path.parts
    return f"hf://{repo}@{parts[parts.index('snapshots') + 1]}"


def build_manifest(plan: GrowthPlan, source_hashes: dict[Path, str], shards: list[dict], copied: list[str], files: list[str]) -> dict:
    summary = plan.summary()
    summary.pop("config")
    summary.pop("source")
    return {
        "hyperclone_version": tool_version(),
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "source": {  # its files' sha256 identify it; its local path is not recorded, since push publishes growth.json
            "name": source_name(plan.source.path),
            "files": [{"name": p.name, "bytes": p.stat().st_size, "sha256": h} for p, h in source_hashes.items()],
        },
        **summary,
        "seed": plan.target.seed,
        "noise": plan.target.noise,
        "shards": shards,
        "copied_files": copied,
        "files": files,
    }
