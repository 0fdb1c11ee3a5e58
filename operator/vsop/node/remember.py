"""The agent's memory across restarts: one JSON file of health verdicts and draining clocks.

Owns reading and writing `/run/vsop/state.json` (`--state-file`): written atomically (temp
file, fsync, rename; mode 0600, root's folder) and only when its content changed, so a
quiet node writes nothing; read once at start. A missing file is an empty memory; an
unreadable or malformed one is logged and ignored, never fatal: the checks then start
from "in service" as they always did.
Must not import: kopf, kubernetes, pyroute2, vsop.host, vsop.kube, vsop.cli.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from pathlib import Path
from typing import Mapping

from vsop.core.health import Health
from vsop.core.remembered import Remembered, decode, draining_on_the_wall, draining_on_this_clock, encode
from vsop.core.state import RealServerKey

log = logging.getLogger("vsop.node.remember")

DEFAULT_STATE_FILE = Path("/run/vsop/state.json")


class RememberFile:
    def __init__(self, path: str | os.PathLike[str] = DEFAULT_STATE_FILE):
        self.path = Path(path)
        self._written: str | None = None
        self.writes = 0

    def load(self, wall_now: float, monotonic_now: float) -> Remembered:
        """What the last agent remembered, draining clocks moved onto this process's monotonic clock."""
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return Remembered()
        except (OSError, UnicodeDecodeError) as exc:
            log.warning("cannot read the agent's state; health starts from in service file=%s reason=%s", self.path, exc)
            return Remembered()
        try:
            document = json.loads(text)
        except ValueError as exc:
            log.warning("the agent's state is not JSON; health starts from in service file=%s reason=%s", self.path, exc)
            return Remembered(skipped=1)
        remembered = decode(document)
        if remembered.skipped:
            log.warning("skipped unreadable records of the agent's state file=%s skipped=%d", self.path, remembered.skipped)
        remembered.draining_since = draining_on_this_clock(remembered.draining_since, wall_now, monotonic_now)
        self._written = text
        return remembered

    def save(
        self, health: Mapping[RealServerKey, Health], draining_since: Mapping[RealServerKey, float], wall_now: float, monotonic_now: float
    ) -> bool:
        """Keep the current verdicts and drains; True when the file was written (it changed)."""
        wall = draining_on_the_wall(draining_since, wall_now, monotonic_now)
        # Whole seconds: a drain's start moves by rounding only, and an unchanged node writes nothing.
        text = json.dumps(encode(health, {key: float(round(since)) for key, since in wall.items()}), sort_keys=True) + "\n"
        if text == self._written:
            return False
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        temporary = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        try:
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(text)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, self.path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                temporary.unlink()
            log.warning("cannot keep the agent's state; a restart would forget health verdicts file=%s reason=%s", self.path, exc)
            return False
        self._written = text
        self.writes += 1
        return True
