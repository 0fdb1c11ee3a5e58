"""`vsop agent` and `vsop controller`: their flags (declared once, in `FLAGS`) and their start-up.

Owns the three long-running commands' surface: the host agent (`vsop agent`, vsop.host.agent),
the in-cluster node agent (`vsop agent` in a pod or with cluster flags, vsop.kube.agent) and the
controller (`vsop controller`, vsop.kube.controller). `register(subparsers)` adds `agent` and
`controller` to the main parser and `run(args)` runs them; `delegated(argv)` sends the in-cluster
ones to their own parsers (`agent_main`, `controller_main`: exit 0 when stopped by a signal, 1 on a
runtime failure, 2 on invalid flags), which share one start-up (`_serve`: credentials, probe and
metrics endpoints, kopf and the reconcile loop until a signal).
Imports the kube layer only when a cluster command runs (kopf is not loaded by `vsop plan`).
Must not import: vsop.cli.main (it imports this), kopf, kubernetes at module level.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import gc
import logging
import os
import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

from vsop.api.errors import FieldError, InvalidInput
from vsop.cli.common import ALLOW_VIP_HELP, VIP_POLICY_HELP_HOST, add_route_table, claim_rule, node, subcommand
from vsop.cli.output import exits
from vsop.cli.common import names as names_from_flags
from vsop.core.claims import DEFAULT_GRACE_SECONDS, POLICIES
from vsop.core.sysctls import KEEP_ACCEPT_RA_HELP
from vsop.keepalived.vrrp import TRACK_DIR
from vsop.keepalived.writer import DEFAULT_PIDFILE, KeepalivedConfig, KeepalivedWriter

if TYPE_CHECKING:
    from vsop.adapters.conntrack import ConntrackCleaner
    from vsop.kube.client import Connection
    from vsop.adapters.kernel import Kernel

HOST, CLUSTER, CONTROLLER = "host", "cluster", "controller"
FAKE_KERNEL_ENV = "VSOP_FAKE_KERNEL"  # test-only: "1" runs the in-cluster agent on in-memory fake adapters
PROC_SYS = "/proc/sys"
KEEPALIVED, BGP = "keepalived", "bgp"  # argument groups

AGENT_HELP = "daemon: keep the host store (or --from DIR) true on this host; in a pod, the in-cluster node agent"
AGENT_DESCRIPTION = (
    "The host agent. Follows the host store (or --from DIR, a folder someone else manages),\n"
    "reconciles, resyncs periodically to repair drift, runs health checks and drains removed\n"
    "real servers; each sync holds the writer lock, so `vsop apply` / `delete` work while it\n"
    "runs. A file is taken once it is stable over two polls; a file that fails validation, or a\n"
    "folder, file or symlink target that cannot be read, is reported and keeps what the kernel\n"
    "has for its objects (also across restarts); deleting a file removes its objects. SIGTERM\n"
    "stops the agent and leaves the kernel serving. In a pod (KUBERNETES_SERVICE_HOST) or with\n"
    "cluster flags: the in-cluster node agent (DaemonSet); see `vsop agent --help-cluster`."
)
CLUSTER_DESCRIPTION = (
    "The in-cluster node agent (DaemonSet): watches VirtualServices, the EndpointSlices of\n"
    "their serviceRef Services and this node's Node, and programs this node's kernel.\n"
    "Writes only its own NodeReport (one object per node, read by the controller), and Events."
)
CONTROLLER_HELP = "the in-cluster controller (Deployment): conflicts, conditions, events"
CONTROLLER_DESCRIPTION = (
    "The controller (a Deployment of two replicas; the holder of a Lease writes, the other stands by):\n"
    "decides conflicts between VirtualServices,\n"
    "sums up what every node reports in its NodeReport into the Ready, Programmed, Degraded and\n"
    "Conflict conditions and status.backends, and posts Events. It never touches a kernel."
)
GROUPS = {
    (KEEPALIVED, HOST): ("keepalived mode (objects with mode: keepalived)",
           "After each sync the configuration is rendered; when it changed, the candidate is checked with\n"
           "`keepalived -t`, swapped in file by file (atomic renames) and keepalived gets SIGHUP. An invalid\n"
           "candidate leaves the old configuration in place and is reported (log, `vsop show`)."),
    (KEEPALIVED, CLUSTER): ("keepalived mode (objects with mode: keepalived; off unless --keepalived-dir is given)",
              "After each successful sync keepalived's configuration for this node (serviceRef endpoints included) is\n"
              "rendered; when it changed it is checked with `keepalived -t`, swapped in file by file and keepalived\n"
              "gets SIGHUP. An invalid candidate changes nothing and is reported in this node's NodeReport and an Event."),
    (BGP, HOST): ("announce: bgp (BIRD 2)",
                  "With --bgp-speaker, bird.conf is rendered from that BGPSpeaker and the objects' bgp options at each resync and\n"
                  "whenever an object with bgp options changes; a changed file is checked with `bird -p`, renamed into place and\n"
                  "BIRD reconfigured through its control socket (see `vsop render bird --help`). The routes themselves are in\n"
                  "--route-table whether or not this is given."),
    (BGP, CLUSTER): ("announce: bgp (BIRD 2; off unless --bgp-speaker or --bgp-speakers is given)",
                     "bird.conf is rendered from the BGPSpeaker and the objects' bgp options at each resync and whenever an\n"
                     "object with bgp options changes, checked with `bird -p`, renamed into place and BIRD (a container of the same\n"
                     "pod, deploy/bgp) reconfigured through the shared control socket; its sessions are served as metrics.\n"
                     "With --bgp-speakers, a peer's passwordSecretRef is read from that Secret in the agent's namespace\n"
                     "($POD_NAMESPACE), again once a resync period old; a missing one is a Warning Event on the BGPSpeaker."),
}
# Flags no host agent has: given to `vsop agent`, they make it the in-cluster one.
CLUSTER_ONLY_FLAGS = (
    "--kubeconfig", "--context", "--namespace", "-n", "--health-port", "--metrics-port", "--bind-address",
    "--health-bind-address", "--metrics-bind-address",
    "--proc-sys", "--debounce-seconds", "--help-cluster", "--bgp-speakers", "--vrrp-node-peers", "--no-vrrp-node-peers",
)


@dataclass(frozen=True)
class Flag:
    """One flag of the long-running commands: its names and arguments, and per command (host agent,
    in-cluster agent, controller) its default and help (callables: asked when the parser is built);
    a command without an entry has no such flag."""

    names: tuple[str, ...]
    kwargs: dict[str, Any] = field(default_factory=dict)
    by: dict[str, tuple[Any, ...]] = field(default_factory=dict)  # command -> (default, help[, more arguments])
    group: str | None = None
    shared: Callable[[argparse.ArgumentParser], None] | None = None  # declared with other commands (vsop.cli.common)


def _f(*flags: str, host: tuple[Any, ...] | None = None, cluster: tuple[Any, ...] | None = None,
       controller: tuple[Any, ...] | None = None, group: str | None = None,
       shared: Callable[[argparse.ArgumentParser], None] | None = None, **kwargs: Any) -> Flag:
    by = {name: value for name, value in ((HOST, host), (CLUSTER, cluster), (CONTROLLER, controller)) if value is not None}
    return Flag(flags, kwargs, by, group, shared)


_RESYNC_CLUSTER = "least time between two turns woken by changes; a change after a quiet spell is handled at once (default: 0.1)"
_NAMESPACE = "watch VirtualServices in this namespace; repeatable (default: all"
_KUBECONFIG = "kubeconfig file (default: in-cluster service account, else $KUBECONFIG)"
# kube-proxy's split: /healthz on every address (--healthz-bind-address 0.0.0.0:10256: the kubelet probes the
# pod IP), /metrics on loopback (--metrics-bind-address 127.0.0.1:10249) unless opened.
_HEALTH_BIND = ("address /healthz and /readyz listen on (default: 0.0.0.0, so the kubelet's probes reach them on the pod IP; "
                "they say only alive and ready)")
_METRICS_BIND = ("address /metrics listens on (default: 127.0.0.1, as kube-proxy's metrics; 0.0.0.0 lets Prometheus scrape it "
                 "from other hosts). When --metrics-port equals --health-port, all three listen here")
_BOTH_BIND = "both addresses at once: --health-bind-address and --metrics-bind-address"
_VIP_POLICY_CLUSTER = ("pools (default): a VIP must lie in a VipPool granting the object's namespace; any: every VIP "
                       "(the behaviour before VipPools); a cloud metadata address needs a pool naming it under both")
_CLAIM_GRACE = ("a deleted VirtualService's claim on its VIP:ports is held this long for its re-creation under the same "
                "namespace and name: any other object is refused it meanwhile (default: 300; 0: not held); give the agents and "
                "the controller the same")

# Every flag of `vsop agent` (on a host and in the cluster) and `vsop controller`, in --help order: a table.
FLAGS: tuple[Flag, ...] = (
    _f("--from", dest="directory", metavar="DIR", host=(None, "follow this folder of VirtualService YAML instead of the host store")),
    _f("--store", metavar="DIR", host=(None, "the host store to follow (default $VSOP_STORE or /etc/vsop/virtualservices.d)")),
    _f("--lock", metavar="FILE", host=(None, "the writer lock held during each sync (default $VSOP_LOCK or /run/vsop/lock)"),
       cluster=(None, "the host's writer lock, held during each sync (default: $VSOP_LOCK or /run/vsop/lock, "
                      "when its folder exists: the node's /run/vsop mounted)")),
    _f("--node-name", host=(socket.gethostname, "this node's name, for nodeSelector"),
       cluster=(lambda: os.environ.get("NODE_NAME", ""), "this node's name (default: $NODE_NAME)")),
    _f("--node-label", action="append", metavar="KEY=VALUE", host=([], "a label of this node; repeatable")),
    _f("--namespace", "-n", dest="namespaces", action="append", metavar="NS", cluster=([], _NAMESPACE + " namespaces)"),
       controller=([], _NAMESPACE + "); give the agents the same")),
    _f("--resync-seconds", type=float, host=(30.0, "full resync period that repairs drift (default 30)"),
       cluster=(30.0, "full resync period, repairs drift (default: 30)"), controller=(30.0, "full reconcile period (default: 30)")),
    _f("--debounce-seconds", type=float, cluster=(0.1, _RESYNC_CLUSTER), controller=(0.1, _RESYNC_CLUSTER)),
    _f("--poll-seconds", type=float, host=(1.0, "how often the folder is checked for changes (default 1)")),
    _f("--sweep-seconds", type=float, host=(5.0, "how often every file is stat-ed; between sweeps a poll stats what its folder's listing says is new, "
                                                  "so a write in place (same file, folder untouched) is seen within this, or twice this while polls keep finding "
                                                  "changes; at least 20 times the CPU time of the last sweep apart (default 5; 0: every poll)")),
    _f("--keep-accept-ra", action="store_true", host=(False, KEEP_ACCEPT_RA_HELP), cluster=(False, KEEP_ACCEPT_RA_HELP)),
    _f("--route-table", host=(None, ""), shared=add_route_table),
    _f("--vip-policy", choices=POLICIES, host=("any", VIP_POLICY_HELP_HOST), cluster=("pools", _VIP_POLICY_CLUSTER),
       controller=("pools", _VIP_POLICY_CLUSTER + "; give the agents the same")),
    _f("--claim-grace-seconds", type=float, cluster=(DEFAULT_GRACE_SECONDS, _CLAIM_GRACE), controller=(DEFAULT_GRACE_SECONDS, _CLAIM_GRACE)),
    _f("--allow-vip", action="append", metavar="ADDRESS", host=([], ALLOW_VIP_HELP)),
    _f("--status-file", host=("/run/vsop/agent.json", "where the agent writes its state for `vsop show`")),
    _f("--state-file", metavar="FILE", host=("/run/vsop/state.json", "health verdicts and drains kept across restarts, and read by "
                                                                     "apply and delete (default /run/vsop/state.json; '' keeps nothing)"),
       cluster=(None, "health verdicts and drains kept across restarts (default: /run/vsop/state.json when the node's /run/vsop is mounted)")),
    _f("--health-port", type=int, cluster=(9710, "port of /healthz and /readyz (default: 9710)"),
       controller=(9720, "port of /healthz and /readyz (default: 9720)")),
    _f("--metrics-port", type=int, host=(None, "serve Prometheus /metrics (and /healthz, /readyz) on this port (default: off)", {"metavar": "PORT"}),
       cluster=(9711, "port of /metrics (default: 9711; may equal --health-port)"),
       controller=(9721, "port of /metrics (default: 9721; may equal --health-port)")),
    _f("--bind-address", host=("127.0.0.1", "address the metrics port listens on (default 127.0.0.1)"),
       cluster=(None, _BOTH_BIND), controller=(None, _BOTH_BIND)),
    _f("--health-bind-address", cluster=("0.0.0.0", _HEALTH_BIND), controller=("0.0.0.0", _HEALTH_BIND)),
    _f("--metrics-bind-address", cluster=("127.0.0.1", _METRICS_BIND), controller=("127.0.0.1", _METRICS_BIND)),
    _f("--kubeconfig", cluster=(None, _KUBECONFIG), controller=(None, _KUBECONFIG)),
    _f("--context", cluster=(None, "kubeconfig context"), controller=(None, "kubeconfig context")),
    _f("--proc-sys", metavar="DIR", cluster=(PROC_SYS, "where the host's /proc/sys is writable (default: /proc/sys; in a pod, the hostPath mount of /proc/sys/net)")),
    _f("--load-balancer-class", controller=("vsop.dev/ipvs", "serve type: LoadBalancer Services of this spec.loadBalancerClass "
                                                             "(default: vsop.dev/ipvs); other classes are never touched")),
    _f("--default-load-balancer", action="store_true",
       controller=(False, "serve LoadBalancer Services without a loadBalancerClass too (only if no other load balancer does)")),
    _f("--load-balancers", action=argparse.BooleanOptionalAction,
       controller=(True, "serve LoadBalancer Services from VipPools (default: on; --no-load-balancers: no Service or VipPool watches)")),
    _f("--leader-elect", action=argparse.BooleanOptionalAction,
       controller=(True, "hold a Lease to write; a replica without it stands by (default: on; off only for a single replica)")),
    _f("--lease-namespace", controller=(lambda: os.environ.get("POD_NAMESPACE") or _leader().LEASE_NAMESPACE,
                                        lambda: f"namespace of the Lease (default: $POD_NAMESPACE, else {_leader().LEASE_NAMESPACE})")),
    _f("--lease-name", controller=(lambda: _leader().LEASE_NAME, lambda: f"name of the Lease (default: {_leader().LEASE_NAME})")),
    _f("--lease-duration-seconds", type=float, controller=(15.0, "how long a lease lasts unrenewed (default: 15)")),
    _f("--renew-deadline-seconds", type=float, controller=(10.0, "a leader that cannot renew for this long stops (default: 10)")),
    _f("--retry-period-seconds", type=float, controller=(2.0, "time between two tries (default: 2)")),
    _f("-v", "--verbose", action="store_true", host=(False, "log every sync, also those that change nothing"),
       cluster=(False, "log every kernel operation and kopf's own messages"), controller=(False, "log kopf's own messages too")),
    _f("-o", "--output", choices=("text", "json"), host=("text", "format of a startup error (the agent logs as text)")),
    _f("--keepalived-dir", metavar="DIR", group=KEEPALIVED, host=("/etc/keepalived", "where keepalived.conf (and conf.d/) go (default /etc/keepalived)"),
       cluster=(None, "where keepalived.conf (and conf.d/) go; enables keepalived mode")),
    _f("--keepalived-pidfile", metavar="FILE", group=KEEPALIVED,
       host=(str(DEFAULT_PIDFILE), "the running keepalived's pidfile, for SIGHUP (default /run/keepalived.pid)"),
       cluster=(None, f"the running keepalived's pidfile, for SIGHUP (default {DEFAULT_PIDFILE})")),
    _f("--keepalived-auth-file", metavar="FILE", group=KEEPALIVED,
       host=(None, "VRRP PASS password (1-8 characters) for IPv4 vrrp_instances; read at each render"),
       cluster=(None, "VRRP PASS password (1-8 characters), a key of a mounted Secret; read at each render; absent: no authentication")),
    _f("--keepalived-layout", choices=("confd", "single"), group=KEEPALIVED,
       host=("confd", "keepalived.conf + conf.d/*.conf (default), or one file"),
       cluster=(None, "keepalived.conf + conf.d/*.conf (default), or one file")),
    _f("--keepalived-binary", metavar="PATH", group=KEEPALIVED,
       host=("keepalived", "the keepalived used for `keepalived -t` (default: keepalived on PATH)"),
       cluster=(None, "the keepalived used for `keepalived -t` (default: keepalived on PATH)")),
    _f("--vrrp-track-dir", metavar="DIR", group=KEEPALIVED,
       host=(TRACK_DIR, f"the track files of mode: ipvs objects announced by VRRP, one per object (default {TRACK_DIR})"),
       cluster=(None, f"the track files of mode: ipvs objects announced by VRRP, one per object (default {TRACK_DIR})")),
    _f("--vrrp-node-peers", action=argparse.BooleanOptionalAction, group=KEEPALIVED,
       cluster=(None, "watch every Node: an announce: vrrp object naming no vrrp.peers gets the InternalIPs of the Nodes it selects "
                      "(unicast VRRP); default: on with --keepalived-dir; --no-vrrp-node-peers: multicast, this node's Node watched only")),
    _f("--bgp-speaker", metavar="FILE", group=BGP, host=(None, "the BGPSpeaker (YAML) this node's BIRD uses"),
       cluster=(None, "the BGPSpeaker (YAML, e.g. a mounted ConfigMap key) this node's BIRD uses; enables BIRD's configuration")),
    _f("--bgp-speakers", action="store_true", group=BGP,
       cluster=(False, "watch BGPSpeaker objects: this node's BIRD uses the one whose nodeSelector selects it (the oldest when "
                       "several do), routerID defaulting to the node's IPv4 InternalIP; instead of --bgp-speaker")),
    _f("--bird-conf", metavar="FILE", group=BGP, host=("/etc/vsop/bird.conf", "the bird.conf vsop writes (default /etc/vsop/bird.conf)"),
       cluster=("/etc/bird/bird.conf", "the bird.conf vsop writes, in a volume BIRD's container reads (default /etc/bird/bird.conf, "
                                       "as deploy/bgp mounts it)")),
    _f("--bird-log", choices=("syslog", "stderr"), group=BGP,
       host=("syslog", "where the rendered bird.conf has BIRD log: syslog (default) or stderr"),
       cluster=("stderr", "where the rendered bird.conf has BIRD log: stderr (default: `kubectl logs POD -c bird`; a container has "
                          "no syslog) or syslog")),
    _f("--bird-socket", metavar="SOCKET", group=BGP, host=("/run/vsop/bird.ctl", "BIRD's control socket (default /run/vsop/bird.ctl)"),
       cluster=("/run/bird/bird.ctl", "BIRD's control socket, in a volume shared with BIRD's container (default /run/bird/bird.ctl, "
                                      "as deploy/bgp mounts it)")),
)


def _leader() -> Any:
    """vsop.kube.leader, when the controller's flags are built (it loads the Kubernetes client)."""
    from vsop.kube import leader

    return leader


