"""`vsop explain VIP:PORT`: the path one packet takes through this node, hook by hook, from `Facts`.

Owns turning observed facts into the ordered steps of that path (what vsop expects at
each hook, what the kernel has, the live counters, one line of why the step exists),
their text and JSON forms, and the deltas between two readings for `--watch`.
Pure: reads a `Facts`, never the host (vsop.diagnose.gather gathers); must not import
subprocess, socket, pyroute2, kopf or vsop.adapters.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any

from vsop.api.errors import printable
from vsop.core.desired import constant_chains, constant_jumps
from vsop.core.state import Names, RealServerKey, ServiceKey, hostport, ipset_member
from vsop.diagnose.facts import Chain, Facts, Rule, rule_words
from vsop.diagnose.ranges import source_ranges

PROTOCOLS = ("tcp", "udp", "sctp")
# What ends a packet's walk through a nat chain before vsop's jump (it is never marked).
NAT_TERMINAL = frozenset({"ACCEPT", "RETURN", "DNAT", "REDIRECT", "SNAT", "MASQUERADE", "DROP"})
FILTER_TERMINAL = frozenset({"DROP", "REJECT"})
MAX_TEMPLATES = 20  # persistence templates listed per service (the count says how many there are)


class TargetError(ValueError):
    """A VIP:PORT[/PROTOCOL] argument that does not parse."""


def parse_target(text: str) -> ServiceKey:
    """"169.254.11.2:80", "169.254.11.2:53/udp", "[fd00::2]:80/TCP" -> ServiceKey."""
    shown = "'" + printable(text, 100) + "'"
    rest, _, protocol = text.partition("/")
    protocol = (protocol or "tcp").lower()
    if protocol not in PROTOCOLS:
        raise TargetError(f"{shown}: protocol must be TCP, UDP or SCTP, not '{printable(protocol, 20)}'")
    if rest.startswith("["):
        host, sep, port = rest[1:].partition("]:")
    else:
        host, sep, port = rest.rpartition(":")
        if ":" in host:
            raise TargetError(f"{shown}: write an IPv6 VIP in brackets: [ADDRESS]:PORT")
    if not sep or not host:
        raise TargetError(f"{shown}: expected VIP:PORT[/PROTOCOL], e.g. 169.254.11.2:80 or [fd00::2]:53/udp")
    if "%" in host:  # Python reads fe80::1%eth0; an IPVS service address has no zone
        address = host.partition("%")[0]
        raise TargetError(f"{shown}: a zone (%{printable(host.partition('%')[2], 20)}) is not part of a VIP: IPVS services have none; write [{printable(address, 60)}]:PORT")
    try:
        vip = str(ipaddress.ip_address(host))
    except ValueError:
        raise TargetError(f"{shown}: '{printable(host, 60)}' is not an IP address") from None
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise TargetError(f"{shown}: the port must be a number from 1 to 65535")
    return ServiceKey(protocol, vip, int(port))  # type: ignore[arg-type]


# --- rules ------------------------------------------------------------------------------


def find_jump(facts: Facts, family: int, table: str, chain: str, target: str) -> Rule | None:
    found = facts.chain(family, table, chain)
    if found is None:
        return None
    return next((rule for rule in found.rules if rule.target == target), None)


def matches(rule: Rule, key: ServiceKey) -> bool | None:
    """Whether a rule matches packets to key: True, False, or None when it cannot be told.

    Understood: -d, -p, --dport/--dports, -s, -i/-o (the interface is unknown: may
    match), comments and the protocol match modules; anything else (conntrack states,
    marks, sets...) makes the answer "cannot tell".
    """
    words = rule_words(rule.text)
    known_flags = {"-d", "--destination", "-p", "--protocol", "--dport", "--destination-port", "--dports",
                   "-s", "--source", "-i", "--in-interface", "-o", "--out-interface", "-m", "--comment",
                   "-j", "--jump", "-g", "--goto", "--reject-with", "--to-destination", "--to-ports",
                   "--to-source", "--set-xmark", "--set-mark"}
    known_modules = {"tcp", "udp", "sctp", "comment", "multiport"}
    index = 0
    certain = True
    target_at = next((i for i, w in enumerate(words) if w in ("-j", "--jump", "-g", "--goto")), len(words))
    while index < target_at:
        word = words[index]
        negated = word == "!"
        if negated:
            index += 1
            word = words[index] if index < len(words) else ""
        value = words[index + 1] if index + 1 < len(words) else ""
        if word.startswith("-") and word not in known_flags:
            return None
        if word == "-m" and value not in known_modules:
            return None
        if word in ("-d", "--destination"):
            try:
                inside = ipaddress.ip_address(key.vip) in ipaddress.ip_network(value, strict=False)
            except ValueError:
                return None
            if inside == negated:
                return False
        elif word in ("-p", "--protocol"):
            if (value.lower() in (key.protocol, "all")) == negated:
                return False
        elif word in ("--dport", "--destination-port", "--dports"):
            ports = []
            for part in value.split(","):
                low, _, high = part.partition(":")
                ports.append((int(low or 0), int(high or low or 65535)))
            inside = any(low <= key.port <= high for low, high in ports)
            if inside == negated:
                return False
        elif word in ("-s", "--source", "-i", "--in-interface", "-o", "--out-interface"):
            certain = False
        index += 2 if word.startswith("-") else 1
    return True if certain else None


def rules_ahead(facts: Facts, family: int, table: str, chain: str, jump: Rule | None, key: ServiceKey, terminal: frozenset[str]) -> list[tuple[Rule, bool | None]]:
    """Rules before vsop's jump (all rules when it is missing) that may stop packets to key first."""
    found = facts.chain(family, table, chain)
    if found is None:
        return []
    result = []
    for rule in found.rules:
        if jump is not None and rule.position >= jump.position:
            break
        if rule.target not in terminal:
            continue
        verdict = matches(rule, key)
        if verdict is not False:
            result.append((rule, verdict))
    return result


