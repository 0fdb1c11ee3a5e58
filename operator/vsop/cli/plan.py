"""`vsop plan`: what `apply` of the files would do on this host (or on an empty node), as commands;
and the dry runs, which print the same: `apply --dry-run` (exactly `plan` of the same files) and
`delete --dry-run` (the plan of the store without the objects).

Owns the command's arguments and what it plans: the files on top of the host store
(vsop.cli.store), through the whole-node pipeline up to the plan (vsop.node.whole), with the
running agent's health verdicts and drains as apply keeps them (vsop.cli.verdicts), problems of
the given objects refused as invalid input. Nothing is written and the writer lock is never
taken. Must not import: vsop.cli.main, kopf, kubernetes.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from typing import Any

from vsop.api.manifests import Loaded
from vsop.core.commands import command_lines, render
from vsop.core.desired import Desired
from vsop.core.held import Held
from vsop.core.plan import Plan
from vsop.core.state import KernelState
from vsop.core.sysctls import KEEP_ACCEPT_RA_HELP
from vsop.api.model import VirtualService
from vsop.node.whole import derive, program
from vsop.cli.common import FORMATS, add_claim_flags, add_common, claim_rule, add_files, add_route_table, load, node, refuse_problems, subcommand
from vsop.cli.common import names as common_names
from vsop.cli.output import Result, exits, failed
from vsop.cli.store import add_store_options, deletion, not_found, plan_services, refs_to_delete
from vsop.cli.verdicts import AgentView, add_state_option, announce, read_view, state_file
from vsop.host.store import Store, store_path


def register(sub: Any) -> None:
    p = subcommand(
        sub,
        "plan",
        "validate, diff against this host (or an empty node), print the plan as commands",
        "Validate the VirtualServices, compute this node's desired kernel state, diff it against\n"
        "the host (or, with --from-empty, against a node with nothing of vsop's) and print the\n"
        "operations as the ip / ipvsadm / ipset / iptables / sysctl commands a person would type,\n"
        "grouped and commented (-o commands, the same as -o text). Nothing is written.\n"
        "`vsop apply --dry-run` prints the same.",
        exits(ok="the plan printed (also when there is nothing to do)",
              failure="runtime failure: this host's kernel or store cannot be read (--from-empty reads neither)"),
    )
    add_route_table(p)
    add_files(p)
    p.add_argument("--from-empty", action="store_true", help="plan the files alone against an empty node (no store, no root)")
    add_store_options(p, writer=False)
    add_state_option(p)
    p.add_argument("--prune", action="store_true", help="plan `apply --prune`: the files replace the whole store")
    p.add_argument("--keep-accept-ra", action="store_true", help=KEEP_ACCEPT_RA_HELP)
    add_claim_flags(p)
    add_common(p, ("commands", *FORMATS))


def run(args: argparse.Namespace) -> Result:
    loaded = load(args)
    services, desired, result = planned(args, loaded)
    return Result(text=lambda: _text(args, services, desired, result), document=lambda: _document(args, result))


def delete_dry_run(args: argparse.Namespace) -> Result:
    """`vsop delete --dry-run`: the plan of the store without the objects, against this host; nothing written."""
    refs = refs_to_delete(args)
    store = Store(store_path(args.store))
    target = deletion(refs, store, strict=True)
    if target.missing and not args.ignore_not_found:
        return failed(not_found(target.missing, store) + "; nothing would be deleted", reason="NotFound", notFound=target.missing)
    args.from_empty = False
    services, desired, result = _planned(args, target.merged.services, target.merged.held, set(), None)
    head = f"# vsop delete --dry-run: {', '.join(target.refs) or 'nothing'} would be deleted; nothing was written.\n"
    return Result(
        text=lambda: head + _text(args, services, desired, result),
        document=lambda: {"dryRun": True, "deleted": target.refs, **_document(args, result)},
    )


def planned(args: argparse.Namespace, loaded: Loaded) -> tuple[list[VirtualService], Desired, Plan]:
    """The files (on top of the store, unless --from-empty) planned against this host or an empty node."""
    args.from_empty = getattr(args, "from_empty", False)  # apply --dry-run: always this host
    services, held = loaded.services, Held()
    if not args.from_empty:
        services, held = plan_services(args, loaded.services)  # what `apply` of these files would program
    given = {vs.ref for vs in loaded.services}  # objects already in the store only warn (see vsop.cli.store)
    return _planned(args, services, held, given, loaded)


def _planned(
    args: argparse.Namespace, services: list[VirtualService], held: Held, given: set[str], loaded: Loaded | None,
) -> tuple[list[VirtualService], Desired, Plan]:
    names = common_names(args)
    if not args.from_empty:
        from vsop.adapters.real import read_host  # the kernel readers; imported only when a host is read
        from vsop.adapters.kernel import conntrack_tcp_liberal, running_kernel_version

        observed = read_host(names)
        view = read_view(state_file(args))  # what apply would keep of the running agent's verdicts and drains
    else:
        observed, view = KernelState(), AgentView()

    def check(desired: Desired) -> None:
        refuse_problems(replace(desired, problems=tuple(p for p in desired.problems if p.obj in given)), loaded)

    kernel_version = None if args.from_empty else running_kernel_version()
    liberal = False if args.from_empty else conntrack_tcp_liberal()
    desired = derive(services, node(args), observed, names=names, kernel_version=kernel_version, out_of_service=view.out_of_service,
                     rule=claim_rule(args), liberal=liberal)
    desired, result = program(desired, observed, names, held=held, keep_accept_ra=getattr(args, "keep_accept_ra", False), check=check,
                              drain=view.drain(services, names))
    refuse_problems(result, loaded)
    announce(view, desired.state)
    return services, desired, result


def _document(args: argparse.Namespace, result: Plan) -> dict[str, object]:
    return {
        "node": args.node_name,
        "fromEmpty": args.from_empty,
        "counts": result.counts(),
        "operations": [{"kind": op.kind, "description": op.describe(), "commands": command_lines(op)} for op in result.ops],
    }


def _text(args: argparse.Namespace, services: list[VirtualService], desired: Desired, result: Plan) -> str:
    against = "an empty node" if args.from_empty else f"this host ({args.node_name})"
    if not result.ops:
        elsewhere = len(services) - len(desired.programmed)
        note = f"; {elsewhere} VirtualService(s) are not for node {args.node_name} (nodeSelector)" if elsewhere else ""
        return f"# Nothing to do: {against} already matches the {len(desired.programmed)} VirtualService(s) it programs{note}.\n"
    return (
        f"# vsop plan against {against}: {len(result.ops)} operation(s) for {len(desired.programmed)} VirtualService(s).\n"
        "# Each command below is what vsop does through netlink / iptables-restore.\n\n"
        + render(result.ops)
    )
