"""What `vsop explain` and `vsop doctor` look at: the facts of one node, and the parsers of the tools' text.

Owns the `Facts` shape (the observed kernel state plus what the sync never reads:
rule counters from `iptables-save -c`, the other iptables backend, IPVS stats,
routes, conntrack entries, IPVS persistence templates, rp_filter and ARP sysctls, the agent's
status file) and the pure parsers of `iptables-save -c`, `conntrack -L`, /proc/net/ip_vs_conn
and `ip -j route get` output.
Gathering them from a live host is `vsop.diagnose.gather`; tests build `Facts` by hand.
Must not import: subprocess, socket, pyroute2, kopf, vsop.adapters, vsop.cli.main.
"""

from __future__ import annotations

import ipaddress
import json
import re
import shlex
from dataclasses import dataclass, field
from typing import Any, Mapping

from vsop.core.state import KernelState, Names, RealServerKey, ServiceKey

BUILT_IN = ("PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING")


@dataclass(frozen=True)
class Rule:
    """One `-A CHAIN ...` line of iptables-save -c, with its position (1-based) and counters."""

    chain: str
    position: int
    text: str  # without "-A CHAIN "
    packets: int = 0
    bytes: int = 0

    @property
    def target(self) -> str | None:
        return rule_target(self.text)

    def option(self, *flags: str) -> str | None:
        """The value after the last of `flags` in the rule; "!" negations are returned as "!value"."""
        words = rule_words(self.text)
        found = None
        for index, word in enumerate(words[:-1]):
            if word in flags:
                value = words[index + 1]
                found = ("!" + value) if index > 0 and words[index - 1] == "!" else value
        return found


@dataclass(frozen=True)
class Chain:
    name: str
    policy: str | None  # ACCEPT / DROP for a built-in chain, None for a user chain
    packets: int = 0  # the policy's counters (packets that fell off the end)
    bytes: int = 0
    rules: tuple[Rule, ...] = ()


# (family, table) -> chain name -> Chain
Ruleset = Mapping[tuple[int, str], Mapping[str, Chain]]


@dataclass(frozen=True)
class Route:
    """`ip route get ADDRESS`: how this node would reach an address."""

    address: str
    ok: bool
    kind: str = "unicast"  # unicast, local, broadcast, unreachable, ...
    dev: str = ""
    via: str = ""
    src: str = ""
    error: str = ""

    def text(self) -> str:
        if not self.ok:
            return f"no route ({self.error or self.kind})"
        if self.kind == "local":
            return f"local address of this node (dev {self.dev})"
        gateway = f"via {self.via} " if self.via else ""
        source = f" src {self.src}" if self.src else ""
        return f"{gateway}dev {self.dev}{source}"


@dataclass(frozen=True)
class PersistenceTemplate:
    """An IPVS persistence template (`ipvsadm -Lnc`, /proc/net/ip_vs_conn): while it lives, new
    connections of `client` to the VIP port go to `dest`:`dest_port`."""

    protocol: str  # tcp | udp | sctp
    client: str
    vip: str
    port: int
    dest: str
    dest_port: int
    expires: int  # seconds until its timer fires; connections it controls re-arm it
    state: str  # NONE or ASSURED


@dataclass(frozen=True)
class ConntrackEntry:
    protocol: str
    timeout: int  # seconds left
    state: str  # TCP state, "" for UDP
    orig_src: str
    orig_dst: str
    orig_sport: int
    orig_dport: int
    reply_src: str
    reply_sport: int
    assured: bool = False
    unreplied: bool = False


@dataclass(frozen=True)
class Interface:
    name: str
    up: bool
    addresses: tuple[str, ...] = ()  # "ip/prefixlen"


