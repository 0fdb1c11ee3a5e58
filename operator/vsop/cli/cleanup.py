"""`vsop cleanup`: remove everything vsop owns on this host and nothing else; with --dry-run, say what.

Owns the command's arguments and its report, including the kernel settings vsop changed (put
back with --restore-sysctls, listed otherwise). Holds the writer lock unless --dry-run. The
removal itself is vsop.node.whole.cleanup's. Must not import: vsop.cli.main, kopf, kubernetes.
"""

from __future__ import annotations

import argparse
from typing import Any

from vsop.core import ops
from vsop.core.commands import render
from vsop.core.plan import Plan
from vsop.cli.common import add_common, add_dry_run, add_lock_options, add_route_table, dry_run, op_json, report_conntrack, say, subcommand
from vsop.cli.common import names as common_names
from vsop.cli.output import Result, exits, failed

Changed = dict[str, tuple[str, "str | None"]]  # a kernel setting vsop changed: (found before, now; None: gone)


def register(sub: Any) -> None:
    p = subcommand(
        sub,
        "cleanup",
        "remove everything vsop owns on this host, and nothing else",
        "Remove everything vsop owns on this host: its IPVS services, VIPs and link, ipsets and\n"
        "iptables chains and jumps. Foreign IPVS services, chains, sets and addresses stay.\n"
        "With --dry-run, print the operations (as commands, or -o json) and change nothing.\n"
        "Holds the writer lock (--lock, --wait) unless --dry-run.",
        exits(ok="removed (also when nothing of vsop's was there); with --dry-run, the commands printed",
              failure="runtime failure: the kernel refused an operation, another writer held the lock too long"),
    )
    add_route_table(p)
    add_common(p)
    add_dry_run(p, "print the commands instead of running them")
    add_lock_options(p)
    p.add_argument(
        "--restore-sysctls", action="store_true",
        help="also put back the kernel settings vsop changed, to the values found before its first change "
        "(recorded in /run/vsop/sysctls.json); without it they are listed and left as they are",
    )


def run(args: argparse.Namespace) -> Result:
    if dry_run(args):
        return _cleanup(args)
    from vsop.node.lock import lock_path, writer_lock

    with writer_lock(lock_path(args.lock), args.wait, on_wait=lambda who: say(f"waiting for the writer lock held by {who}")):
        return _cleanup(args)


def _cleanup(args: argparse.Namespace) -> Result:
    from vsop.node.execute import ExecutionFailed, changed_sysctls, restore_sysctls
    from vsop.node.whole import cleanup
    from vsop.adapters.real import real_kernel

    names = common_names(args)
    kernel = real_kernel()
    try:
        result = cleanup(kernel, names, dry_run=args.dry_run)
    except ExecutionFailed as exc:
        return failed(f"cleanup failed: {exc}; the {exc.applied} operation(s) before it were applied", applied=exc.applied)
    if args.dry_run:
        return _dry_run(args, result.plan, changed_sysctls(kernel), restore_sysctls(kernel, dry_run=True) if args.restore_sysctls else [])
    report_conntrack(result.conntrack_failures)
    changed = changed_sysctls(kernel)
    restored = restore_sysctls(kernel) if args.restore_sysctls else []
    document = {
        "changed": bool(result.applied or restored),
        "writes": result.writes + len(restored),
        "operations": [op_json(op) for op in [*result.applied, *restored]],
        "sysctls": _sysctls_json(changed),
        "sysctlsRestored": [op.name for op in restored],
    }
    if result.applied:
        lines = [f"vsop: removed everything vsop owned: {len(result.applied)} operation(s)"]
        lines += [f"  {op.kind:<18} {op.describe()}" for op in result.applied]
    else:
        lines = ["vsop: nothing of vsop's on this host (0 writes)"]
    if restored:
        lines.append(f"vsop: restored {len(restored)} kernel setting(s) to the values found before vsop's first change:")
        lines += [f"  {op.name}={op.value} (was {op.previous})" for op in restored]
    elif changed and not args.restore_sysctls:
        lines.append("vsop: kernel settings vsop changed, left as they are (--restore-sysctls puts back the values found before):")
        lines += [f"  {name}: found {before}, now {now if now is not None else '(gone)'}" for name, (before, now) in changed.items()]
    return Result(text="".join(line + "\n" for line in lines), document=document)


def _dry_run(args: argparse.Namespace, the_plan: Plan, changed: Changed, restores: list[ops.SetSysctl]) -> Result:
    """What cleanup would remove, and the kernel settings it would put back (--restore-sysctls) or leave."""
    document = {
        "dryRun": True, "counts": the_plan.counts(), "operations": [op_json(op) for op in [*the_plan.ops, *restores]],
        "sysctls": _sysctls_json(changed),
        "sysctlsRestored": [op.name for op in restores],
    }
    text = render(the_plan.ops) if the_plan.ops else "# Nothing of vsop's on this host.\n"
    if restores:
        text += ("\n# Kernel settings put back to the values found before vsop's first change (--restore-sysctls);\n"
                 "# forwarding goes off before accept_ra goes back.\n")
        text += "".join(f"sysctl -w {op.name}={op.value}  # now {op.previous}\n" for op in restores)
    elif changed and not args.restore_sysctls:
        text += "\n# Kernel settings vsop changed, left as they are (--restore-sysctls would put back the values found before):\n"
        text += "".join(f"#   {name}: found {before}, now {now if now is not None else '(gone)'}\n" for name, (before, now) in changed.items())
    return Result(text=text, document=document)


def _sysctls_json(changed: Changed) -> dict[str, dict[str, object]]:
    return {name: {"before": before, "now": now} for name, (before, now) in changed.items()}