# --- the report ---------------------------------------------------------------------------


@dataclass
class Item:
    label: str
    text: str
    ok: bool | None = None
    counters: dict[str, int] = field(default_factory=dict)

    def json(self) -> dict[str, Any]:
        return {"label": self.label, "text": self.text, "ok": self.ok, "counters": dict(self.counters)}


@dataclass
class Step:
    id: str
    hook: str
    title: str
    why: str
    expect: str
    found: str
    ok: bool | None = None  # None: nothing to judge (information)
    counters: dict[str, int] = field(default_factory=dict)
    items: list[Item] = field(default_factory=list)

    def json(self) -> dict[str, Any]:
        return {
            "id": self.id, "hook": self.hook, "title": self.title, "why": self.why, "expect": self.expect,
            "found": self.found, "ok": self.ok, "counters": dict(self.counters), "items": [i.json() for i in self.items],
        }


def _rule_counters(rule: Rule | None, prefix: str = "") -> dict[str, int]:
    if rule is None:
        return {}
    return {f"{prefix}packets": rule.packets, f"{prefix}bytes": rule.bytes}


def _jump_text(rule: Rule | None, chain: Chain | None, expected: str) -> str:
    if rule is None:
        return "MISSING: " + (f"{chain.name} has {len(chain.rules)} rule(s), none jumps to vsop" if chain else "the chain is not there")
    return f"rule {rule.position} of {len(chain.rules) if chain else '?'}: {rule.packets} packets, {rule.bytes} bytes"


def _expected_jump(names: Names, family: int, table: str, chain: str) -> str:
    for jump in constant_jumps(names, family):
        if jump.table == table and jump.chain == chain:
            return f"-A {chain} {jump.rule}"
    return ""


def owner_of(facts: Facts, key: ServiceKey) -> str:
    names = facts.names
    ipset = facts.observed.ipsets.get(names.set_name(names.vip_ports_set, key.family))
    return "" if ipset is None else ipset.members.get(ipset_member(key), "")


def _entry_step(facts: Facts, key: ServiceKey, chain_name: str) -> Step:
    names, family = facts.names, key.family
    jump = find_jump(facts, family, "nat", chain_name, names.services_chain)
    chain = facts.chain(family, "nat", chain_name)
    ahead = rules_ahead(facts, family, "nat", chain_name, jump, key, NAT_TERMINAL)
    items = [
        Item(f"rule {rule.position}", f"-A {chain_name} {rule.text}" + ("  (matches this VIP: vsop's jump is never reached)" if sure else "  (may match this VIP first)"),
             False if sure else None, _rule_counters(rule))
        for rule, sure in ahead
    ]
    if chain_name == "PREROUTING":
        title, why = "a packet from another host", (
            "Every packet from outside enters the nat table at PREROUTING. vsop's jump hands it to "
            f"{names.services_chain}. nat rules see only the first packet of a connection; conntrack applies "
            "the same verdict to the rest, so these counters count connections.")
    else:
        title, why = "a packet sent by a program on this node", (
            "A packet sent from this node never crosses PREROUTING: it starts at OUTPUT, which is why vsop "
            "jumps from OUTPUT too (without it, curl on the node hangs while remote clients work).")
    return Step(
        id=chain_name.lower(), hook=f"nat {chain_name}", title=title, why=why,
        expect=_expected_jump(names, family, "nat", chain_name),
        found=_jump_text(jump, chain, ""), ok=jump is not None and not any(sure for _, sure in ahead),
        counters=_rule_counters(jump), items=items,
    )


