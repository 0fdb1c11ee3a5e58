"""Logging set-up in the style of Kubernetes components (klog): level letter, time, source, message
with key=value. Every vsop process sets it up: the agents, the controller, the commands with -v.
Owns `kv`, the shape of such a line (`"Turn failed, will retry" error="..." failedTurns=3`), which
the node loop and the kube side both write, and SIGUSR1: every thread's Python stack written to
stderr (the log), as Go programs do on SIGQUIT, to see what a process that will not stop is doing."""

from __future__ import annotations

import faulthandler
import json
import logging
import signal
import sys
from typing import Any


def kv(message: str, /, **fields: Any) -> str:
    """A structured log line: the message quoted, then key=value pairs (strings quoted)."""
    parts = [json.dumps(message)]
    for key, value in fields.items():
        if value is None:
            continue
        if isinstance(value, float):
            text = f"{value:.3f}"
        elif isinstance(value, (int, bool)):
            text = str(value).lower() if isinstance(value, bool) else str(value)
        else:
            text = json.dumps(str(value))
        parts.append(f"{key}={text}")
    return " ".join(parts)


class KlogFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        stamp = self.formatTime(record, "%m%d %H:%M:%S") + f".{int(record.created % 1 * 1_000_000):06d}"
        text = f"{record.levelname[0]}{stamp} {record.process} {record.name}] {record.getMessage()}"
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


def setup_logging(verbose: bool = False) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(KlogFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    for noisy in ("pyroute2", "asyncio", "kubernetes", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # `kill -USR1 <pid>`: the stacks of every thread, in the log, and the process goes on. Only where
    # stderr is a file descriptor (faulthandler writes to it from the signal handler); never fatal.
    try:
        faulthandler.register(signal.SIGUSR1, file=sys.stderr, all_threads=True)
    except (OSError, ValueError, RuntimeError, AttributeError) as exc:
        logging.getLogger("vsop").debug("SIGUSR1 writes no stacks: stderr is not a file descriptor error=%r", str(exc))
