"""`vsop doctor`: every known cause of a dead or half-working VIP, checked against `Facts`, each failure with its fix.

Owns the checks (IPVS present, the sysctls IPVS and masquerade need, strict rp_filter
dropping packets, the VIP on vsop0 and vsop0 up, vsop's chains and jumps, a foreign
rule ahead of vsop's jump, rules on the other iptables backend, real servers without a
route or local, ARP and conn_reuse_mode settings, stale UDP conntrack entries, the host
agent's status, BIRD's BGP sessions for announce: bgp; with `--from ADDRESS`, whether each
service's sourceRanges admit that client, vsop.diagnose.ranges) and their text and JSON forms. A fix is a command a person can run, or
the setting to change. Pure: reads a `Facts`, never the host.
Must not import: subprocess, socket, pyroute2, kopf, vsop.adapters.
"""

from __future__ import annotations

import ipaddress
import shlex
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from vsop.core.desired import constant_chains, constant_jumps, family_sysctls, kernel_sysctls, tcp_liberal
from vsop.core.state import ServiceKey, host_prefix, hostport, ipset_member
from vsop.diagnose.explain import FILTER_TERMINAL, NAT_TERMINAL, rules_ahead, vrrp_hold
from vsop.diagnose.facts import Facts
from vsop.diagnose.ranges import source_ranges

PASS, FAIL, WARN = "pass", "fail", "warn"
AGENT_STATUS_MAX_AGE = 300.0  # the agent rewrites its status at every sync (resync: 30 s by default)


@dataclass
class Finding:
    check: str  # a stable id, e.g. "sysctl.vs-conntrack"
    status: str  # pass | fail | warn
    message: str
    fix: list[str] = field(default_factory=list)  # commands, in order
    setting: str = ""  # or a setting to change, when no command does it

    def json(self) -> dict[str, Any]:
        return {"check": self.check, "status": self.status, "message": self.message, "fix": list(self.fix), "setting": self.setting}


def member_key(member: str) -> ServiceKey | None:
    """"169.254.11.2,tcp:80" (an ipset hash:ip,port member) -> ServiceKey."""
    vip, _, rest = member.rpartition(",")
    protocol, _, port = rest.partition(":")
    if not vip or protocol not in ("tcp", "udp", "sctp") or not port.isdigit():
        return None
    return ServiceKey(protocol, vip, int(port))  # type: ignore[arg-type]


def served(facts: Facts) -> list[ServiceKey]:
    """What vsop serves here: its set members, the store's services, IPVS services on its VIPs."""
    names = facts.names
    keys: set[ServiceKey] = set()
    for family in (4, 6):
        ipset = facts.observed.ipsets.get(names.set_name(names.vip_ports_set, family))
        for member in ipset.members if ipset else ():
            key = member_key(member)
            if key is not None:
                keys.add(key)
    if facts.desired is not None:
        keys |= set(facts.desired.services) | set(facts.desired.delegated)
    bound = facts.observed.bound_vips()
    keys |= {key for key in facts.observed.services if key.vip in bound}
    return sorted(keys)


def _sysctl(facts: Facts, name: str) -> str | None:
    return facts.sysctls.get(name, facts.observed.sysctls.get(name))


def _iptables(family: int, backend: str | None = None) -> str:
    tool = "iptables" if family == 4 else "ip6tables"
    return f"{tool}-{backend}" if backend else tool


def _delegated(facts: Facts, key: ServiceKey) -> bool:
    if facts.desired is not None and key in facts.desired.delegated:
        return True
    keepalived = (facts.agent or {}).get("keepalived") or {}
    return bool(keepalived.get("active")) and key not in facts.observed.services


# --- the checks -------------------------------------------------------------------------------


def check_ipvs(facts: Facts, keys: list[ServiceKey]) -> Iterable[Finding]:
    if facts.ipvs_available:
        yield Finding("kernel.ipvs", PASS, "IPVS is available in this kernel")
        return
    yield Finding(
        "kernel.ipvs", FAIL, f"IPVS is not available: {facts.ipvs_error or 'no ip_vs generic netlink family'}",
        fix=["modprobe ip_vs", "modprobe ip_vs_rr"],
        setting="or, where the kernel cannot have IPVS (some containers, hardened kernels), use mode: keepalived on another host",
    )


