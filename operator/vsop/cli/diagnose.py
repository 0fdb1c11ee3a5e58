"""The `vsop explain` and `vsop doctor` commands: arguments, gathering facts, their Results, exit codes.

Owns the two subcommands' argument parsers and their runs (including `explain --watch`,
which prints a screen at a time, each with the growth since the previous one). The reasoning
lives in vsop.diagnose.explain and vsop.diagnose.doctor, the reading of the host in
vsop.diagnose.gather. Must not import: vsop.cli.main, kopf, kubernetes, jinja2.
"""

from __future__ import annotations

import argparse
import ipaddress
import sys
import time
from functools import partial
from typing import Any

from vsop.api.errors import FieldError, InvalidInput
from vsop.cli.common import STATUS_FILE, add_bird_socket, add_common, subcommand
from vsop.cli import output
from vsop.cli.output import Result, exits

EXPLAIN_DESCRIPTION = """\
The path one packet to VIP:PORT takes through this node, hook by hook: where it enters
(PREROUTING for a client on another host, OUTPUT for one on this node), the ipset match
and the mark, the routing decision, VSOP-FILTER on INPUT, the IPVS service and its real
servers (weight, connections, health, the route to each), MASQUERADE on POSTROUTING, the
way back through FORWARD, and the conntrack entries. Each step says what vsop expects,
what the kernel has, its live counters and why the step exists.

  vsop explain 169.254.11.2:80                 both entry points
  vsop explain 169.254.11.2:53/udp --from 10.200.9.2
  vsop explain 169.254.11.2:80 --watch         redraw every 2 s with the growth of each counter
"""

DOCTOR_DESCRIPTION = """\
Check every known cause of a dead or half-working VIP on this node, for the given
VIP:PORTs or for everything vsop serves here: IPVS in the kernel, the sysctls IPVS and
masquerade need, strict rp_filter dropping packets, the VIP on vsop0 and vsop0 up, vsop's
chains and jumps (FORWARD with a DROP policy included), a foreign rule ahead of vsop's
jump, rules on the other iptables backend, real servers without a route or local, ARP and conn_reuse_mode settings, stale
UDP conntrack entries, the host agent's status. Each failure names its fix.
"""


CLEAR_SCREEN = "\033[H\033[2J"


def register(sub: Any) -> None:
    p = subcommand(
        sub, "explain", "the path one packet to VIP:PORT takes through this node, with live counters", EXPLAIN_DESCRIPTION,
        exits(ok="the path printed, whatever it shows (doctor is the check)",
              failure="this kernel has no IPVS (the path is printed all the same), or the host cannot be read",
              invalid="invalid VIP:PORT or --from"),
    )
    p.add_argument("target", metavar="VIP:PORT[/PROTOCOL]", help="e.g. 169.254.11.2:80, 169.254.11.2:53/udp, [fd00::2]:80")
    p.add_argument("--from", dest="origin", metavar="ADDRESS",
                   help="the client's address: one of this node's (or 'node') follows OUTPUT, any other PREROUTING (default: both)")
    p.add_argument("--watch", action="store_true", help="redraw until interrupted, with the growth since the previous screen")
    p.add_argument("--interval", type=float, default=2.0, metavar="SECONDS", help="seconds between screens with --watch (default 2)")
    add_common(p)
    p.add_argument("--status-file", default=STATUS_FILE, metavar="FILE", help="the host agent's status (health, draining)")
    add_bird_socket(p)

    p = subcommand(
        sub, "doctor", "every known cause of a dead VIP checked on this node, each failure with its fix", DOCTOR_DESCRIPTION,
        exits(ok="every check passes (warnings allowed)", failure="something is wrong: each failure names its fix",
              invalid="invalid VIP:PORT or --from"),
    )
    p.add_argument("targets", nargs="*", metavar="VIP:PORT[/PROTOCOL]", help="the services to check (default: all of vsop's here)")
    p.add_argument("--from", dest="origin", metavar="ADDRESS",
                   help="a client's address: each service's sourceRanges must admit it (fails naming the ranges that drop it)")
    add_common(p)  # -v also lists the checks that pass
    p.add_argument("--status-file", default=STATUS_FILE, metavar="FILE", help="the host agent's status file")
    p.add_argument("--store", metavar="DIR", help="the VirtualServices this node should serve, for what vsop expects (default: the agent's folder, else /etc/vsop/virtualservices.d)")
    add_bird_socket(p)


