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
from typing import Protocol

log = logging.getLogger("vsop.conntrack")


class ConntrackCleaner(Protocol):
    def forget_udp(self, vip: str, port: int, address: str, rport: int) -> None:
        """Delete UDP entries for VIP:port whose reply comes from address:rport."""
        ...


class ConntrackTool:
    def __init__(self, binary: str = "conntrack"):
        self.binary = shutil.which(binary) or shutil.which(binary, path="/usr/sbin:/sbin")

    def forget_udp(self, vip: str, port: int, address: str, rport: int) -> None:
        if self.binary is None:
            log.warning("conntrack tool not found; UDP clients of a removed real server move only when their entry expires")
            return
        family = "ipv6" if ":" in vip else "ipv4"
        command = [
            self.binary, "-D", "-f", family, "-p", "udp",
            "--orig-dst", vip, "--orig-port-dst", str(port),
            "--reply-src", address, "--reply-port-src", str(rport),
        ]
        done = subprocess.run(command, capture_output=True, text=True, timeout=30)
        # conntrack exits 1 when nothing matched ("0 flow entries have been deleted"): that is fine.
        deleted = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else ""
        log.info("forgot UDP conntrack entries vip=%s port=%d real_server=%s:%d result=%r", vip, port, address, rport, deleted)


@dataclass
class FakeConntrack:
    forgotten: list[tuple[str, int, str, int]] = field(default_factory=list)

    def forget_udp(self, vip: str, port: int, address: str, rport: int) -> None:
        self.forgotten.append((vip, port, address, rport))
