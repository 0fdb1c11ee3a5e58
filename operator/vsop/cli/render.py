"""`vsop render keepalived`: print or write the keepalived configuration for keepalived-mode objects.

Owns the command's arguments (its own parser: `vsop render keepalived ...` arrives here before
the main parser sees it; `register` adds the `render` entry the main --help lists), reading the
input, and the Result of what vsop.keepalived.render produced. Must not import: vsop.cli.main,
vsop.kube, vsop.adapters.
"""

from __future__ import annotations

import argparse
import ipaddress
from typing import Any, Sequence

from vsop.api.errors import FieldError, InvalidInput
from vsop.api.manifests import load_paths, problem_errors, read_stdin
from vsop.cli import output
from vsop.cli.common import FORMATS, say, subcommand
from vsop.cli.output import Result, exits

DESCRIPTION = """\
Print (or with --out, write) the keepalived configuration for the VirtualServices with
mode: keepalived: global_defs, one virtual_server per port with its real servers and
health checks, and a vrrp_instance for those with announce: vrrp. Objects with
mode: ipvs are not rendered. Only values from validated fields reach the files.

layouts:
  confd   keepalived.conf (global_defs, include conf.d/*.conf) and conf.d/NAMESPACE_NAME.conf
          for each VirtualService (the default)
  single  one keepalived.conf

With --out, a file that already holds what would be written is left as it is: a render that
changes nothing writes nothing, and says so.
"""

EXIT_CODES = exits(
    ok="rendered (or written into --out; also when nothing differed)",
    failure="runtime failure: the files cannot be written into --out (nothing was changed)",
    invalid="invalid input, a conflict, or a value keepalived cannot take: nothing was rendered",
)


def register(sub: Any) -> None:
    """The `render` entry of the main parser: its help; `vsop render keepalived` itself is `main`'s."""
    p = subcommand(
        sub,
        "render",
        "render configuration for another tool: `vsop render keepalived -f PATH`, `vsop render bird --speaker FILE`",
        "Render configuration for another tool:\n"
        "`vsop render keepalived -f PATH [--out DIR]`; see `vsop render keepalived --help`.\n"
        "`vsop render bird --speaker FILE [-f PATH] [--out FILE]`; see `vsop render bird --help`.",
        EXIT_CODES,
    )
    p.add_argument("tool", choices=("keepalived", "bird"), help="keepalived or bird: see `vsop render TOOL --help`")


def build_parser() -> argparse.ArgumentParser:
    from vsop.keepalived.render import LAYOUTS

    parser = output.Parser(
        prog="vsop render keepalived", description=DESCRIPTION, epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "-f", "--filename", dest="paths", action="append", required=True, metavar="PATH",
        help="a YAML file (several documents allowed) or a folder of them; repeatable; '-' reads stdin",
    )
    parser.add_argument("--layout", choices=LAYOUTS, default="confd", help="one file, or a main file and conf.d/ (default: confd)")
    parser.add_argument(
        "--out", metavar="DIR",
        help="write the files into DIR: all staged first, then renamed into place; vsop's stale conf.d files are removed",
    )
    parser.add_argument("--force", action="store_true", help="with --out, also replace files vsop did not write")
    parser.add_argument(
        "--auth-file", metavar="FILE",
        help="VRRP PASS password (1-8 characters) for IPv4 vrrp_instances; in the cluster, a mounted Secret key",
    )
    parser.add_argument(
        "--node-address", dest="node_addresses", action="append", metavar="ADDRESS",
        help="this node's address, to find it among a mode: ipvs object's vrrp.peers; repeatable (the agents read the node's own)",
    )
    parser.add_argument(
        "--vrrp-track-dir", metavar="DIR", default=None,
        help="where the track files of mode: ipvs objects announced by VRRP are (default /run/vsop/vrrp, as the agents write them)",
    )
    parser.add_argument(
        "-o", "--output", choices=FORMATS, default="text",
        help="text: the configuration (or, with --out, what was written); json, yaml: the files and notes as one object",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="on an unexpected failure, the full trace")
    return parser


def main(argv: Sequence[str]) -> int:
    """`vsop render keepalived ARGS`: argv is what follows `keepalived`. 0 done, 1 cannot write, 2 invalid input."""
    return output.run_own_parser(build_parser, run, argv, nothing="nothing was rendered")


def run(args: argparse.Namespace) -> Result:
    from vsop.keepalived.render import NotOurs, read_auth_file, render_keepalived, write_files

    password = read_auth_file(args.auth_file) if args.auth_file else None
    stdin_text = read_stdin() if "-" in args.paths else None
    loaded = load_paths(args.paths, stdin_text=stdin_text)
    notes = [f"{note} (not a VirtualService)" for note in loaded.skipped]
    if not loaded.services:  # never render an empty configuration from input that held nothing
        for note in notes:
            say(note)
        raise InvalidInput([FieldError(reason=f"no VirtualService found in {' '.join(args.paths)}")])
    try:
        addresses = [str(ipaddress.ip_address(a)) for a in args.node_addresses] if args.node_addresses else None
    except ValueError as exc:
        raise InvalidInput([FieldError(path="--node-address", reason=str(exc))]) from None
    tracks = {"track_dir": args.vrrp_track_dir} if args.vrrp_track_dir else {}
    result = render_keepalived(loaded.services, layout=args.layout, auth_password=password, node_addresses=addresses, **tracks)
    notes.extend(result.skipped)
    for note in notes:
        say(note)
    warnings = [*loaded.warnings, *result.warnings]
    for warning in warnings:
        say(f"warning: {warning}")
    if result.problems:
        raise InvalidInput(problem_errors(result.problems, loaded))
    if not args.out:
        document = {"layout": args.layout, "files": result.files, "rendered": list(result.rendered), "skipped": notes, "warnings": warnings}
        return Result(text=result.text, document=document)
    try:
        written, removed = write_files(args.out, result.files, result.directories, force=args.force)
    except NotOurs as exc:
        raise InvalidInput([FieldError(file=exc.filename, reason=exc.strerror)]) from None
    except OSError as exc:
        reason = exc.strerror.lower() if exc.strerror else str(exc)
        where = f" ({exc.filename})" if exc.filename else ""
        return output.failed(f"cannot write the configuration into {args.out}: {reason}{where}; nothing was changed")
    document = {
        "out": str(args.out),
        "changed": bool(written or removed),
        "written": [str(p) for p in written],
        "removed": [str(p) for p in removed],
        "rendered": list(result.rendered),
        "skipped": notes,
        "warnings": warnings,
    }
    if not written and not removed:
        return Result(
            text=f"vsop: nothing changed: the {len(result.files)} file(s) in {args.out} already hold this configuration"
                 f" for {len(result.rendered)} VirtualService(s) (0 writes)\n",
            document=document,
        )
    lines = [f"vsop: wrote {len(written)} file(s) for {len(result.rendered)} VirtualService(s) into {args.out}"]
    unchanged = len(result.files) - len(written)
    if unchanged:
        lines[0] += f"; {unchanged} already held their content"
    lines += [f"  wrote   {path}" for path in written]
    lines += [f"  removed {path} (its VirtualService is gone)" for path in removed]
    return Result(text="".join(line + "\n" for line in lines), document=document)
