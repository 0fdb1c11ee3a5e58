"""A plan rendered as the commands a person would type: the teaching executor.

Owns the translation of each operation into `ip`, `ipvsadm`, `ipset`, `iptables` and
`sysctl` command lines, grouped under comments that say what each step is for. The
real adapters do the same work through netlink and iptables-restore; this output is
what `vsop plan` prints and what a reader can paste into a root shell.
Pure: must not import kopf, pyroute2, jinja2, subprocess, socket or vsop.adapters.
"""

from __future__ import annotations

import shlex
from typing import Iterable

from vsop.core import ops
from vsop.core.state import RealServerKey, ServiceKey, hostport

SECTION = {
    ops.SetSysctl: (
        "Kernel settings. IPVS keeps no conntrack entries unless vs.conntrack=1, and then iptables\n"
        "# MASQUERADE never sees load-balanced packets; forwarding lets replies pass through.\n"
        "# With IPv6 forwarding on, the kernel ignores router advertisements on interfaces with\n"
        "# accept_ra=1 (a default route learned from them expires), so those get accept_ra=2 first.\n"
        "# `vsop cleanup --restore-sysctls` puts back the values found before vsop's first change."
    ),
    ops.CreateSet: (
        "ipsets: every VIP,proto:port (and every VIP) lives in a set, so the iptables rules\n"
        "# below stay the same few however many services exist. The comment names the owner."
    ),
    ops.AddSetMember: (
        "Set members: every VIP (VSOP-FILTER rejects new connections to it unless their port\n"
        "# is accepted below), every VIP port that is not masqueraded, and for sourceRanges each\n"
        "# such VIP port (VSOP-SRC-FW) with each client prefix it admits (VSOP-SRC-CIDR)."
    ),
    ops.WriteChain: (
        "vsop's own chains (vsop loads each table with one `iptables-restore --noflush`).\n"
        "# VSOP-SERVICES marks connections and traffic to a VIP port, VSOP-POSTROUTING masquerades\n"
        "# marked traffic so replies from real servers on other hosts come back through this node,\n"
        "# VSOP-FILTER first drops clients outside a VIP port's sourceRanges, then segments conntrack calls\n"
        "# INVALID (unless nf_conntrack_tcp_be_liberal=1), which MASQUERADE would skip, then lets only service\n"
        "# ports through to a VIP (the node's sshd stays unreachable on it), and VSOP-FORWARD accepts the real servers' replies of VIP connections: they are\n"
        "# routed through FORWARD, where a policy of DROP (Docker, ufw) would drop them before IPVS\n"
        "# sees them (kube-proxy's KUBE-FORWARD). The policy itself is left as it is."
    ),
    ops.AddJump: (
        "Hook the chains into the built-in ones. Locally originated traffic skips PREROUTING,\n"
        "# so the OUTPUT jump is what makes a VIP work from the node itself."
    ),
    ops.CreateLink: (
        "The dummy link holds the VIPs: the kernel then accepts their traffic as local\n"
        "# without announcing them on a physical NIC."
    ),
    ops.SetLinkUp: "Bring the dummy link up.",
    ops.AddAddress: "Bind each VIP as a host address (/32, /128) before its IPVS service exists.",
    ops.AddService: "IPVS virtual services: VIP:port and the scheduler (-s) that picks a real server.",
    ops.EditService: "Edit virtual services in place: connections survive a scheduler or persistence change.",
    ops.AddAcceptMember: (
        "Accept each VIP port only now that its IPVS service and real servers exist: until\n"
        "# then VSOP-FILTER rejects it, so it never reaches a process listening on *:port."
    ),
    ops.AddRealServer: "Real servers: -m masquerade (NAT), -g direct routing, -i IP-in-IP tunnel; -w weight.",
    ops.EditRealServer: "Edit real servers in place (weight 0 drains: no new connections, old ones finish).",
    ops.AddRoute: (
        "announce: bgp. A blackhole route per VIP in vsop's own table, which no `ip rule` consults\n"
        "# (forwarding is unchanged): BIRD learns the table and announces each VIP to its peers.\n"
        "# Added once the VIP's services have a healthy real server."
    ),
    ops.DeleteRoute: "Withdraw VIPs from BGP first (no healthy real server, or going away): their peers stop sending.",
    ops.DeleteRealServer: "Remove real servers that are no longer wanted (new ones were added first).",
    ops.DeleteAcceptMember: "Stop accepting VIP ports before their IPVS services go.",
    ops.DeleteService: "Remove virtual services (their real servers go with them).",
    ops.DeleteAddress: "Unbind VIPs whose services are gone.",
    ops.DeleteSetMember: "Remove set members of VIPs and ports that no longer exist.",
    ops.DeleteLink: "Remove the dummy link (no VIPs left).",
    ops.DeleteJump: "Unhook vsop's chains.",
    ops.DeleteChain: "Remove vsop's chains.",
    ops.DestroySet: "Remove vsop's ipsets.",
}

