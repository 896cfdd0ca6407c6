"""The upload route's guard: what anyone may store on the server through Gradio's ``/upload``.

Gradio stores whatever is posted to its upload route — any file type, up to ``max_file_size`` each, any number
per request — and serves it back until its cache sweep. :class:`UploadGuard` is an ASGI middleware in front of
that route:

- a request must say its length (``Content-Length``) and be at most one upload's worth (``max_request_bytes``:
  one file of the decoder's limit, the app's upload box takes one);
- it is refused while the files already held in Gradio's cache, plus this request, would pass ``cache_bytes``;
- a stored file whose name does not end in one of ``suffixes`` (the types the app analyses) is deleted at once
  and the request answered with an error;
- the files let through are recorded in :class:`StoredUploads`, which deletes those no request analyses within
  the app's wait (:func:`expire_every`) and those left when the app stops.

Every refusal is an HTTP error whose ``detail`` is one sentence; the app keeps serving. No Gradio import here:
the route's path, its answer and the cache's layout are :mod:`cxr.app.gradio_internals`' to know.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any, Awaitable, Callable, Dict, List, Optional, Sequence

from cxr.app.gradio_internals import is_upload_request, remove_cached_file, stored_upload_paths

__all__ = ["UploadGuard", "StoredUploads", "expire_every", "cache_bytes"]

_logger = logging.getLogger(__name__)

Scope = Dict[str, Any]
Message = Dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


def cache_bytes(folder: Path) -> int:
    """Bytes of the files under ``folder`` (0 when it does not exist)."""
    total = 0
    for root, _, files in os.walk(folder):
        for name in files:
            try:
                total += os.stat(os.path.join(root, name)).st_size
            except OSError:  # swept meanwhile
                pass
    return total


class StoredUploads:
    """The files the upload route stored and no request has analysed yet, with when each arrived.

    A request that analyses an upload :meth:`claim` s it (the page deletes it once analysed); one never analysed
    is deleted by :meth:`expire` once older than the app's wait (``app.py --upload-wait``), and every one left
    by :meth:`remove_all` when the app stops. Gradio stores the same bytes under the same name at the same path,
    so two visitors who send the same film share one file: each arrival is counted, and the file is another
    request's to analyse while an arrival of it is still :meth:`pending`. An arrival whose file is gone (Gradio's
    cache sweep removed it) no longer counts: :meth:`forget_missing` drops those before each upload is stored.
    One lock owner.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._arrived: Dict[str, float] = {}
        self._count: Dict[str, int] = {}

    def add(self, paths: Sequence[str], now: Optional[float] = None) -> None:
        now = time.monotonic() if now is None else now
        with self._lock:
            for p in paths:
                key = os.path.realpath(p)
                self._arrived[key] = now
                self._count[key] = self._count.get(key, 0) + 1

    def claim(self, path: str) -> None:
        """A request analyses ``path`` now: one arrival of it is no longer this record's to expire."""
        key = os.path.realpath(path)
        with self._lock:
            left = self._count.get(key, 0) - 1
            if left > 0:
                self._count[key] = left
            else:
                self._count.pop(key, None)
                self._arrived.pop(key, None)

    def pending(self, path: str) -> int:
        """Arrivals of ``path`` that no request has analysed yet."""
        with self._lock:
            return self._count.get(os.path.realpath(path), 0)

    def forget_missing(self) -> int:
        """Drop the arrivals whose file is gone; returns how many files that was."""
        with self._lock:
            gone = [p for p in self._arrived if not os.path.exists(p)]
            for p in gone:
                self._arrived.pop(p, None)
                self._count.pop(p, None)
        return len(gone)

    def waiting(self) -> int:
        with self._lock:
            return len(self._arrived)

    def expire(self, older_than: float, now: Optional[float] = None) -> int:
        """Delete the uploads that arrived more than ``older_than`` seconds ago and were never analysed; returns
        how many were deleted."""
        now = time.monotonic() if now is None else now
        with self._lock:
            old = [p for p, t in self._arrived.items() if now - t > older_than]
            for p in old:
                del self._arrived[p]
                self._count.pop(p, None)
        return _remove(old)

    def remove_all(self) -> int:
        """Delete every upload still waiting; returns how many were deleted."""
        with self._lock:
            paths, self._arrived, self._count = list(self._arrived), {}, {}
        return _remove(paths)