def check_sysctls(facts: Facts, keys: list[ServiceKey]) -> Iterable[Finding]:
    families = sorted({key.family for key in keys})
    masq = any(rs.forwarding == "masq" for rs in facts.observed.real_servers.values() if rs.key.service in set(keys)) or not facts.observed.real_servers
    for family in families:
        wanted = family_sysctls(family)
        for name, why, needed in (
            ("net.ipv4.vs.conntrack", "without it MASQUERADE never sees IPVS traffic and answers never come back", masq),
            ("net.ipv4.ip_forward" if family == 4 else "net.ipv6.conf.all.forwarding",
             "answers of the real servers are forwarded to the client; with forwarding off the kernel drops them", True),
        ):
            value = _sysctl(facts, name)
            if value is None or not needed:
                continue
            if value == wanted[name]:
                yield Finding(f"sysctl.{name}", PASS, f"{name}={value}")
            else:
                yield Finding(f"sysctl.{name}", FAIL, f"{name} is {value}: {why}", fix=[f"sysctl -w {name}={wanted[name]}"])
        for name in ("net.ipv4.vs.expire_nodest_conn", "net.ipv4.vs.expire_quiescent_template"):
            value = _sysctl(facts, name)
            if value is not None and value != wanted[name]:
                yield Finding(f"sysctl.{name}", WARN, f"{name} is {value}: connections to a removed or drained real server linger",
                              fix=[f"sysctl -w {name}={wanted[name]}"])
    if not keys:
        return
    reuse = _sysctl(facts, "net.ipv4.vs.conn_reuse_mode")
    if reuse is not None and facts.kernel_version is not None:
        wanted_reuse = kernel_sysctls(facts.kernel_version)["net.ipv4.vs.conn_reuse_mode"]
        release = ".".join(map(str, facts.kernel_version))
        if reuse == wanted_reuse:
            yield Finding("sysctl.conn_reuse_mode", PASS, f"net.ipv4.vs.conn_reuse_mode={reuse} (kernel {release})")
        elif facts.kernel_version < (5, 9):
            yield Finding("sysctl.conn_reuse_mode", FAIL,
                          f"net.ipv4.vs.conn_reuse_mode is {reuse} on kernel {release}: before 5.9 a new connection from a reused "
                          "client port stalls for a second when the old one went to a weight-0 real server",
                          fix=["sysctl -w net.ipv4.vs.conn_reuse_mode=0"])
        else:
            yield Finding("sysctl.conn_reuse_mode", WARN,
                          f"net.ipv4.vs.conn_reuse_mode is {reuse} on kernel {release}: connections from a reused client port "
                          "are not rescheduled away from a draining real server",
                          fix=[f"sysctl -w net.ipv4.vs.conn_reuse_mode={wanted_reuse}"])
    if facts.desired is not None:
        for name, value in sorted(facts.desired.sysctls.items()):
            if "arp_" not in name:
                continue
            have = _sysctl(facts, name)
            if have is not None and have != value:
                yield Finding(f"sysctl.{name}", FAIL,
                              f"{name} is {have}, a VirtualService asks for suppressARP: the node answers ARP for its VIPs "
                              "and takes traffic another node should get", fix=[f"sysctl -w {name}={value}"])


def check_rp_filter(facts: Facts, keys: list[ServiceKey]) -> Iterable[Finding]:
    if not any(key.family == 4 for key in keys):
        return
    every = int(facts.sysctls.get("net.ipv4.conf.all.rp_filter", "0") or 0)
    strict = []
    for name, value in sorted(facts.sysctls.items()):
        if name.startswith("net.ipv4.conf.") and name.endswith(".rp_filter") and name not in ("net.ipv4.conf.all.rp_filter", "net.ipv4.conf.default.rp_filter"):
            interface = name[len("net.ipv4.conf."):-len(".rp_filter")]
            if interface != "lo" and max(every, int(value or 0)) == 1:  # the kernel uses the higher of all and the interface
                strict.append(interface)
    # TcpExt.IPReversePathFilter counts since boot: only its growth between two readings says
    # packets are dropped now; the total alone may be a long-gone client or other traffic.
    counter = "TcpExt.IPReversePathFilter"
    since_boot = facts.netstat.get(counter, 0)
    earlier = facts.netstat_earlier
    now = since_boot - earlier.get(counter, since_boot) if earlier is not None else None
    fix = ["sysctl -w net.ipv4.conf.all.rp_filter=2"]
    setting = "2 (loose) accepts a packet when any route leads back to its source; the higher of all and the interface applies"
    where = f"strict reverse path filtering (rp_filter=1) on {', '.join(strict)}"
    if not strict:
        yield Finding("sysctl.rp_filter", PASS, "no interface filters reverse paths strictly")
    elif now:
        yield Finding(
            "sysctl.rp_filter", FAIL,
            f"{where}, and the kernel dropped {now} packet(s) for it in the {facts.netstat_seconds:.1f} s this check watched "
            f"({since_boot} since boot): a client whose packets arrive on another interface than the route back to it is silently dropped",
            fix=fix, setting=setting,
        )
    elif since_boot and now is None:
        yield Finding(
            "sysctl.rp_filter", FAIL,
            f"{where}, and the kernel dropped {since_boot} packet(s) for it since boot (one reading: not necessarily now): "
            "a client whose packets arrive on another interface than the route back to it is silently dropped",
            fix=fix, setting=setting,
        )
    elif since_boot:
        yield Finding(
            "sysctl.rp_filter", WARN,
            f"{where}: the kernel dropped {since_boot} packet(s) for it since boot, none in the {facts.netstat_seconds:.1f} s this "
            "check watched; run vsop doctor again while a client tries to connect to tell whether it is this VIP's",
            fix=fix, setting=setting,
        )
    else:
        yield Finding("sysctl.rp_filter", PASS, f"strict rp_filter on {', '.join(strict)}, but no packet was dropped for it since boot")


