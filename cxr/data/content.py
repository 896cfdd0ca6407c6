"""What a film is, by content: a digest of its file's bytes, so that two datasets can be told to hold the same
films even when their names agree (the sample's files renamed, or other films under the sample's names)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, Dict, Union

import datasets

__all__ = ["file_digest", "path_digest", "is_digest", "content_digests"]

#: Hex digits kept of each SHA-256 digest: 64 bits, enough to tell films apart, short enough to ship in a file.
DIGEST_CHARS = 16
# rows read at a time: a dataset that embeds its films' bytes is never read whole into memory
_BATCH = 256


def file_digest(data: bytes) -> str:
    """The digest of a film's bytes.

    Example:
        >>> file_digest(b"not a film")
        'effec2691b8e0fe5'
    """
    return hashlib.sha256(data).hexdigest()[:DIGEST_CHARS]


def path_digest(path: Union[str, os.PathLike]) -> str:
    """:func:`file_digest` of a file's bytes, read a block at a time (an upload is never held whole for it)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:DIGEST_CHARS]


def is_digest(value: Any) -> bool:
    """Whether ``value`` is a digest as :func:`file_digest` writes it (lower-case hex, :data:`DIGEST_CHARS` long)."""
    return isinstance(value, str) and len(value) == DIGEST_CHARS and all(c in "0123456789abcdef" for c in value)


def _bytes_of(image: Dict[str, Any]) -> bytes:
    if image.get("bytes"):
        return image["bytes"]
    return Path(image["path"]).read_bytes()


def content_digests(ds: datasets.Dataset) -> Dict[str, str]:
    """``{file_name: digest}`` of a dataset's films (its ``image`` column, read undecoded: from the file each
    names or the bytes it holds)."""
    raw = ds.cast_column("image", datasets.Image(decode=False)) if _decodes(ds) else ds
    raw = raw.select_columns(["file_name", "image"])
    digests: Dict[str, str] = {}
    for batch in raw.iter(batch_size=_BATCH):  # a dataset that holds its films' bytes is read a batch at a time
        digests.update((name, file_digest(_bytes_of(im))) for name, im in zip(batch["file_name"], batch["image"]))
    return digests


def _decodes(ds: datasets.Dataset) -> bool:
    feature = ds.features.get("image")
    return isinstance(feature, datasets.Image) and feature.decode