def _match_step(facts: Facts, key: ServiceKey) -> Step:
    names, family = facts.names, key.family
    member = ipset_member(key)
    vip_ports = facts.observed.ipsets.get(names.set_name(names.vip_ports_set, family))
    nomasq = facts.observed.ipsets.get(names.set_name(names.nomasq_set, family))
    services = facts.chain(family, "nat", names.services_chain)
    mark = facts.chain(family, "nat", names.mark_chain)
    counters: dict[str, int] = {}
    items = []
    for rule in services.rules if services else ():
        counters[f"{rule.target} packets"] = rule.packets
        items.append(Item(f"{names.services_chain} {rule.position}", f"-A {names.services_chain} {rule.text}", None, _rule_counters(rule)))
    for rule in mark.rules if mark else ():
        counters["MARK packets"] = rule.packets
        items.append(Item(f"{names.mark_chain} {rule.position}", f"-A {names.mark_chain} {rule.text}", None, _rule_counters(rule)))
    in_set = vip_ports is not None and member in vip_ports.members
    no_masquerade = nomasq is not None and member in nomasq.members
    if vip_ports is None:
        found = f"MISSING: ipset {names.set_name(names.vip_ports_set, family)} does not exist"
    elif not in_set:
        found = f"MISSING: {member} is not a member of {vip_ports.name} ({len(vip_ports.members)} member(s))"
    else:
        owner = vip_ports.members[member]
        found = f"{member} is in {vip_ports.name}" + (f", owner {owner}" if owner else "")
        found += (f"; also in {nomasq.name}: RETURN, not marked (masquerade: false)" if no_masquerade and nomasq
                  else f"; marked {names.mark}")
    expected_rules = constant_chains(names, family)
    healthy_chains = all(
        facts.chain(ck.family, ck.table, ck.chain) is not None
        and tuple(r.text for r in facts.chain(ck.family, ck.table, ck.chain).rules) == rules  # type: ignore[union-attr]
        for ck, rules in expected_rules.items() if ck.table == "nat" and ck.chain in (names.services_chain, names.mark_chain)
    )
    if not healthy_chains:
        found += f"; {names.services_chain} / {names.mark_chain} do not hold vsop's rules"
    return Step(
        id="match", hook=f"nat {names.services_chain}", title="is this VIP:port one of vsop's?",
        why=(f"One ipset ({names.vip_ports_set}) holds every VIP,proto:port vsop serves, so this is one rule however "
             f"many services exist. A match jumps to {names.mark_chain}, which sets mark {names.mark}: "
             "POSTROUTING masquerades what carries it."),
        expect=f"{member} in {names.set_name(names.vip_ports_set, family)}, then -j MARK --set-xmark {names.mark}",
        found=found, ok=in_set and healthy_chains, counters=counters, items=items,
    )


def _peers(facts: Facts) -> str:
    """To whom BIRD announces it: the peers whose session is Established (BIRD's own answer)."""
    bgp = facts.bgp
    if bgp is None:
        return ""
    if bgp.get("error"):
        return f" but BIRD does not answer at {bgp['socket']}"
    sessions = bgp.get("sessions") or []
    up = [s["peer"] for s in sessions if s.get("up")]
    down = [s["peer"] for s in sessions if not s.get("up")]
    return (f" to {', '.join(up) if up else 'no peer'} (session Established)"
            + (f"; not to {', '.join(down)} (session down)" if down else ""))


def _route_step(facts: Facts, key: ServiceKey) -> Step:
    names = facts.names
    link = facts.observed.link
    bound = key.vip in facts.observed.bound_vips()
    found = (f"{names.link} {'up' if link and link.up else 'DOWN' if link else 'MISSING'}, "
             f"{key.vip} {'bound' if bound else 'NOT bound'}")
    if f"{key.vip}/{128 if key.family == 6 else 32}" in facts.observed.routes:
        # announce: bgp: the route that makes BIRD attract the VIP here (not consulted by forwarding).
        found += f"; announced over BGP (blackhole route in table {names.route_table}, learned by BIRD){_peers(facts)}"
    return Step(
        id="route", hook="routing decision", title="the VIP is this node's own address",
        why=(f"The VIP is an address of the dummy link {names.link}, so the kernel delivers the packet locally (INPUT) "
             "where IPVS waits, instead of forwarding it or answering 'no route'."),
        expect=f"{names.link} up, {key.vip}/{128 if key.family == 6 else 32} on it",
        found=found, ok=bool(link and link.up and bound),
    )