def check_link(facts: Facts, keys: list[ServiceKey]) -> Iterable[Finding]:
    names = facts.names
    link = facts.observed.link
    bound = facts.observed.bound_vips()
    vips = sorted({key.vip for key in keys if not _vrrp_vip(facts, key.vip)})
    if not vips:
        return
    if link is None:
        yield Finding("link.present", FAIL, f"the dummy link {names.link} does not exist: no VIP is an address of this node",
                      fix=[f"ip link add {names.link} type dummy", f"ip link set {names.link} up"] + [f"ip addr add {host_prefix(v)} dev {names.link}" for v in vips])
        return
    if link.up:
        yield Finding("link.up", PASS, f"{names.link} is up")
    else:
        yield Finding("link.up", FAIL, f"{names.link} is down: the kernel ignores the VIPs on a link that is down", fix=[f"ip link set {names.link} up"])
    for vip in vips:
        if vip in bound:
            yield Finding(f"vip.bound {vip}", PASS, f"{vip} is bound on {names.link}")
        else:
            yield Finding(f"vip.bound {vip}", FAIL, f"{vip} is not an address of {names.link}: packets to it are not for this node, "
                          "so they are forwarded or answered with 'no route'", fix=[f"ip addr add {host_prefix(vip)} dev {names.link}"])


def _vrrp_vip(facts: Facts, vip: str) -> bool:
    """A VIP keepalived holds by VRRP (desired but not bound by vsop)."""
    if facts.desired is None:
        return False
    return vip not in facts.desired.bound_vips() and any(k.vip == vip for k in facts.desired.delegated)


def check_rules(facts: Facts, keys: list[ServiceKey]) -> Iterable[Finding]:
    names = facts.names
    for family in sorted({key.family for key in keys}):
        tool = _iptables(family)
        for chain_key, rules in sorted(constant_chains(names, family, liberal=tcp_liberal(facts.sysctls)).items()):
            have = facts.chain(family, chain_key.table, chain_key.chain)
            label = f"rules.chain {tool} {chain_key.table} {chain_key.chain}"
            if have is None:
                yield Finding(label, FAIL, f"chain {chain_key.chain} ({chain_key.table}) is missing",
                              fix=["vsop apply -f <your VirtualServices>   (or restart the host agent; its resync repairs it)"])
            elif tuple(rule.text for rule in have.rules) != rules:
                yield Finding(label, FAIL, f"chain {chain_key.chain} ({chain_key.table}) does not hold vsop's rules",
                              fix=[f"{tool} -t {chain_key.table} -F {chain_key.chain}"] + [f"{tool} -t {chain_key.table} -A {chain_key.chain} {r}" for r in rules])
            else:
                yield Finding(label, PASS, f"{chain_key.chain} ({chain_key.table}) holds vsop's {len(rules)} rule(s)")
        for jump in sorted(constant_jumps(names, family)):
            label = f"rules.jump {tool} {jump.table} {jump.chain}"
            chain = facts.chain(family, jump.table, jump.chain)
            present = chain is not None and any(rule.text == jump.rule for rule in chain.rules)
            if present:
                yield Finding(label, PASS, f"{jump.chain} ({jump.table}) jumps to vsop")
            elif jump.chain == "FORWARD" and (chain is None or chain.policy != "DROP"):
                yield Finding(label, WARN, "the jump from FORWARD into vsop's chain is missing; harmless while FORWARD's policy is ACCEPT",
                              fix=[f"{tool} -t {jump.table} -I {jump.chain} {jump.rule}"])
            elif jump.chain == "FORWARD":
                yield Finding(label, FAIL,
                              f"FORWARD's policy is DROP ({chain.packets} packets dropped so far) and its jump into vsop's chain is missing: "  # type: ignore[union-attr]
                              "the real servers' answers die on their way back to the client (Docker and ufw leave FORWARD so)",
                              fix=[f"{tool} -t {jump.table} -I {jump.chain} {jump.rule}"])
            else:
                yield Finding(label, FAIL, f"the jump from {jump.chain} ({jump.table}) into vsop's chain is missing: {_jump_why(jump.chain)}",
                              fix=[f"{tool} -t {jump.table} -I {jump.chain} {jump.rule}"])


