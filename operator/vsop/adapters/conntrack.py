"""Forgetting conntrack entries of UDP real servers that were removed.

UDP has no connection to close: a client sending from a fixed source port keeps
matching the conntrack entry (and so the NAT) that points at the old real server
until it times out. Deleting those entries moves the client to a live one at once,
as kube-proxy does. Uses the `conntrack` tool (conntrack-tools).
Must not import: kopf, kubernetes, jinja2.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
from dataclasses import dataclass, field
from typing import Callable, Protocol

log = logging.getLogger("vsop.conntrack")


# What conntrack prints when nothing matched (it exits 1): not a failure (kube-proxy's check too).
NOTHING_DELETED = "0 flow entries have been deleted"


class ConntrackFailed(OSError):
    """Entries could not be forgotten; `str()` says why, for a person."""


class ConntrackCleaner(Protocol):
    def forget_udp(self, vip: str, port: int, address: str, rport: int) -> None:
        """Delete UDP entries for VIP:port whose reply comes from address:rport; ConntrackFailed if it cannot."""
        ...


class ConntrackTool:
    def __init__(self, binary: str = "conntrack"):
        self.binary = shutil.which(binary) or shutil.which(binary, path="/usr/sbin:/sbin")

    def forget_udp(self, vip: str, port: int, address: str, rport: int) -> None:
        if self.binary is None:
            raise ConntrackFailed("the conntrack tool (conntrack-tools) is not installed")
        family = "ipv6" if ":" in vip else "ipv4"
        command = [
            self.binary, "-D", "-f", family, "-p", "udp",
            "--orig-dst", vip, "--orig-port-dst", str(port),
            "--reply-src", address, "--reply-port-src", str(rport),
        ]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ConntrackFailed(f"{self.binary}: {exc}") from None
        said = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else ""
        if done.returncode != 0 and NOTHING_DELETED not in said:
            raise ConntrackFailed(f"conntrack -D exited {done.returncode}: {said or 'no message'}")
        log.info("forgot UDP conntrack entries vip=%s port=%d real_server=%s:%d result=%r", vip, port, address, rport, said)


@dataclass
class FakeConntrack:
    """The table in memory: UDP entries as (vip, port, real server address, its port); refuses
    what the tool refuses (an address it cannot parse, a VIP and real server of two families).
    The same contract tests (tests/contracts/conntrack_contract.py) run on it and on the tool."""

    forgotten: list[tuple[str, int, str, int]] = field(default_factory=list)
    # Return a reason to fail, like a conntrack tool that is missing or refuses.
    refuse: Callable[[tuple[str, int, str, int]], str | None] = lambda entry: None
    entries: set[tuple[str, int, str, int]] = field(default_factory=set)

    def forget_udp(self, vip: str, port: int, address: str, rport: int) -> None:
        reason = self.refuse((vip, port, address, rport)) or _unparsable(vip, address)
        if reason is not None:
            raise ConntrackFailed(reason)
        self.forgotten.append((vip, port, address, rport))
        self.entries.discard((vip, port, address, rport))


def _unparsable(vip: str, address: str) -> str | None:
    """What the tool refuses before it asks the kernel (it reads IPv4 as inet_aton does: 10.0.0 is 10.0.0.0)."""
    import ipaddress
    import socket

    def family(text: str) -> int | None:
        try:
            return ipaddress.ip_address(text).version
        except ValueError:
            pass
        try:
            socket.inet_aton(text)
            return 4
        except OSError:
            return None

    families = [family(vip), family(address)]
    if None in families:
        return f"conntrack -D exited 2: Invalid IP address `{vip if families[0] is None else address}'"
    if families[0] != families[1]:
        return "conntrack -D exited 2: mismatched address family"
    return None