@dataclass(frozen=True)
class VrrpHold:
    """Where this node holds a VIP announced by VRRP besides vsop0 (`ip addr`), and this node's VRRP
    state for it (the agent's status): explain's arrival step and doctor's vrrp.owner read the same."""

    vip: str
    prefix: str  # "VIP/32" or "VIP/128", as `ip addr del` takes it
    link: str  # vsop's dummy link, where every node holds the VIP with ARP suppressed
    state: str  # master, backup, fault, stop, unknown
    running: bool | None  # keepalived's process alive at the agent's last turn (None: not known)
    up: tuple[str, ...]  # links up holding it: this node answers ARP/ND for it there
    down: tuple[str, ...]  # links down holding it: nothing answered now, but again as soon as the link comes up

    @property
    def owner(self) -> bool:
        """keepalived stands behind this node's address: master (or not said yet) and running."""
        return self.state in ("master", "unknown") and self.running is not False

    @property
    def leftovers(self) -> tuple[str, ...]:
        """Links holding the VIP that no live VRRP master put there: all of them on a node that is not the
        owner (keepalived killed, or backup/fault/stop with the address left behind), the down ones on the owner."""
        return self.down if self.owner else self.up + self.down

    @property
    def dead(self) -> str:
        return ", keepalived is not running" if self.running is False else ""

    def fix(self) -> list[str]:
        return [f"ip addr del {self.prefix} dev {name}" for name in self.leftovers]

    def verdict(self, fix_in_text: bool = True) -> tuple[str, bool | None]:
        """What this node's holding means for the LAN, and whether it is right (None: another node's business);
        `fix_in_text`: the text ends with the commands that remove leftovers (doctor lists them apart)."""
        vip, fix = self.vip, "; remove it: " + "; ".join(self.fix()) if self.leftovers and fix_in_text else ""
        if self.owner and self.up:
            down = f"; also left on {', '.join(self.down)}, which is DOWN" if self.down else ""
            return (f"this node owns {vip} on {', '.join(self.up)} (VRRP {self.state}): it answers ARP/ND for it, "
                    f"the LAN sends it here{down}{fix}"), not self.down
        if self.up:
            return (f"{vip} is left on {', '.join(self.up)} while this node is VRRP {self.state}{self.dead}: no live master "
                    "stands behind it, yet this node answers ARP/ND for it there: two nodes may answer ARP/ND for it, "
                    f"and the LAN may send it here or flap between them{fix}"), False
        if self.down:
            said = "keepalived says master" if self.state == "master" and self.running is not False else f"this node is VRRP {self.state}{self.dead}"
            return (f"{vip} is only on {', '.join(self.down)}, which is DOWN ({said}): this node answers no ARP/ND for it "
                    f"now, and would again as soon as the link comes up, beside whichever node VRRP elected{fix}"), False
        if self.owner and self.state == "master":
            return f"keepalived says master, but {vip} is on no interface but {self.link}: nobody answers ARP/ND for it", False
        return (f"another node owns {vip} (this node is VRRP {self.state}{self.dead}): packets from the LAN reach that node, "
                "not this one; only this node's own programs reach the VIP here"), None


def vrrp_hold(facts: Facts, vip: str) -> VrrpHold | None:
    """None for a VIP this node's agent does not announce by VRRP."""
    keepalived = (facts.agent or {}).get("keepalived") or {}
    announced = keepalived.get("announced") or {}
    if vip not in announced:
        return None
    prefix = f"{vip}/{128 if ':' in vip else 32}"
    holding = sorted((i for i in facts.interfaces.values() if i.name != facts.names.link and prefix in i.addresses), key=lambda i: i.name)
    running = keepalived.get("running")
    return VrrpHold(vip, prefix, facts.names.link, announced[vip], running if isinstance(running, bool) else None,
                    tuple(i.name for i in holding if i.up), tuple(i.name for i in holding if not i.up))


def arrival_step(facts: Facts, key: ServiceKey) -> Step | None:
    """announce: vrrp: how a packet from the LAN reaches this node at all (None for a VIP not announced by VRRP)."""
    hold = vrrp_hold(facts, key.vip)
    if hold is None:
        return None
    found, ok = hold.verdict()
    return Step(
        id="arrival", hook="the LAN (ARP/ND)", title="how the packet reaches this node",
        why=("announce: vrrp: keepalived's VRRP elects one node per VIP; that node adds the VIP to vrrp.interface and answers "
             f"ARP/ND for it, the others hold it only on {facts.names.link}, where ARP is suppressed (arp_ignore=1). "
             "keepalived killed (SIGKILL, OOM) removes nothing: the address it added stays until someone deletes it."),
        expect=f"the VRRP master holds {hold.prefix} on vrrp.interface, up; a backup holds it on {facts.names.link} only",
        found=found, ok=ok,
    )


def _filter_rule_word(names: Names, family: int, text: str, target: str | None) -> str:
    """What a rule of VSOP-FILTER does, as its counter's name: each of the two DROP rules its own."""
    if target == "DROP" and names.set_name(names.source_fw_set, family) in text.split():
        return "sourceRanges drop"
    if target == "DROP" and "INVALID" in text.split():
        return "invalid drop"
    return "accept" if target == "ACCEPT" else "reject" if target == "REJECT" else (target or "rule").lower()


