"""Fetch a model repo's conversion inputs with huggingface_hub (only the files needed; resumable).

Sources, in the hub's own layouts:
- the Hub itself: snapshot_download into the hub cache (progress bars, resumes partial downloads);
- --local-dir DIR, a folder holding the repo's files (a git clone, `hf download --local-dir`);
- --local-dir DIR, a hub cache folder (containing models--ORG--NAME/): resolved by huggingface_hub
  itself with local_files_only=True, never touching the network.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from edgeqwen import settings
from edgeqwen.errors import ModelFetchError

from .hf_to_gguf import NEEDED_FILES

DEFAULT_REPO = settings.QUANTIZE_REPO
LOCAL_HINT = "--local-dir DIR (a folder with the repo's files or a Hugging Face cache; `make quantize LOCAL_DIR=DIR`)"
NETWORK_TIMEOUT = 10.0  # seconds: a Hub that does not answer fails fast


@dataclass(frozen=True)
class Fetched:
    path: Path  # folder with config.json, safetensors and tokenizer files
    repo: str
    revision: str | None  # what was asked for
    commit: str | None  # the commit hash it resolved to, when known
    origin: str  # "hub", "hub-cache" or "local-dir"


def _one_line(text: str, limit: int = 160) -> str:
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def _cache_folder_name(repo: str) -> str:
    return "models--" + repo.replace("/", "--")


def fetch_checkpoint(repo: str = DEFAULT_REPO, revision: str | None = None, *, local_dir: Path | None = None,
                     cache_dir: Path | None = None, endpoint: str | None = None, progress: bool = True) -> Fetched:
    """Return a folder with the files the converter needs, from local_dir or the Hub."""
    if local_dir is not None:
        return _from_local(repo, revision, Path(local_dir).expanduser())
    return _from_hub(repo, revision, cache_dir=cache_dir, endpoint=endpoint, progress=progress)


def _from_local(repo: str, revision: str | None, folder: Path) -> Fetched:
    if not folder.is_dir():
        raise ModelFetchError(f"--local-dir {folder} is not a folder (give the repo's files or a Hugging Face cache)")
    if (folder / "config.json").is_file():
        return Fetched(folder, repo, revision, _commit_from_path(folder), "local-dir")
    # A hub cache: the folder holding models--ORG--NAME/, or that folder itself.
    cache = folder.parent if folder.name == _cache_folder_name(repo) else folder
    if not (cache / _cache_folder_name(repo)).is_dir():
        raise ModelFetchError(
            f"--local-dir {folder} has neither config.json nor {_cache_folder_name(repo)}/ "
            f"(give the repo's files, or a Hugging Face cache holding {repo})"
        )
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        path = Path(snapshot_download(repo, revision=revision, cache_dir=cache, local_files_only=True,
                                      allow_patterns=list(NEEDED_FILES)))
    except LocalEntryNotFoundError as e:
        raise ModelFetchError(
            f"the cache {cache} has no complete snapshot of {repo} at revision {revision or 'main'} "
            f"({_one_line(e, 100)})"
        ) from e
    return Fetched(path, repo, revision, _commit_from_path(path), "hub-cache")


def _commit_from_path(path: Path) -> str | None:
    """Hub cache snapshots are named by their commit hash."""
    return path.name if path.parent.name == "snapshots" and re.fullmatch(r"[0-9a-f]{40}", path.name) else None


def _from_hub(repo: str, revision: str | None, *, cache_dir: Path | None, endpoint: str | None,
              progress: bool) -> Fetched:
    import httpx2 as httpx  # huggingface_hub's HTTP client
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )
    from huggingface_hub.utils import disable_progress_bars, enable_progress_bars

    (enable_progress_bars if progress else disable_progress_bars)()
    try:
        path = Path(snapshot_download(
            repo, revision=revision, cache_dir=cache_dir, endpoint=endpoint,
            allow_patterns=list(NEEDED_FILES), etag_timeout=NETWORK_TIMEOUT, max_workers=4,
        ))
    except (GatedRepoError, RepositoryNotFoundError) as e:
        raise ModelFetchError(f"{repo} is not on the Hugging Face Hub or needs a login (HF_TOKEN): "
                              f"{_one_line(e, 100)}") from e
    except RevisionNotFoundError as e:
        raise ModelFetchError(f"{repo} has no revision {revision!r}") from e
    except (LocalEntryNotFoundError, OfflineModeIsEnabled, httpx.ConnectError, httpx.TimeoutException,
            httpx.NetworkError, ConnectionError, TimeoutError) as e:
        cause = e.__cause__ or e
        reason = _one_line(f"{type(cause).__name__}: {cause}", 100)
        raise ModelFetchError(
            f"cannot reach the Hugging Face Hub to fetch {repo} (no network? {reason}); "
            f"download it on a connected machine and pass {LOCAL_HINT}"
        ) from e
    except HfHubHTTPError as e:
        raise ModelFetchError(f"the Hugging Face Hub refused {repo}: {_one_line(e, 120)}; or pass {LOCAL_HINT}") from e
    except OSError as e:
        raise ModelFetchError(f"cannot store {repo} in the hub cache: {e.strerror or e} (check disk space)") from e
    return Fetched(path, repo, revision, _commit_from_path(path), "hub")
