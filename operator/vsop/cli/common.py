"""What several commands share: the -o/-v flags and the subcommand shape, reading the input
files, this node from --node-name/--node-label, an operation as JSON, and the two things a
one-shot command says on stderr (problems refused as invalid input, conntrack entries kept).

Must not import: vsop.cli.main or any command module (they import this), kopf, kubernetes,
pyroute2 (the kernel arrives through vsop.adapters.real, inside the commands that read it).
"""

from __future__ import annotations

import argparse
import socket
from typing import Any

from vsop.api.errors import FieldError, InvalidInput
from vsop.api.manifests import Loaded, load_paths, problem_errors, read_stdin
from vsop.api.pools import parse_block
from vsop.core import ops
from vsop.core.claims import POLICIES, ClaimRule
from vsop.core.commands import command_lines
from vsop.core.desired import Desired, Node
from vsop.core.plan import Plan
from vsop.core.state import Names
from vsop.node.lock import DEFAULT_WAIT_SECONDS
from vsop.cli.output import exits, say

STATUS_FILE = "/run/vsop/agent.json"  # where the host agent writes its state, for show, explain and doctor


FORMATS = ("text", "json", "yaml")


def add_common(parser: argparse.ArgumentParser, formats: tuple[str, ...] = FORMATS) -> None:
    """-o and -v, the same on every command."""
    parser.add_argument("-o", "--output", choices=formats, default=formats[0], help=f"output format (default: {formats[0]})")
    parser.add_argument("-v", "--verbose", action="store_true", help="more detail; on an unexpected failure, the full trace")


