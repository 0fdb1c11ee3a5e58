"""Gathering `Facts` from this host: small readers over the tools and files the kernel offers.

Owns running `iptables-save -c` on both backends, the IPVS stats request, `ip -j route
get`, `conntrack -L`, reading /proc/sys, /proc/net/netstat, /proc/modules and the agent's
status file, and loading the VirtualServices the host is meant to serve (the agent's
folder) for what vsop expects. Every reader reports what it could not read instead of
failing: a diagnosis must work best on a broken node. Nothing here writes.
Must not import: kopf, kubernetes, jinja2.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from vsop.core.state import KernelState, Names, ServiceKey
from vsop.core.desired import tcp_liberal
from vsop.diagnose.facts import (
    ConntrackEntry, Facts, Interface, PersistenceTemplate, Route, parse_addresses, parse_conntrack, parse_ipvs_templates, parse_netstat,
    parse_route, parse_save_counters,
)

SEARCH_PATH = os.pathsep.join(filter(None, (os.environ.get("PATH"), "/usr/sbin", "/sbin")))
DEFAULT_STATUS_FILE = "/run/vsop/agent.json"
MODULES = ("ip_vs", "ipip", "ip6_tunnel", "nf_conntrack", "xt_set", "ip_set")
MAX_ROUTES = 512  # `ip route get` per real server costs a process each
MAX_CONNTRACK_QUERIES = 8  # beyond this many services of one protocol, one dump filtered here
DEFAULT_STORE = "/etc/vsop/virtualservices.d"  # the host store (DESIGN.md), when the agent names no folder


def _run(argv: Sequence[str], timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, check=False, env={**os.environ, "LC_ALL": "C"})


def _which(name: str) -> str | None:
    return shutil.which(name, path=SEARCH_PATH)


def _save_binary(family: int, backend: str) -> str | None:
    tool = "iptables" if family == 4 else "ip6tables"
    found = _which(f"{tool}-{backend}-save")
    if found is None and backend == "legacy":
        found = _which(f"{tool}-save")
    return found


def read_rules(backend: str, families: Iterable[int], tables: Sequence[str] | None) -> tuple[dict, list[str]]:
    """iptables-save -c of `tables` (None: every table that exists, which never creates one)."""
    rules: dict = {}
    errors: list[str] = []
    for family in families:
        save = _save_binary(family, backend)
        if save is None:
            continue
        for table in tables or (None,):
            argv = [save, "-c"] + (["-t", table] if table else [])
            try:
                done = _run(argv)
            except (OSError, subprocess.TimeoutExpired) as exc:
                errors.append(f"{os.path.basename(save)}: {exc}")
                continue
            if done.returncode != 0:
                if "Table does not exist" in done.stderr or "Address family not supported" in done.stderr:
                    continue
                errors.append(f"{' '.join(argv)}: {done.stderr.strip().splitlines()[-1] if done.stderr.strip() else done.returncode}")
                continue
            rules.update(parse_save_counters(done.stdout, family))
    return rules, errors


def read_route(address: str) -> Route:
    ip = _which("ip")
    if ip is None:
        return Route(address, False, "unknown", error="the ip command is not installed")
    try:
        done = _run([ip, "-j", "route", "get", address], timeout=10)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return Route(address, False, "unknown", error=str(exc))
    return parse_route(address, done.stdout, done.stderr, done.returncode)


def read_ipvs_templates(path: str = "/proc/net/ip_vs_conn") -> list[PersistenceTemplate]:
    """IPVS's persistence templates (what `ipvsadm -Lnc` lists with client port 0); none when unreadable."""
    try:
        return parse_ipvs_templates(Path(path).read_text())
    except OSError:
        return []


