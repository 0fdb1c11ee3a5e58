"""Errors a user can cause, and how they are worded.

Owns `FieldError` (file, line, object, field path, reason) and `InvalidInput`, which
the command line turns into exit code 2. Must not import other vsop modules.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Iterable


@dataclass(frozen=True)
class FieldError:
    reason: str
    path: str = ""
    obj: str | None = None
    file: str | None = None
    line: int | None = None
    loc: tuple[Any, ...] = ()  # pydantic's raw location, used to find the YAML line

    def __str__(self) -> str:
        where = ""
        if self.file:
            where = f"{self.file}:{self.line}: " if self.line else f"{self.file}: "
        obj = f"VirtualService {self.obj}: " if self.obj else ""
        path = f"{self.path}: " if self.path else ""
        return f"{where}{obj}{path}{self.reason}"

    def at(self, **changes: Any) -> "FieldError":
        return replace(self, **changes)

    def to_json(self) -> dict[str, Any]:
        """The error as `-o json` prints it: each part on its own, and the one-line message."""
        return {
            "file": self.file,
            "line": self.line,
            "object": self.obj,
            "field": self.path or None,
            "reason": self.reason,
            "message": str(self),
        }


class InvalidInput(Exception):
    """Input that vsop refuses; nothing has been changed when this is raised."""

    def __init__(self, errors: Iterable[FieldError]):
        self.errors = list(errors)
        super().__init__("\n".join(str(e) for e in self.errors))


class KernelUnsupported(Exception):
    """The running kernel lacks something vsop needs (exit code 1, no writes)."""
