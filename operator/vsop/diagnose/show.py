"""`vsop show`: what vsop owns on this host, as a person or a machine reads it.

Owns the table (like `ipvsadm -Ln`, plus the owning VirtualService of each VIP port,
taken from the comments on vsop's ipset members, so the mapping lives in the kernel
and survives restarts) and its JSON twin. Pure formatting of an observed state.
"""

from __future__ import annotations

from typing import Any

from vsop.core.plan import owned
from vsop.core.state import KernelState, Names, ServiceKey, hostport
from vsop.core.sysctls import accept_ra_interface

_FORWARD = {"masq": "Masq", "route": "Route", "tunnel": "Tunnel"}


def owners(state: KernelState, names: Names) -> dict[str, str]:
    """ipset member text ("vip,proto:port" or "vip") -> owning VirtualService."""
    result: dict[str, str] = {}
    for family in (4, 6):
        for base in (names.vip_ports_set, names.vips_set):
            ipset = state.ipsets.get(names.set_name(base, family))
            if ipset is not None:
                result.update(ipset.members)
    return result


def _member(key: ServiceKey) -> str:
    return f"{key.vip},{key.protocol}:{key.port}"


def _host(address: str, port: int) -> str:
    return hostport(address, port)


def show_json(
    observed: KernelState,
    names: Names,
    agent: dict[str, Any] | None = None,
    changed: dict[str, tuple[str, str | None]] | None = None,
    bgp: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """`changed`: the sysctls vsop changed, (value before vsop's first change, value now).
    `bgp`: BIRD's BGP sessions (vsop.bgp.sessions' Reading as a dict, with its socket), when asked."""
    mine = owned(observed, names)
    by_member = owners(mine, names)
    health = {(h["service"], h["realServer"]): h for h in (agent or {}).get("health", [])}
    services = []
    for key, service in sorted(mine.services.items()):
        real = [rs for k, rs in sorted(mine.real_servers.items()) if k.service == key]
        services.append(
            {
                "protocol": key.protocol.upper(),
                "vip": key.vip,
                "port": key.port,
                "scheduler": service.scheduler,
                "persistenceTimeout": service.persistence_timeout,
                "owner": by_member.get(_member(key), ""),
                "realServers": [
                    {
                        "address": rs.key.address,
                        "port": rs.key.port,
                        "forwarding": rs.forwarding,
                        "weight": rs.weight,
                        "activeConnections": rs.active_connections,
                        "inactiveConnections": rs.inactive_connections,
                        **_health_of(health, rs.key),
                    }
                    for rs in real
                ],
            }
        )
    with_ipvs = {_member(k) for k in mine.services}
    without_ipvs = sorted(
        m for m in by_member if "," in m and m not in with_ipvs
    )  # keepalived-mode ports: vsop holds the VIP and rules, keepalived the IPVS service
    return {
        "link": None if mine.link is None else {"name": mine.link.name, "up": mine.link.up},
        "vips": sorted(a.split("/")[0] for a in mine.addresses),
        # announce: bgp: the VIPs this node asks BIRD to announce (routes in vsop's table).
        "announced": {"table": names.route_table, "vips": sorted(r.split("/")[0] for r in mine.routes)},
        "bgp": bgp,
        "services": services,
        "portsWithoutIPVSService": [{"member": m, "owner": by_member[m]} for m in without_ipvs],
        "ipsets": {name: len(ipset.members) for name, ipset in sorted(mine.ipsets.items())},
        "chains": {f"{'ip6tables' if k.family == 6 else 'iptables'} {k.table} {k.chain}": len(r) for k, r in sorted(mine.chains.items())},
        "jumps": len(mine.jumps),
        # Per-interface accept_ra settings are many; those vsop changed are under changedSysctls.
        "sysctls": dict(sorted((k, v) for k, v in mine.sysctls.items() if accept_ra_interface(k) is None)),
        "changedSysctls": {name: {"before": before, "now": now} for name, (before, now) in (changed or {}).items()},
        "agent": None
        if agent is None
        else {
            "stale": bool(agent.get("stale")),
            "directory": agent.get("directory"),
            "fileErrors": agent.get("errors", {}),
            "draining": agent.get("draining", []),
            "lastSync": agent.get("lastSync", {}),
            "driftRepairs": agent.get("driftRepairs", {"total": 0, "last": []}),
            **({"keepalived": agent["keepalived"]} if agent.get("keepalived") else {}),
        },
    }


def bgp_lines(bgp: dict[str, Any] | None) -> list[str]:
    """BIRD's BGP sessions, one line per peer."""
    if bgp is None:
        return []
    if bgp.get("error"):
        return [f"BGP: BIRD not reachable at {bgp['socket']}: {bgp['error']}"]
    sessions = bgp.get("sessions") or []
    lines = [f"BGP sessions (BIRD at {bgp['socket']}): {sum(1 for s in sessions if s['up'])} of {len(sessions)} up"]
    for s in sessions:
        asn = f" AS{s['asn']}" if s.get("asn") is not None else ""
        error = f", last error: {s['lastError']}" if s.get("lastError") else ""
        lines.append(f"  peer {s['peer']}{asn} ({s['protocol']}): {'up' if s['up'] else 'DOWN'}, {s['bgpState'] or s['state']} since {s['since']}{error}")
    return lines


def _health_of(health: dict[tuple[str, str], dict[str, Any]], key: Any) -> dict[str, Any]:
    found = health.get((str(key.service), str(key)))
    if found is None:
        return {}
    return {"healthy": found["healthy"], "lastError": found.get("lastError", "")}


def show_text(
    observed: KernelState,
    names: Names,
    agent: dict[str, Any] | None = None,
    changed: dict[str, tuple[str, str | None]] | None = None,
    bgp: dict[str, Any] | None = None,
) -> str:
    data = show_json(observed, names, agent, changed, bgp)
    if data["link"] is None and not data["ipsets"] and not data["chains"] and not data["announced"]["vips"]:
        return "Nothing of vsop's on this host.\n"
    lines = []
    link = data["link"]
    link_text = f"link {link['name']} {'up' if link['up'] else 'DOWN'}" if link else f"no {names.link} link"
    real_count = sum(len(s["realServers"]) for s in data["services"])
    lines.append(f"{link_text}, {len(data['vips'])} VIP(s), {len(data['services'])} service(s), {real_count} real server(s)")
    lines.append("")
    lines.append(f"{'Prot LocalAddress:Port':<34} {'Scheduler':<10} {'Flags':<14} Owner")
    lines.append(f"{'  -> RemoteAddress:Port':<34} {'Forward':<7} {'Weight':>6} {'ActiveConn':>10} {'InActConn':>10}  Health")
    for svc in data["services"]:
        flags = f"persistent {svc['persistenceTimeout']}" if svc["persistenceTimeout"] else ""
        lines.append(f"{svc['protocol']:<4} {_host(svc['vip'], svc['port']):<29} {svc['scheduler']:<10} {flags:<14} {svc['owner'] or '-'}")
        for rs in svc["realServers"]:
            lines.append(
                f"  -> {_host(rs['address'], rs['port']):<29} {_FORWARD[rs['forwarding']]:<7} {rs['weight']:>6} "
                f"{rs['activeConnections']:>10} {rs['inactiveConnections']:>10}  {_health_text(rs)}"
            )
    for item in data["portsWithoutIPVSService"]:
        lines.append(f"{item['member']:<34} (no IPVS service from vsop: keepalived mode)  {item['owner']}")
    lines.append("")
    sets = ", ".join(f"{name} {count}" for name, count in data["ipsets"].items())
    lines.append(f"ipsets: {sets or 'none'}")
    lines.append(f"iptables: {len(data['chains'])} chain(s), {sum(data['chains'].values())} rule(s), {data['jumps']} jump(s)")
    announced = data["announced"]
    if announced["vips"]:
        lines.append(f"announced over BGP (routes in table {announced['table']}, learned by BIRD): {' '.join(announced['vips'])}")
    lines.extend(bgp_lines(data["bgp"]))
    lines.append("sysctls: " + " ".join(f"{k}={v}" for k, v in data["sysctls"].items()))
    for name, values in data["changedSysctls"].items():
        why = " (router advertisements keep working with IPv6 forwarding on)" if accept_ra_interface(name) else ""
        lines.append(f"  changed by vsop: {name} {values['before']} -> {values['now']}{why}; `vsop cleanup --restore-sysctls` puts it back")
    agent_data = data["agent"]
    if agent_data is not None:
        state = "NOT RUNNING (status is stale)" if agent_data["stale"] else "running"
        lines.append(f"agent: {state}, following {agent_data['directory']}")
        for path, error in sorted(agent_data["fileErrors"].items()):
            lines.append(f"  ignored file {path}: {error}")
        for item in agent_data["draining"]:
            lines.append(f"  draining {item}")
        drift = agent_data["driftRepairs"]
        if drift.get("total"):
            lines.append(f"  drift repaired: {drift['total']} operation(s) put back what changed behind vsop's back; last:")
            lines.extend(f"    {item}" for item in drift.get("last", []))
        if agent_data["lastSync"].get("error"):
            lines.append(f"  last sync failed: {agent_data['lastSync']['error']}")
        for problem in agent_data["lastSync"].get("problems", []):
            if problem.get("reason") == "KernelError":  # its VIP left as the kernel has it; the rest of the node is programmed
                lines.append(f"  KernelError {problem.get('obj')}: {problem.get('message')} (its VIP is tried again with backoff)")
        keepalived = agent_data.get("keepalived")
        if keepalived and keepalived.get("active"):
            written = keepalived.get("lastWritten") or {}
            lines.append(f"  keepalived: {keepalived['directory']}, last written {len(written.get('files', []))} file(s): {written.get('reload', 'nothing written yet')}")
            if keepalived.get("lastError"):
                lines.append(f"  keepalived: not applied ({keepalived['lastError'].get('stage')}): {keepalived['lastError'].get('message')}")
            for problem in keepalived.get("problems", []):
                lines.append(f"  keepalived: not rendered: {problem}")
            dead = keepalived.get("running") is False  # killed without a word: found gone by its pidfile
            for vip, state in keepalived.get("announced", {}).items():
                why = ": keepalived is not running" if dead else ": this node holds it" if state == "master" else ""
                lines.append(f"  announced: {vip} {state} (VRRP{why})")
    return "\n".join(lines) + "\n"


def _health_text(rs: dict[str, Any]) -> str:
    if "healthy" not in rs:
        return "-"
    return "ok" if rs["healthy"] else f"FAILING ({rs['lastError']})"
