"""Which VRRP state this node's keepalived is in, per instance: its notify FIFO, read by the agent.

keepalived writes one line per transition to `vrrp_notify_fifo` (global_defs), e.g.
`INSTANCE "vsop_eth0_61" MASTER 250`; no script runs. The agent creates the FIFO, holds it open
for reading and writing (so that keepalived closing it on a reload or a restart is no end of
file) and reads the lines in a daemon thread; `states()` is the last state of each instance
(`master`, `backup`, `fault`, `stop`). An instance never heard of is not in it.

A keepalived that dies without a goodbye (SIGKILL, OOM killer, a crash) writes no `STOP` line:
the agent, finding its pidfile's process gone, calls `forget` and every instance becomes `stop`
until the next keepalived says otherwise (it notifies each instance's first state as it starts).
Must not import: kopf, kubernetes, pyroute2, socket, subprocess, vsop.adapters, vsop.cli.
"""

from __future__ import annotations

import logging
import os
import re
import stat
import threading
from pathlib import Path
from typing import Callable

log = logging.getLogger("vsop.keepalived")

DEFAULT_FIFO = Path("/run/vsop/vrrp/notify.fifo")
_LINE = re.compile(r'^INSTANCE "?([^" ]+)"? (MASTER|BACKUP|FAULT|STOP|DELETED)\b')


def parse(line: str) -> tuple[str, str] | None:
    """(instance, state) of one FIFO line about a VRRP instance; None for any other line (groups, checkers)."""
    found = _LINE.match(line.strip())
    if found is None:
        return None
    return found.group(1), found.group(2).lower()


class NotifyFifo:
    """The reader of keepalived's VRRP notify FIFO; `on_change(instance, state)` after each transition."""

    def __init__(self, path: Path = DEFAULT_FIFO, on_change: Callable[[str, str], None] | None = None):
        self.path = path
        self.on_change = on_change
        self._states: dict[str, str] = {}
        self.lines = 0  # instance lines read so far: `forget` leaves alone what came after its caller looked
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.error = ""

    def start(self) -> bool:
        """Create the FIFO if missing and start reading it; False (and `error`) when that is impossible."""
        if self._thread is not None:
            return True
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            try:
                mode = os.lstat(self.path).st_mode
            except FileNotFoundError:
                os.mkfifo(self.path, 0o600)
            else:
                if not stat.S_ISFIFO(mode):
                    raise OSError(f"{self.path} exists and is not a FIFO; not used")
            fd = os.open(self.path, os.O_RDWR | os.O_CLOEXEC)
        except OSError as exc:
            self.error = str(exc)
            log.error("keepalived notify FIFO not read fifo=%s error=%r", self.path, self.error)
            return False
        self._thread = threading.Thread(target=self._read, args=(fd,), name="vsop-vrrp-notify", daemon=True)
        self._thread.start()
        return True

    def states(self) -> dict[str, str]:
        with self._lock:
            return dict(self._states)

    def feed(self, line: str) -> None:
        """One line as keepalived writes it (the reading thread calls this; tests too)."""
        parsed = parse(line)
        if parsed is None:
            return
        instance, state = parsed
        with self._lock:
            self.lines += 1
            before = self._states.get(instance)
            self._states[instance] = state
        if before != state:
            log.info("VRRP instance changed state instance=%s state=%s before=%s", instance, state, before or "unknown")
            if self.on_change is not None:
                self.on_change(instance, state)

    def forget(self, seen: int) -> bool:
        """keepalived is gone (its pidfile's process is not running): every instance it told of is
        `stop`, unless a line came after `seen` (the `lines` the caller read before finding it gone: a
        keepalived started meanwhile said it). Returns whether the states were forgotten."""
        with self._lock:
            if self.lines != seen:
                return False
            changed = sorted(instance for instance, state in self._states.items() if state != "stop")
            self._states = dict.fromkeys(self._states, "stop")
        if changed:
            log.warning("keepalived is not running: its VRRP instances no longer announce instances=%s", ",".join(changed))
        return True

    def _read(self, fd: int) -> None:
        with os.fdopen(fd, "r", encoding="utf-8", errors="replace") as handle:
            for line in handle:
                self.feed(line)
