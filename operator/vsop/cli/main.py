"""The `vsop` command line: parses arguments, runs one command, maps errors to exit codes.

Exit codes: 0 done, 1 runtime failure, 2 invalid input (nothing was changed).
Thin on purpose: loading, planning and executing live in their own modules.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
from dataclasses import replace
from typing import Sequence

from vsop import __version__
from vsop.core import ops
from vsop.core.commands import command_lines, render
from vsop.core.desired import Desired, Node, desired_state
from vsop.core.held import Held, keep_held
from vsop.core.plan import Plan, PlanError, plan
from vsop.core.sysctls import KEEP_ACCEPT_RA_HELP
from vsop.core.state import KernelState, Names
from vsop.node.execute import read_observed, running_kernel_version
from vsop.adapters.base import OperationFailed
from vsop.api.errors import FieldError, InvalidInput, KernelUnsupported
from vsop.api.manifests import Loaded, load_paths, problem_errors, read_stdin
from vsop.cli import output
from vsop.cli.output import EXIT_FAILURE, EXIT_INVALID, EXIT_OK
from vsop.node.lock import LockTimeout
from vsop.cli.store import StoreUnreadable, add_store_options

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

Every command takes -o text|json (plan also -o commands); with -o json, errors are a
JSON object on stdout too. Exit codes: 0 done, 1 runtime failure, 2 invalid input.
"""


def _add_common(parser: argparse.ArgumentParser, formats: tuple[str, ...] = ("text", "json")) -> None:
    """-o and -v, the same on every command."""
    parser.add_argument("-o", "--output", choices=formats, default=formats[0], help=f"output format (default: {formats[0]})")
    parser.add_argument("-v", "--verbose", action="store_true", help="more detail; on an unexpected failure, the full trace")


def _sub(sub: "argparse._SubParsersAction[argparse.ArgumentParser]", name: str, help: str, description: str | None = None) -> argparse.ArgumentParser:
    """A subcommand whose --help always has a description (the one-line help if no longer one)."""
    return sub.add_parser(name, help=help, description=description or help[0].upper() + help[1:] + ".", formatter_class=argparse.RawDescriptionHelpFormatter)


