"""The decoded images the app's pages keep, so "Analyse" can run again on an upload already deleted.

A page's upload is deleted from the server once analysed; the page keeps the grey image decoded from it (never
the file) to analyse it again with other settings. :class:`KeptImages` holds those images for every page
together, within one memory budget: a page's state holds only a token, the least recently used images go first
when the budget is reached, and an image unused for ``seconds`` is dropped. A page whose image is gone is asked
to upload its film again. No Gradio import here.
"""

from __future__ import annotations

import collections
import logging
import secrets
import threading
import time
from typing import Optional, Tuple

from cxr.app.board import DecodedUpload

__all__ = ["KeptImages"]

_logger = logging.getLogger(__name__)


def _nbytes(upload: DecodedUpload) -> int:
    image = upload.image
    return image.width * image.height * len(image.getbands())


class KeptImages:
    """Decoded uploads by token, at most ``budget_bytes`` together, each for ``seconds`` after its last use.

    One lock owner. Tokens are random: a page's state is the only place that knows one.
    """

    def __init__(self, budget_bytes: int, seconds: float) -> None:
        self.budget_bytes, self.seconds = budget_bytes, seconds
        self._lock = threading.Lock()
        self._images: "collections.OrderedDict[str, Tuple[DecodedUpload, int, float]]" = collections.OrderedDict()
        self._bytes = 0

    @property
    def nbytes(self) -> int:
        """Bytes of the images held now."""
        with self._lock:
            return self._bytes

    def __len__(self) -> int:
        with self._lock:
            return len(self._images)

    def put(self, upload: DecodedUpload, now: Optional[float] = None) -> str:
        """Keep ``upload``; returns its token. Older images are dropped to stay within the budget (an image
        larger than the whole budget is not kept: the token then finds nothing)."""
        now = time.monotonic() if now is None else now
        token, size = secrets.token_hex(16), _nbytes(upload)
        with self._lock:
            self._drop_expired(now)
            if size <= self.budget_bytes:
                self._images[token] = (upload, size, now)
                self._bytes += size
            while self._bytes > self.budget_bytes:
                _, (_, dropped, _) = self._images.popitem(last=False)
                self._bytes -= dropped
                _logger.info(
                    "kept images at their budget (%d MB): the least recently used dropped", self.budget_bytes >> 20
                )
        return token

    def get(self, token: Optional[str], now: Optional[float] = None) -> Optional[DecodedUpload]:
        """The image kept under ``token`` (and it counts as used now), or ``None`` when it was dropped."""
        now = time.monotonic() if now is None else now
        with self._lock:
            self._drop_expired(now)
            entry = self._images.pop(token, None) if token else None
            if entry is None:
                return None
            self._images[token] = (entry[0], entry[1], now)  # now the most recently used
            return entry[0]

    def drop(self, token: Optional[str]) -> None:
        """Forget the image kept under ``token`` (a page that moved on to another upload)."""
        with self._lock:
            entry = self._images.pop(token, None) if token else None
            if entry is not None:
                self._bytes -= entry[1]

    def _drop_expired(self, now: float) -> None:
        while self._images:
            token, (_, size, used) = next(iter(self._images.items()))
            if now - used <= self.seconds:
                return
            del self._images[token]
            self._bytes -= size
