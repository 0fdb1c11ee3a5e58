"""IPv6 router advertisements under forwarding, and the record of the sysctls vsop changed.

Owns two facts about kernel settings:
- With `net.ipv6.conf.all.forwarding=1` the kernel ignores router advertisements on
  every interface whose `accept_ra` is 1, so a host that learned its default route from
  an RA loses it when that route expires, hours later. Before vsop turns IPv6
  forwarding on, such interfaces get `accept_ra=2` (accept even when forwarding); a
  host that already forwards is left as it is.
- The record: the value of each setting before vsop's first change, so that
  `vsop cleanup --restore-sysctls` can put the host back.
Pure: must not import kopf, pyroute2, jinja2, subprocess, socket or vsop.adapters.
"""

from __future__ import annotations

from typing import Iterable, Mapping

from vsop.core import ops

IPV6_FORWARDING = "net.ipv6.conf.all.forwarding"
ACCEPT_RA = "accept_ra"
# --keep-accept-ra (plan, apply and both agents) means the same everywhere.
KEEP_ACCEPT_RA_HELP = (
    "never change net.ipv6.conf.<if>.accept_ra: refuse IPv6 VIPs whose forwarding would stop router "
    "advertisements, reason RouterAdvertisements (default: set accept_ra=2 where it is 1 before turning IPv6 forwarding on)"
)
# Not interfaces: "all" is never applied to accept_ra, "default" only to interfaces created later.
NOT_INTERFACES = frozenset({"all", "default"})


def accept_ra_name(interface: str) -> str:
    # An interface name may hold dots (eth0.100): sysctl(8) then wants the path spelling.
    return f"net/ipv6/conf/{interface}/{ACCEPT_RA}" if "." in interface else f"net.ipv6.conf.{interface}.{ACCEPT_RA}"


def accept_ra_interface(name: str) -> str | None:
    """The interface of an accept_ra setting's name; None for any other setting."""
    for prefix, sep in (("net.ipv6.conf.", "."), ("net/ipv6/conf/", "/")):
        if name.startswith(prefix) and name.endswith(sep + ACCEPT_RA):
            interface = name[len(prefix) : -len(sep + ACCEPT_RA)]
            return interface if interface and interface not in NOT_INTERFACES else None
    return None


def keep_router_advertisements(
    desired: Mapping[str, str], observed: Mapping[str, str], link: str
) -> dict[str, str]:
    """accept_ra=2 for each interface at 1, when the desired settings turn IPv6 forwarding on.

    vsop's own dummy link gets no RAs and is left out (it may not even exist yet).
    """
    if desired.get(IPV6_FORWARDING) != "1" or observed.get(IPV6_FORWARDING) == "1":
        return {}
    return {
        name: "2"
        for name, value in observed.items()
        if value == "1" and (interface := accept_ra_interface(name)) is not None and interface != link
    }


def recorded(record: Mapping[str, str], applied: Iterable[ops.Op]) -> dict[str, str]:
    """The record after `applied`: a setting's first value found is kept, later changes add nothing."""
    result = dict(record)
    for op in applied:
        if isinstance(op, ops.SetSysctl) and op.previous is not None and op.previous != op.value:
            result.setdefault(op.name, op.previous)
    return result


def restore_order(names: Iterable[str]) -> list[str]:
    """Forwarding goes off before accept_ra goes back to 1: the reverse of how they were set."""
    return sorted(names, key=lambda name: (accept_ra_interface(name) is not None, name))
