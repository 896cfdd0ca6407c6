"""Every place the app relies on Gradio's internals, each with the Gradio behaviour it relies on.

Gradio's public API does not cover everything the app needs: an upload must never leave a file behind, the
upload route is guarded, and an example's copy is known after the cache sweep removed it. The functions here do
that with what Gradio does underneath, as Gradio 6.31 does it; the rest of the app calls them and touches no
Gradio internal itself. ``tests/test_gradio_internals.py`` has one test per behaviour below, run against the
installed Gradio: after an upgrade, the test that fails names the workaround that no longer holds. On a Gradio
version not in :data:`TESTED_GRADIO_VERSIONS` the app logs one warning line at start
(:func:`warn_if_untested_gradio`).

What the app relies on (Gradio 6.31):

- **The cache folder** (:func:`use_gradio_cache`): Gradio reads ``GRADIO_TEMP_DIR`` (default: the system temp
  folder's ``gradio``) when each ``gr.Blocks`` and component is built (``Block.GRADIO_CACHE``), when the server is
  created at launch (the upload route's folder) and on every request (an input file must lie in it).
- **The upload route** (:func:`is_upload_request`, :func:`stored_upload_paths`): ``POST <root>/gradio_api/upload``
  (multipart, field ``files``) stores each file as ``<cache>/<hash of its bytes>/<name>``, records each path in
  ``Blocks.upload_file_set`` and answers 200 with the JSON list of those paths; a file over ``max_file_size`` is
  refused with 413 while it arrives, before it is stored.
- **Its record** (:func:`spare_from_sweep`, :func:`forget_deleted_upload`): the upload route adds each path it
  stores to ``Blocks.upload_file_set``, and an event's preprocessing adds its input file's path to the component's
  ``temp_files``; only the cache sweep reads them. An input may name any file in the cache
  (:func:`blocks_cache_folder`).
- **The cache's layout** (:func:`remove_cached_file`): every file Gradio stores has a folder of its own under the
  cache, named by a hash of the file's bytes.
- **A file handed out** (:func:`copy_folder_name`): a path an event returns is copied to
  ``<cache>/<hash_file(path)>/<name>`` (``processing_utils.save_file_to_cache``); handing out the same file again
  touches that copy (``os.utime``) instead of copying it, so the sweep ages it from its latest use.
- **A component's preprocess** (:func:`single_file_input`): an event calls ``preprocess`` on the component
  instance, so a function set on the instance replaces the class's; ``gr.File(type="filepath")``'s own creates an
  empty file in the cache on every event (``File._process_single_file``) that the sweep never sees.
- **The cache sweep** (``gr.Blocks(delete_cache=(every, age))``): every ``every`` seconds Gradio deletes the files
  it recorded — the upload route's (``upload_file_set``) and those copied for each component (its
  ``temp_files``) — whose ctime is more than ``age`` seconds ago, and all of them when the server stops; a file it
  did not record is never swept, nor a path in any component's ``keep_in_cache``. So the app deletes its uploads
  itself (:mod:`cxr.app.upload_guard`), keeps them from the sweep, and removes its whole cache folder when it
  stops (:class:`cxr.app.server.AppFiles`).
- **The guard in front of every route**: ``launch(app_kwargs={"middleware": [...]})`` hands the middleware to the
  server's FastAPI app, which runs it before the upload route (:func:`cxr.app.server.launch`).
- **The full queue** (:func:`say_busy_when_full`): ``Blocks.queue()`` makes a new ``Blocks._queue``; each request
  to join it (the page's ``queue/join``, the API's ``call/<name>``, ``gradio_client``) goes through
  ``_queue.push(body=, request=, username=)``, which answers ``(False, detail, "queue_full")`` when ``max_size``
  requests wait; the route then refuses with HTTP 503 and that detail. Gradio's page shows its own sentence for a
  503 ("This application is currently busy. Please try again."), ``gradio_client`` raises ``QueueError("Queue is
  full! Please try again.")``; a plain HTTP client reads the detail, which the app replaces with :data:`BUSY`.
- **An image handed out** (:func:`write_images_whole`): an image an event returns (a heat map, the film as
  analysed, a gallery's items) is encoded and written by ``processing_utils.save_pil_to_cache`` to
  ``<cache>/<hash of its encoded bytes>/image.<format>`` — in place, truncating the file first, and every component
  calls it through that module. Two requests that return the same image (two visitors analysing the same film)
  write the same path, so one visitor's browser could read the file while the other's request truncated and
  rewrote it: half an image, or none. The app writes each under a temporary name and renames it into place, as
  Gradio's own ``save_file_to_cache`` does for files.
- **No** ``gr.skip()`` **in a streamed answer** (not code here: :meth:`cxr.app.handlers.PageHandlers.stream`): it
  is a property update, and Gradio then gives the session its own copy of the component, whose files (a heat map
  sent later) the sweep never sees.

Gradio itself loads only inside the functions that need it (:func:`single_file_input`, :func:`copy_folder_name`),
so the upload guard and the handlers import this module without loading Gradio.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any, List, Mapping, Optional, Tuple, Union

__all__ = [
    "TESTED_GRADIO_VERSIONS",
    "CACHE_ENV",
    "UPLOAD_ROUTE_SUFFIX",
    "installed_gradio_version",
    "warn_if_untested_gradio",
    "gradio_cache_root",
    "use_gradio_cache",
    "restore_gradio_cache",
    "is_upload_request",
    "stored_upload_paths",
    "blocks_cache_folder",
    "spare_from_sweep",
    "forget_deleted_upload",
    "remove_cached_file",
    "copy_folder_name",
    "single_file_input",
    "BUSY",
    "say_busy_when_full",
    "write_images_whole",
]

_logger = logging.getLogger(__name__)

#: The Gradio versions the app's workarounds were tested with (``tests/test_gradio_internals.py``).
TESTED_GRADIO_VERSIONS: Tuple[str, ...] = ("6.31.0",)
#: The environment variable naming Gradio's cache folder.
CACHE_ENV = "GRADIO_TEMP_DIR"
#: How the path of Gradio's upload route ends (``/gradio_api/upload``, under whatever root the app is served at).
UPLOAD_ROUTE_SUFFIX = "/upload"


def installed_gradio_version() -> Optional[str]:
    """The installed Gradio's version (from its package metadata, without importing it); ``None`` when none is."""
    try:
        return metadata.version("gradio")
    except metadata.PackageNotFoundError:
        return None