def _ranges_text(facts: Facts, key: ServiceKey, client: str | None, dropped: int | None) -> tuple[str, bool]:
    """What the port's sourceRanges say (vsop.diagnose.ranges), and False when they drop `client`."""
    ranges = source_ranges(facts, key)
    if ranges is None:
        return "; no sourceRanges: every client may reach this port", True
    text = f"; sourceRanges of {ranges.owner or 'its owner'}: {len(ranges.ranges)} range(s) ({ranges.listed() or 'none'})"
    so_far = f" ({dropped} packet(s) dropped so far)" if dropped is not None else ""
    if client is None:
        return text + f"; a client in none of them is dropped by the sourceRanges rule{so_far}", True
    return text + "; " + ranges.verdict(client) + ("" if ranges.admitting(client) else f", the sourceRanges rule{so_far}"), bool(ranges.admitting(client))


def _filter_step(facts: Facts, key: ServiceKey, client: str | None = None) -> Step:
    names, family = facts.names, key.family
    jump = find_jump(facts, family, "filter", "INPUT", names.filter_chain)
    chain = facts.chain(family, "filter", "INPUT")
    own = facts.chain(family, "filter", names.filter_chain)
    ahead = rules_ahead(facts, family, "filter", "INPUT", jump, key, FILTER_TERMINAL)
    items = [
        Item(f"INPUT {rule.position}", f"-A INPUT {rule.text}" + ("  (drops this VIP's packets)" if sure else "  (may drop this VIP's packets)"),
             False if sure else None, _rule_counters(rule))
        for rule, sure in ahead
    ]
    counters = _rule_counters(jump, "jump ")
    for rule in own.rules if own else ():
        counters[f"{_filter_rule_word(names, family, rule.text, rule.target)} packets"] = rule.packets
        items.append(Item(f"{names.filter_chain} {rule.position}", f"-A {names.filter_chain} {rule.text}", None, _rule_counters(rule)))
    policy = f"; INPUT policy {chain.policy}" if chain and chain.policy else ""
    ranges, admitted = _ranges_text(facts, key, client, counters.get("sourceRanges drop packets"))
    return Step(
        id="input", hook="filter INPUT", title="may the packet reach the VIP?",
        why=(f"{names.filter_chain} accepts the VIP:port pairs in the set and rejects anything else addressed to a "
             "VIP, so a VIP does not expose the node's own sshd or kubelet (kube-proxy's KUBE-IPVS-FILTER). "
             "filter rules see every packet, not only the first."),
        expect=_expected_jump(names, family, "filter", "INPUT"),
        found=_jump_text(jump, chain, "") + policy + ranges, ok=jump is not None and not any(sure for _, sure in ahead) and admitted,
        counters=counters, items=items,
    )


def _ipvs_step(facts: Facts, key: ServiceKey) -> Step:
    service = facts.observed.services.get(key)
    stats = dict(facts.service_stats.get(key, {}))
    if not facts.ipvs_available:
        found, ok = f"IPVS is not available: {facts.ipvs_error}", False
    elif service is None:
        found, ok = f"MISSING: no IPVS service {key}", False
    else:
        flags = f", persistent {service.persistence_timeout}s" if service.persistence_timeout else ""
        found = f"{key} scheduler {service.scheduler}{flags}"
        if stats:
            found += (f"; {stats.get('connections', 0)} connections, {stats.get('inPackets', 0)} packets in, "
                      f"{stats.get('outPackets', 0)} out, {stats.get('cps', 0)} conn/s")
        ok = True
    items: list[Item] = []
    if service is not None and service.persistence_timeout:
        templates = sorted((t for t in facts.templates if (t.protocol, t.vip, t.port) == (key.protocol, key.vip, key.port)),
                           key=lambda t: (t.client, t.dest))
        found += f"; {len(templates)} persistence template(s) (ipvsadm -Lnc)"
        items = [Item(f"template {t.client}", f"{t.client} -> {hostport(t.dest, t.dest_port)}: its new connections go there; "
                      f"expires in {t.expires} s unless a connection it controls still lives ({t.state})", None, {"expires": t.expires})
                 for t in templates[:MAX_TEMPLATES]]
    return Step(
        id="ipvs", hook="IPVS (LOCAL_IN; LOCAL_OUT for this node's own packets)", title="the virtual service picks a real server",
        why=("IPVS sits after the filter on INPUT (for packets from this node, on OUTPUT). The scheduler picks a real "
             "server for each new connection and IPVS rewrites the destination (masq) or re-sends the packet "
             "(route, tunnel); later packets follow IPVS's own connection entry. Counters since creation; the kernel folds its "
             "per-CPU counters into these totals every 2 s (the rate estimator), so they lag up to 2 s. With persistence, a "
             "client's first connection leaves a template (client, VIP port -> real server) that sends its later connections "
             "to the same real server; each new connection re-arms it and it outlives the connections it controls "
             "(kubernetes#89358), so it ends timeoutSeconds after the last of them, not after the first."),
        expect=f"IPVS service {key}", found=found, ok=ok, counters=stats, items=items,
    )


