"""How every command speaks: its Result printed once, as text, YAML or JSON, and the outcomes it
did not plan for (invalid input, runtime failure, a bug) in one voice, as text on stderr or, with
`-o json`, as one JSON object on stdout (so a script reading stdout always gets JSON).

Owns the exit codes, the Result a command returns, the error object's shape, and the one choke
point every printed line passes: text lines (stdout and stderr) go through
vsop.api.errors.printable, so a file name, an object name or a note holding terminal escape codes
is shown escaped, never obeyed by the terminal; JSON and YAML escape by their own rules. Also the
argument parser's habits (an unknown flag is named before a missing one). Must not import: kopf, pyroute2, kubernetes, subprocess, any other vsop.cli module.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable, NoReturn, Sequence, Union

from vsop.api.errors import InvalidInput, printable
from vsop.node.logs import KlogFormatter

EXIT_OK, EXIT_FAILURE, EXIT_INVALID = 0, 1, 2

# The exit codes most commands share, for their --help (`exits(...)` words a command's own).
EXITS = {
    EXIT_OK: "done (also when nothing had to change)",
    EXIT_FAILURE: "runtime failure: the kernel refused an operation or lacks IPVS, a file could not be written, another writer held the lock too long",
    EXIT_INVALID: "invalid input or usage: nothing was changed",
}


def exits(**codes: str) -> str:
    """The `exit codes:` section of a command's --help: EXITS, with this command's words (ok=, failure=, invalid=)."""
    words = {EXIT_OK: codes.get("ok", EXITS[EXIT_OK]), EXIT_FAILURE: codes.get("failure", EXITS[EXIT_FAILURE]),
             EXIT_INVALID: codes.get("invalid", EXITS[EXIT_INVALID])}
    return "exit codes:\n" + "".join(f"  {code}  {text}\n" for code, text in words.items())


def safe(text: str) -> str:
    """Text lines as they may reach a terminal: each line through `printable` (no cut), newlines kept."""
    lines = text.split("\n")
    if all(line.isprintable() for line in lines):  # the common case, at the cost of one scan
        return text
    return "\n".join(printable(line, None) for line in lines)


def say(message: str) -> None:
    """One line on stderr while a command runs (a note, a warning, a wait), escaped."""
    print(safe(f"vsop: {message}"), file=sys.stderr)

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
        sys.stdout.write(safe(result.text() if callable(result.text) else result.text))
    for note in result.notes:
        print(safe(note), file=sys.stderr)
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
        print(safe(f"vsop: invalid: {error}"), file=sys.stderr)
    print(f"vsop: {len(exc.errors)} problem(s) found; {nothing}", file=sys.stderr)
    return EXIT_INVALID


def failure(message: str, output: str = "text", **extra: Any) -> int:
    """Exit 1: something outside the input failed (kernel, files we write, a held lock)."""
    if output == "json":
        _emit_json({"error": "runtime failure", "exitCode": EXIT_FAILURE, "message": printable(message, None), **extra})
    else:
        print(safe(f"vsop: {message}"), file=sys.stderr)
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
    """argparse, except that a usage error can be reported as JSON too (see `usage`), and an
    unknown flag is named first: argparse checks required arguments before it looks at what it
    did not recognise, so `render keepalived --bogus` used to complain about -f."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(self, message)

    def parse_known_args(self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None):  # type: ignore[no-untyped-def, override]
        args = list(sys.argv[1:] if args is None else args)
        required = [action for action in self._actions if action.required]
        if required and not {"-h", "--help"} & set(args):
            for action in required:
                action.required = False
            try:
                _, extras = super().parse_known_args(args, argparse.Namespace())
            except UsageError:
                extras = []  # another complaint: the full parse below says it
            finally:
                for action in required:
                    action.required = True
            if extras:
                self.error("unrecognized arguments: " + " ".join(extras))
        return super().parse_known_args(args, namespace)


def wants_json(argv: Sequence[str]) -> bool:
    args = list(argv)
    pairs = zip(args, args[1:])
    return any(a in ("-o", "--output") and b == "json" for a, b in pairs) or any(a in ("-ojson", "--output=json") for a in args)


def usage(exc: UsageError, argv: Sequence[str]) -> int:
    """Exit 2, as argparse would, in the format asked for."""
    if wants_json(argv):
        _emit_json({"error": "usage", "exitCode": EXIT_INVALID, "message": printable(f"{exc.parser.prog}: {exc.message}", None)})
    else:
        exc.parser.print_usage(sys.stderr)
        print(safe(f"{exc.parser.prog}: error: {exc.message}"), file=sys.stderr)
    return EXIT_INVALID


def command_logging(verbose: bool) -> None:
    """What a one-shot command does with the log records of the code it runs (the folder reader,
    the executor): the command says what matters itself, once (a bad store file, a conntrack
    entry kept), so the records are shown only with -v, klog-style and escaped. Without any
    handler, Python's last resort would print each warning raw beside the command's own line.
    A process that set up logging already (the tests, the agents) keeps its handlers."""
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


def run_own_parser(build_parser: Callable[[], argparse.ArgumentParser], run: Callable[[argparse.Namespace], "Result"],
                   argv: Sequence[str], nothing: str) -> int:
    """A command with its own parser (`vsop render keepalived`, `vsop render bird`): parse, run, print
    the Result once; usage errors, invalid input, a closed pipe and a bug each in the one voice."""
    try:
        args = build_parser().parse_args(list(argv))
    except UsageError as exc:
        return usage(exc, argv)
    except SystemExit as exc:  # --help
        return int(exc.code) if isinstance(exc.code, int) else 2
    try:
        return emit(run(args), args.output)
    except InvalidInput as exc:
        return invalid(exc, "json" if args.output == "json" else "text", nothing=nothing)
    except BrokenPipeError:
        return 0
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # the last resort: one line, not a trace, unless -v
        return bug(exc, "json" if args.output == "json" else "text", verbose=args.verbose)