def read_conntrack(keys: Iterable[ServiceKey]) -> tuple[list[ConntrackEntry], str]:
    """The conntrack entries to the given VIP:ports: one `conntrack -L` per service, or per
    protocol and family when there are many (the table can be large; the filter runs in
    the kernel only for a single destination)."""
    binary = _which("conntrack")
    if binary is None:
        return [], "the conntrack tool (conntrack-tools) is not installed"
    groups: dict[tuple[int, str], list[ServiceKey]] = {}
    for key in keys:
        groups.setdefault((key.family, key.protocol), []).append(key)
    entries: list[ConntrackEntry] = []
    for (family, protocol), members in sorted(groups.items()):
        base = [binary, "-L", "-f", "ipv6" if family == 6 else "ipv4", "-p", protocol]
        queries = [base] if len(members) > MAX_CONNTRACK_QUERIES else [
            base + ["--orig-dst", key.vip, "--orig-port-dst", str(key.port)] for key in members
        ]
        wanted = {(key.vip, key.port) for key in members}
        for argv in queries:
            try:
                done = _run(argv)
            except (OSError, subprocess.TimeoutExpired) as exc:
                return entries, f"conntrack -L: {exc}"
            if done.returncode != 0 and not done.stdout:
                reason = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}"
                if "0 flow entries" not in reason:
                    return entries, f"conntrack -L: {reason}"
            entries += [e for e in parse_conntrack(done.stdout) if (e.orig_dst, e.orig_dport) in wanted]
    return entries, ""


def read_sysctls(root: str = "/proc/sys") -> dict[str, str]:
    """rp_filter per interface and the ARP / IPVS settings explain and doctor look at."""
    values: dict[str, str] = {}
    names = [
        "net.ipv4.conf.all.rp_filter", "net.ipv4.conf.default.rp_filter",
        "net.ipv4.conf.all.arp_ignore", "net.ipv4.conf.all.arp_announce",
        "net.ipv4.ip_forward", "net.ipv6.conf.all.forwarding",
        "net.ipv4.vs.conntrack", "net.ipv4.vs.conn_reuse_mode", "net.ipv4.vs.expire_nodest_conn",
        "net.ipv4.vs.expire_quiescent_template", "net.ipv4.vs.sloppy_tcp", "net.netfilter.nf_conntrack_tcp_be_liberal",
    ]
    pairs = [(name, name.replace(".", "/")) for name in names]
    try:
        interfaces = sorted(entry.name for entry in Path(root, "net/ipv4/conf").iterdir())
    except OSError:
        interfaces = []
    for interface in interfaces:
        if interface not in ("all", "default"):
            # Keyed with the interface name as is (it may hold dots: eth0.100).
            pairs += [(f"net.ipv4.conf.{interface}.{leaf}", f"net/ipv4/conf/{interface}/{leaf}") for leaf in ("rp_filter", "arp_ignore")]
    for key, relative in pairs:
        try:
            values[key] = " ".join(Path(root, relative).read_text().split())
        except OSError:
            continue
    return values


def read_agent(path: str) -> dict[str, Any] | None:
    try:
        with open(path, encoding="utf-8") as handle:
            status = json.load(handle)
    except (OSError, ValueError):
        return None
    if not isinstance(status, dict):
        return None
    try:
        os.kill(int(status.get("pid", 0)), 0)
    except PermissionError:
        pass  # alive, under another user
    except (OSError, ValueError):
        status["stale"] = True  # the agent that wrote it is gone
    try:
        status["statusAge"] = max(0.0, time.time() - os.stat(path).st_mtime)
    except OSError:
        pass
    return status


