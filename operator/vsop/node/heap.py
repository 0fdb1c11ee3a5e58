"""Handing the C heap's free memory back to the kernel after a big burst of work.

A full sync of a node with 10,000 services builds and drops tens of MB (the kernel's
whole state as read, the desired state, the plan). glibc keeps what was freed inside its
heap for reuse and returns only the top of it on its own, so an agent's resident size
stays at the burst's high-water mark between resyncs. `malloc_trim(0)` releases every
free page in the heap (MADV_DONTNEED), a few ms at that size. Objects Python keeps
(its own small-object arenas are returned when empty) are not affected.
Owns nothing but that call; a libc without it (musl) makes it a no-op.
Must not import: kopf, kubernetes, pyroute2, asyncio.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from typing import Callable

_trim: Callable[[int], int] | None = None
_looked = False


def _malloc_trim() -> Callable[[int], int] | None:
    global _trim, _looked
    if not _looked:
        _looked = True
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            function = libc.malloc_trim
        except (OSError, AttributeError):  # not glibc
            return None
        function.argtypes, function.restype = [ctypes.c_size_t], ctypes.c_int
        _trim = function
    return _trim


def trim() -> bool:
    """Return the heap's free pages to the kernel; True when glibc released some."""
    function = _malloc_trim()
    return bool(function(0)) if function is not None else False
