"""The `vsop` command line: builds the parser from each command group's `register`, runs one
command, prints its Result once (vsop.cli.output.emit) and maps errors to exit codes.

Exit codes: 0 done, 1 runtime failure, 2 invalid input (nothing was changed).
Thin on purpose: each command group is a module (plan, store, show, diagnose, cleanup, render,
crd) with `register(subparsers)` and `run(args) -> Result`; what several share is vsop.cli.common.
Nothing imports this module but the `vsop` entry point.
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from vsop import __version__
from vsop.core.plan import PlanError
from vsop.adapters.base import OperationFailed
from vsop.api.errors import InvalidInput, KernelUnsupported
from vsop.cli import agents, cleanup, crd, diagnose, output, plan, pools, render, show, store
from vsop.cli.common import dry_run, dry_run_flags
from vsop.cli.output import command_logging
from vsop.cli.output import EXIT_OK
from vsop.node.lock import LockTimeout
from vsop.cli.store import StoreUnreadable

DESCRIPTION = """\
vsop reconciles VirtualService objects into Linux IPVS load balancing, the way
kube-proxy's IPVS mode does: a dummy link (vsop0) holds the VIPs, IPVS services
pick a real server, one ipset holds every VIP:port and a few constant iptables
rules mark and masquerade that traffic.

  vsop plan --from-empty -f examples/seed.yaml   what a clean node would be told
  vsop apply -f examples/seed.yaml               store the objects, program this host (root); again: 0 writes
  vsop get                                       what the host store holds, and whether it is programmed
  vsop delete default/web                        remove one object from the store and the kernel
  vsop show                                      what vsop owns here, like ipvsadm -Ln
  vsop explain 169.254.11.2:80                   the path of a packet to a VIP, hook by hook, with counters
  vsop doctor                                    every known cause of a dead VIP checked, each with its fix
  vsop cleanup                                   remove all of it, and nothing else
  vsop agent                                     keep the store true: health checks, draining (--from DIR: a folder)
  vsop render keepalived -f examples/keepalived  keepalived.conf for mode: keepalived objects
  vsop crd                                       the CustomResourceDefinition
  vsop pools -f vs.yaml                          VipPools granting today's VirtualServices their VIPs

Every command takes -o text|json (plan also -o commands); with -o json, errors are a
JSON object on stdout too. Exit codes: 0 done, 1 runtime failure, 2 invalid input.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = output.Parser(
        prog="vsop", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"vsop {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    plan.register(sub)
    store.register(sub)  # apply, delete, get
    show.register(sub)
    diagnose.register(sub)  # explain, doctor
    cleanup.register(sub)
    agents.register(sub)  # agent, controller
    render.register(sub)
    crd.register(sub)  # crd, version
    pools.register(sub)
    return parser


def _apply(args: argparse.Namespace) -> output.Result:
    return plan.run(args) if dry_run(args) else store.run(args)  # --dry-run prints what plan would


def _delete(args: argparse.Namespace) -> output.Result:
    return plan.delete_dry_run(args) if dry_run(args) else store.run(args)


COMMANDS = {
    "plan": plan.run,
    "explain": diagnose.run,
    "doctor": diagnose.run,
    "apply": _apply,
    "delete": _delete,
    "get": store.run,
    "show": show.run,
    "cleanup": cleanup.run,
    "agent": agents.run,
    "crd": crd.run,
    "pools": pools.run,
    "version": crd.run,
}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    delegated = agents.delegated(argv)
    if delegated is not None:
        return delegated
    if argv[:2] == ["render", "keepalived"]:
        return render.main(argv[2:])
    if argv[:2] == ["render", "bird"]:
        from vsop.cli import bird

        return bird.main(argv[2:])
    parser = build_parser()
    try:
        args = parser.parse_args(dry_run_flags(argv))
    except output.UsageError as exc:
        return output.usage(exc, argv)
    fmt = getattr(args, "output", "text")
    fmt = "json" if fmt == "json" else "text"
    if args.command != "agent":  # the agent sets up its own logging
        command_logging(getattr(args, "verbose", False))
    try:
        result = COMMANDS[args.command](args)
        return result if isinstance(result, int) else output.emit(result, args.output)  # an int: the agent spoke for itself
    except InvalidInput as exc:
        return output.invalid(exc, fmt)
    except (KernelUnsupported, PlanError, OperationFailed, LockTimeout, StoreUnreadable) as exc:
        return output.failure(str(exc), fmt)
    except PermissionError as exc:
        # Files the user named are read by the loader (a refusal there is invalid input);
        # what is left is the kernel or /run: that needs privileges.
        where = f"{exc.filename}: " if exc.filename else ""
        return output.failure(f"{where}permission denied: reading and programming the kernel needs root (CAP_NET_ADMIN)", fmt)
    except BrokenPipeError:
        return EXIT_OK
    except OSError as exc:  # the store or the lock: a runtime failure, said in one line
        return output.failure(str(exc), fmt)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # the last resort: one line, not a trace, unless -v
        return output.bug(exc, fmt, verbose=getattr(args, "verbose", False))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
