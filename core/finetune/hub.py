"""Sharing a trained model: a zip of its folder, or a push to the Hugging Face Hub with the user's token.

The token is used for the one request and never logged, stored or put into a message.
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from core.common.errors import PlaygroundError


class HubError(PlaygroundError):
    """A push failed; the message is safe to show (the token is scrubbed)."""


def zip_model(folder: str | Path) -> Path:
    """A zip of the model folder in a fresh temporary directory (for a download button)."""
    folder = Path(folder)
    out = Path(tempfile.mkdtemp(prefix="model-zip-")) / folder.name
    return Path(shutil.make_archive(str(out), "zip", root_dir=folder))


def push_to_hub(folder: str | Path, repo_id: str, token: str, private: bool = True) -> str:
    """Create (or reuse) `repo_id` and upload the folder; returns the repo URL."""
    from huggingface_hub import HfApi

    repo_id, token = (repo_id or "").strip(), (token or "").strip()
    if not repo_id or "/" not in repo_id:
        raise HubError("Give the repository as 'user-or-org/name'.")
    if not token:
        raise HubError("Paste a Hugging Face access token with write permission.")
    api = HfApi(token=token)
    try:
        url = api.create_repo(repo_id, private=private, exist_ok=True)
        api.upload_folder(folder_path=str(folder), repo_id=repo_id, commit_message="Upload from LLM Playground")
    except Exception as err:  # network, auth and permission errors alike; never echo the token back
        text = (str(err).splitlines()[0] if str(err) else type(err).__name__).replace(token, "***")
        raise HubError(f"Push to {repo_id} failed: {text}") from None
    return str(url)