def _remove(paths: Sequence[str]) -> int:
    """Delete uploads, each with its own folder; returns how many were deleted (not those already gone)."""
    return sum(remove_cached_file(p) for p in paths)


def expire_every(stored: StoredUploads, older_than: float, every: float) -> threading.Event:
    """Run :meth:`StoredUploads.expire` every ``every`` seconds in a daemon thread; set the returned event to
    stop it."""
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(every):
            removed = stored.expire(older_than)
            if removed:
                _logger.info("%d upload(s) never analysed within %.0f s removed", removed, older_than)

    threading.Thread(target=loop, name="cxr-upload-expiry", daemon=True).start()
    return stop


class UploadGuard:
    """ASGI middleware bounding what Gradio's upload route stores (see the module's docstring).

    Args:
        app: the ASGI app (Gradio's).
        cache_dir: Gradio's cache folder (``GRADIO_TEMP_DIR``).
        cache_bytes: most bytes the cache may hold, this request included.
        max_request_bytes: most bytes one upload request may carry.
        suffixes: file name endings kept (lower case, with the dot).
        stored: where the files let through are recorded (for :meth:`StoredUploads.remove_all` at shutdown).
    """

    def __init__(
        self,
        app,
        cache_dir: Path,
        cache_bytes: int,
        max_request_bytes: int,
        suffixes: Sequence[str],
        stored: Optional[StoredUploads] = None,
    ) -> None:
        self.app = app
        self.stored = stored
        self.cache_dir = Path(cache_dir)
        self.cache_cap = cache_bytes
        self.max_request_bytes = max_request_bytes
        self.suffixes = tuple(s.lower() for s in suffixes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not is_upload_request(scope):
            await self.app(scope, receive, send)
            return
        if self.stored is not None:  # an upload of a film whose earlier copy the sweep removed starts a new count
            self.stored.forget_missing()
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        try:
            length = int(headers["content-length"])
        except (KeyError, ValueError):
            await _refuse(send, 411, "An upload must say its length (Content-Length).")
            return
        if length > self.max_request_bytes:
            limit = self.max_request_bytes / 2**20
            await _refuse(send, 413, f"An upload may carry at most {limit:.0f} MB: one chest X-ray.")
            return
        if cache_bytes(self.cache_dir) + length > self.cache_cap:
            _logger.warning("upload refused: the upload space (%d MB) is full", self.cache_cap >> 20)
            await _refuse(send, 507, "The server's upload space is full; please try again in a few minutes.")
            return
        await self._stored(scope, receive, send)

    async def _stored(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Let Gradio store the upload; delete at once what the app does not analyse, and say so."""
        start: List[Message] = []
        body: List[bytes] = []

        async def held(message: Message) -> None:
            if message["type"] == "http.response.start":
                start.append(message)
            elif message["type"] == "http.response.body":
                body.append(message.get("body", b""))
                if not message.get("more_body", False):
                    await self._answer(send, start[0], b"".join(body))

        await self.app(scope, receive, held)

    async def _answer(self, send: Send, start: Message, body: bytes) -> None:
        paths = stored_upload_paths(start["status"], body)
        refused = [p for p in paths if not p.lower().endswith(self.suffixes)]
        if refused:
            _remove(paths)  # the whole request: the page sends one file
            kinds = ", ".join(s.lstrip(".").upper() for s in self.suffixes)
            await _refuse(send, 415, f"The app analyses only chest X-rays as {kinds} files; nothing was kept.")
            return
        if self.stored is not None:
            self.stored.add(paths)
        await send(start)
        await send({"type": "http.response.body", "body": body})


async def _refuse(send: Send, status: int, detail: str) -> None:
    payload = json.dumps({"detail": detail}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": payload})
