"""Publishing to the Hugging Face Hub with huggingface_hub's own API.

`upload_folder` splits a large folder into several commits and resumes an interrupted upload, so
this module only decides what is sent and turns the Hub's errors into one line. The token comes
from huggingface_hub itself (`hf auth login` or HF_TOKEN); it is never read, printed or stored here.
"""
from __future__ import annotations

import os
from pathlib import Path

from hyperclone.card import CARD
from hyperclone.errors import UserError


def check_repo_id(repo: str) -> str:
    """Refuse, before any work, a repo that is not org/name."""
    if not isinstance(repo, str) or repo.count("/") != 1 or not all(repo.split("/")):
        raise UserError(f"Hub repo {repo!r} is not a model id: write org/name")
    return repo


def publishable(directory: Path) -> Path:
    """The folder a push sends: a model directory, or a training run's final model."""
    directory = Path(directory)
    if not directory.is_dir():
        raise UserError(f"{directory} is not a directory: push a grown model directory or a training run")
    if not (directory / "config.json").is_file() and (directory / "final" / "config.json").is_file():
        return directory / "final"
    if not (directory / "config.json").is_file():
        raise UserError(f"{directory} has no config.json: push a grown model directory, a run's final/ or the run itself")
    return directory


def upload_list(folder: Path) -> list[tuple[str, int]]:
    """(relative path, bytes) of every file a push sends, in upload order: not hidden files (hyperclone's
    lock and progress files among them) nor half-written `.tmp` ones."""
    files = []
    for root, dirs, names in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(names):
            path = Path(root) / name
            if name.startswith(".") or name.endswith(".tmp"):
                continue
            files.append((path.relative_to(folder).as_posix(), path.stat().st_size))
    return files


def push(directory: str | os.PathLike, repo: str, *, private: bool = False, revision: str | None = None,
         message: str | None = None, dry_run: bool = False) -> dict:
    """Upload a grown or trained model to `repo`; with `dry_run`, only say what would be sent.

    Returns {"repo", "folder", "files": [(path, bytes)], "card": text or None, "url": commit URL or None}.
    """
    check_repo_id(repo)
    folder = publishable(Path(directory))
    files = upload_list(folder)
    card = (folder / CARD).read_text() if (folder / CARD).is_file() else None
    result = {"repo": repo, "folder": str(folder), "files": files, "card": card, "url": None}
    if dry_run:
        return result
    result["url"] = _upload(folder, repo, [f for f, _ in files], private, revision, message or f"Upload {folder.name} with hyperclone")
    return result


def _upload(folder: Path, repo: str, files: list[str], private: bool, revision: str | None, message: str) -> str:
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    api = HfApi()
    try:
        api.create_repo(repo, private=private, exist_ok=True, repo_type="model")
        if revision:
            api.create_branch(repo, branch=revision, exist_ok=True)
        commit = api.upload_folder(folder_path=str(folder), repo_id=repo, revision=revision, commit_message=message,
                                   allow_patterns=files)
    except OfflineModeIsEnabled:
        raise UserError("cannot push while HF_HUB_OFFLINE is set: unset it (and check the network), or use --dry-run") from None
    except HfHubHTTPError as exc:
        status = getattr(exc.response, "status_code", None)
        if status in (401, 403):
            raise UserError(f"the Hub refused the push to {repo} (HTTP {status}): log in with `hf auth login` or set "
                            "HF_TOKEN to a token with write access to that namespace") from None
        raise UserError(f"the Hub refused the push to {repo}: {str(exc).splitlines()[0]}") from None
    except OSError as exc:
        raise UserError(f"cannot reach the Hub to push {repo} ({exc.__class__.__name__}): check the network, or use --dry-run") from None
    return str(getattr(commit, "commit_url", commit))