# What a flag's value is called in --help, where its name alone would print a two-word metavar.
METAVARS = {"--node-name": "NODE", "--kubeconfig": "FILE", "--load-balancer-class": "CLASS", "--lease-namespace": "NAMESPACE",
            "--lease-name": "NAME", "--bind-address": "ADDRESS", "--context": "CONTEXT", "--status-file": "FILE",
            "--health-bind-address": "ADDRESS", "--metrics-bind-address": "ADDRESS"}


def _metavar(flag: Flag) -> dict[str, str]:
    """One word per value, as the other commands print (`--node-name NODE`, `--resync-seconds SECONDS`)."""
    if "metavar" in flag.kwargs or flag.kwargs.get("action") is not None or "choices" in flag.kwargs:
        return {}
    name = flag.names[0]
    if name in METAVARS:
        return {"metavar": METAVARS[name]}
    for suffix, word in (("-seconds", "SECONDS"), ("-port", "PORT"), ("-file", "FILE"), ("-dir", "DIR")):
        if name.endswith(suffix):
            return {"metavar": word}
    return {}


# The daemons' exit codes, in their --help.
DAEMON_EXITS = exits(ok="stopped by SIGTERM or SIGINT (the kernel keeps serving what was programmed)",
                     failure="runtime failure: this kernel cannot run it (no IPVS), or the API server cannot be reached at start",
                     invalid="invalid flags or input: nothing was changed")


