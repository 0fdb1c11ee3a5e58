"""Errors a user can cause, and how they are worded.

Owns `FieldError` (file, line, object, field path, reason) and `InvalidInput`, which
the command line turns into exit code 2, and `printable`: the one escaping of
echoed text (control characters, lengths). Must not import other vsop modules.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass, replace
from typing import Any, Iterable

# How much of one part of a message is echoed: a megabyte-long key is named, not printed.
ECHO_LIMIT = 200


def printable(text: str, limit: int | None = ECHO_LIMIT) -> str:
    """Text safe to print to a terminal or a log, in one notation everywhere (text and JSON).

    Control and format characters (an escape sequence that retitles or clears a terminal,
    NUL, a right-to-left override) and lone surrogates (bytes that were not UTF-8 in a file
    name) are written as \\xNN / \\uNNNN; past `limit` characters the text is cut and its
    length said.
    """
    cut = limit is not None and len(text) > limit
    shown = text[:limit] if cut else text
    if not shown.isprintable():
        shown = "".join(_escape(ch) for ch in shown)
    return f"{shown}... ({len(text)} characters)" if cut else shown


def _escape(ch: str) -> str:
    if ch.isprintable() or ch == " ":
        return ch
    code = ord(ch)
    if code < 0x100 and unicodedata.category(ch) == "Cc":
        return f"\\x{code:02x}"
    if unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"):
        return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"
    return ch


@dataclass(frozen=True)
class FieldError:
    reason: str
    path: str = ""
    obj: str | None = None
    file: str | None = None
    line: int | None = None
    loc: tuple[Any, ...] = ()  # pydantic's raw location, used to find the YAML line
    kind: str = "VirtualService"  # what `obj` names: VirtualService, or VipPool (vsop.api.pools)

    def __str__(self) -> str:
        where = ""
        if self.file:
            file = printable(self.file, None)
            where = f"{file}:{self.line}: " if self.line else f"{file}: "
        obj = f"{self.kind} {printable(self.obj)}: " if self.obj else ""
        path = f"{printable(self.path)}: " if self.path else ""
        return f"{where}{obj}{path}{printable(self.reason, 4 * ECHO_LIMIT)}"

    def at(self, **changes: Any) -> "FieldError":
        return replace(self, **changes)

    def to_json(self) -> dict[str, Any]:
        """The error as `-o json` prints it: each part on its own, and the one-line message."""
        return {
            "file": printable(self.file, None) if self.file else self.file,
            "line": self.line,
            "object": printable(self.obj) if self.obj else self.obj,
            "field": printable(self.path) if self.path else None,
            "reason": printable(self.reason, 4 * ECHO_LIMIT),
            "message": str(self),
        }


class InvalidInput(Exception):
    """Input that vsop refuses; nothing has been changed when this is raised."""

    def __init__(self, errors: Iterable[FieldError]):
        self.errors = list(errors)
        super().__init__("\n".join(str(e) for e in self.errors))


class KernelUnsupported(Exception):
    """The running kernel lacks something vsop needs (exit code 1, no writes)."""