def warn_if_untested_gradio(version: Optional[str] = None) -> bool:
    """Log one warning line when Gradio ``version`` (default: the installed one) is not one the app was tested
    with; returns whether it warned.

    Why: nothing else says when an upgrade changes a behaviour this module relies on, until a visitor's upload
    stays on the server or the sweep removes a file still in use.
    """
    version = installed_gradio_version() if version is None else version
    if version in TESTED_GRADIO_VERSIONS:
        return False
    tested = ", ".join(TESTED_GRADIO_VERSIONS)
    _logger.warning(
        "Gradio %s is not a version cxr's app was tested with (%s); its workarounds in cxr/app/gradio_internals.py "
        "may not hold.",
        version or "(not installed)",
        tested,
    )
    return True


def gradio_cache_root() -> Path:
    """The folder Gradio caches in now: ``GRADIO_TEMP_DIR``, else the system temp folder's ``gradio`` — what
    ``gradio.utils.get_upload_folder`` says, without loading Gradio."""
    return Path(os.environ.get(CACHE_ENV) or Path(tempfile.gettempdir()) / "gradio")


def use_gradio_cache(folder: Path) -> Optional[str]:
    """Make ``folder`` Gradio's cache folder; returns the setting it replaces, for :func:`restore_gradio_cache`.

    Why: the app's cache is a folder of its own, removed whole when the app stops (the sweep leaves files it did
    not record). Relies on Gradio reading ``GRADIO_TEMP_DIR`` when each ``gr.Blocks`` and component is built, when
    its server is created at launch and on every request: call this before the page is built, and restore the
    setting only once the server has stopped.
    """
    previous = os.environ.get(CACHE_ENV)
    os.environ[CACHE_ENV] = str(folder)
    return previous


def restore_gradio_cache(previous: Optional[str]) -> None:
    """Put back the setting :func:`use_gradio_cache` replaced (``None``: there was none)."""
    if previous is None:
        os.environ.pop(CACHE_ENV, None)
    else:
        os.environ[CACHE_ENV] = previous