def subcommand(sub: Any, name: str, help: str, description: str | None = None, exit_codes: str | None = None) -> argparse.ArgumentParser:
    """A subcommand whose --help always has a description (the one-line help if no longer one)
    and ends with its exit codes (`exits()` unless the command words its own)."""
    return sub.add_parser(
        name, help=help, description=description or help[0].upper() + help[1:] + ".",
        epilog=exit_codes or exits(), formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def add_files(parser: argparse.ArgumentParser) -> None:
    """-f PATH... and this node's name and labels: the input of plan and apply."""
    parser.add_argument(
        "-f", "--filename", dest="paths", action="append", required=True, metavar="PATH",
        help="a YAML file (several documents allowed) or a folder of them; repeatable; '-' reads stdin",
    )
    add_node(parser)


def add_node(parser: argparse.ArgumentParser) -> None:
    """--node-name and --node-label: which node this is, for nodeSelector."""
    parser.add_argument(
        "--node-name", default=socket.gethostname(), metavar="NODE",
        help="this node's name, for nodeSelector (default: the host name)",
    )
    parser.add_argument(
        "--node-label", action="append", default=[], metavar="KEY=VALUE",
        help="a label of this node, for nodeSelector; repeatable (kubernetes.io/hostname is always set)",
    )


def _route_table(text: str) -> int:
    try:
        table = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a table number, got {text!r}") from None
    if not 1 <= table <= 0xFFFFFFFF or table in (253, 254, 255):
        raise argparse.ArgumentTypeError(f"{table} is not a table vsop may own: 1-4294967295, not default (253), main (254) or local (255)")
    return table


def add_route_table(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--route-table", type=_route_table, default=Names().route_table, metavar="N",
        help="the routing table that holds vsop's announce: bgp routes, which BIRD learns (default 4242; no ip rule reads it)",
    )


BIRD_SOCKET = "/run/vsop/bird.ctl"  # BIRD's control socket on a host (announce: bgp)


def add_bird_socket(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--bird-socket", default=BIRD_SOCKET, metavar="SOCKET",
        help=f"BIRD's control socket, for its BGP sessions (default {BIRD_SOCKET}; asked when it exists or VIPs are announced)",
    )


VIP_POLICY_HELP_HOST = ("any (default on a plain host, where the store's writer is root): every VIP but the cloud metadata "
                        "addresses; pools: only VIPs inside an --allow-vip entry")
ALLOW_VIP_HELP = ("an address, CIDR or first-last range VIPs may take; repeatable. A cloud metadata address (169.254.169.254, "
                  "fd00:ec2::254) is refused unless an entry is exactly that address")


def add_claim_flags(parser: argparse.ArgumentParser) -> None:
    """--vip-policy and --allow-vip: who may claim which VIP on a plain host (vsop.core.claims)."""
    parser.add_argument("--vip-policy", choices=POLICIES, default="any", help=VIP_POLICY_HELP_HOST)
    parser.add_argument("--allow-vip", action="append", default=[], metavar="ADDRESS", help=ALLOW_VIP_HELP)


def claim_rule(args: argparse.Namespace) -> ClaimRule:
    """The plain host's rule from --vip-policy and --allow-vip; a malformed entry is invalid input (exit 2)."""
    allowed = tuple(getattr(args, "allow_vip", None) or ())
    errors = []
    for entry in allowed:
        try:
            parse_block(entry)
        except ValueError as exc:
            errors.append(FieldError(path="--allow-vip", reason=str(exc)))
    if errors:
        raise InvalidInput(errors)
    return ClaimRule(policy=getattr(args, "vip_policy", "any"), host=True, allow=allowed)


def names(args: argparse.Namespace) -> Names:
    """The names of what vsop owns, with the command's --route-table."""
    return Names(route_table=getattr(args, "route_table", Names().route_table))


def add_lock_options(parser: argparse.ArgumentParser) -> None:
    """--lock and --wait: every command that writes the store or the kernel holds the writer lock."""
    parser.add_argument("--lock", metavar="FILE", help="the writer lock (default $VSOP_LOCK or /run/vsop/lock)")
    parser.add_argument(
        "--wait", type=float, default=DEFAULT_WAIT_SECONDS, metavar="SECONDS",
        help=f"how long to wait for another writer (the agent, another apply) to finish (default {DEFAULT_WAIT_SECONDS:g})",
    )


def add_dry_run(parser: argparse.ArgumentParser, what: str) -> None:
    """--dry-run, as kubectl spells it: bare or --dry-run=client (--dry-run=none: not a dry run; see `dry_run_flags`)."""
    parser.add_argument(
        "--dry-run", action="store_true",
        help=f"{what}; nothing is written, the writer lock is not taken (kubectl's --dry-run=client; =none: a real run)",
    )


def dry_run_flags(argv: list[str]) -> list[str]:
    """kubectl's `--dry-run=client|none` as argparse reads them: `--dry-run`, or nothing. A flag
    that took an optional value would eat the NAME after it (`delete --dry-run web`)."""
    result = []
    for arg in argv:
        if arg == "--":
            return result + argv[len(result):]
        value = arg.partition("=")[2] if arg.startswith("--dry-run=") else None
        if value == "client":
            result.append("--dry-run")
        elif value != "none":
            result.append(arg)  # argparse says what is wrong with --dry-run=server
    return result


def dry_run(args: argparse.Namespace) -> bool:
    return bool(getattr(args, "dry_run", False))


def node(args: argparse.Namespace) -> Node:
    labels = {"kubernetes.io/hostname": args.node_name}
    for item in args.node_label:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InvalidInput([FieldError(path="--node-label", reason=f"must be KEY=VALUE, got {item!r}")])
        labels[key] = value
    return Node(args.node_name, labels)


def load(args: argparse.Namespace) -> Loaded:
    """The VirtualServices in -f PATH...; input holding none is invalid."""
    stdin_text = read_stdin() if "-" in args.paths else None
    loaded = load_paths(args.paths, stdin_text=stdin_text)
    for note in loaded.skipped:
        say(f"{note} (not a VirtualService)")
    for warning in loaded.warnings:
        say(f"warning: {warning}")
    if not loaded.services:  # never an empty desired state: that would remove everything
        raise InvalidInput([FieldError(reason=f"no VirtualService found in {' '.join(args.paths)}")])
    return loaded


def refuse_problems(desired: Desired | Plan, loaded: Loaded | None = None) -> None:
    """For one-shot commands a conflict or refused VIP is invalid input: nothing is half-applied.

    Each names the file and line of its object and, for a conflict, of the object that keeps the port.
    """
    if desired.problems:
        raise InvalidInput(problem_errors(desired.problems, loaded, lambda p: "spec.ports" if p.reason == "Conflict" else "spec.vip"))


def op_json(op: ops.Op) -> dict[str, object]:
    return {"kind": op.kind, "description": op.describe(), "commands": command_lines(op)}


def conntrack_notes(failures: list[str]) -> tuple[str, ...]:
    return tuple(
        f"vsop: warning: UDP conntrack entries not forgotten for {failure}; its clients move when their entries expire" for failure in failures
    )


def report_conntrack(failures: list[str]) -> None:
    for note in conntrack_notes(failures):
        say(note.removeprefix("vsop: "))