def _health(facts: Facts, rs_key: RealServerKey) -> str:
    for entry in (facts.agent or {}).get("health", []):
        if entry.get("realServer") == str(rs_key) and entry.get("service") == str(rs_key.service):
            return "healthy" if entry.get("healthy") else f"FAILING ({entry.get('lastError', '')})"
    return "no check" if facts.agent else "unknown (no agent status)"


def _draining(facts: Facts, rs_key: RealServerKey) -> bool:
    return f"{rs_key.service} -> {rs_key}" in (facts.agent or {}).get("draining", [])


def _real_servers_step(facts: Facts, key: ServiceKey) -> Step:
    servers = sorted((rs for k, rs in facts.observed.real_servers.items() if k.service == key), key=lambda rs: rs.key)
    items = []
    for rs in servers:
        route = facts.routes.get(rs.key.address)
        stats = dict(facts.dest_stats.get(rs.key, {}))
        route_ok = route is None or (route.ok and route.kind != "local")
        draining = _draining(facts, rs.key)
        text = (f"{rs.forwarding} weight {rs.weight}{' (draining)' if draining else ' (no new connections)' if rs.weight == 0 else ''}, "
                f"{rs.active_connections} active, {rs.inactive_connections} inactive, health {_health(facts, rs.key)}; "
                f"route {route.text() if route else 'not looked up'}")
        counters = {"active": rs.active_connections, "inactive": rs.inactive_connections}
        counters.update({k: v for k, v in stats.items() if k in ("connections", "inPackets", "outPackets", "inBytes", "outBytes")})
        items.append(Item(str(rs.key), text, route_ok, counters))
    serving = [rs for rs in servers if rs.weight > 0]
    found = f"{len(servers)} real server(s), {len(serving)} taking new connections" if servers else "MISSING: no real servers"
    return Step(
        id="realservers", hook="IPVS real servers", title="where the connection goes",
        why=("Each real server with weight > 0 takes new connections; weight 0 keeps its existing ones (draining or "
             "failing its health check). The route is how this node reaches it (`ip route get`)."),
        expect="at least one real server with weight > 0, each reachable", found=found,
        ok=bool(serving) and all(i.ok for i in items), items=items,
    )


def _postrouting_step(facts: Facts, key: ServiceKey) -> Step:
    names, family = facts.names, key.family
    servers = [rs for k, rs in facts.observed.real_servers.items() if k.service == key]
    methods = {rs.forwarding for rs in servers} or {"masq"}
    jump = find_jump(facts, family, "nat", "POSTROUTING", names.postrouting_chain)
    chain = facts.chain(family, "nat", "POSTROUTING")
    own = facts.chain(family, "nat", names.postrouting_chain)
    masquerade = next((r for r in own.rules if r.target == "MASQUERADE"), None) if own else None
    nomasq = facts.observed.ipsets.get(names.set_name(names.nomasq_set, family))
    unmarked = nomasq is not None and ipset_member(key) in nomasq.members
    counters = _rule_counters(jump, "jump ")
    counters.update(_rule_counters(masquerade, "MASQUERADE "))
    ahead = rules_ahead(facts, family, "nat", "POSTROUTING", jump, key, frozenset({"ACCEPT", "RETURN"}))
    items = [Item(f"POSTROUTING {rule.position}", f"-A POSTROUTING {rule.text}  (ends POSTROUTING before vsop's jump)", None, _rule_counters(rule))
             for rule, _ in ahead]
    ok: bool | None = jump is not None and masquerade is not None
    if "masq" in methods and not unmarked:
        found = _jump_text(jump, chain, "") + (f"; MASQUERADE {masquerade.packets} packets" if masquerade else f"; MISSING: MASQUERADE in {names.postrouting_chain}")
        why = ("Marked packets leave with this node's address as source (MASQUERADE), so the real server answers "
               "through this node, where conntrack and IPVS undo both rewrites. Without it a real server on "
               "another host answers the client directly with the VIP as source and the connection hangs.")
    elif "masq" in methods:
        found, ok = "not masqueraded (masquerade: false): the real servers must route their answers back through this node", None
        why = "Without SNAT the client's address stays the source; the real server's route back must lead through this node."
    else:
        found, ok = "", None
        why = ""
    if "route" in methods:
        arp = (facts.sysctls.get("net.ipv4.conf.all.arp_ignore", "?"), facts.sysctls.get("net.ipv4.conf.all.arp_announce", "?"))
        found += ("; " if found else "") + (f"route (direct routing): the packet leaves unchanged to the real server's MAC; "
                                            f"this node arp_ignore={arp[0]} arp_announce={arp[1]}")
        why += (" Direct routing: the real server holds the VIP itself (on lo, with arp_ignore=1 and arp_announce=2 "
                "so it never answers ARP for it) and answers the client directly.")
    if "tunnel" in methods:
        module = "ipip" if family == 4 else "ip6_tunnel"
        device = "tunl0" if family == 4 else "ip6tnl0"
        have = module in facts.modules
        found += ("; " if found else "") + f"tunnel: module {module} {'loaded' if have else 'NOT loaded'}, {device} {'up' if facts.links.get(device) else 'down or missing'}"
        why += " Tunnel: the packet is wrapped in IP-in-IP to the real server, which decapsulates it and answers directly."
        ok = bool(ok) and have if ok is not None else have
    return Step(
        id="postrouting", hook="nat POSTROUTING", title="leaving for the real server",
        why=why.strip(), expect=_expected_jump(names, family, "nat", "POSTROUTING") + f", then -j MASQUERADE for mark {names.mark}",
        found=found, ok=ok, counters=counters, items=items,
    )