def is_upload_request(scope: Mapping[str, Any]) -> bool:
    """Whether an ASGI request is a post to Gradio's upload route.

    Why: the upload guard (:class:`cxr.app.upload_guard.UploadGuard`) stands in front of that route only. Relies on
    the route's path ending in :data:`UPLOAD_ROUTE_SUFFIX` (``/gradio_api/upload``; a trailing slash allowed) and
    taking POST.
    """
    return (
        scope.get("type") == "http"
        and scope.get("method") == "POST"
        and str(scope.get("path", "")).rstrip("/").endswith(UPLOAD_ROUTE_SUFFIX)
    )


def stored_upload_paths(status: int, body: bytes) -> List[str]:
    """The paths of the files Gradio's upload route stored, from its answer (status and body); ``[]`` for an
    answer that is not a success.

    Why: the guard deletes at once a stored file the app does not analyse, and records the others to delete them
    if no request analyses them. Relies on the route answering 200 with the JSON list of the stored files' paths.
    """
    if status != 200:
        return []
    try:
        answer = json.loads(body)
    except (ValueError, TypeError):
        return []
    return [p for p in answer if isinstance(p, str)] if isinstance(answer, list) else []


def blocks_cache_folder(demo: Any) -> Path:
    """The cache folder of ``demo`` (a ``gr.Blocks``), resolved.

    Why: only files in it were stored by Gradio, so only those may be deleted when a request names them. Relies on
    ``Blocks.GRADIO_CACHE``, the folder ``GRADIO_TEMP_DIR`` named when the page was built.
    """
    return Path(demo.GRADIO_CACHE).resolve()


def spare_from_sweep(demo: Any, path: str) -> None:
    """Keep ``path``, an upload just stored, from ``demo``'s cache sweep until :func:`forget_deleted_upload`.

    Why: the app deletes its uploads itself, once analysed or after its own wait (``--upload-wait``,
    :class:`cxr.app.upload_guard.StoredUploads`); the sweep would also delete one by its age, which may be shorter,
    while it still waits to be analysed — from the upload route's record, or from its input component's once a
    request names it. Relies on the upload route adding each path it stores to ``Blocks.upload_file_set`` before it
    answers, on an event's preprocessing adding an input file's path to its component's ``temp_files``
    (``Block.move_resource_to_block_cache``), both swept by age, and on the sweep skipping every path in a
    component's ``keep_in_cache`` (``route_utils.delete_files_created_by_app``).
    """
    demo.upload_file_set.discard(path)
    _spared(demo).add(path)


def forget_deleted_upload(demo: Any, path: str) -> None:
    """Take ``path``, an upload the app deleted, out of every record ``demo``'s sweep reads.

    Why: the sweep skips a recorded file that is gone without forgetting it, so each upload's path would stay in
    its input component's ``temp_files`` for the app's life. Relies on ``Blocks.temp_file_sets`` holding every
    record the sweep reads (the upload route's and each component's), as in :func:`spare_from_sweep`.
    """
    _spared(demo).discard(path)
    for recorded in demo.temp_file_sets:
        recorded.discard(path)


def _spared(demo: Any) -> set:
    """The ``keep_in_cache`` set of ``demo``'s first component: the sweep skips what any component's holds."""
    return next(iter(demo.blocks.values())).keep_in_cache


def remove_cached_file(path: Union[str, os.PathLike]) -> bool:
    """Delete a file Gradio stored and then its folder if that is empty; returns whether the file was deleted.

    Why: an upload is deleted once analysed (or never analysed within the app's wait), folder and all, so nothing
    of it stays. Relies on every file Gradio stores having a folder of its own under the cache, named by a hash of
    its bytes (``<cache>/<hash>/<name>``): the folder is empty once the file is gone, unless the same bytes were
    stored again under another name.
    """
    try:
        os.remove(path)
    except OSError:  # already deleted, or swept
        return False
    with contextlib.suppress(OSError):
        os.rmdir(os.path.dirname(os.path.abspath(path)))
    return True


def copy_folder_name(film: Union[str, os.PathLike]) -> str:
    """The name of the folder Gradio copies ``film`` into when an event hands it out: ``hash_file(film)``.

    Why: a click on an example hands Gradio the film, which copies it into the cache; the sweep removes that copy
    later, and a page that clicked the example before still names the copy. Its folder says which film it was.
    Relies on ``processing_utils.save_file_to_cache`` copying to ``<cache>/<hash_file(film)>/<name>``.
    """
    from gradio.processing_utils import hash_file  # Gradio loads only when a page is built or served

    return hash_file(film)


