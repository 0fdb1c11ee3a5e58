"""The one writer lock of a host: `flock` on /run/vsop/lock.

Owns serialising every writer of the kernel or the host store: `vsop apply`,
`delete`, `cleanup`, and the host agent during each of its syncs. A second writer
waits a bounded time (reporting once that it waits, and for whom), then gives up
naming the holder's pid and command line (exit 1 at the command line). Readers
(`show`, `get`, `plan`, `explain`) never take it.

flock, not a pid file: the kernel drops the lock when its holder dies, however it
dies, so a crashed writer never leaves the host locked. The holder writes its pid
and command line into the file once it holds it, for the next writer's message.

Root only: flock needs no write access, so a lock any user can open is a lock any user
can hold (`flock -x /run/vsop/lock sleep 300` as nobody froze every writer). The file is
0600 and its folder is created 0700; vsop's own /run/vsop, and a lock file an older vsop
left, are tightened when found looser. Other folders named by --lock / $VSOP_LOCK are
left as they are (they may be shared, like /tmp).
Must not import: kopf, pyroute2, kubernetes.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sys
import time
from pathlib import Path
from typing import Callable, Iterator

DEFAULT_LOCK = Path("/run/vsop/lock")
ENV_LOCK = "VSOP_LOCK"
DEFAULT_WAIT_SECONDS = 10.0
FOLDER_MODE = 0o700
LOCK_MODE = 0o600


class LockTimeout(Exception):
    """Another writer held the lock for longer than we were willing to wait."""


def lock_path(given: str | os.PathLike[str] | None = None) -> Path:
    if given:
        return Path(given)
    return Path(os.environ.get(ENV_LOCK) or DEFAULT_LOCK)


def stamp(path: Path | None) -> int | None:
    """When the lock file last changed: every holder rewrites it when it takes and leaves it.

    A writer that sees another stamp than after its own last release knows another writer
    (`vsop apply`, `delete`) held the lock meanwhile, and reads the kernel again."""
    if path is None:
        return None
    try:
        return os.stat(path).st_mtime_ns
    except OSError:
        return -1


def holder(path: Path) -> str:
    """'pid N (command line)' of the process that last took the lock, as it wrote it."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        return "an unknown process"
    pid, _, cmdline = text.partition(" ")
    if not pid.isdigit():
        return "an unknown process"
    try:
        # The live command line, when the pid is still there; what it wrote otherwise.
        live = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        cmdline = live or cmdline
    except OSError:
        pass
    return f"pid {pid} ({cmdline})"


def private_folder(folder: Path) -> None:
    """The lock's folder, created root-only; vsop's own (/run/vsop) tightened when found looser."""
    folder.mkdir(mode=FOLDER_MODE, parents=True, exist_ok=True)
    if folder == DEFAULT_LOCK.parent:
        info = os.stat(folder)
        if info.st_mode & 0o077 and info.st_uid == os.geteuid():
            os.chmod(folder, FOLDER_MODE)


def _own_cmdline() -> str:
    try:
        return Path("/proc/self/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return " ".join(sys.argv)


@contextlib.contextmanager
def writer_lock(
    path: Path | None = None,
    wait_seconds: float = DEFAULT_WAIT_SECONDS,
    on_wait: Callable[[str], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> Iterator[float]:
    """Hold the writer lock for the block; yields how long we waited for it.

    Raises LockTimeout (naming the holder) after `wait_seconds`. `on_wait` is told
    once, with the holder, when the lock is busy at the first try.
    """
    path = path or lock_path()
    private_folder(path.parent)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, LOCK_MODE)
    started = clock()
    try:
        info = os.fstat(fd)
        if info.st_mode & 0o077 and info.st_uid == os.geteuid():
            os.fchmod(fd, LOCK_MODE)  # left 0644 by an older vsop
        told = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                who = holder(path)
                if not told and on_wait is not None:
                    on_wait(who)
                    told = True
                if clock() - started >= wait_seconds:
                    raise LockTimeout(
                        f"another vsop writer holds {path}: {who}; gave up after waiting {wait_seconds:g}s"
                        " (wait longer with --wait SECONDS, or stop that writer)"
                    ) from None
                sleep(0.05)
        waited = clock() - started
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {_own_cmdline()}\n".encode(), 0)
        try:
            yield waited
        finally:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
