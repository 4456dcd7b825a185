"""One resolver for every source path: local files and directories, and hf://org/name[@rev]."""
from __future__ import annotations

import os
from pathlib import Path

from hyperclone.errors import UserError

HUB_PATTERNS = ["*.safetensors", "*.safetensors.index.json", "*.json", "tokenizer*", "*.model", "*.txt", "*.jinja"]


def resolve_source(source: str | os.PathLike, role: str = "source") -> Path:
    """Return a local path for `source`, downloading hf:// repositories into the Hub cache."""
    text = str(source)
    if text.startswith("hf://"):
        return _resolve_hub(text[len("hf://") :])
    path = Path(text).expanduser()
    if not path.exists():
        raise UserError(f"{role} {text} does not exist: give a .safetensors file, a model directory or hf://org/name")
    return path


def _resolve_hub(spec: str) -> Path:
    repo, _, revision = spec.partition("@")
    if repo.count("/") != 1:
        raise UserError(f"hf://{spec} is not a Hub model id: write hf://org/name or hf://org/name@revision")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        local = snapshot_download(repo, revision=revision or None, allow_patterns=HUB_PATTERNS)
    except LocalEntryNotFoundError:
        raise UserError(
            f"hf://{spec} is not in the local Hub cache and the Hub cannot be reached "
            "(HF_HUB_OFFLINE is set or there is no network): download it first or give a local path"
        ) from None
    except (HfHubHTTPError, OSError) as exc:
        raise UserError(f"could not fetch hf://{spec}: {str(exc).splitlines()[0]}") from None
    return Path(local)