@dataclass
class Facts:
    """Everything observed on one node that explain and doctor reason about."""

    names: Names = field(default_factory=Names)
    observed: KernelState = field(default_factory=KernelState)
    ipvs_available: bool = True
    ipvs_error: str = ""
    backend: str = "nft"  # the iptables backend vsop uses here
    rules: Ruleset = field(default_factory=dict)
    other_backend: str = "legacy"
    other_rules: Ruleset = field(default_factory=dict)  # what the other backend holds, every table
    service_stats: Mapping[ServiceKey, Mapping[str, int]] = field(default_factory=dict)
    dest_stats: Mapping[RealServerKey, Mapping[str, int]] = field(default_factory=dict)
    routes: Mapping[str, Route] = field(default_factory=dict)
    conntrack: tuple[ConntrackEntry, ...] = ()
    templates: tuple[PersistenceTemplate, ...] = ()  # IPVS persistence templates of the services looked at
    conntrack_error: str = ""  # the conntrack tool is missing, or failed
    sysctls: Mapping[str, str] = field(default_factory=dict)  # beyond observed.sysctls: rp_filter per interface...
    netstat: Mapping[str, int] = field(default_factory=dict)  # TcpExt / IpExt counters of /proc/net/netstat
    # The same counters read `netstat_seconds` earlier: since-boot counters only mean "now" as a difference.
    netstat_earlier: Mapping[str, int] | None = None
    netstat_seconds: float = 0.0
    agent: Mapping[str, Any] | None = None  # the host agent's status file, "stale" added when its pid is gone
    agent_status_file: str = ""
    bgp: Mapping[str, Any] | None = None  # BIRD's BGP sessions (vsop.bgp.sessions.sessions_report), when asked
    kernel_version: tuple[int, int] | None = None
    modules: frozenset[str] = frozenset()  # loaded kernel modules that matter (ipip, ip6_tunnel...)
    links: Mapping[str, bool] = field(default_factory=dict)  # interface -> up, for tunnel devices
    interfaces: Mapping[str, Interface] = field(default_factory=dict)  # `ip -j addr show`
    desired: KernelState | None = None  # from the VirtualServices in the store, when they could be read
    desired_source: str = ""
    errors: tuple[str, ...] = ()  # what could not be read, in a person's words

    def chain(self, family: int, table: str, name: str) -> Chain | None:
        return self.rules.get((family, table), {}).get(name)


# --- iptables-save -c ------------------------------------------------------------------

_COUNTERS = re.compile(r"^\[(\d+):(\d+)\]\s+")
_JUMP_FLAGS = ("-j", "--jump", "-g", "--goto")


def rule_words(rule: str) -> list[str]:
    try:
        return shlex.split(rule)
    except ValueError:
        return rule.split()


def rule_target(rule: str) -> str | None:
    target = None
    words = rule_words(rule)
    for index, word in enumerate(words[:-1]):
        if word in _JUMP_FLAGS:
            target = words[index + 1]
    return target


def parse_save_counters(text: str, family: int) -> dict[tuple[int, str], dict[str, Chain]]:
    """Every table and chain of `iptables-save -c` output, rules in order with their counters."""
    tables: dict[tuple[int, str], dict[str, Chain]] = {}
    table = ""
    chains: dict[str, tuple[str | None, int, int]] = {}
    rules: dict[str, list[Rule]] = {}

    def close() -> None:
        if table:
            tables[(family, table)] = {
                name: Chain(name, policy, packets, nbytes, tuple(rules.get(name, ())))
                for name, (policy, packets, nbytes) in chains.items()
            }

    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("*"):
            close()
            table, chains, rules = line[1:].strip(), {}, {}
        elif line.startswith(":"):
            words = line[1:].split()
            if not words:
                continue
            policy = words[1] if len(words) > 1 and words[1] != "-" else None
            packets = nbytes = 0
            if len(words) > 2:
                match = re.match(r"\[(\d+):(\d+)\]", words[2])
                if match:
                    packets, nbytes = int(match.group(1)), int(match.group(2))
            chains[words[0]] = (policy, packets, nbytes)
        elif line.startswith("[") or line.startswith("-A "):
            packets = nbytes = 0
            match = _COUNTERS.match(line)
            if match:
                packets, nbytes = int(match.group(1)), int(match.group(2))
                line = line[match.end() :]
            if not line.startswith("-A "):
                continue
            parts = line.split(" ", 2)
            chain = parts[1]
            chain_rules = rules.setdefault(chain, [])
            chain_rules.append(Rule(chain, len(chain_rules) + 1, parts[2] if len(parts) > 2 else "", packets, nbytes))
            chains.setdefault(chain, (None, 0, 0))
        elif line == "COMMIT":
            close()
            table = ""
    close()
    return tables


# --- /proc/net/ip_vs_conn ------------------------------------------------------------------


def _ipvs_address(text: str) -> str:
    """An address as /proc/net/ip_vs_conn prints it: 8 hex digits (IPv4) or an IPv6 address."""
    if ":" in text:
        return str(ipaddress.ip_address(text))
    return str(ipaddress.IPv4Address(int(text, 16)))