def _forward_step(facts: Facts, key: ServiceKey) -> Step:
    names, family = facts.names, key.family
    chain = facts.chain(family, "filter", "FORWARD")
    own = facts.chain(family, "filter", names.forward_chain)
    jump = find_jump(facts, family, "filter", "FORWARD", names.forward_chain)
    counters = _rule_counters(jump, "jump ")
    items = []
    for rule in own.rules if own else ():
        word = "accept marked" if "--mark" in rule.text and "connmark" not in rule.text else "accept established" if "ESTABLISHED" in rule.text else (rule.target or "rule").lower()
        counters[f"{word} packets"] = rule.packets
        items.append(Item(f"{names.forward_chain} {rule.position}", f"-A {names.forward_chain} {rule.text}", None, _rule_counters(rule)))
    policy = chain.policy if chain and chain.policy else "ACCEPT"
    if chain is not None and chain.policy:
        counters["policy packets"] = chain.packets
    dropping = [r for r in (chain.rules if chain else ()) if r.target in ("DROP", "REJECT") and (jump is None or r.position < jump.position)]
    items += [Item(f"FORWARD {r.position}", f"-A FORWARD {r.text}  (ahead of vsop's jump)", None, _rule_counters(r)) for r in dropping]
    ok: bool | None = jump is not None or policy == "ACCEPT"
    found = f"FORWARD policy {policy}, " + (_jump_text(jump, chain, "") if jump else "no jump to vsop" + ("" if ok else ": the answers are dropped"))
    return Step(
        id="forward", hook="filter FORWARD", title="the real server's answer, on its way back",
        why=("The answer comes back addressed to this node; conntrack undoes the masquerade and the packet is forwarded to "
             "the client, so it crosses FORWARD before IPVS puts the VIP back as its source. A DROP policy, as Docker "
             f"and ufw leave it, needs vsop's accept: {names.forward_chain} (kube-proxy's KUBE-FORWARD) accepts marked "
             "packets and the established flows of VIP connections."),
        expect=_expected_jump(names, family, "filter", "FORWARD"), found=found, ok=ok, counters=counters, items=items,
    )


def _conntrack_step(facts: Facts, key: ServiceKey) -> Step:
    entries = [e for e in facts.conntrack if e.protocol == key.protocol and e.orig_dst == key.vip and e.orig_dport == key.port]
    by_server: dict[str, list] = {}
    for entry in entries:
        by_server.setdefault(hostport(entry.reply_src, entry.reply_sport), []).append(entry)
    current = {str(k) for k in facts.observed.real_servers if k.service == key}
    items = []
    stale = 0
    for server, group in sorted(by_server.items()):
        states: dict[str, int] = {}
        for entry in group:
            states[entry.state or ("unreplied" if entry.unreplied else "replied")] = states.get(entry.state or ("unreplied" if entry.unreplied else "replied"), 0) + 1
        text = ", ".join(f"{count} {state}" for state, count in sorted(states.items()))
        if key.protocol == "udp":
            quiet = min(group, key=lambda e: e.timeout)
            text += f"; least recently used: from {hostport(quiet.orig_src, quiet.orig_sport)}, expires in {quiet.timeout}s"
        known = server in current
        if not known:
            stale += 1
            text += "  (not a real server of this service any more)"
        items.append(Item(server, text, known if key.protocol == "udp" else None, {"entries": len(group)}))
    if facts.conntrack_error:
        found = f"not read: {facts.conntrack_error}"
    else:
        found = f"{len(entries)} entr{'y' if len(entries) == 1 else 'ies'} for {ipset_member(key)}"
    return Step(
        id="conntrack", hook="conntrack", title="the connections the kernel remembers",
        why=("Each connection through the VIP has a conntrack entry: client -> VIP one way, real server -> this node "
             "the other. For UDP an entry that still points at a removed real server keeps that client stuck there "
             "until it expires."),
        expect="entries only towards current real servers", found=found,
        ok=(stale == 0) if key.protocol == "udp" else None, counters={"entries": len(entries)}, items=items,
    )


