"""How every command speaks: its Result printed once, as text or JSON, and the outcomes it did
not plan for (invalid input, runtime failure, a bug) in one voice, as text on stderr or, with
`-o json`, as one JSON object on stdout (so a script reading stdout always gets JSON).

Owns the exit codes, the Result a command returns, and the error object's shape. Must not
import: kopf, pyroute2, kubernetes, subprocess, any other vsop.cli module.
"""

from __future__ import annotations

import argparse
import json
import sys
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable, NoReturn, Sequence, Union

from vsop.api.errors import InvalidInput

EXIT_OK, EXIT_FAILURE, EXIT_INVALID = 0, 1, 2

# A Result's text or document, or the function that makes it: a command computes only the format asked for.
Text = Union[str, Callable[[], str]]
Document = Union[Any, Callable[[], Any]]


@dataclass(frozen=True)
class Result:
    """What one command has to say, printed once by `emit`.

    text: the output of -o text (and plan's -o commands); document: the output of -o json (and
    get's -o yaml), None for a command that has none; notes: lines for stderr after the output.
    A runtime failure (exit 1) is `failed(...)`: said as every failure is.
    """

    code: int = EXIT_OK
    text: Text = ""
    document: Document = None
    indent: int | None = 2
    notes: tuple[str, ...] = ()
    failure: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def failed(message: str, notes: Sequence[str] = (), **extra: Any) -> Result:
    """Exit 1 with this message (and, with -o json, these fields beside it)."""
    return Result(EXIT_FAILURE, notes=tuple(notes), failure=message, extra=extra)


def emit(result: Result, output: str) -> int:
    """Print `result` in the format asked for (-o); its exit code."""
    if result.failure is not None:
        failure(result.failure, output, **result.extra)
    elif output in ("json", "yaml") and result.document is not None:
        document = result.document() if callable(result.document) else result.document
        if output == "yaml":
            import yaml

            sys.stdout.write(yaml.safe_dump(document, sort_keys=False))
        else:
            sys.stdout.write(json.dumps(document, indent=result.indent) + "\n")
    else:
        sys.stdout.write(result.text() if callable(result.text) else result.text)
    for note in result.notes:
        print(note, file=sys.stderr)
    return result.code


def _emit_json(document: dict[str, Any]) -> None:
    try:
        json.dump(document, sys.stdout, indent=2)
        print()
    except BrokenPipeError:
        pass


def invalid(exc: InvalidInput, output: str = "text", nothing: str = "nothing was changed") -> int:
    """Exit 2: every problem, one line each, then what was not done."""
    if output == "json":
        _emit_json(
            {
                "error": "invalid input",
                "exitCode": EXIT_INVALID,
                "message": f"{len(exc.errors)} problem(s) found; {nothing}",
                "problems": [error.to_json() for error in exc.errors],
            }
        )
        return EXIT_INVALID
    for error in exc.errors:
        print(f"vsop: invalid: {error}", file=sys.stderr)
    print(f"vsop: {len(exc.errors)} problem(s) found; {nothing}", file=sys.stderr)
    return EXIT_INVALID


def failure(message: str, output: str = "text", **extra: Any) -> int:
    """Exit 1: something outside the input failed (kernel, files we write, a held lock)."""
    if output == "json":
        _emit_json({"error": "runtime failure", "exitCode": EXIT_FAILURE, "message": message, **extra})
    else:
        print(f"vsop: {message}", file=sys.stderr)
    return EXIT_FAILURE


def bug(exc: BaseException, output: str = "text", verbose: bool = False) -> int:
    """The last resort: one line and exit 1; the trace only with -v."""
    detail = str(exc) or exc.__class__.__name__
    message = f"unexpected failure ({detail}); this is a bug in vsop: please report it with the output of the same command run with -v"
    if verbose:
        traceback.print_exception(exc, file=sys.stderr)
    return failure(message, output)


class UsageError(Exception):
    """A command line argparse refused; raised instead of argparse's own exit."""

    def __init__(self, parser: argparse.ArgumentParser, message: str):
        super().__init__(message)
        self.parser = parser
        self.message = message


class Parser(argparse.ArgumentParser):
    """argparse, except that a usage error can be reported as JSON too (see `usage`)."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(self, message)


def wants_json(argv: Sequence[str]) -> bool:
    args = list(argv)
    pairs = zip(args, args[1:])
    return any(a in ("-o", "--output") and b == "json" for a, b in pairs) or any(a in ("-ojson", "--output=json") for a in args)


def usage(exc: UsageError, argv: Sequence[str]) -> int:
    """Exit 2, as argparse would, in the format asked for."""
    if wants_json(argv):
        _emit_json({"error": "usage", "exitCode": EXIT_INVALID, "message": f"{exc.parser.prog}: {exc.message}"})
    else:
        exc.parser.print_usage(sys.stderr)
        print(f"{exc.parser.prog}: error: {exc.message}", file=sys.stderr)
    return EXIT_INVALID