def parse_ipvs_templates(text: str) -> list[PersistenceTemplate]:
    """The persistence templates among IPVS's connection entries (/proc/net/ip_vs_conn): the entries
    with client port 0 whose state is a template's (NONE, ASSURED). Other lines are skipped."""
    found = []
    for line in text.splitlines():
        words = line.split()
        if len(words) < 9 or words[0].lower() not in ("tcp", "udp", "sctp") or words[7] not in ("NONE", "ASSURED"):
            continue
        try:
            if int(words[2], 16) != 0:
                continue
            found.append(PersistenceTemplate(
                words[0].lower(), _ipvs_address(words[1]), _ipvs_address(words[3]), int(words[4], 16),
                _ipvs_address(words[5]), int(words[6], 16), int(words[8]), words[7],
            ))
        except ValueError:
            continue
    return found


# --- conntrack -L ------------------------------------------------------------------------

_KV = re.compile(r"(\w+)=(\S+)")


def parse_conntrack(text: str) -> list[ConntrackEntry]:
    """Lines of `conntrack -L` (plain or -o extended) for TCP, UDP and SCTP."""
    entries = []
    for line in text.splitlines():
        words = line.split()
        if words[:1] in (["ipv4"], ["ipv6"]):
            words = words[2:]  # -o extended: "ipv4 2 tcp 6 ..."
        if len(words) < 4 or words[0] not in ("tcp", "udp", "sctp"):
            continue
        protocol = words[0]
        try:
            timeout = int(words[2])
        except ValueError:
            continue
        state = words[3] if protocol != "udp" and "=" not in words[3] else ""
        pairs = _KV.findall(line)
        first: dict[str, str] = {}
        second: dict[str, str] = {}
        for key, value in pairs:
            if key in ("src", "dst", "sport", "dport"):
                (first if key not in first else second).setdefault(key, value)
        try:
            entries.append(
                ConntrackEntry(
                    protocol=protocol,
                    timeout=timeout,
                    state=state,
                    orig_src=first["src"],
                    orig_dst=first["dst"],
                    orig_sport=int(first["sport"]),
                    orig_dport=int(first["dport"]),
                    reply_src=second.get("src", ""),
                    reply_sport=int(second.get("sport", 0)),
                    assured="[ASSURED]" in line,
                    unreplied="[UNREPLIED]" in line,
                )
            )
        except (KeyError, ValueError):
            continue
    return entries


# --- ip -j route get -------------------------------------------------------------------


def parse_route(address: str, stdout: str, stderr: str = "", code: int = 0) -> Route:
    if code != 0:
        reason = stderr.strip().splitlines()[-1] if stderr.strip() else f"exit {code}"
        reason = reason.replace("RTNETLINK answers: ", "")
        return Route(address, False, "unreachable", error=reason)
    try:
        data = json.loads(stdout)[0]
    except (ValueError, IndexError, KeyError, TypeError):
        return Route(address, False, "unknown", error=f"unreadable answer {stdout.strip()!r}")
    kind = data.get("type", "unicast")
    ok = kind in ("unicast", "local")
    return Route(address, ok, kind, data.get("dev", ""), data.get("gateway", ""), data.get("prefsrc", ""), "" if ok else kind)


def parse_netstat(text: str) -> dict[str, int]:
    """/proc/net/netstat: pairs of header and value lines ("TcpExt: A B" / "TcpExt: 1 2") as {"TcpExt.A": 1}."""
    counters: dict[str, int] = {}
    lines = text.splitlines()
    for header, values in zip(lines[0::2], lines[1::2]):
        names, numbers = header.split(), values.split()
        if not names or names[0] != numbers[0]:
            continue
        prefix = names[0].rstrip(":")
        for name, number in zip(names[1:], numbers[1:]):
            try:
                counters[f"{prefix}.{name}"] = int(number)
            except ValueError:
                continue
    return counters


def parse_addresses(stdout: str) -> dict[str, Interface]:
    """`ip -j addr show`: each interface, whether it is administratively up, its addresses."""
    try:
        data = json.loads(stdout or "[]")
    except ValueError:
        return {}
    interfaces = {}
    for entry in data:
        name = entry.get("ifname", "")
        addresses = tuple(f"{a['local']}/{a['prefixlen']}" for a in entry.get("addr_info", []) if "local" in a and "prefixlen" in a)
        interfaces[name] = Interface(name, "UP" in entry.get("flags", []), addresses)
    return interfaces