def _jump_why(chain: str) -> str:
    return {
        "PREROUTING": "packets from other hosts are never marked, so they are not masqueraded",
        "OUTPUT": "packets from this node are never marked, so they are not masqueraded",
        "POSTROUTING": "marked packets are never masqueraded; real servers answer the client directly and the connection hangs",
        "INPUT": "nothing accepts the service ports and nothing rejects other ports on the VIPs",
        "FORWARD": "answers of the real servers are not accepted where FORWARD drops",
    }.get(chain, "")


def check_foreign_rules(facts: Facts, keys: list[ServiceKey]) -> Iterable[Finding]:
    names = facts.names
    where = (
        ("nat", "PREROUTING", names.services_chain, NAT_TERMINAL, "ends the packet's walk through PREROUTING before vsop marks it"),
        ("nat", "OUTPUT", names.services_chain, NAT_TERMINAL, "ends the packet's walk through OUTPUT before vsop marks it"),
        ("nat", "POSTROUTING", names.postrouting_chain, frozenset({"ACCEPT", "RETURN"}), "ends POSTROUTING before vsop masquerades"),
        ("filter", "INPUT", names.filter_chain, FILTER_TERMINAL, "drops the VIP's packets before vsop accepts them"),
    )
    reported: set[tuple[int, str, str, int]] = set()
    for key in keys:
        tool = _iptables(key.family)
        for table, chain_name, target, terminal, why in where:
            chain = facts.chain(key.family, table, chain_name)
            if chain is None:
                continue
            jump = next((r for r in chain.rules if r.target == target), None)
            for rule, sure in rules_ahead(facts, key.family, table, chain_name, jump, key, terminal):
                spot = (key.family, table, chain_name, rule.position)
                if spot in reported:
                    continue
                reported.add(spot)
                text = f"-A {chain_name} {rule.text}"
                if sure:
                    yield Finding(f"rules.ahead {tool} {table} {chain_name}", FAIL,
                                  f"a foreign rule ahead of vsop's jump matches {key}: `{text}` {why} ({rule.packets} packets so far)",
                                  fix=[f"{tool} -t {table} -D {chain_name} {rule.text}"],
                                  setting="or move it after vsop's jump, if it is meant for other traffic")
                else:
                    yield Finding(f"rules.ahead {tool} {table} {chain_name}", WARN,
                                  f"a foreign rule ahead of vsop's jump may match {key}: `{text}` ({rule.packets} packets so far)")
    if keys and not reported:
        yield Finding("rules.ahead", PASS, "no foreign rule ahead of vsop's jumps stops VIP traffic")


def check_other_backend(facts: Facts, keys: list[ServiceKey]) -> Iterable[Finding]:
    names = facts.names
    vips = {key.vip for key in keys}
    mine = names.owned_chains() | {names.link}
    about_vsop = []
    others = 0
    for (family, table), chains in sorted(facts.other_rules.items()):
        for chain in chains.values():
            for rule in chain.rules:
                others += 1
                words = rule.text.replace("/32", " ").replace("/128", " ").split()
                if any(vip in words for vip in vips) or any(name in words for name in mine) or "VSOP" in rule.text:
                    about_vsop.append((family, table, rule))
    other = facts.other_backend
    if about_vsop:
        yield Finding(
            "rules.backends", FAIL,
            f"{len(about_vsop)} rule(s) for vsop's VIPs live in the {other} iptables backend while vsop uses {facts.backend}: "
            f"the kernel runs both, and `iptables` ({facts.backend}) does not show them",
            fix=[f"{_iptables(f, other)} -t {t} -D {r.chain} {r.text}" for f, t, r in about_vsop],
        )
    elif others:
        yield Finding("rules.backends", WARN,
                      f"the {other} backend holds {others} rule(s) too; the kernel runs both backends, `iptables` shows only {facts.backend}'s "
                      f"(see them with {_iptables(4, other)}-save)")
    else:
        yield Finding("rules.backends", PASS, f"every rule is in the {facts.backend} backend vsop uses")


