"""Keeping the heap of a long-running agent close to what it holds, and its collector off what it keeps.

`tune()`, once at start: blocks of 128 KB and more (the tables of a whole node's state,
a full read's replies) come straight from mmap and go back to the kernel when freed;
glibc would otherwise raise that threshold after the first such free and serve them
from a heap it never shrinks. At most two malloc arenas: each thread that allocates
(the sync thread, the event loop) would otherwise get one of its own, each keeping
its free space. Measured in the VM (bench/agent_rss.py, 10k services): 148 -> 141 MB.

`trim()`: a full sync of a node with 10,000 services builds and drops tens of MB (the kernel's
whole state as read, the desired state, the plan). glibc keeps what was freed inside its
heap for reuse and returns only the top of it on its own, so an agent's resident size
stays at the burst's high-water mark between resyncs. `malloc_trim(0)` releases every
free page in the heap (MADV_DONTNEED), a few ms at that size. Objects Python keeps
(its own small-object arenas are returned when empty) are not affected.
`freeze()`, once the agent's source has been read whole and after each part of its first sync
(vsop.host.agent): what is held then (every declared object as parsed, the modules, the parts'
fragments, cache entries and health targets) lasts as long as the agent, yet each of Python's
full collections walked all of it again. Over a first sync of 10,000 objects in parts those
passes ran about every seven parts and grew with the node (bench/agent_start.py --parts: 0.86 s
of the later parts' 3.1 s natively; none once frozen). Frozen objects are still freed when their
last reference goes; only a cycle among them would be kept for good.
Owns nothing but these calls; a libc without them (musl) makes trim and tune no-ops.
Must not import: kopf, kubernetes, pyroute2, asyncio.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
from typing import Callable

_trim: Callable[[int], int] | None = None
_looked = False
M_MMAP_THRESHOLD, M_ARENA_MAX = -3, -8  # mallopt parameters (malloc.h)
MMAP_THRESHOLD = 128 * 1024  # glibc's initial value, kept fixed
ARENA_MAX = 2


def tune() -> bool:
    """Fix the mmap threshold and cap the arenas (see the module docstring); True when glibc took both."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_ARENA_MAX, ARENA_MAX))


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


def freeze() -> int:
    """Move everything the collector tracks now out of its passes (gc.freeze); returns how many
    objects that is. No collection first: that would be one more full pass over everything (what
    the freeze avoids), for garbage cycles that are kept once, not again and again."""
    gc.freeze()
    return gc.get_freeze_count()
