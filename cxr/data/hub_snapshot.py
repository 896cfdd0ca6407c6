"""A Hub dataset repository resolved to a commit and downloaded (or found in the local cache when the Hub
cannot be reached): the one place that turns ``huggingface_hub``'s errors on reading a dataset into ours."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import httpx
from huggingface_hub import HfApi, constants, get_cached_repo_tree, snapshot_download
from huggingface_hub.errors import (
    CachedRepoTreeNotFoundError,
    GatedRepoError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from cxr.errors import CXRError, first_line
from cxr.labels import CLASS_NAMES

__all__ = ["hub_snapshot"]

_logger = logging.getLogger(__name__)


def _class_folder_prefix(paths: Sequence[str]) -> Optional[str]:
    """The folder of a repository's file list that holds the class folders (``""``: the top), if any.

    Mirrors :func:`find_dataset_root`: the class folders themselves, or one wrapper folder around them.
    """

    def subdirs(prefix: str) -> set:
        rests = [p[len(prefix) :] for p in paths if p.startswith(prefix)]
        return {r.split("/")[0] for r in rests if "/" in r and not r.startswith((".", "_"))}

    top = subdirs("")
    if top & set(CLASS_NAMES):
        return ""
    if len(top) == 1:
        wrapper = f"{next(iter(top))}/"
        if subdirs(wrapper) & set(CLASS_NAMES):
            return wrapper
    return None


def _download_patterns(paths: Sequence[str]) -> Tuple[Optional[List[str]], Optional[List[str]]]:
    """``(allow_patterns, ignore_patterns)`` for a repository's files: for the database's Kaggle tree the files of its
    class folders (whatever classes it has), never the masks nor the metadata sheets beside them; otherwise
    everything."""
    wrapper = _class_folder_prefix(paths)
    if wrapper is None:
        return None, None
    return [f"{wrapper}*/*"], [f"{wrapper}*/masks/*"]


def hub_snapshot(repo_id: str, revision: Optional[str]) -> Tuple[Path, str, bool]:
    """Resolve a Hub dataset repository at ``revision`` and download that commit (or find it cached when the Hub
    cannot be reached).

    Returns:
        ``(snapshot folder, commit sha, whether it came from the local cache without the Hub)``.

    Raises:
        CXRError: no such repository or revision, a gated one, or the Hub unreachable with no cached copy.
    """
    rev = revision or "main"
    try:
        info = _dataset_info(repo_id, rev)
    except _Unreachable as e:
        folder = _cached_copy(repo_id, rev, e.why)
        return folder, folder.name, True
    allow, ignore = _download_patterns([s.rfilename for s in info.siblings or []])
    try:
        folder = Path(
            snapshot_download(repo_id, repo_type="dataset", revision=rev, allow_patterns=allow, ignore_patterns=ignore)
        )
    except (HfHubHTTPError, ConnectionError, httpx.TransportError) as e:
        raise CXRError(f"downloading the Hub dataset {repo_id!r} at {info.sha} failed: {first_line(e)}") from e
    sha = folder.name if re.fullmatch(r"[0-9a-f]{40}", folder.name) else info.sha
    if sha != info.sha:
        _logger.warning("%s moved from %s to %s while it was downloaded; using %s", rev, info.sha, sha, sha)
    return folder, sha, False


class _Unreachable(Exception):
    """The Hub could not be asked (offline, or no connection): a cached copy may still serve."""

    def __init__(self, why: str):
        super().__init__(why)
        self.why = why


def _dataset_info(repo_id: str, rev: str):
    """``HfApi().dataset_info`` with each of the Hub's refusals as one of our sentences."""
    prefix = f"--data {repo_id!r} is neither a local image folder nor a loadable dataset"
    try:
        return HfApi().dataset_info(repo_id, revision=rev)
    except RevisionNotFoundError as e:
        raise CXRError(
            f"--dataset-revision {rev!r}: no such branch, tag or commit in the Hub dataset {repo_id!r}"
        ) from e
    except GatedRepoError as e:
        raise CXRError(
            f"the Hub dataset {repo_id!r} is gated: accept its terms on the Hub and log in "
            "(`hf auth login` or HF_TOKEN)"
        ) from e
    except RepositoryNotFoundError as e:
        raise CXRError(
            f"{prefix}: no dataset repository {repo_id!r} on the Hub ({constants.ENDPOINT}); "
            "if it is private, log in (`hf auth login` or HF_TOKEN)"
        ) from e
    except (ConnectionError, httpx.TransportError) as e:  # OfflineModeIsEnabled is a ConnectionError
        offline = isinstance(e, OfflineModeIsEnabled)
        raise _Unreachable(
            "the Hub is offline (HF_HUB_OFFLINE=1)" if offline else f"the Hub cannot be reached ({first_line(e)})"
        ) from e
    except HfHubHTTPError as e:
        raise CXRError(f"{prefix}: the Hub answered {first_line(e)}") from e


def _cached_copy(repo_id: str, rev: str, why: str) -> Path:
    """The commit a previous download of ``rev`` fetched, with the same files, from the local cache."""
    prefix = f"--data {repo_id!r} is neither a local image folder nor a loadable dataset"
    try:
        tree = get_cached_repo_tree(repo_id, repo_type="dataset", revision=rev)
        allow, ignore = _download_patterns([f.path for f in tree])
        folder = Path(
            snapshot_download(
                repo_id,
                repo_type="dataset",
                revision=rev,
                local_files_only=True,
                allow_patterns=allow,
                ignore_patterns=ignore,
            )
        )
    except (CachedRepoTreeNotFoundError, LocalEntryNotFoundError, OSError) as e:
        raise CXRError(
            f"{prefix}: {why} and no complete copy of the Hub dataset {repo_id!r} at revision {rev!r} "
            "is cached. Go online once, or pass a local folder."
        ) from e
    _logger.warning("%s: using the cached copy of %s at %s", why, repo_id, folder.name)
    return folder