def add_flags(parser: argparse.ArgumentParser, command: str) -> None:
    """The flags of `command` (HOST, CLUSTER or CONTROLLER), from `FLAGS`."""
    groups: dict[str, Any] = {}
    for flag in FLAGS:
        if command not in flag.by:
            continue
        if flag.shared is not None:
            flag.shared(parser)
            continue
        default, help, *more = flag.by[command]
        default = default() if callable(default) else default
        help = help() if callable(help) else help
        target: Any = parser
        if flag.group is not None:
            if flag.group not in groups:
                groups[flag.group] = parser.add_argument_group(*GROUPS[flag.group, command])
            target = groups[flag.group]
        extra = more[0] if more else {}
        target.add_argument(*flag.names, default=default, help=help, **flag.kwargs, **({**_metavar(flag), **extra}))


def build_parser(command: str = CLUSTER) -> argparse.ArgumentParser:
    """The own parser of the in-cluster agent (CLUSTER) or the controller (CONTROLLER)."""
    name, description = ("agent", CLUSTER_DESCRIPTION) if command == CLUSTER else ("controller", CONTROLLER_DESCRIPTION)
    parser = argparse.ArgumentParser(prog=f"vsop {name}", description=description, epilog=DAEMON_EXITS,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_flags(parser, command)
    return parser


def register(subparsers: Any) -> None:
    """`agent` (the host agent's flags; the in-cluster one is `delegated`) and `controller` in the main parser."""
    p = subparsers.add_parser("agent", help=AGENT_HELP, description=AGENT_DESCRIPTION, epilog=DAEMON_EXITS,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    add_flags(p, HOST)
    subcommand(
        subparsers,
        "controller",
        CONTROLLER_HELP,
        "The in-cluster controller (a Deployment): decides conflicts between VirtualServices,\n"
        "aggregates the nodes' status into conditions and emits Events. See `vsop controller --help`.",
        exit_codes=DAEMON_EXITS,
    )


def run(args: argparse.Namespace) -> int:
    """`vsop agent` on a host (`vsop controller` is always `delegated` before the main parser)."""
    if args.command == "controller":
        return controller_main([])
    return run_host_agent(args)


# --- the host agent --------------------------------------------------------------------------


def run_host_agent(args: argparse.Namespace) -> int:
    from vsop.adapters.conntrack import ConntrackTool
    from vsop.adapters.real import real_kernel
    from vsop.node.logs import setup_logging
    from vsop.host.agent import AgentConfig, run_agent
    from vsop.host.store import store_path
    from vsop.node.lock import lock_path

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
        state_file=Path(args.state_file) if args.state_file else None,
        keep_accept_ra=args.keep_accept_ra,
        names=names_from_flags(args),
        claims=claim_rule(args),
    )
    keepalived = keepalived_writer(args)
    bird = bird_announcer(args, config.names) if args.bgp_speaker else None
    kernel = real_kernel()
    kernel.ipvs.probe()  # say it now, not at the first sync: this kernel cannot run the agent
    _freeze_heap_at_exit()
    return run_agent(
        kernel, config, ConntrackTool(), keepalived=keepalived, metrics_port=args.metrics_port, bind_address=args.bind_address, bird=bird
    )


# --- in the cluster ----------------------------------------------------------------------------


def delegated(argv: Sequence[str]) -> int | None:
    """`vsop controller ...`, and `vsop agent ...` in a pod or with cluster flags, belong to the Kubernetes layer."""
    if not argv or argv[0] not in ("agent", "controller"):
        return None
    rest = list(argv[1:])
    if argv[0] == "controller":
        return controller_main(rest)

    def given(flag: str) -> bool:
        return any(a == flag or a.startswith(flag + "=") for a in rest)

    host = given("--from") or given("--store") or rest in (["-h"], ["--help"])
    cluster = bool(os.environ.get("KUBERNETES_SERVICE_HOST")) or any(given(flag) for flag in CLUSTER_ONLY_FLAGS)
    if host or not cluster:
        return None
    return agent_main([a for a in rest if a != "--help-cluster"] + (["--help"] if "--help-cluster" in rest else []))


def bird_announcer(args: argparse.Namespace, names: Any = None) -> Any:
    """The BIRD announcer --bgp-speaker asks for (vsop.bgp.writer), on --bird-conf and --bird-socket."""
    from vsop.bgp.writer import BirdAnnouncer, BirdWriter

    return BirdAnnouncer(args.bgp_speaker or "BGPSpeaker", BirdWriter(args.bird_conf, args.bird_socket), names=names, log=args.bird_log)


def keepalived_writer(args: argparse.Namespace) -> KeepalivedWriter | None:
    """The writer the --keepalived-* flags ask for; None without --keepalived-dir. ValueError: flags without it."""
    given = [flag for flag, value in (("--keepalived-pidfile", args.keepalived_pidfile), ("--keepalived-auth-file", args.keepalived_auth_file),
                                      ("--keepalived-layout", args.keepalived_layout), ("--keepalived-binary", args.keepalived_binary),
                                      ("--vrrp-track-dir", args.vrrp_track_dir)) if value]
    if not args.keepalived_dir:
        if given:
            raise ValueError(f"{', '.join(given)} need --keepalived-dir")
        return None
    return KeepalivedWriter(
        KeepalivedConfig(
            directory=Path(args.keepalived_dir),
            pidfile=Path(args.keepalived_pidfile) if args.keepalived_pidfile else DEFAULT_PIDFILE,
            layout=args.keepalived_layout or "confd",
            auth_file=Path(args.keepalived_auth_file) if args.keepalived_auth_file else None,
            binary=args.keepalived_binary or "keepalived",
            track_dir=Path(args.vrrp_track_dir or TRACK_DIR),
        )
    )


def _parse(command: str, argv: Sequence[str] | None) -> argparse.Namespace | int:
    """The flags, checked; an exit code when they are not usable (or --help was asked)."""
    parser = build_parser(command)
    try:
        args = parser.parse_args(list(argv) if argv is not None else None)
    except SystemExit as exc:  # --help (0) or a usage error (2), already printed by argparse
        return 0 if not exc.code else 2
    if command == CLUSTER and not args.node_name:
        print("vsop agent: --node-name (or $NODE_NAME) is required in the cluster", flush=True)
        return 2
    if args.resync_seconds <= 0 or args.debounce_seconds < 0:
        print(f"{parser.prog}: --resync-seconds must be > 0 and --debounce-seconds >= 0", flush=True)
        return 2
    if command != HOST and not 0 <= args.claim_grace_seconds <= 86400:
        print(f"{parser.prog}: --claim-grace-seconds must be between 0 and 86400, got {args.claim_grace_seconds:g}", flush=True)
        return 2
    if command == CONTROLLER:
        problem = _leader().Timing(args.lease_duration_seconds, args.renew_deadline_seconds, args.retry_period_seconds).problem()
        if problem:
            print(f"{parser.prog}: {problem}", flush=True)
            return 2
    return args


def agent_main(
    argv: Sequence[str] | None = None,
    *,
    kernel: Kernel | None = None,
    conntrack: ConntrackCleaner | None = None,
    connection: Connection | None = None,
) -> int:
    """`vsop agent` in the cluster. Exit codes: 0 stopped by a signal, 1 runtime failure, 2 invalid flags."""
    args = _parse(CLUSTER, argv)
    if isinstance(args, int):
        return args
    try:
        keepalived = keepalived_writer(args)
    except ValueError as exc:
        print(f"vsop agent: {exc}", flush=True)
        return 2

    if args.bgp_speaker and args.bgp_speakers:
        print("vsop agent: --bgp-speaker FILE and --bgp-speakers exclude each other (a file, or the cluster's BGPSpeakers)", flush=True)
        return 2
    bird = bird_announcer(args) if args.bgp_speaker or args.bgp_speakers else None

    def build(connection: Connection) -> Any:
        from vsop.kube.agent import COMPONENT, Agent, AgentOptions
        from vsop.kube.apiserver import ApiServerAddresses
        from vsop.kube.client import ApiSecrets, ApiWriter
        from vsop.kube.speakers import own_namespace
        from vsop.node.lock import lock_path
        from vsop.node.remember import DEFAULT_STATE_FILE

        node = args.node_name
        found = (kernel, conntrack) if kernel is not None else _host_from_environment(args.proc_sys, node)
        options = AgentOptions(
            node_name=node,
            namespaces=tuple(args.namespaces),
            resync_seconds=args.resync_seconds,
            debounce_seconds=args.debounce_seconds,
            keep_accept_ra=args.keep_accept_ra,
            vip_policy=args.vip_policy,
            watch_speakers=args.bgp_speakers,
            secrets_namespace=own_namespace(),
            node_peers=args.vrrp_node_peers if args.vrrp_node_peers is not None else keepalived is not None,
            claim_grace_seconds=args.claim_grace_seconds,
            lock=lock_path(args.lock) if args.lock or lock_path().parent.is_dir() else None,
            state_file=Path(args.state_file) if args.state_file else (DEFAULT_STATE_FILE if DEFAULT_STATE_FILE.parent.is_dir() else None),
        )
        return Agent(options, found[0], ApiWriter(connection, COMPONENT, host=node), conntrack=found[1], keepalived=keepalived,
                     apiserver=ApiServerAddresses.for_connection(connection), bird=bird,
                     secrets=ApiSecrets(connection) if args.bgp_speakers else None)

    started = {"node": args.node_name, "namespaces": ",".join(args.namespaces) or "all", "resync": f"{args.resync_seconds:g}s",
               "credentials": None, "host": socket.gethostname(),
               "keepalived": str(keepalived.config.directory) if keepalived is not None else "off", "vipPolicy": args.vip_policy,
               "bgp": args.bgp_speaker or ("BGPSpeakers" if args.bgp_speakers else "off")}
    return _serve(args, "vsop-agent", "vsop.kube.agent", build, started, stopped={"node": args.node_name}, connection=connection)


def controller_main(argv: Sequence[str] | None = None, *, connection: Connection | None = None) -> int:
    """`vsop controller`. Exit codes: 0 stopped by a signal, 1 runtime failure, 2 invalid flags."""
    args = _parse(CONTROLLER, argv)
    if isinstance(args, int):
        return args

    started: dict[str, str | None] = {"namespaces": ",".join(args.namespaces) or "all", "resync": f"{args.resync_seconds:g}s", "credentials": None,
                                      "vipPolicy": args.vip_policy}

    def build(connection: Connection) -> Any:
        from vsop.kube.client import ApiWriter
        from vsop.kube.controller import COMPONENT, Controller, ControllerOptions, load_balancers
        from vsop.kube.loadbalancers import Options as LoadBalancerOptions
        from vsop.kube.relist import Relister

        leader = _leader()
        options = ControllerOptions(tuple(args.namespaces), args.resync_seconds, args.debounce_seconds, vip_policy=args.vip_policy,
                                    claim_grace_seconds=args.claim_grace_seconds)
        elector = None
        if args.leader_elect:
            timing = leader.Timing(args.lease_duration_seconds, args.renew_deadline_seconds, args.retry_period_seconds)
            elector = leader.Elector(leader.KubeLeaseApi(connection), leader.identity(), timing, namespace=args.lease_namespace, name=args.lease_name)
        started["lease"] = f"{args.lease_namespace}/{args.lease_name}" if elector else "off"
        started["identity"] = elector.identity if elector else None
        return Controller(options, ApiWriter(connection, COMPONENT, host=os.environ.get("POD_NAME") or socket.gethostname()),
                          elector=elector, relist=Relister(connection, options.namespaces) if elector is not None else None,
                          load_balancers=load_balancers(connection, LoadBalancerOptions(args.load_balancer_class, args.default_load_balancer))
                          if args.load_balancers else None)

    return _serve(args, "vsop-controller", "vsop.kube.controller", build, started, connection=connection)


class _Unusable(Exception):
    """The component cannot start (logged already): exit 1."""


def _host_from_environment(proc_sys: str, node: str) -> tuple[Kernel, ConntrackCleaner]:
    """This node's kernel and conntrack table; in-memory fakes when VSOP_FAKE_KERNEL=1 (tests only)."""
    from vsop.kube.runtime import kv

    log = logging.getLogger("vsop.kube.agent")
    try:
        if os.environ.get(FAKE_KERNEL_ENV) == "1":
            from vsop.adapters.conntrack import FakeConntrack
            from vsop.adapters.kernel import fake_kernel

            log.warning(kv("Using in-memory fake kernel adapters; nothing is programmed (test only)", env=FAKE_KERNEL_ENV))
            return fake_kernel()[0], FakeConntrack()
        from vsop.adapters.conntrack import ConntrackTool
        from vsop.adapters.real import real_kernel

        # /proc/sys is read-only in an unprivileged container: the sysctl adapter is then
        # rooted at the host's /proc/sys/net mounted elsewhere.
        if proc_sys.rstrip("/") != PROC_SYS and not os.path.isdir(os.path.join(proc_sys, "net")):
            raise FileNotFoundError(f"--proc-sys {proc_sys}: no net/ in it (mount the host's /proc/sys/net there)")
        kernel = real_kernel(proc_sys)
        kernel.ipvs.probe()  # say it now, not at the first sync: this kernel cannot run the agent
        return kernel, ConntrackTool()
    except Exception as exc:  # no IPVS, no permission, no writable /proc/sys
        log.error(kv("Cannot use this node's kernel", node=node, error=str(exc)))
        raise _Unusable() from exc


_FROZEN_AT_EXIT: list[bool] = []


def _freeze_heap_at_exit() -> None:
    """At the process's exit, whose end frees everything anyway: the heap frozen is skipped by the
    interpreter's final collections, most of SIGTERM-to-exit under emulation (bench/agent_stop.py).
    Registered once per process (the kube tier starts components in one)."""
    if not _FROZEN_AT_EXIT:
        _FROZEN_AT_EXIT.append(True)
        atexit.register(gc.freeze)


def _serve(
    args: argparse.Namespace,
    component: str,
    logger: str,
    build: Callable[[Connection], Any],
    started: dict[str, str | None],
    stopped: dict[str, str] | None = None,
    connection: Connection | None = None,
) -> int:
    """What the in-cluster agent and the controller share from their flags on: credentials, the
    component (`build`), its probes and metrics served, kopf and its loop run until a signal."""
    from vsop.kube.client import Connection as Loaded
    from vsop.kube.metrics import HttpEndpoints
    from vsop.kube.runtime import configure_logging, kv

    log = logging.getLogger(logger)
    _freeze_heap_at_exit()
    configure_logging(args.verbose)
    try:
        connection = connection or Loaded.load(args.kubeconfig, args.context)
    except Exception as exc:  # no kubeconfig, no service account
        log.error(kv("Cannot load credentials for the API server", kubeconfig=args.kubeconfig, error=str(exc)))
        return 1
    try:
        built = build(connection)
    except _Unusable:
        return 1
    connection.register_login(built.registry)
    log.info(kv("Starting", component=component, **{k: connection.source if k == "credentials" else v for k, v in started.items()}))

    async def serve() -> None:
        health, metrics = (args.bind_address, args.bind_address) if args.bind_address else (args.health_bind_address, args.metrics_bind_address)
        endpoints = HttpEndpoints(built.probes, built.metrics.registry, args.health_port, args.metrics_port, health, metrics_host=metrics)
        await endpoints.start()
        try:
            await built.run()
        finally:
            await endpoints.stop()

    try:
        asyncio.run(serve())
    except KeyboardInterrupt:
        pass
    except Exception as exc:
        what = "Agent" if component == "vsop-agent" else "Controller"
        log.error(kv(f"{what} stopped on an error", **(stopped or {}), error=str(exc)))
        return 1
    log.info(kv("Stopped", component=component, **(stopped or {})))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(agent_main())