_PROTOCOL_FLAG = {"tcp": "-t", "udp": "-u", "sctp": "--sctp-service"}
_FORWARDING_FLAG = {"masq": "-m", "route": "-g", "tunnel": "-i"}


def _service(key: ServiceKey) -> str:
    return f"{_PROTOCOL_FLAG[key.protocol]} {hostport(key.vip, key.port)}"


def _real(key: RealServerKey) -> str:
    return f"-r {hostport(key.address, key.port)}"


def _iptables(family: int) -> str:
    return "iptables" if family == 4 else "ip6tables"


def command_lines(op: ops.Op) -> list[str]:
    """The shell command(s) equivalent to one operation."""
    match op:
        case ops.SetSysctl(name=name, value=value):
            return [f"sysctl -w {name}={value}"]
        case ops.CreateSet(ipset=ipset):
            family = "inet" if ipset.family == 4 else "inet6"
            return [f"ipset create {ipset.name} {ipset.kind} family {family} comment"]
        case ops.DestroySet(name=name):
            return [f"ipset destroy {name}"]
        case ops.AddSetMember(set_name=name, member=member, comment=comment, replace=replace):
            exist = "-exist " if replace else ""
            note = f" comment {shlex.quote(comment)}" if comment else ""
            return [f"ipset add {exist}{name} {member}{note}"]
        case ops.DeleteSetMember(set_name=name, member=member):
            return [f"ipset del {name} {member}"]
        case ops.WriteChain(key=key, rules=rules, exists=exists):
            tool = f"{_iptables(key.family)} -t {key.table}"
            first = f"{tool} -F {key.chain}" if exists else f"{tool} -N {key.chain}"
            return [first] + [f"{tool} -A {key.chain} {rule}" for rule in rules]
        case ops.DeleteChain(key=key):
            tool = f"{_iptables(key.family)} -t {key.table}"
            return [f"{tool} -F {key.chain}", f"{tool} -X {key.chain}"]
        case ops.AddJump(jump=jump):
            return [f"{_iptables(jump.family)} -t {jump.table} -I {jump.chain} {jump.rule}"]
        case ops.DeleteJump(jump=jump):
            return [f"{_iptables(jump.family)} -t {jump.table} -D {jump.chain} {jump.rule}"]
        case ops.CreateLink(name=name):
            return [f"ip link add {name} type dummy", f"ip link set {name} up"]
        case ops.SetLinkUp(name=name):
            return [f"ip link set {name} up"]
        case ops.DeleteLink(name=name):
            return [f"ip link del {name}"]
        case ops.AddAddress(link=link, address=address):
            return [f"ip addr add {address} dev {link}"]
        case ops.DeleteAddress(link=link, address=address):
            return [f"ip addr del {address} dev {link}"]
        case ops.AddService(service=svc) | ops.EditService(service=svc):
            verb = "-A" if isinstance(op, ops.AddService) else "-E"
            persistent = f" -p {svc.persistence_timeout}" if svc.persistence_timeout else ""
            return [f"ipvsadm {verb} {_service(svc.key)} -s {svc.scheduler}{persistent}"]
        case ops.DeleteService(key=key):
            return [f"ipvsadm -D {_service(key)}"]
        case ops.AddRealServer(real_server=rs) | ops.EditRealServer(real_server=rs):
            verb = "-a" if isinstance(op, ops.AddRealServer) else "-e"
            return [f"ipvsadm {verb} {_service(rs.key.service)} {_real(rs.key)} {_FORWARDING_FLAG[rs.forwarding]} -w {rs.weight}"]
        case ops.DeleteRealServer(key=key):
            return [f"ipvsadm -d {_service(key.service)} {_real(key)}"]
        case ops.AddRoute(prefix=prefix, table=table, protocol=protocol):
            return [f"ip route add blackhole {prefix} table {table} proto {protocol}"]
        case ops.DeleteRoute(prefix=prefix, table=table, protocol=protocol):
            return [f"ip route del blackhole {prefix} table {table} proto {protocol}"]
    raise TypeError(f"no command for {type(op).__name__}")


def render(operations: Iterable[ops.Op]) -> str:
    """Commands, one per line, under a comment for each group of operations."""
    lines: list[str] = []
    current: type | None = None
    for op in operations:
        if type(op) is not current:
            current = type(op)
            if lines:
                lines.append("")
            lines.append(f"# {SECTION[type(op)]}")
        lines.extend(command_lines(op))
    return "\n".join(lines) + ("\n" if lines else "")
