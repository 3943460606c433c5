"""Publishing an export to the Hugging Face Hub, and fetching one back, through ``huggingface_hub``.

Everything that can be known without the network (a valid repo id, a token, offline mode) is
checked before the export is written, so a refused push costs nothing; an upload that fails on
the way leaves the export folder in place and says how to retry.
"""

from __future__ import annotations

from pathlib import Path


class HubError(ValueError):
    """The Hub cannot be reached or refuses: one line that says what to do."""


def check_publishable(repo_id: str) -> None:
    """Refuse, before anything is written, a push that cannot work: an invalid repo id, offline
    mode (``HF_HUB_OFFLINE``) or no token (``hf auth login`` or ``HF_TOKEN``)."""
    from huggingface_hub import constants, get_token
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        first = str(err).splitlines()[0]
        raise HubError(
            f"--push-to-hub {repo_id}: not a Hub repo id ({first}); use OWNER/NAME"
        ) from None
    if "/" not in repo_id:
        raise HubError(f"--push-to-hub {repo_id}: name the owner too, as OWNER/NAME")
    if constants.HF_HUB_OFFLINE:
        raise HubError(
            "--push-to-hub: HF_HUB_OFFLINE is set, so the Hub cannot be reached: unset it, or "
            "export without --push-to-hub and upload the folder later"
        )
    if get_token() is None:
        raise HubError(
            "--push-to-hub: no Hugging Face token: run `hf auth login` or set HF_TOKEN (a token "
            "with write access), then rerun"
        )


def push_to_hub(folder: Path, repo_id: str, private: bool = False) -> str:
    """Create ``repo_id`` if needed and upload ``folder`` to it; returns the repo's URL."""
    from huggingface_hub import HfApi

    api = HfApi()
    try:
        url = api.create_repo(repo_id, private=private, exist_ok=True)
        api.upload_folder(
            repo_id=repo_id,
            folder_path=folder,
            repo_type="model",
            commit_message="Upload lightning-score export",
        )
    except Exception as err:  # network, authentication, permissions: all end the same way
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise HubError(
            f"--push-to-hub {repo_id}: the upload failed ({first}); the export is kept in "
            f"{folder}: rerun with --overwrite once the Hub is reachable, or `hf upload "
            f"{repo_id} {folder}`"
        ) from None
    return str(url)


def download(repo_id: str) -> Path:
    """The local folder of Hub repo ``repo_id`` (from the cache when offline)."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id))
    except Exception as err:  # not found, offline and not cached, network
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise HubError(
            f"{repo_id} is neither a local path nor a Hub repo that can be fetched now ({first}): "
            "pass a checkpoint, an export folder or a diffusers folder, or a reachable repo id"
        ) from None


__all__ = ["HubError", "check_publishable", "download", "push_to_hub"]