def run(args: argparse.Namespace) -> Result:
    return _explain(args) if args.command == "explain" else _doctor(args)


def _target(text: str, field: str):
    from vsop.diagnose.explain import TargetError, parse_target

    try:
        return parse_target(text)
    except TargetError as exc:
        raise InvalidInput([FieldError(path=field, reason=str(exc))]) from None


def _origin(origin: str | None, facts: Any) -> str:
    if origin is None:
        return "both"
    if origin in ("node", "local"):
        return "local"
    try:
        address = ipaddress.ip_address(origin)
    except ValueError:
        raise InvalidInput([FieldError(path="--from", reason=f"{origin!r} is not an IP address (or 'node')")]) from None
    own = {str(ipaddress.ip_interface(a).ip) for i in facts.interfaces.values() for a in i.addresses}
    own |= set(facts.observed.node_addresses) | facts.observed.bound_vips()
    return "local" if address.is_loopback or str(address) in own else "remote"


def _client(origin: str | None) -> str | None:
    """doctor's --from: an IP address (its canonical text), or invalid input."""
    if origin is None:
        return None
    try:
        return str(ipaddress.ip_address(origin))
    except ValueError:
        raise InvalidInput([FieldError(path="--from", reason=f"{origin!r} is not an IP address")]) from None


def _explain(args: argparse.Namespace) -> Result:
    from vsop.diagnose.explain import explain, explain_text
    from vsop.diagnose.gather import gather

    key = _target(args.target, "VIP:PORT")
    previous: dict[str, Any] | None = None
    while True:
        facts = gather([key], status_file=args.status_file, bird_socket=args.bird_socket)
        origin = _origin(args.origin, facts)
        report = explain(facts, key, origin, client=args.origin if origin == "remote" else None)
        code = output.EXIT_OK if facts.ipvs_available else output.EXIT_FAILURE  # README: a kernel without IPVS is a runtime failure
        if not args.watch:
            return Result(code, text=partial(explain_text, report), document=report)  # a report, whatever it shows: doctor is the check
        if args.output == "text":
            sys.stdout.write(CLEAR_SCREEN)  # vsop's own escape code: the one line not passed through printable
        header = time.strftime("%H:%M:%S  ") + f"every {args.interval:g} s, Ctrl-C stops\n"
        text, document = partial(explain_text, report, previous), partial(_with_deltas, report, previous)
        output.emit(Result(text=lambda: header + text(), document=document, indent=None), args.output)
        sys.stdout.flush()
        previous = report
        try:
            time.sleep(args.interval)
        except KeyboardInterrupt:
            return Result()


def _with_deltas(report: dict[str, Any], previous: dict[str, Any] | None) -> dict[str, Any]:
    """A --watch screen as JSON: the report with each counter's growth since the previous screen."""
    from vsop.diagnose.explain import deltas

    if previous is not None:
        report["deltas"] = [{"step": s, "item": i, "counter": c, "growth": v} for (s, i, c), v in deltas(previous, report).items()]
    return report


def _doctor(args: argparse.Namespace) -> Result:
    from vsop.diagnose.doctor import doctor, doctor_text
    from vsop.diagnose.gather import NETSTAT_WINDOW_SECONDS, gather

    keys = [_target(text, f"VIP:PORT {text}") for text in args.targets]
    client = _client(args.origin)
    facts = gather(keys, status_file=args.status_file, store=args.store, netstat_window=NETSTAT_WINDOW_SECONDS, bird_socket=args.bird_socket)
    report = doctor(facts, keys, client=client)
    return Result(0 if report["ok"] else 1, text=lambda: doctor_text(report, verbose=args.verbose), document=report)