def check_services(facts: Facts, keys: list[ServiceKey]) -> Iterable[Finding]:
    names = facts.names
    for key in keys:
        ipset = facts.observed.ipsets.get(names.set_name(names.vip_ports_set, key.family))
        member = ipset_member(key)
        if ipset is None or member not in ipset.members:
            unserved = facts.ipvs_available and not _delegated(facts, key) and key not in facts.observed.services
            why = (" (vsop accepts a port only once its IPVS service exists, so the node's own listeners never answer on the VIP:"
                   " see why the service is missing below)") if unserved else ""
            yield Finding(f"ipset.member {member}", FAIL, f"{member} is not in {names.set_name(names.vip_ports_set, key.family)}: "
                          f"its packets are neither marked (no masquerade) nor accepted by VSOP-FILTER{why}",
                          fix=["vsop apply -f <the VirtualService serving it>"])
        if _delegated(facts, key) or not facts.ipvs_available:
            continue
        if key not in facts.observed.services:
            yield Finding(f"ipvs.service {key}", FAIL, f"no IPVS service {key}: nothing picks a real server",
                          fix=["vsop apply -f <the VirtualService serving it>"])
            continue
        servers = [rs for k, rs in facts.observed.real_servers.items() if k.service == key]
        serving = [rs for rs in servers if rs.weight > 0]
        if serving:
            yield Finding(f"ipvs.service {key}", PASS, f"IPVS service {key}: {len(serving)} of {len(servers)} real server(s) take new connections")
        elif not servers:
            # kube-proxy's "should be rejected when no endpoints exist": IPVS's ip_vs_leave() answers
            # ICMP port unreachable, so a client fails at once instead of waiting for a timeout.
            yield Finding(f"ipvs.service {key}", FAIL,
                          f"IPVS service {key} has no real server: clients are refused (IPVS answers ICMP port unreachable)",
                          setting="backends / serviceRef of the VirtualService (a serviceRef whose Service has no ready endpoint here)")
        else:
            failing = [h for h in (facts.agent or {}).get("health", []) if h.get("service") == str(key) and not h.get("healthy")]
            reason = "; ".join(f"{h['realServer']}: {h.get('lastError', '')}" for h in failing)
            yield Finding(f"ipvs.service {key}", FAIL,
                          f"IPVS service {key} has no real server with weight > 0: new connections are refused"
                          + (f" (health checks failing: {reason})" if reason else ""),
                          setting="backends / serviceRef of the VirtualService, or the real servers' health")


def check_real_servers(facts: Facts, keys: list[ServiceKey]) -> Iterable[Finding]:
    wanted = set(keys)
    seen: set[str] = set()
    for rs_key, rs in sorted(facts.observed.real_servers.items()):
        if rs_key.service not in wanted or (rs_key.address, rs.forwarding) in seen:
            continue
        seen.add((rs_key.address, rs.forwarding))  # type: ignore[arg-type]
        route = facts.routes.get(rs_key.address)
        label = f"route {rs_key.address}"
        if route is None:
            continue
        if not route.ok:
            yield Finding(label, FAIL, f"real server {rs_key.address} has no route from this node ({route.error}): IPVS sends its packets nowhere",
                          fix=_route_fix(facts, rs_key.address))
        elif route.kind == "local":
            yield Finding(label, FAIL, f"real server {rs_key.address} is an address of this node: IPVS cannot forward to itself this way",
                          setting="use the address of another host as the backend (or the node's service directly, without a VIP)")
        elif rs.forwarding == "route" and route.via:
            yield Finding(label, FAIL, f"real server {rs_key.address} is reached via the gateway {route.via}: direct routing only "
                          "rewrites the MAC address, so the real server must be on a network of this node",
                          setting="forwarding: tunnel (or masq), or a node on the real server's network")
        else:
            yield Finding(label, PASS, f"real server {rs_key.address}: {route.text()}")