def single_file_input(**kwargs: Any) -> Any:
    """A ``gr.File`` (one file, as a path) whose events hand the handler the stored upload's path, creating
    nothing; ``kwargs`` go to ``gr.File``.

    Why: ``gr.File(type="filepath")`` also creates an empty file in Gradio's cache on every event it is an input of
    and never removes it (``File._process_single_file``); the cache sweep does not see those files, so a server
    that runs for days would gather one per request. The component keeps its class (the page and the API see a
    ``File``; a subclass would make Gradio write a ``.pyi`` stub beside this module) and gets its own
    ``preprocess``, which refuses a file of another type with a ``gr.Error`` as Gradio's does. Relies on an event
    calling ``preprocess`` on the component instance with the upload's ``FileData``.
    """
    import gradio as gr  # Gradio loads only when a page is built or served
    from gradio_client.utils import is_valid_file

    box = gr.File(file_count="single", type="filepath", **kwargs)

    def preprocess(payload: Any) -> Optional[str]:
        if payload is None:
            return None
        if box.file_types and not is_valid_file(payload.path, box.file_types):
            raise gr.Error(f"Invalid file type: upload one of {', '.join(box.file_types)}")
        return str(payload.path)

    box.preprocess = preprocess
    return box


#: What a request that finds every place in the queue taken is told (HTTP 503).
BUSY = "The app is busy: every place in its queue is taken. Please try again in a minute."


def say_busy_when_full(demo: Any, sentence: str = BUSY) -> None:
    """Refuse a request that finds ``demo``'s queue full (HTTP 503, as Gradio does) with ``sentence`` instead of
    Gradio's "Queue is full. Max size is N and size is N."; call it after ``demo.queue()``, which replaces the queue.
    """
    queue = demo._queue
    push = queue.push

    async def push_or_busy(*args: Any, **kwargs: Any) -> Tuple[bool, Any, str]:
        ok, detail, state = await push(*args, **kwargs)
        return (ok, sentence, state) if state == "queue_full" else (ok, detail, state)

    queue.push = push_or_busy


def write_images_whole() -> bool:
    """Make every image Gradio saves to its cache appear there whole: written under a temporary name in its folder
    and renamed into place, so a reader sees the old file or the new one, never a truncated one. Returns whether
    it replaced Gradio's function (``False``: it had already); call it before the app serves.

    Why: two visitors who analyse the same film get the same heat maps, stored at the same path; Gradio writes
    that path in place, so the first visitor's browser could fetch it half-written while the second's request
    wrote it again (the crowd benchmark's "peer closed connection without sending complete message body").
    Relies on ``processing_utils.save_pil_to_cache(img, cache_dir, name, format)`` being what every component
    and ``save_img_array_to_cache`` call, through the module, to store an image at
    ``<cache_dir>/<hash_bytes(encoded)>/<name>.<format>`` and return that path.
    """
    from gradio import processing_utils  # Gradio loads only when a page is built or served

    if getattr(processing_utils.save_pil_to_cache, "_cxr_whole", False):
        return False

    def save_pil_to_cache(img: Any, cache_dir: str, name: str = "image", format: str = "webp") -> str:
        data = processing_utils.encode_pil_to_bytes(img, format)
        folder = Path(cache_dir) / processing_utils.hash_bytes(data)
        folder.mkdir(exist_ok=True, parents=True)
        target = (folder / f"{name}.{format}").resolve()
        fd, staging = tempfile.mkstemp(dir=folder, prefix=f".{name}.")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            os.chmod(staging, 0o644)  # as write_bytes would have made it
            os.replace(staging, target)
        except BaseException:
            with contextlib.suppress(OSError):
                os.remove(staging)
            raise
        return str(target)

    save_pil_to_cache._cxr_whole = True  # type: ignore[attr-defined]
    save_pil_to_cache._gradio_own = processing_utils.save_pil_to_cache  # type: ignore[attr-defined]
    processing_utils.save_pil_to_cache = save_pil_to_cache
    return True
