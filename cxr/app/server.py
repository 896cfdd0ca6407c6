"""Serving the page: the files the app may hold on the server, and the launch with its limits.

:class:`AppFiles` gives the app a Gradio cache folder of its own (a fresh folder under ``GRADIO_TEMP_DIR``, or
the system's temp folder), records the uploads the upload route lets through, deletes those no request analyses
within ``upload_wait`` seconds, and removes the whole folder when the app stops — uploads, heat maps sent,
copies of examples, whatever Gradio wrote there. :func:`launch` starts Gradio with the upload route's guard
(:class:`~cxr.app.upload_guard.UploadGuard`) and the server-wide limits, SIGTERM stopping it as Ctrl-C does, and
hands the heap's kept free memory back every 10 seconds while it serves.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import signal
import tempfile
import threading
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

from cxr.app.gradio_internals import gradio_cache_root, restore_gradio_cache, use_gradio_cache
from cxr.app.upload_guard import StoredUploads, UploadGuard, expire_every
from cxr.data.decode import MAX_FILE_BYTES, UPLOAD_SUFFIXES

__all__ = ["AppFiles", "ServerLimits", "launch", "launch_options", "UPLOAD_WAIT_SECONDS"]

_logger = logging.getLogger(__name__)

#: ``app.py --upload-wait``: seconds an upload may wait on the server to be analysed before it is deleted.
UPLOAD_WAIT_SECONDS = 120


class AppFiles:
    """The app's own Gradio cache folder and the uploads waiting in it, for the life of a ``with`` block.

    Entering creates the folder and names it in ``GRADIO_TEMP_DIR`` (Gradio reads it when a page is built, when
    it is launched and on every request: build and serve the page inside the block,
    :func:`~cxr.app.gradio_internals.use_gradio_cache`); leaving deletes the uploads never analysed and the folder.
    """

    def __init__(self, upload_wait: float = UPLOAD_WAIT_SECONDS) -> None:
        self.upload_wait = upload_wait
        self.uploads = StoredUploads()
        self.cache: Optional[Path] = None
        self._stop: Optional[threading.Event] = None
        self._env: Optional[str] = None

    def __enter__(self) -> "AppFiles":
        base = gradio_cache_root()
        base.mkdir(parents=True, exist_ok=True)
        self.cache = Path(tempfile.mkdtemp(prefix="cxr-app-", dir=base)).resolve()
        self._env = use_gradio_cache(self.cache)
        self._stop = expire_every(self.uploads, self.upload_wait, every=min(30.0, max(1.0, self.upload_wait / 4)))
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        removed = self.uploads.remove_all()
        shutil.rmtree(self.cache, ignore_errors=True)
        restore_gradio_cache(self._env)
        _logger.info("stopped: %d stored uploads removed, the app's cache folder %s deleted", removed, self.cache)


@dataclasses.dataclass(frozen=True)
class ServerLimits:
    """What one visitor, or all of them, may make the server hold (``app.py``'s flags)."""

    max_sessions: int
    upload_space_mb: int
    monitoring: bool = False


def _stop_on_sigterm() -> None:
    """Make SIGTERM (a Space or a container stopping the app) stop it as Ctrl-C does, so clean-up runs."""

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, interrupt)


def launch_options(
    files: AppFiles,
    limits: ServerLimits,
    *,
    host: str,
    port: int,
    share: bool = False,
    allowed_paths: Sequence[str] = (),
) -> Dict[str, Any]:
    """The keyword arguments of ``gr.Blocks.launch`` that serve the app (:func:`launch`): the upload route's guard
    (it records each upload in ``files.uploads``) and the server-wide limits.

    ``allowed_paths``: the files outside the cache Gradio may hand out (the example films). The upload guard goes
    in front of every route as middleware of Gradio's FastAPI app (``app_kwargs``; see
    :mod:`cxr.app.gradio_internals`).
    """
    from starlette.middleware import Middleware  # Gradio's server stack loads only when the app is served

    guard = Middleware(
        UploadGuard,
        cache_dir=files.cache,
        cache_bytes=limits.upload_space_mb << 20,
        max_request_bytes=MAX_FILE_BYTES + (1 << 20),  # one file and its multipart envelope
        suffixes=UPLOAD_SUFFIXES,
        stored=files.uploads,
    )
    # Gradio refuses a larger upload while it arrives, before storing it (cxr's decoder would refuse it later)
    return {
        "server_name": host,
        "server_port": port,
        "share": share,
        "show_error": True,
        "max_file_size": MAX_FILE_BYTES,
        "state_session_capacity": limits.max_sessions,
        "enable_monitoring": limits.monitoring,
        "app_kwargs": {"middleware": [guard]},
        "allowed_paths": list(allowed_paths),
    }


def launch(
    demo: Any,
    files: AppFiles,
    limits: ServerLimits,
    *,
    host: str,
    port: int,
    share: bool = False,
    allowed_paths: Sequence[str] = (),
) -> None:
    """Serve ``demo`` (a queued ``gr.Blocks`` built inside ``files``) until stopped (Ctrl-C or SIGTERM), with
    :func:`launch_options` (as every program, through :func:`cxr.commands.common.run_cli`, the server hands its
    heap's free memory back every :data:`cxr.allocator.RELEASE_EVERY_S` seconds)."""
    _stop_on_sigterm()
    demo.launch(**launch_options(files, limits, host=host, port=port, share=share, allowed_paths=allowed_paths))