def _route_fix(facts: Facts, address: str) -> list[str]:
    """A down interface whose network holds the address is the likely cause; else a route must be added."""
    target = ipaddress.ip_address(address)
    for interface in sorted(facts.interfaces.values(), key=lambda i: i.name):
        for cidr in interface.addresses:
            try:
                network = ipaddress.ip_interface(cidr).network
            except ValueError:
                continue
            if target in network and not interface.up:
                return [f"ip link set {interface.name} up"]
    return [f"ip route add {address} via <a gateway that reaches it>"]


def check_conntrack(facts: Facts, keys: list[ServiceKey]) -> Iterable[Finding]:
    udp = [key for key in keys if key.protocol == "udp"]
    if not udp:
        return
    if facts.conntrack_error:
        yield Finding("conntrack.udp", WARN, f"UDP conntrack entries not checked: {facts.conntrack_error}")
        return
    stale = []
    for key in udp:
        current = {(k.address, k.port) for k in facts.observed.real_servers if k.service == key}
        if key not in facts.observed.services:
            continue
        for entry in facts.conntrack:
            if (entry.protocol, entry.orig_dst, entry.orig_dport) != ("udp", key.vip, key.port):
                continue
            if entry.reply_src == key.vip or (entry.reply_src, entry.reply_sport) in current:
                continue
            stale.append((key, entry))
    if not stale:
        yield Finding("conntrack.udp", PASS, "no UDP conntrack entry points at a removed real server")
        return
    fixes = sorted({
        f"conntrack -D -f {'ipv6' if key.family == 6 else 'ipv4'} -p udp --orig-dst {key.vip} --orig-port-dst {key.port} "
        f"--reply-src {entry.reply_src} --reply-port-src {entry.reply_sport}"
        for key, entry in stale
    })
    servers = sorted({hostport(e.reply_src, e.reply_sport) for _, e in stale})
    yield Finding("conntrack.udp", FAIL,
                  f"{len(stale)} UDP conntrack entr{'y' if len(stale) == 1 else 'ies'} still point at removed real server(s) {', '.join(servers)}: "
                  "a client sending from the same port keeps going there until the entry expires", fix=fixes)


def check_agent(facts: Facts, keys: list[ServiceKey]) -> Iterable[Finding]:
    agent = facts.agent
    if agent is None:
        yield Finding("agent.status", PASS, f"no host agent status ({facts.agent_status_file or 'none'}): nothing to check")
        return
    directory = agent.get("directory", "<DIR>")
    if agent.get("stale"):
        yield Finding("agent.status", FAIL,
                      f"the host agent that wrote {facts.agent_status_file} (pid {agent.get('pid')}) is not running: nothing repairs drift, runs health checks or drains",
                      fix=["systemctl restart vsop-agent", f"or: vsop agent --from {directory}"])
        return
    error = (agent.get("lastSync") or {}).get("error")
    if error:
        yield Finding("agent.sync", FAIL, f"the host agent's last sync failed: {error}", setting="fix the cause named; the agent retries by itself")
    else:
        yield Finding("agent.sync", PASS, f"the host agent (pid {agent.get('pid')}) synced without error")
    age = agent.get("statusAge")
    if isinstance(age, (int, float)) and age > AGENT_STATUS_MAX_AGE:
        yield Finding("agent.status", WARN, f"the host agent's status is {int(age)} s old: its loop may be stuck",
                      fix=["systemctl restart vsop-agent"])
    for path, message in sorted((agent.get("errors") or {}).items()):
        yield Finding("agent.file", WARN, f"the agent ignores {path}: {message} (its last good objects stay)", setting=f"fix {path}")


def _session_fix(session: Mapping[str, Any], socket: str) -> tuple[str, list[str]]:
    """Why a BGP session is down, in BIRD's words where it gave some, and what fixes it."""
    error, peer = str(session.get("lastError") or ""), session["peer"]
    show = f"birdc -s {socket} show protocols all {session['protocol']}"
    if "refused" in error.lower():
        return "the peer refuses the TCP connection: it has no neighbor configured for this node", [
            f"configure this node as a neighbor on {peer} (its address and the BGPSpeaker's localASN)", show]
    if "Bad peer AS" in error:
        return "the peer's AS is not the one the BGPSpeaker names", [f"set spec.peers[].asn to {peer}'s AS in the BGPSpeaker", show]
    if "Hold timer" in error or "BFD" in error:
        return "the peer stopped answering (its link, a firewall, or the peer itself)", [
            f"ping {peer}", f"allow TCP 179 (and UDP 3784/3785 with BFD) between this node and {peer}", show]
    return "no BGP session with the peer yet", [f"check that {peer} is reachable and expects this node on TCP 179", show]


