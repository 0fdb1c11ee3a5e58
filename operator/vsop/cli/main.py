"""The `vsop` command line: builds the parser from each command group's `register`, runs one
command, prints its Result once (vsop.cli.output.emit) and maps errors to exit codes.

Exit codes: 0 done, 1 runtime failure, 2 invalid input (nothing was changed).
Thin on purpose: each command group is a module (plan, store, show, diagnose, cleanup, render,
crd) with `register(subparsers)` and `run(args) -> Result`; what several share is vsop.cli.common.
Nothing imports this module but the `vsop` entry point.
"""

from __future__ import annotations

import argparse
import socket
import sys
from typing import Sequence

from vsop import __version__
from vsop.core.plan import PlanError
from vsop.core.sysctls import KEEP_ACCEPT_RA_HELP
from vsop.adapters.base import OperationFailed
from vsop.api.errors import FieldError, InvalidInput, KernelUnsupported
from vsop.cli import cleanup, crd, diagnose, output, plan, render, show, store
from vsop.cli.common import add_route_table, node, subcommand
from vsop.cli.common import names as common_names
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
    add_route_table(p)
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
    b = p.add_argument_group(
        "announce: bgp (BIRD 2)",
        "With --bgp-speaker, bird.conf is rendered from that BGPSpeaker and the objects' bgp options at each resync and\n"
        "whenever an object with bgp options changes; a changed file is checked with `bird -p`, renamed into place and\n"
        "BIRD reconfigured through its control socket (see `vsop render bird --help`). The routes themselves are in\n"
        "--route-table whether or not this is given.",
    )
    b.add_argument("--bgp-speaker", metavar="FILE", help="the BGPSpeaker (YAML) this node's BIRD uses")
    b.add_argument("--bird-conf", default="/etc/vsop/bird.conf", metavar="FILE", help="the bird.conf vsop writes (default /etc/vsop/bird.conf)")
    b.add_argument("--bird-socket", default="/run/vsop/bird.ctl", metavar="SOCKET", help="BIRD's control socket (default /run/vsop/bird.ctl)")

    subcommand(
        sub,
        "controller",
        "the in-cluster controller (Deployment): conflicts, conditions, events",
        "The in-cluster controller (a Deployment): decides conflicts between VirtualServices,\n"
        "aggregates the nodes' status into conditions and emits Events. See `vsop controller --help`.",
    )
    render.register(sub)
    crd.register(sub)  # crd, version
    return parser


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
        node=node(args),
        resync_seconds=args.resync_seconds,
        poll_seconds=args.poll_seconds,
        sweep_seconds=args.sweep_seconds,
        status_file=Path(args.status_file) if args.status_file else None,
        keep_accept_ra=args.keep_accept_ra,
        names=common_names(args),
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
    bird = None
    if args.bgp_speaker:
        from vsop.bgp.writer import BirdAnnouncer, BirdWriter

        bird = BirdAnnouncer(args.bgp_speaker, BirdWriter(args.bird_conf, args.bird_socket), names=config.names)
    kernel = real_kernel()
    kernel.ipvs.probe()  # say it now, not at the first sync: this kernel cannot run the agent
    return run_agent(
        kernel, config, ConntrackTool(), keepalived=keepalived, metrics_port=args.metrics_port, bind_address=args.bind_address, bird=bird
    )


COMMANDS = {
    "plan": plan.run,
    "explain": diagnose.run,
    "doctor": diagnose.run,
    "apply": store.run,
    "delete": store.run,
    "get": store.run,
    "show": show.run,
    "cleanup": cleanup.run,
    "agent": cmd_agent,
    "crd": crd.run,
    "version": crd.run,
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
        return render.main(argv[2:])
    if argv[:2] == ["render", "bird"]:
        from vsop.cli import bird

        return bird.main(argv[2:])
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except output.UsageError as exc:
        return output.usage(exc, argv)
    fmt = getattr(args, "output", "text")
    fmt = "json" if fmt == "json" else "text"
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
