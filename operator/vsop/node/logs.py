"""Logging set-up in the style of Kubernetes components (klog): level letter, time, source, message
with key=value. Every vsop process sets it up: the agents, the controller, the commands with -v."""

from __future__ import annotations

import logging
import sys


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