def read_interfaces() -> dict[str, Interface]:
    ip = _which("ip")
    if ip is None:
        return {}
    try:
        done = _run([ip, "-j", "addr", "show"], timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return {}
    return parse_addresses(done.stdout) if done.returncode == 0 else {}


def read_modules() -> frozenset[str]:
    try:
        text = Path("/proc/modules").read_text()
    except OSError:
        return frozenset()
    loaded = {line.split()[0] for line in text.splitlines() if line.strip()}
    # Built-in code has no /proc/modules line but has /sys/module/NAME.
    loaded |= {name for name in MODULES if Path("/sys/module", name).exists()}
    return frozenset(loaded)


def read_links() -> dict[str, bool]:
    links: dict[str, bool] = {}
    for name in ("tunl0", "ip6tnl0"):
        try:
            flags = int(Path(f"/sys/class/net/{name}/flags").read_text(), 16)
        except (OSError, ValueError):
            continue
        links[name] = bool(flags & 0x1)
    return links


def load_desired(directory: str | None, names: Names, kernel_version: tuple[int, int] | None, node_addresses: Iterable[str],
                 liberal: bool = False) -> tuple[KernelState | None, str, list[str]]:
    """The desired state of the VirtualServices in the agent's folder, when there is one."""
    if not directory or not os.path.isdir(directory):
        return None, "", []
    from vsop.core.desired import Node, desired_state
    from vsop.host.folder import FolderSource

    # Read as the agent reads it: one bad file is reported once and the valid ones still count
    # (a doctor that dropped every object for one typo would say the host serves nothing).
    source = FolderSource(Path(directory), settle_seconds=0)
    source.poll()
    errors = [f"{path}: {reason} (the agent keeps what it had for this file; the other files are checked)" for path, reason in source.errors().items()]
    hostname = socket.gethostname()
    desired = desired_state(source.services(), Node(hostname, {"kubernetes.io/hostname": hostname}), names=names,
                            node_addresses=node_addresses, kernel_version=kernel_version, liberal=liberal)
    return desired.state, directory, errors


NETSTAT_WINDOW_SECONDS = 2.0  # a client's SYN retries (1 s, then 2 s) fall into it


def _read_netstat() -> dict[str, int] | None:
    try:
        return parse_netstat(Path("/proc/net/netstat").read_text())
    except OSError:
        return None


def _strict_rp_filter(sysctls: Mapping[str, str]) -> bool:
    return any(name.startswith("net.ipv4.conf.") and name.endswith(".rp_filter") and value == "1" for name, value in sysctls.items())


def gather(
    targets: Sequence[ServiceKey] = (),
    *,
    names: Names = Names(),
    status_file: str = DEFAULT_STATUS_FILE,
    store: str | None = None,
    with_conntrack: bool = True,
    netstat_window: float = 0.0,
    bird_socket: str | None = None,
) -> Facts:
    """Read everything explain and doctor need from this host; what fails is noted in `errors`.

    /proc/net/netstat is read at the start and at the end, at least `netstat_window`
    seconds apart when some interface filters reverse paths strictly (doctor's drop check)."""
    from vsop.adapters.kernel import running_kernel_version

    errors: list[str] = []
    facts = Facts(names=names, kernel_version=running_kernel_version())
    earlier, earlier_at = _read_netstat(), time.monotonic()
    ipvs = _read_kernel(facts, names, errors)
    _read_paths(facts, ipvs, targets, with_conntrack, errors)
    facts.sysctls = read_sysctls()
    _read_netstat_window(facts, earlier, earlier_at, netstat_window)
    _read_host(facts, status_file, store, names, errors)
    if bird_socket is not None:
        from vsop.bgp.sessions import sessions_report

        facts.bgp = sessions_report(bird_socket, bool(facts.observed.routes))
    return replace(facts, errors=tuple(errors))


def _read_kernel(facts: Facts, names: Names, errors: list[str]) -> Any:
    """The kernel state vsop owns (facts.observed), the IPVS availability and both backends'
    rules; returns the IPVS adapter, still open for the stats request."""
    from vsop.adapters.ipset import IPSetKernel
    from vsop.adapters.iptables import IPTablesKernel
    from vsop.adapters.ipvs import IPVSKernel
    from vsop.adapters.links import LinkKernel
    from vsop.adapters.sysctl import SysctlKernel
    from vsop.adapters.kernel import ALL_SYSCTLS
    from vsop.api.errors import KernelUnsupported

    link = None
    addresses: frozenset[str] = frozenset()
    node_addresses: frozenset[str] = frozenset()
    try:
        link, addresses, node_addresses = LinkKernel().read(names.link)
    except (OSError, KernelUnsupported) as exc:
        errors.append(f"links: {exc}")
    services: dict = {}
    real_servers: dict = {}
    ipvs = IPVSKernel()
    try:
        services, real_servers = ipvs.read()
    except KernelUnsupported as exc:
        facts.ipvs_available, facts.ipvs_error = False, str(exc)
    except OSError as exc:
        facts.ipvs_available, facts.ipvs_error = False, str(exc)
    ipsets: dict = {}
    try:
        ipsets = IPSetKernel().read(names.owned_set_names())
    except (OSError, RuntimeError) as exc:
        errors.append(f"ipsets: {exc}")
    iptables = IPTablesKernel()
    facts.backend = iptables.backend
    facts.other_backend = "legacy" if facts.backend == "nft" else "nft"
    families = [4] + ([6] if os.path.isdir("/proc/sys/net/ipv6") else [])
    facts.rules, rule_errors = read_rules(facts.backend, families, ("filter", "nat"))
    errors += rule_errors
    facts.other_rules, other_errors = read_rules(facts.other_backend, families, None)
    errors += other_errors
    chains: dict = {}
    jumps: frozenset = frozenset()
    try:
        chains, jumps = iptables.read(names.owned_chains())
    except (OSError, RuntimeError, KernelUnsupported) as exc:
        errors.append(f"iptables: {exc}")
    facts.observed = KernelState(
        link=link, addresses=addresses, services=services, real_servers=real_servers, ipsets=ipsets,
        chains=chains, jumps=jumps, sysctls=SysctlKernel().read(ALL_SYSCTLS), node_addresses=node_addresses,
    )
    return ipvs


def _read_paths(facts: Facts, ipvs: Any, targets: Sequence[ServiceKey], with_conntrack: bool, errors: list[str]) -> None:
    """What the packets of the services looked at meet: IPVS counters (closes ipvs), the routes
    to their real servers, their conntrack entries. No targets: every service on a bound VIP."""
    services, real_servers = facts.observed.services, facts.observed.real_servers
    wanted = [key for key in targets if key in services] if targets else [k for k in services if k.vip in facts.observed.bound_vips()]
    if facts.ipvs_available and wanted:
        try:
            facts.service_stats, facts.dest_stats = ipvs.stats(wanted)
        except OSError as exc:
            errors.append(f"IPVS stats: {exc}")
    ipvs.close()
    addresses_to_route = sorted({rs.key.address for rs in real_servers.values() if rs.key.service in set(wanted) or (not targets and rs.key.service.vip in facts.observed.bound_vips())})
    facts.routes = {address: read_route(address) for address in addresses_to_route[:MAX_ROUTES]}
    if len(addresses_to_route) > MAX_ROUTES:
        errors.append(f"routes: only the first {MAX_ROUTES} of {len(addresses_to_route)} real server addresses were checked")
    persistent = {key for key in wanted if services[key].persistence_timeout}
    if persistent:
        facts.templates = tuple(t for t in read_ipvs_templates() if ServiceKey(t.protocol, t.vip, t.port) in persistent)
    if with_conntrack:
        keys = list(targets) or sorted(k for k in services if k.vip in facts.observed.bound_vips())
        if not targets:
            keys = [k for k in keys if k.protocol == "udp"]  # doctor: stale UDP entries only
        entries, facts.conntrack_error = read_conntrack(keys)
        facts.conntrack = tuple(entries)


def _read_netstat_window(facts: Facts, earlier: dict[str, int] | None, earlier_at: float, netstat_window: float) -> None:
    if earlier is not None and _strict_rp_filter(facts.sysctls):
        # The drop counter counts since boot: only its growth while we watch says packets die now.
        time.sleep(max(0.0, netstat_window - (time.monotonic() - earlier_at)))
    later = _read_netstat()
    if later is not None:
        facts.netstat = later
        if earlier is not None:
            facts.netstat_earlier, facts.netstat_seconds = earlier, time.monotonic() - earlier_at


def _read_host(facts: Facts, status_file: str, store: str | None, names: Names, errors: list[str]) -> None:
    """The agent's status, the modules, links and interfaces, and what the host store declares."""
    facts.agent = read_agent(status_file)
    facts.agent_status_file = status_file
    facts.modules = read_modules()
    facts.links = read_links()
    facts.interfaces = read_interfaces()
    directory = store or (facts.agent or {}).get("directory") or (DEFAULT_STORE if os.path.isdir(DEFAULT_STORE) else None)
    desired, source, store_errors = load_desired(directory, names, facts.kernel_version, facts.observed.node_addresses,
                                                 tcp_liberal(facts.sysctls))
    facts.desired, facts.desired_source = desired, source
    errors += store_errors
