"""One resolver for every source path: local files and directories, and hf://org/name[@rev]."""
from __future__ import annotations

import os
from pathlib import Path

from hyperclone.errors import UserError

HUB_PATTERNS = ["*.safetensors", "*.safetensors.index.json", "*.json", "tokenizer*", "*.model", "*.txt", "*.jinja", "README.md"]
PICKLE_PATTERNS = ["*.bin", "*.bin.index.json", "*.pt", "*.pth"]  # fetched only with --allow-pickle


def resolve_source(source: str | os.PathLike, role: str = "source", allow_pickle: bool = False) -> Path:
    """Return a local path for `source`, downloading hf:// repositories into the Hub cache (weights as
    safetensors only, unless `allow_pickle`; the card comes too, for its license)."""
    text = str(source)
    if text.startswith("hf://"):
        return _resolve_hub(text[len("hf://") :], HUB_PATTERNS + (PICKLE_PATTERNS if allow_pickle else []))
    path = Path(text).expanduser()
    if not path.exists():
        raise UserError(f"{role} {text} does not exist: give a .safetensors file, a model directory or hf://org/name")
    return path


def _resolve_hub(spec: str, patterns: list[str]) -> Path:
    repo, _, revision = spec.partition("@")
    if repo.count("/") != 1:
        raise UserError(f"hf://{spec} is not a Hub model id: write hf://org/name or hf://org/name@revision")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (GatedRepoError, HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError,
                                        RevisionNotFoundError)

    try:
        local = snapshot_download(repo, revision=revision or None, allow_patterns=patterns)
    except GatedRepoError:
        raise UserError(f"hf://{repo} is gated: accept its terms on its Hub page, then log in (`hf auth login` or HF_TOKEN)") from None
    except RevisionNotFoundError:
        raise UserError(f"hf://{repo} has no revision {revision!r}: give a branch, tag or commit it has") from None
    except RepositoryNotFoundError:
        raise UserError(f"hf://{repo} was not found, or it is private: check the name, or log in with a token that can "
                        "read it (`hf auth login` or HF_TOKEN)") from None
    except LocalEntryNotFoundError:
        raise UserError(
            f"hf://{spec} is not in the local Hub cache and the Hub cannot be reached "
            "(HF_HUB_OFFLINE is set or there is no network): download it first or give a local path"
        ) from None
    except (HfHubHTTPError, OSError) as exc:
        raise UserError(f"could not fetch hf://{spec}: {str(exc).splitlines()[0]}") from None
    return Path(local)
