"""CPU memory allocator settings for cxr's processes: keep freed memory for the next step to reuse.

PyTorch's CPU tensors come from the C library's ``malloc``. With glibc's defaults, large blocks are
mapped fresh and unmapped as soon as they are freed (``mmap``/``munmap`` above a threshold, and the
heap top is trimmed back to the system), so every forward and backward pass page-faults and zeroes
the memory of its activations again; threads other than the main one (the app's request handlers)
allocate from per-thread arenas made of 64 MiB heaps that glibc unmaps as soon as they empty.
:func:`keep_freed_memory` tells glibc to serve every block from the main heap, for every thread, and
to keep what is freed (``mallopt``: ``M_MMAP_MAX`` 0, ``M_ARENA_MAX`` 1, ``M_TRIM_THRESHOLD`` 2 GiB).
What it gains for training, batched evaluation and the app's requests is measured by the ``bench/``
scripts and recorded in ``bench/RESULTS.md``.

The cost: a process's resident memory stays at its peak instead of shrinking between steps or
requests. Where one request needed far more than usual (a very large upload), the decoder calls
:func:`release_freed_memory` once it is done, so the peak is not kept. A loader's worker processes are forked with
the heap's free memory released first (:func:`release_before_workers`), so they do not end up holding copies of
the pages this process goes on reusing, and every program hands its heap's free memory back every
:data:`RELEASE_EVERY_S` seconds while it runs (:func:`release_periodically`, started by
:func:`cxr.commands.common.run_cli`), so that a heap that fragments over thousands of steps or requests does not
grow with them. Every cxr program has the settings from its start: importing :mod:`cxr.commands`
applies it, before a program imports numpy or torch — the arena limit binds only threads that allocate after it, and
an arena made earlier (numpy's import starts a thread) would be shared by later threads, keeping freed memory of its
own. Set ``CXR_KEEP_FREED_MEMORY=0`` to keep the C library's defaults. It does nothing where the C library is
not glibc (macOS, Windows, musl), and GPU memory is not affected.

Example:
    >>> from cxr.allocator import keep_freed_memory
    >>> keep_freed_memory()          # doctest: +SKIP
    True
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os
import platform
import threading
from typing import Any, Optional

__all__ = [
    "ENV_VAR",
    "RELEASE_EVERY_S",
    "keep_freed_memory",
    "release_freed_memory",
    "release_periodically",
    "release_before_workers",
]

_logger = logging.getLogger(__name__)

#: Set to ``0`` to leave the C library's allocator settings alone.
ENV_VAR = "CXR_KEEP_FREED_MEMORY"

#: Seconds between hand-backs of the heap's free memory in a running program (:func:`release_periodically`): the
#: steps or requests in between reuse it without page faults; the first one after a release maps its temporaries
#: afresh.
RELEASE_EVERY_S = 10.0

# mallopt parameter numbers from glibc's <malloc.h>
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8
# mallopt takes a C int: the largest trim threshold it accepts
_TRIM_THRESHOLD = 2**31 - 1

_applied: Optional[bool] = None
# the stop event of the release thread running in this process, if any (:func:`release_periodically`)
_releasing: Optional[threading.Event] = None


def keep_freed_memory(enabled: Optional[bool] = None) -> bool:
    """Make glibc keep freed memory for reuse (once per process; later calls return the first answer).

    Args:
        enabled: ``None`` reads ``$CXR_KEEP_FREED_MEMORY`` (on unless it is ``0``/``false``/``no``).

    Returns:
        ``True`` when the settings are in effect, ``False`` when disabled or not on glibc.
    """
    global _applied
    if _applied is not None:
        return _applied
    if enabled is None:
        enabled = os.environ.get(ENV_VAR, "1").strip().lower() not in ("0", "false", "no", "off")
    _applied = False
    if not enabled:
        _logger.debug("%s=0: keeping the C library's allocator settings", ENV_VAR)
        return _applied
    libc = _glibc()
    if libc is None:
        _logger.debug("not glibc: allocator settings left alone")
        return _applied
    mallopt = libc.mallopt
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # arenas made before this call stay in use (and later threads share them): call it before numpy and torch
    _applied = all(
        mallopt(param, value)
        for param, value in ((_M_MMAP_MAX, 0), (_M_ARENA_MAX, 1), (_M_TRIM_THRESHOLD, _TRIM_THRESHOLD))
    )
    _logger.debug("glibc keeps freed memory for reuse: %s", _applied)
    return _applied


def release_freed_memory() -> bool:
    """Hand the freed memory of the C library's heap back to the system (glibc ``malloc_trim(0)``), so that
    one unusually large request does not stay resident; every free page is released, wherever it lies.

    Returns:
        ``True`` when memory was released, ``False`` where there is nothing to call (not glibc) or nothing
        was freed.
    """
    libc = _glibc()
    if libc is None:
        return False
    trim = libc.malloc_trim
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return bool(trim(0))


def release_periodically(every_s: Optional[float] = None) -> Optional[threading.Event]:
    """Hand the heap's free memory back to the system (:func:`release_freed_memory`) every ``every_s`` seconds,
    from a daemon thread, while this process keeps freed memory — for the whole run of a program.

    Why: a server's requests free memory between allocations that live on (sessions, caches, logs), and a training
    epoch's or scoring pass's batches free their temporaries between small results that are kept, so the kept heap
    fragments, and its free part grows with the requests or the batches while what is in use stays level
    (``bench/app_soak.py``, ``bench/scale.py``). Released every ``every_s`` seconds, the free memory is what that
    interval left; between releases it is reused without page faults.

    Args:
        every_s: seconds between releases (default: :data:`RELEASE_EVERY_S` as it is at the call).

    Returns:
        An event that stops the thread when set, or ``None`` where this process does not keep freed memory
        (nothing to release: the C library returns it itself) or a release thread already runs in it (whoever
        started that one stops it).
    """
    global _releasing
    if not _applied or (_releasing is not None and not _releasing.is_set()):
        return None
    every_s = RELEASE_EVERY_S if every_s is None else every_s
    stop = _releasing = threading.Event()

    def release() -> None:
        while not stop.wait(every_s):
            release_freed_memory()

    threading.Thread(target=release, name="cxr-release-freed-memory", daemon=True).start()
    return stop


def release_before_workers(loader: Any) -> bool:
    """Release the heap's free memory (:func:`release_freed_memory`) before ``loader`` forks its worker processes,
    when it has any and this process keeps freed memory; returns whether it released any.

    Why: a forked worker shares every page of this process, the free ones of the kept heap too. Each time this
    process then writes into one (the next batch's tensors reuse the kept heap), the kernel copies it, and the
    worker is left holding the old page alone: the workers' memory grows, pass after pass, by what this process
    reuses (``bench/scale.py``; the figures are in bench/RESULTS.md, "Scale"). Pages released before the fork
    are not shared; this process maps them again, fresh, once per pass.
    """
    if not _applied or not getattr(loader, "num_workers", 0):
        return False
    return release_freed_memory()


@functools.lru_cache(maxsize=None)
def _glibc() -> Optional[ctypes.CDLL]:
    """The GNU C library with ``mallopt`` and ``malloc_trim``, or ``None`` elsewhere."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt, libc.malloc_trim  # noqa: B018 (both must exist)
    except (OSError, AttributeError):
        return None
    return libc