def _add_files(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-f", "--filename", dest="paths", action="append", required=True, metavar="PATH",
        help="a YAML file (several documents allowed) or a folder of them; repeatable; '-' reads stdin",
    )
    parser.add_argument(
        "--node-name", default=socket.gethostname(),
        help="this node's name, for nodeSelector (default: the host name)",
    )
    parser.add_argument(
        "--node-label", action="append", default=[], metavar="KEY=VALUE",
        help="a label of this node, for nodeSelector; repeatable (kubernetes.io/hostname is always set)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = output.Parser(
        prog="vsop", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"vsop {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = _sub(
        sub,
        "plan",
        "validate, diff against this host (or an empty node), print the plan as commands",
        "Validate the VirtualServices, compute this node's desired kernel state, diff it against\n"
        "the host (or, with --from-empty, against a node with nothing of vsop's) and print the\n"
        "operations as the ip / ipvsadm / ipset / iptables / sysctl commands a person would type,\n"
        "grouped and commented (-o commands, the same as -o text). Nothing is written.",
    )
    _add_files(p)
    p.add_argument("--from-empty", action="store_true", help="plan the files alone against an empty node (no store, no root)")
    add_store_options(p, writer=False)
    p.add_argument("--prune", action="store_true", help="plan `apply --prune`: the files replace the whole store")
    p.add_argument("--keep-accept-ra", action="store_true", help=KEEP_ACCEPT_RA_HELP)
    _add_common(p, ("commands", "text", "json"))

    p = _sub(
        sub,
        "apply",
        "store the objects in the host store and program this host from the whole store",
        "Validate every VirtualService first (nothing is written if one is invalid), store each in\n"
        "the host store (one file per object, written atomically), then program this host from the\n"
        "whole store: objects applied earlier stay, as with kubectl apply. --prune makes the store\n"
        "exactly the given set. Only the difference is applied, in a safe order; a second run\n"
        "changes nothing and says so. Holds the writer lock (a running agent waits). A kernel\n"
        "refusal stops at that operation (exit 1); the next apply (or the agent) converges.",
    )
    _add_files(p)
    p.add_argument("--keep-accept-ra", action="store_true", help=KEEP_ACCEPT_RA_HELP)
    _add_common(p)
    add_store_options(p, writer=True)
    p.add_argument("--prune", action="store_true", help="remove from the store (and the kernel) every object not in the files")
    p.add_argument("--allow-empty", action="store_true", help="with --prune: allow input with no VirtualService (empties the node)")

    p = _sub(
        sub,
        "delete",
        "remove objects from the host store and their state from the kernel",
        "Remove VirtualServices (NAMESPACE/NAME, or those in -f files) from the host store and\n"
        "their services, real servers and VIPs from the kernel. TCP/SCTP real servers with open\n"
        "connections are drained first (weight 0, up to spec.drain.timeoutSeconds) unless --now.\n"
        "Holds the writer lock.",
    )
    p.add_argument("objects", nargs="*", metavar="NAMESPACE/NAME", help="objects to delete (NAME alone: namespace default)")
    p.add_argument("-f", "--filename", dest="paths", action="append", default=[], metavar="PATH", help="delete the objects these files declare")
    p.add_argument("--now", action="store_true", help="do not drain: delete at once")
    p.add_argument("--node-name", default=socket.gethostname(), help="this node's name, for nodeSelector")
    p.add_argument("--node-label", action="append", default=[], metavar="KEY=VALUE", help="a label of this node; repeatable")
    _add_common(p)
    add_store_options(p, writer=True)

    p = _sub(
        sub,
        "get",
        "the objects in the host store and whether each is programmed on this host",
        "List the VirtualServices in the host store and, for each, whether it is programmed on\n"
        "this host (or why not). -o yaml|json: a v1/List of the objects with status.store.\n"
        "Reads only; never takes the writer lock.",
    )
    p.add_argument("objects", nargs="*", metavar="NAMESPACE/NAME", help="only these objects")
    p.add_argument("--node-name", default=socket.gethostname(), help="this node's name, for nodeSelector")
    p.add_argument("--node-label", action="append", default=[], metavar="KEY=VALUE", help="a label of this node; repeatable")
    _add_common(p, ("text", "yaml", "json"))
    add_store_options(p, writer=False)

    p = _sub(
        sub,
        "show",
        "what vsop owns on this host: VIPs, services, real servers, connections",
        "What vsop owns on this host, read from the kernel: VIPs, IPVS services, real servers with\n"
        "weights and connections, and, when the host agent runs, health and draining. Like\n"
        "`ipvsadm -Ln`, limited to vsop's objects. Nothing is written.",
    )
    _add_common(p)
    p.add_argument(
        "--status-file", default="/run/vsop/agent.json",
        help="the host agent's status (health, file errors, draining), shown when the agent runs",
    )

    from vsop.cli.diagnose import add_parsers as add_diagnose_parsers

    add_diagnose_parsers(sub, "/run/vsop/agent.json", _sub, _add_common)

    p = _sub(
        sub,
        "cleanup",
        "remove everything vsop owns on this host, and nothing else",
        "Remove everything vsop owns on this host: its IPVS services, VIPs and link, ipsets and\n"
        "iptables chains and jumps. Foreign IPVS services, chains, sets and addresses stay.\n"
        "With --dry-run, print the operations (as commands, or -o json) and change nothing.",
    )
    _add_common(p)
    p.add_argument("--dry-run", action="store_true", help="print the commands instead of running them")
    p.add_argument(
        "--restore-sysctls", action="store_true",
        help="also put back the kernel settings vsop changed, to the values found before its first change "
        "(recorded in /run/vsop/sysctls.json); without it they are listed and left as they are",
    )

    p = sub.add_parser(
        "agent",
        help="daemon: keep the host store (or --from DIR) true on this host; in a pod, the in-cluster node agent",
        description=(
            "The host agent. Follows the host store (or --from DIR, a folder someone else manages),\n"
            "reconciles, resyncs periodically to repair drift, runs health checks and drains removed\n"
            "real servers; each sync holds the writer lock, so `vsop apply` / `delete` work while it\n"
            "runs. A file is taken once it is stable over two polls; a file that fails validation, or a\n"
            "folder, file or symlink target that cannot be read, is reported and keeps what the kernel\n"
            "has for its objects (also across restarts); deleting a file removes its objects. SIGTERM\n"
            "stops the agent and leaves the kernel serving. In a pod (KUBERNETES_SERVICE_HOST) or with\n"
            "cluster flags: the in-cluster node agent (DaemonSet); see `vsop agent --help-cluster`."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--from", dest="directory", metavar="DIR", help="follow this folder of VirtualService YAML instead of the host store")
    p.add_argument("--store", metavar="DIR", help="the host store to follow (default $VSOP_STORE or /etc/vsop/virtualservices.d)")
    p.add_argument("--lock", metavar="FILE", help="the writer lock held during each sync (default $VSOP_LOCK or /run/vsop/lock)")
    p.add_argument("--node-name", default=socket.gethostname(), help="this node's name, for nodeSelector")
    p.add_argument("--node-label", action="append", default=[], metavar="KEY=VALUE", help="a label of this node; repeatable")
    p.add_argument("--resync-seconds", type=float, default=30.0, help="full resync period that repairs drift (default 30)")
    p.add_argument("--poll-seconds", type=float, default=1.0, help="how often the folder is checked for changes (default 1)")
    p.add_argument("--sweep-seconds", type=float, default=5.0,
                   help="how often every file is stat-ed; between sweeps a poll stats what its folder's listing says is new, "
                        "so a write in place (same file, folder untouched) is seen within this, or twice this while polls keep finding "
                        "changes (default 5; 0: every poll)")
    p.add_argument("--keep-accept-ra", action="store_true", help=KEEP_ACCEPT_RA_HELP)
    p.add_argument("--status-file", default="/run/vsop/agent.json", help="where the agent writes its state for `vsop show`")
    p.add_argument("--metrics-port", type=int, default=None, metavar="PORT",
                   help="serve Prometheus /metrics (and /healthz, /readyz) on this port (default: off)")
    p.add_argument("--bind-address", default="127.0.0.1", help="address the metrics port listens on (default 127.0.0.1)")
    p.add_argument("-v", "--verbose", action="store_true", help="log every sync, also those that change nothing")
    p.add_argument("-o", "--output", choices=("text", "json"), default="text", help="format of a startup error (the agent logs as text)")
    k = p.add_argument_group(
        "keepalived mode (objects with mode: keepalived)",
        "After each sync the configuration is rendered; when it changed, the candidate is checked with\n"
        "`keepalived -t`, swapped in file by file (atomic renames) and keepalived gets SIGHUP. An invalid\n"
        "candidate leaves the old configuration in place and is reported (log, `vsop show`).",
    )
    k.add_argument("--keepalived-dir", default="/etc/keepalived", metavar="DIR", help="where keepalived.conf (and conf.d/) go (default /etc/keepalived)")
    k.add_argument("--keepalived-pidfile", default="/run/keepalived.pid", metavar="FILE", help="the running keepalived's pidfile, for SIGHUP (default /run/keepalived.pid)")
    k.add_argument("--keepalived-auth-file", metavar="FILE", help="VRRP PASS password (1-8 characters) for IPv4 vrrp_instances; read at each render")
    k.add_argument("--keepalived-layout", choices=("confd", "single"), default="confd", help="keepalived.conf + conf.d/*.conf (default), or one file")
    k.add_argument("--keepalived-binary", default="keepalived", metavar="PATH", help="the keepalived used for `keepalived -t` (default: keepalived on PATH)")

    _sub(
        sub,
        "controller",
        "the in-cluster controller (Deployment): conflicts, conditions, events",
        "The in-cluster controller (a Deployment): decides conflicts between VirtualServices,\n"
        "aggregates the nodes' status into conditions and emits Events. See `vsop controller --help`.",
    )
    render_parser = _sub(
        sub,
        "render",
        "render configuration for another tool: `vsop render keepalived -f PATH`",
        "Render configuration for another tool. Only keepalived for now:\n"
        "`vsop render keepalived -f PATH [--out DIR]`; see `vsop render keepalived --help`.",
    )
    render_parser.add_argument("tool", choices=("keepalived",), help="keepalived: see `vsop render keepalived --help`")
    p = _sub(
        sub,
        "crd",
        "print the CustomResourceDefinition generated from the model",
        "Print the CustomResourceDefinition (virtualservices.vsop.dev) generated from the model,\n"
        "with its validation rules as OpenAPI schema and CEL: `vsop crd | kubectl apply -f -`.\n"
        "-o text prints YAML, -o json the same object as JSON.",
    )
    _add_common(p)
    p = _sub(sub, "version", "print the version", "Print vsop's version (the same as `vsop --version`).")
    _add_common(p)
    return parser


def _node(args: argparse.Namespace) -> Node:
    labels = {"kubernetes.io/hostname": args.node_name}
    for item in args.node_label:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InvalidInput([FieldError(path="--node-label", reason=f"must be KEY=VALUE, got {item!r}")])
        labels[key] = value
    return Node(args.node_name, labels)


def _load(args: argparse.Namespace) -> Loaded:
    stdin_text = read_stdin() if "-" in args.paths else None
    loaded = load_paths(args.paths, stdin_text=stdin_text)
    for note in loaded.skipped:
        print(f"vsop: {note} (not a VirtualService)", file=sys.stderr)
    for warning in loaded.warnings:
        print(f"vsop: warning: {warning}", file=sys.stderr)
    if not loaded.services:  # never an empty desired state: that would remove everything
        raise InvalidInput([FieldError(reason=f"no VirtualService found in {' '.join(args.paths)}")])
    return loaded


def cmd_plan(args: argparse.Namespace) -> int:
    names = Names()
    loaded = _load(args)
    services, held = loaded.services, Held()
    if not args.from_empty:
        from vsop.adapters.real import read_host  # the kernel readers; imported only when a host is read
        from vsop.cli.store import plan_services

        services, held = plan_services(args, loaded.services)  # what `apply` of these files would program
        observed = read_host(names)
    else:
        observed = KernelState()
    desired = desired_state(
        services,
        _node(args),
        names=names,
        node_addresses=observed.node_addresses,
        kernel_version=None if args.from_empty else running_kernel_version(),
    )
    desired = keep_held(desired, observed, held, names)
    given = {vs.ref for vs in loaded.services}  # objects already in the store only warn (see store_cli)
    _refuse_problems(replace(desired, problems=tuple(p for p in desired.problems if p.obj in given)), loaded)
    result = plan(desired.state, observed, names, keep_accept_ra=args.keep_accept_ra)
    _refuse_problems(result, loaded)
    if args.output == "json":
        json.dump(
            {
                "node": args.node_name,
                "fromEmpty": args.from_empty,
                "counts": result.counts(),
                "operations": [
                    {"kind": op.kind, "description": op.describe(), "commands": command_lines(op)} for op in result.ops
                ],
            },
            sys.stdout,
            indent=2,
        )
        print()
        return EXIT_OK
    against = "an empty node" if args.from_empty else f"this host ({args.node_name})"
    if not result.ops:
        elsewhere = len(services) - len(desired.programmed)
        note = f"; {elsewhere} VirtualService(s) are not for node {args.node_name} (nodeSelector)" if elsewhere else ""
        print(f"# Nothing to do: {against} already matches the {len(desired.programmed)} VirtualService(s) it programs{note}.")
        return EXIT_OK
    print(f"# vsop plan against {against}: {len(result.ops)} operation(s) for {len(desired.programmed)} VirtualService(s).")
    print("# Each command below is what vsop does through netlink / iptables-restore.\n")
    sys.stdout.write(render(result.ops))
    return EXIT_OK


def _refuse_problems(desired: Desired | Plan, loaded: Loaded | None = None) -> None:
    """For one-shot commands a conflict or refused VIP is invalid input: nothing is half-applied.

    Each names the file and line of its object and, for a conflict, of the object that keeps the port.
    """
    if desired.problems:
        raise InvalidInput(problem_errors(desired.problems, loaded, lambda p: "spec.ports" if p.reason == "Conflict" else "spec.vip"))


def _op_json(op: ops.Op) -> dict[str, object]:
    return {"kind": op.kind, "description": op.describe(), "commands": command_lines(op)}


def cmd_apply(args: argparse.Namespace) -> int:
    from vsop.cli.store import cmd_apply as apply_to_store

    return apply_to_store(args)


def cmd_delete(args: argparse.Namespace) -> int:
    from vsop.cli.store import cmd_delete as delete_from_store

    return delete_from_store(args)


def cmd_get(args: argparse.Namespace) -> int:
    from vsop.cli.store import cmd_get as get_from_store

    return get_from_store(args)


def _report_conntrack(failures: list[str]) -> None:
    for failure in failures:
        print(f"vsop: warning: UDP conntrack entries not forgotten for {failure}; its clients move when their entries expire", file=sys.stderr)


def cmd_show(args: argparse.Namespace) -> int:
    from vsop.adapters.real import real_kernel
    from vsop.diagnose.show import show_json, show_text

    from vsop.node.execute import changed_sysctls

    names = Names()
    kernel = real_kernel()
    observed = read_observed(kernel, names)
    agent = _agent_status(args.status_file)
    try:
        changed = changed_sysctls(kernel)
    except OSError as exc:
        print(f"vsop: warning: {exc}", file=sys.stderr)
        changed = {}
    if args.output == "json":
        json.dump(show_json(observed, names, agent, changed), sys.stdout, indent=2)
        print()
    else:
        sys.stdout.write(show_text(observed, names, agent, changed))
    return EXIT_OK


def _agent_status(path: str) -> dict[str, object] | None:
    try:
        with open(path, encoding="utf-8") as handle:
            status = json.load(handle)
    except (OSError, ValueError):
        return None
    try:
        import os

        os.kill(int(status.get("pid", 0)), 0)
    except (OSError, ValueError):
        status["stale"] = True  # the agent that wrote it is gone
    return status


def cmd_cleanup(args: argparse.Namespace) -> int:
    if args.dry_run:
        return _cleanup(args)
    from vsop.node.lock import writer_lock

    with writer_lock(on_wait=lambda who: print(f"vsop: waiting for the writer lock held by {who}", file=sys.stderr)):
        return _cleanup(args)


def _cleanup(args: argparse.Namespace) -> int:
    from vsop.node.execute import ExecutionFailed, changed_sysctls, cleanup, restore_sysctls
    from vsop.adapters.real import real_kernel

    names = Names()
    kernel = real_kernel()
    try:
        result = cleanup(kernel, names, dry_run=args.dry_run)
    except ExecutionFailed as exc:
        return output.failure(f"cleanup failed: {exc}; the {exc.applied} operation(s) before it were applied", args.output, applied=exc.applied)
    if args.dry_run:
        return _cleanup_dry_run(args, result.plan, changed_sysctls(kernel), restore_sysctls(kernel, dry_run=True) if args.restore_sysctls else [])
    _report_conntrack(result.conntrack_failures)
    changed = changed_sysctls(kernel)
    restored = restore_sysctls(kernel) if args.restore_sysctls else []
    if args.output == "json":
        json.dump(
            {
                "changed": bool(result.applied or restored),
                "writes": result.writes + len(restored),
                "operations": [_op_json(op) for op in [*result.applied, *restored]],
                "sysctls": {name: {"before": before, "now": now} for name, (before, now) in changed.items()},
                "sysctlsRestored": [op.name for op in restored],
            },
            sys.stdout,
            indent=2,
        )
        print()
        return EXIT_OK
    if result.applied:
        print(f"vsop: removed everything vsop owned: {len(result.applied)} operation(s)")
        for op in result.applied:
            print(f"  {op.kind:<18} {op.describe()}")
    else:
        print("vsop: nothing of vsop's on this host (0 writes)")
    if restored:
        print(f"vsop: restored {len(restored)} kernel setting(s) to the values found before vsop's first change:")
        for op in restored:
            print(f"  {op.name}={op.value} (was {op.previous})")
    elif changed and not args.restore_sysctls:
        print("vsop: kernel settings vsop changed, left as they are (--restore-sysctls puts back the values found before):")
        for name, (before, now) in changed.items():
            print(f"  {name}: found {before}, now {now if now is not None else '(gone)'}")
    return EXIT_OK


def _cleanup_dry_run(args: argparse.Namespace, the_plan: Plan, changed: dict[str, tuple[str, str | None]], restores: list[ops.SetSysctl]) -> int:
    """What cleanup would remove, and the kernel settings it would put back (--restore-sysctls) or leave."""
    if args.output == "json":
        json.dump(
            {
                "dryRun": True, "counts": the_plan.counts(), "operations": [_op_json(op) for op in [*the_plan.ops, *restores]],
                "sysctls": {name: {"before": before, "now": now} for name, (before, now) in changed.items()},
                "sysctlsRestored": [op.name for op in restores],
            },
            sys.stdout, indent=2,
        )
        print()
        return EXIT_OK
    sys.stdout.write(render(the_plan.ops) if the_plan.ops else "# Nothing of vsop's on this host.\n")
    if restores:
        sys.stdout.write("\n# Kernel settings put back to the values found before vsop's first change (--restore-sysctls);\n"
                         "# forwarding goes off before accept_ra goes back.\n")
        for op in restores:
            sys.stdout.write(f"sysctl -w {op.name}={op.value}  # now {op.previous}\n")
    elif changed and not args.restore_sysctls:
        sys.stdout.write("\n# Kernel settings vsop changed, left as they are (--restore-sysctls would put back the values found before):\n")
        for name, (before, now) in changed.items():
            sys.stdout.write(f"#   {name}: found {before}, now {now if now is not None else '(gone)'}\n")
    return EXIT_OK


def cmd_agent(args: argparse.Namespace) -> int:
    from pathlib import Path

    from vsop.adapters.conntrack import ConntrackTool
    from vsop.adapters.real import real_kernel
    from vsop.host.agent import AgentConfig, run_agent
    from vsop.keepalived.writer import KeepalivedConfig, KeepalivedWriter
    from vsop.cli.logs import setup_logging

    from vsop.node.lock import lock_path
    from vsop.host.store import store_path

    setup_logging(args.verbose)
    if args.directory:
        directory = Path(args.directory)
        if not directory.is_dir():
            raise InvalidInput([FieldError(path="--from", reason=f"{directory} is not a folder")])
    else:
        directory = store_path(args.store)
        try:
            directory.mkdir(parents=True, exist_ok=True)  # `vsop apply` fills it; the agent may start first
        except OSError:
            pass  # a read-only /etc: the agent reports the missing folder and keeps what the kernel has
    config = AgentConfig(
        directory=directory,
        lock=lock_path(args.lock),
        node=_node(args),
        resync_seconds=args.resync_seconds,
        poll_seconds=args.poll_seconds,
        sweep_seconds=args.sweep_seconds,
        status_file=Path(args.status_file) if args.status_file else None,
        keep_accept_ra=args.keep_accept_ra,
    )
    keepalived = KeepalivedWriter(
        KeepalivedConfig(
            directory=Path(args.keepalived_dir),
            pidfile=Path(args.keepalived_pidfile),
            layout=args.keepalived_layout,
            auth_file=Path(args.keepalived_auth_file) if args.keepalived_auth_file else None,
            binary=args.keepalived_binary,
        )
    )
    kernel = real_kernel()
    kernel.ipvs.probe()  # say it now, not at the first sync: this kernel cannot run the agent
    return run_agent(kernel, config, ConntrackTool(), keepalived=keepalived, metrics_port=args.metrics_port, bind_address=args.bind_address)


def cmd_crd(args: argparse.Namespace) -> int:
    from vsop.api.crd import crd, crd_yaml

    if args.output == "json":
        json.dump(crd(), sys.stdout, indent=2)
        print()
    else:
        sys.stdout.write(crd_yaml())
    return EXIT_OK


def cmd_version(args: argparse.Namespace) -> int:
    if args.output == "json":
        print(json.dumps({"version": __version__}))
    else:
        print(f"vsop {__version__}")
    return EXIT_OK


def cmd_explain(args: argparse.Namespace) -> int:
    from vsop.cli.diagnose import cmd_explain as run

    return run(args)


def cmd_doctor(args: argparse.Namespace) -> int:
    from vsop.cli.diagnose import cmd_doctor as run

    return run(args)


COMMANDS = {
    "plan": cmd_plan,
    "explain": cmd_explain,
    "doctor": cmd_doctor,
    "apply": cmd_apply,
    "delete": cmd_delete,
    "get": cmd_get,
    "show": cmd_show,
    "cleanup": cmd_cleanup,
    "agent": cmd_agent,
    "crd": cmd_crd,
    "version": cmd_version,
}


CLUSTER_ONLY_FLAGS = (
    "--kubeconfig", "--context", "--namespace", "-n", "--health-port", "--metrics-port", "--bind-address",
    "--proc-sys", "--debounce-seconds", "--help-cluster",
)


def _in_cluster(argv: Sequence[str]) -> int | None:
    """`vsop controller ...`, and `vsop agent ...` in a pod or with cluster flags, belong to the Kubernetes layer."""
    import os

    if not argv or argv[0] not in ("agent", "controller"):
        return None
    rest = list(argv[1:])
    if argv[0] == "agent":
        def given(flag: str) -> bool:
            return any(a == flag or a.startswith(flag + "=") for a in rest)

        host = given("--from") or given("--store") or rest in (["-h"], ["--help"])
        cluster = bool(os.environ.get("KUBERNETES_SERVICE_HOST")) or any(given(flag) for flag in CLUSTER_ONLY_FLAGS)
        if host or not cluster:
            return None
    if argv[0] == "agent":
        from vsop.kube.agent import main as agent_main

        return agent_main([a for a in rest if a != "--help-cluster"] + (["--help"] if "--help-cluster" in rest else []))
    from vsop.kube.controller import main as controller_main

    return controller_main(rest)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    delegated = _in_cluster(argv)
    if delegated is not None:
        return delegated
    if argv[:2] == ["render", "keepalived"]:
        from vsop.cli.render import main as render_keepalived

        return render_keepalived(argv[2:])
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except output.UsageError as exc:
        return output.usage(exc, argv)
    fmt = getattr(args, "output", "text")
    fmt = "json" if fmt == "json" else "text"
    try:
        return COMMANDS[args.command](args)
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
