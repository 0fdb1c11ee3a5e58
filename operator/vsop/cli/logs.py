"""Logging set-up in the style of Kubernetes components (klog): level letter, time, source, message
with key=value; and what a one-shot command does with log records (`command_logging`)."""

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


def command_logging(verbose: bool) -> None:
    """What a one-shot command does with the log records of the code it runs (the folder reader,
    the executor): the command says what matters itself, once (a bad store file, a conntrack
    entry kept), so the records are shown only with -v, klog-style and escaped. Without any
    handler, Python's last resort would print each warning raw beside the command's own line.
    A process that set up logging already (the tests, the agents) keeps its handlers."""
    from vsop.cli.output import safe

    root = logging.getLogger()
    if root.handlers:
        return
    if not verbose:
        root.addHandler(logging.NullHandler())
        return

    class Escaped(KlogFormatter):
        def format(self, record: logging.LogRecord) -> str:
            return safe(super().format(record))

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(Escaped())
    root.addHandler(handler)
    root.setLevel(logging.INFO)
