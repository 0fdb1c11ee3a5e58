"""Which of a VIP port's sourceRanges admit a client, as vsop's sets on this node hold them.

Owns the answer `vsop explain --from ADDRESS` and `vsop doctor --from ADDRESS` give for a VIP
port with `sourceRanges`: its prefixes are the `VSOP-SRC-CIDR` members of that port (the port is
in `VSOP-SRC-FW`), and a client in none of them is dropped by `VSOP-FILTER`'s first rule
(vsop.core.desired). Pure: reads a `Facts`; must not import subprocess, socket, pyroute2, kopf
or vsop.adapters.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from vsop.core.state import ServiceKey, ipset_member
from vsop.diagnose.facts import Facts

SHOWN = 8  # ranges named in one line; the rest are counted


@dataclass(frozen=True)
class SourceRanges:
    """A VIP port's admitted prefixes (as the set holds them: a host without its length) and its owner."""

    key: ServiceKey
    ranges: tuple[str, ...]
    owner: str

    def admitting(self, client: str) -> tuple[str, ...]:
        """The ranges that hold `client` (none: VSOP-FILTER drops it)."""
        address = ipaddress.ip_address(client)
        if address.version != self.key.family:
            return ()
        return tuple(r for r in self.ranges if address in ipaddress.ip_network(r, strict=False))

    def listed(self) -> str:
        more = len(self.ranges) - SHOWN
        return ", ".join(self.ranges[:SHOWN]) + (f" and {more} more" if more > 0 else "")

    def verdict(self, client: str) -> str:
        """One sentence: which range let `client` in, or that it is dropped and by what."""
        found = self.admitting(client)
        if found:
            return f"{client} is admitted by sourceRanges {found[0]}" + (f" (and {len(found) - 1} more)" if len(found) > 1 else "")
        return (f"{client} is DROPPED by sourceRanges: it is in none of the {len(self.ranges)} range(s) "
                f"{self.owner or 'the owner'} admits ({self.listed() or 'none'})")


def source_ranges(facts: Facts, key: ServiceKey) -> SourceRanges | None:
    """The sourceRanges of `key` on this node; None when the port admits every client (not in VSOP-SRC-FW)."""
    names = facts.names
    fw = facts.observed.ipsets.get(names.set_name(names.source_fw_set, key.family))
    member = ipset_member(key)
    if fw is None or member not in fw.members:
        return None
    cidr = facts.observed.ipsets.get(names.set_name(names.source_cidr_set, key.family))
    prefix = member + ","
    ranges = sorted((m[len(prefix):] for m in (cidr.members if cidr else {}) if m.startswith(prefix)),
                    key=lambda r: ipaddress.ip_network(r, strict=False))
    return SourceRanges(key, tuple(ranges), fw.members[member])