def check_bgp(facts: Facts, keys: list[ServiceKey]) -> Iterable[Finding]:
    """announce: bgp: BIRD answers and each of its sessions to the BGPSpeaker's peers is Established."""
    bgp, vips = facts.bgp, sorted(r.split("/")[0] for r in facts.observed.routes)
    if bgp is None:
        return
    socket, announced = bgp["socket"], f"{len(vips)} VIP(s) in table {facts.names.route_table}"
    if bgp.get("error"):
        yield Finding("bgp.bird", FAIL if vips else WARN,
                      f"BIRD does not answer at {socket} ({bgp['error']}): {announced} reach no peer",
                      fix=["systemctl restart bird", f"birdc -s {socket} show status"])
        return
    sessions = bgp.get("sessions") or []
    if not sessions:
        yield Finding("bgp.sessions", FAIL if vips else WARN,
                      f"BIRD at {socket} has no BGP peer from vsop's bird.conf: {announced} reach no peer",
                      setting="give the host agent --bgp-speaker FILE (or run `vsop render bird --out`) with at least one peer")
    for session in sessions:
        name = f"BGP session to {session['peer']} ({session['protocol']})"
        if session.get("up"):
            yield Finding("bgp.session", PASS, f"{name} is Established since {session['since']}: {announced} announced to it")
            continue
        why, fix = _session_fix(session, socket)
        state = session.get("bgpState") or session.get("state")
        last = f", last error: {session['lastError']}" if session.get("lastError") else ""
        yield Finding("bgp.session", FAIL, f"{name} is {state} since {session['since']}{last}: {why}; {announced} not announced to it", fix=fix)


def check_ecmp(facts: Facts, keys: list[ServiceKey]) -> Iterable[Finding]:
    """announce: bgp: what a connection needs to survive an ECMP change that moves it to this node
    (README "Connections across an ECMP change"): sloppy_tcp, so IPVS takes a flow from any segment
    and not only from a SYN, and mh, so this node picks the real server the other node picked."""
    vips = {route.split("/")[0] for route in facts.observed.routes}
    services = sorted(key for key in facts.observed.services if key.vip in vips)
    if not services:
        return
    sloppy = _sysctl(facts, "net.ipv4.vs.sloppy_tcp")
    announced = f"{len(vips)} VIP(s) announced over BGP"
    if any(key.protocol == "tcp" for key in services) and sloppy is not None and sloppy != "1":
        yield Finding("bgp.ecmp.sloppy_tcp", WARN,
                      f"net.ipv4.vs.sloppy_tcp is {sloppy} with {announced}: IPVS takes a connection only from its SYN, so an "
                      "established connection that an ECMP change moves to this node reaches the node's own TCP stack and is reset",
                      fix=["sysctl -w net.ipv4.vs.sloppy_tcp=1"],
                      setting="keep it in /etc/sysctl.d/90-ipvs.conf on every node; vsop leaves this host-wide switch alone")
    other = [key for key in services if facts.observed.services[key].scheduler != "mh"]
    if other:
        named = ", ".join(f"{key} ({facts.observed.services[key].scheduler})" for key in other[:3])
        more = f" and {len(other) - 3} more" if len(other) > 3 else ""
        yield Finding("bgp.ecmp.scheduler", WARN,
                      f"{named}{more} on a VIP announced over BGP: a connection an ECMP change moves to another node is scheduled "
                      "there afresh and reaches another real server, which resets it",
                      setting="scheduler: mh in the VirtualService (equal Maglev tables on every node pick the same real server)")
    if sloppy == "1" and not other:
        yield Finding("bgp.ecmp", PASS, f"sloppy_tcp=1 and scheduler mh on the {announced}: a connection moved by an ECMP change keeps its real server")


