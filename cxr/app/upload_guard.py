"""The upload route's guard: what anyone may store on the server through Gradio's ``/upload``.

Gradio stores whatever is posted to its upload route — any file type, up to ``max_file_size`` each, any number
per request — and serves it back until its cache sweep. :class:`UploadGuard` is an ASGI middleware in front of
that route:

- a request must say its length (``Content-Length``) and be at most one upload's worth (``max_request_bytes``:
  one file of the decoder's limit, the app's upload box takes one);
- it is refused while the files already held in Gradio's cache, plus this request, would pass ``cache_bytes``;
- a stored file whose name does not end in one of ``suffixes`` (the types the app analyses) is deleted at once
  and the request answered with an error;
- the files let through are recorded in :class:`StoredUploads`, which deletes each once analysed, those no
  request analyses within the app's wait (:func:`expire_every`) and those left when the app stops; Gradio's cache
  sweep never deletes an upload.

Every refusal is an HTTP error whose ``detail`` is one sentence; the app keeps serving. No Gradio import here:
the route's path, its answer and the cache's layout are :mod:`cxr.app.gradio_internals`' to know.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any, Awaitable, Callable, Dict, Iterator, List, Optional, Sequence, Set

from cxr.app.gradio_internals import (
    forget_deleted_upload,
    is_upload_request,
    remove_cached_file,
    spare_from_sweep,
    stored_upload_paths,
)

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


@dataclasses.dataclass
class _Upload:
    arrived: float  # its latest arrival (time.monotonic())
    pending: int = 0  # arrivals no request has claimed yet
    holding: int = 0  # requests analysing it now
    names: Set[str] = dataclasses.field(default_factory=set)  # the path as the upload route spelled it


class StoredUploads:
    """Every file the upload route stored and the app has not deleted yet: the one record of uploads, and the one
    place that deletes them.

    An upload is deleted once the requests that analysed it have ended and no other arrival of it waits
    (:meth:`claim`, :meth:`release`), once it has waited ``--upload-wait`` seconds without a request
    (:meth:`expire`), and when the app stops (:meth:`remove_all`). Gradio's cache sweep never deletes one
    (:meth:`attach`): its age is for the heat maps and copies of examples the app sends, and never cuts an
    upload's wait short.

    Gradio stores the same bytes under the same name at the same path, so two visitors who send the same film share
    one file: each arrival is counted, and the file stays while an arrival of it is :meth:`pending` or a request
    holds it. Gradio makes the file's folder and renames the file into it before the guard records it
    (:meth:`storing`); a deletion then could take the file, or its folder, from under a visitor sending that film
    again. So nothing is deleted while an upload is being stored: a deletion due then is done when none is. One
    lock owner; every deletion happens under the lock.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._files: Dict[str, _Upload] = {}
        self._storing = 0
        self._blocks: Any = None

    def attach(self, blocks: Any) -> None:
        """Serve the uploads of ``blocks`` (the ``gr.Blocks``): its cache sweep never deletes one recorded here,
        and forgets each once deleted (:func:`~cxr.app.gradio_internals.spare_from_sweep`)."""
        self._blocks = blocks

    @contextlib.contextmanager
    def storing(self) -> Iterator[None]:
        """Around Gradio storing an upload until it is :meth:`add` ed (the guard): no upload is deleted meanwhile."""
        with self._lock:
            self._storing += 1
        try:
            yield
        finally:
            with self._lock:
                self._storing -= 1
                self._delete_idle()

    def add(self, paths: Sequence[str], now: Optional[float] = None) -> None:
        """Record an arrival of each of ``paths`` (the upload route stored them)."""
        now = time.monotonic() if now is None else now
        with self._lock:
            for p in paths:
                upload = self._files.setdefault(os.path.realpath(p), _Upload(now))
                upload.arrived, upload.pending = now, upload.pending + 1
                upload.names.add(p)
                if self._blocks is not None:  # the route records every arrival for the sweep anew
                    spare_from_sweep(self._blocks, p)

    def refuse(self, paths: Sequence[str]) -> None:
        """Delete what a refused request stored (the guard) — as soon as no upload is being stored, and never
        another visitor's upload that happens to be the same file."""
        with self._lock:
            for p in paths:
                self._files.setdefault(os.path.realpath(p), _Upload(time.monotonic(), names={p}))
            self._delete_idle()

    def claim(self, path: str) -> None:
        """A request analyses ``path`` now: one arrival of it no longer waits, and the file stays until the request
        :meth:`release` s it. A path that is not a recorded upload (an example's copy, a file already deleted) is
        left alone."""
        with self._lock:
            upload = self._files.get(os.path.realpath(path))
            if upload is not None:
                upload.pending, upload.holding = max(0, upload.pending - 1), upload.holding + 1

    def release(self, path: str) -> None:
        """The request that claimed ``path`` ended: delete the file once no request holds it and no arrival of it
        waits — now, or as soon as no upload is being stored."""
        with self._lock:
            upload = self._files.get(os.path.realpath(path))
            if upload is not None and upload.holding > 0:
                upload.holding -= 1
                self._delete_idle()

    def pending(self, path: str) -> int:
        """Arrivals of ``path`` that no request has claimed yet."""
        with self._lock:
            upload = self._files.get(os.path.realpath(path))
            return 0 if upload is None else upload.pending

    def waiting(self) -> int:
        """Files with an arrival no request has claimed yet."""
        with self._lock:
            return sum(u.pending > 0 for u in self._files.values())

    def expire(self, older_than: float, now: Optional[float] = None) -> int:
        """Delete the uploads never analysed whose latest arrival is more than ``older_than`` seconds ago — now, or
        as soon as no upload is being stored; returns how many."""
        now = time.monotonic() if now is None else now
        with self._lock:
            old = [u for u in self._files.values() if u.pending and not u.holding and now - u.arrived > older_than]
            for upload in old:
                upload.pending = 0  # waited too long: no arrival of it is to be analysed any more
            self._delete_idle()
            return len(old)

    def remove_all(self) -> int:
        """Delete every upload still recorded (the app stops); returns how many files were deleted."""
        with self._lock:
            return sum(self._delete(p) for p in list(self._files))

    def _delete_idle(self) -> None:
        """Delete the uploads no request holds and no arrival waits for, unless one is being stored; lock held."""
        if not self._storing:
            for p in [p for p, u in self._files.items() if not u.holding and not u.pending]:
                self._delete(p)

    def _delete(self, key: str) -> bool:
        upload = self._files.pop(key)
        if self._blocks is not None:
            for name in upload.names | {key}:
                forget_deleted_upload(self._blocks, name)
        return remove_cached_file(key)


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
        stored: where the files let through are recorded; it deletes them (:class:`StoredUploads`).
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
        """Let Gradio store the upload; record it, or delete what the app does not analyse and say so. From the
        request's last byte until the upload is recorded, no upload is deleted (:meth:`StoredUploads.storing`):
        Gradio makes the file's folder and moves the file in meanwhile. Gradio's answer is held and sent once the
        upload is recorded — or a refused one deleted, unless another upload is being stored then."""
        start: List[Message] = []
        body: List[bytes] = []
        entered = False

        async def held(message: Message) -> None:
            if message["type"] == "http.response.start":
                start.append(message)
            elif message["type"] == "http.response.body":
                body.append(message.get("body", b""))

        with contextlib.ExitStack() as storing:

            async def read() -> Message:
                nonlocal entered
                message = await receive()
                last = message["type"] == "http.request" and not message.get("more_body", False)
                if last and self.stored is not None and not entered:
                    storing.enter_context(self.stored.storing())
                    entered = True
                return message

            await self.app(scope, read, held)
            paths = stored_upload_paths(start[0]["status"], b"".join(body))
            refused = any(not p.lower().endswith(self.suffixes) for p in paths)
            if self.stored is None:
                if refused:
                    for p in paths:
                        remove_cached_file(p)
            elif refused:  # the whole request: the page sends one file
                self.stored.refuse(paths)
            else:
                self.stored.add(paths)
        if refused:
            kinds = ", ".join(s.lstrip(".").upper() for s in self.suffixes)
            await _refuse(send, 415, f"The app analyses only chest X-rays as {kinds} files; nothing was kept.")
            return
        await send(start[0])
        await send({"type": "http.response.body", "body": b"".join(body)})


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