def explain(facts: Facts, key: ServiceKey, origin: str = "both", client: str | None = None) -> dict[str, Any]:
    """The path of a packet to key as a JSON-able report. origin: "remote", "local" or "both";
    `client`: a remote client's address, judged against the port's sourceRanges."""
    steps: list[Step] = []
    if origin in ("remote", "both"):
        arrival = arrival_step(facts, key)
        if arrival is not None:
            steps.append(arrival)
        steps.append(_entry_step(facts, key, "PREROUTING"))
    if origin in ("local", "both"):
        steps.append(_entry_step(facts, key, "OUTPUT"))
    steps.append(_match_step(facts, key))
    steps.append(_route_step(facts, key))
    if origin in ("remote", "both"):
        steps.append(_filter_step(facts, key, client))
    steps.append(_ipvs_step(facts, key))
    steps.append(_real_servers_step(facts, key))
    steps.append(_postrouting_step(facts, key))
    steps.append(_forward_step(facts, key))
    steps.append(_conntrack_step(facts, key))
    return {
        "target": {"protocol": key.protocol.upper(), "vip": key.vip, "port": key.port},
        "owner": owner_of(facts, key),
        "origin": origin,
        "steps": [step.json() for step in steps],
        "problems": [step.id for step in steps if step.ok is False],
        "errors": list(facts.errors),
    }


# --- deltas and text --------------------------------------------------------------------------


def counters_of(report: dict[str, Any]) -> dict[tuple[str, str, str], int]:
    found: dict[tuple[str, str, str], int] = {}
    for step in report["steps"]:
        for name, value in step["counters"].items():
            found[(step["id"], "", name)] = value
        for item in step["items"]:
            for name, value in item["counters"].items():
                found[(step["id"], item["label"], name)] = value
    return found


def deltas(previous: dict[str, Any] | None, current: dict[str, Any]) -> dict[tuple[str, str, str], int]:
    """How much each counter grew since `previous` (a reading of the same target)."""
    if previous is None:
        return {}
    before = counters_of(previous)
    return {where: value - before[where] for where, value in counters_of(current).items() if where in before}


def _verdict(ok: bool | None) -> str:
    return {True: "ok", False: "PROBLEM", None: "info"}[ok]


def _counter_text(counters: dict[str, int], grown: dict[str, int]) -> str:
    parts = []
    for name, value in counters.items():
        delta = grown.get(name)
        parts.append(f"{name} {value}" + (f" (+{delta})" if delta else ""))
    return ", ".join(parts)


def explain_text(report: dict[str, Any], previous: dict[str, Any] | None = None) -> str:
    target = report["target"]
    grown = deltas(previous, report)
    lines = [f"The path of a {target['protocol']} packet to {hostport(target['vip'], target['port'])} through this node"
             + (f" (owner {report['owner']})" if report["owner"] else " (no owner: vsop does not serve it)")]
    if previous is not None:
        lines[0] += "; (+N): growth since the previous screen"
    lines.append("")
    for number, step in enumerate(report["steps"], 1):
        lines.append(f"{number:>2}. {step['hook']}: {step['title']}  [{_verdict(step['ok'])}]")
        lines.append(f"    why     {step['why']}")
        if step["expect"]:
            lines.append(f"    expect  {step['expect']}")
        if step["found"]:
            lines.append(f"    found   {step['found']}")
        if step["counters"]:
            mine = {name: value for (sid, label, name), value in grown.items() if sid == step["id"] and not label}
            lines.append(f"    counts  {_counter_text(step['counters'], mine)}")
        for item in step["items"]:
            mark = {True: " ", False: "!", None: " "}[item["ok"]]
            counts = ""
            if item["counters"]:
                mine = {name: value for (sid, label, name), value in grown.items() if sid == step["id"] and label == item["label"]}
                counts = f"  [{_counter_text(item['counters'], mine)}]"
            lines.append(f"   {mark} {item['label']}: {item['text']}{counts}")
        lines.append("")
    if report["problems"]:
        lines.append(f"Problems at: {', '.join(report['problems'])}. `vsop doctor` names each cause with its fix.")
    else:
        lines.append("Every step is in place.")
    for error in report["errors"]:
        lines.append(f"note: could not read {error}")
    return "\n".join(lines) + "\n"