def check_vrrp(facts: Facts, keys: list[ServiceKey]) -> Iterable[Finding]:
    """announce: vrrp: the master holds the VIP on its interface, a backup does not, and vsop0 answers no ARP."""
    for vip in sorted({key.vip for key in keys}):
        hold = vrrp_hold(facts, vip)
        if hold is None:
            continue
        found, ok = hold.verdict(fix_in_text=False)
        if hold.leftovers:
            yield Finding(f"vrrp.owner {vip}", FAIL, found, fix=hold.fix())
        elif ok is False:  # master by keepalived's word, but on no interface
            yield Finding(f"vrrp.owner {vip}", FAIL, found, fix=["journalctl -u vsop-keepalived", "systemctl restart vsop-keepalived"],
                          setting="in a cluster, keepalived is the vsop-agent pod's keepalived container: "
                                  "kubectl -n vsop-system logs POD -c keepalived, and delete the pod to restart it")
        else:
            yield Finding(f"vrrp.owner {vip}", PASS, found)
        arp_ignore = _sysctl(facts, "net.ipv4.conf.all.arp_ignore")
        if ":" not in vip and arp_ignore is not None and arp_ignore == "0":
            yield Finding(f"vrrp.arp {vip}", FAIL, f"arp_ignore is 0: this node answers ARP for {vip} through {facts.names.link} on every "
                          "interface, whatever VRRP elected: the LAN's ARP cache flaps between nodes",
                          fix=["sysctl -w net.ipv4.conf.all.arp_ignore=1", "sysctl -w net.ipv4.conf.all.arp_announce=2"])


CHECKS = (check_ipvs, check_sysctls, check_rp_filter, check_link, check_services, check_rules, check_foreign_rules,
          check_other_backend, check_real_servers, check_conntrack, check_agent, check_bgp, check_ecmp, check_vrrp)


def check_source_ranges(facts: Facts, keys: list[ServiceKey], client: str) -> Iterable[Finding]:
    """doctor --from: each service's sourceRanges admit `client`, or the failure names the ranges that drop it."""
    for key in keys:
        label = f"sourceRanges {key} from {client}"
        ranges = source_ranges(facts, key)
        if ranges is None:
            yield Finding(label, PASS, f"{key} has no sourceRanges: {client} may reach it")
        elif ranges.admitting(client):
            yield Finding(label, PASS, ranges.verdict(client))
        else:
            prefix = "128" if key.family == 6 else "32"
            yield Finding(label, FAIL, ranges.verdict(client) + f"; VSOP-FILTER's first rule drops its packets to {key}",
                          setting=f"add {client}/{prefix} (or its network) to spec.sourceRanges of VirtualService {ranges.owner or key}")


def doctor(facts: Facts, keys: list[ServiceKey] | None = None, client: str | None = None) -> dict[str, Any]:
    """Every check on the given services (default: everything vsop serves here); with `client`, also
    whether their sourceRanges admit that address."""
    targets = sorted(set(keys)) if keys else served(facts)
    findings: list[Finding] = []
    if not targets:
        findings.append(Finding("vsop.services", WARN, "vsop serves nothing on this host (no VIP:port in its sets, store or IPVS)"))
    for check in CHECKS:
        findings.extend(check(facts, targets))
    if client is not None:
        findings.extend(check_source_ranges(facts, targets, client))
    failed = [f for f in findings if f.status == FAIL]
    return {
        "targets": [str(key) for key in targets],
        "from": client,
        "ok": not failed,
        "failed": len(failed),
        "warnings": sum(1 for f in findings if f.status == WARN),
        "findings": [f.json() for f in findings],
        "expectedFrom": facts.desired_source or "the kernel (vsop's sets and IPVS services)",
        "errors": list(facts.errors),
    }


def doctor_text(report: dict[str, Any], verbose: bool = False) -> str:
    lines = [f"vsop doctor: {len(report['targets'])} service(s): {', '.join(report['targets']) or 'none'}"]
    lines.append(f"expected state from {report['expectedFrom']}")
    lines.append("")
    word = {PASS: "ok  ", FAIL: "FAIL", WARN: "warn"}
    for finding in report["findings"]:
        if finding["status"] == PASS and not verbose:
            continue
        lines.append(f"{word[finding['status']]}  {finding['check']}: {finding['message']}")
        for command in finding["fix"]:
            lines.append(f"      fix: {command}")
        if finding["setting"]:
            lines.append(f"      {'setting' if not finding['fix'] else 'note'}: {finding['setting']}")
    passed = sum(1 for f in report["findings"] if f["status"] == PASS)
    if not verbose and passed:
        lines.append(f"ok    {passed} check(s) passed (-v lists them)")
    for error in report["errors"]:
        lines.append(f"note: could not read {error}")
    lines.append("")
    if report["ok"]:
        lines.append("All checks pass" + (f" ({report['warnings']} warning(s))." if report["warnings"] else "."))
    else:
        lines.append(f"{report['failed']} problem(s) found; each names its fix.")
    return "\n".join(lines) + "\n"


def shell_words(command: str) -> list[str]:
    """A fix command as argv (for tests and scripts that run the fixes)."""
    return shlex.split(command)
