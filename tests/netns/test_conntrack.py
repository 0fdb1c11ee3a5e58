"""The real ConntrackTool (conntrack-tools) against this machine's kernel, in the test's namespace: the shared contract."""

from __future__ import annotations

import re
import subprocess

import pytest

from tests.contracts.conntrack_contract import ConntrackContract
from vsop.adapters.conntrack import ConntrackTool

_ENTRY = re.compile(r"^udp .*? dst=(\S+) sport=\d+ dport=(\d+) .*?src=(\S+) dst=\S+ sport=(\d+) dport=\d+")


class Table:
    """UDP entries of this namespace, made and listed with the conntrack tool."""

    def insert(self, vip: str, port: int, client: str, client_port: int, address: str, rport: int) -> None:
        subprocess.run(
            ["conntrack", "-I", "-p", "udp", "-s", client, "-d", vip, "--sport", str(client_port), "--dport", str(port),
             "--reply-src", address, "--reply-dst", client, "--reply-port-src", str(rport), "--reply-port-dst", str(client_port),
             "--timeout", "120"],
            check=True, capture_output=True, text=True, timeout=30,
        )

    def entries(self) -> set[tuple[str, int, str, int]]:
        listed = subprocess.run(["conntrack", "-L", "-p", "udp"], capture_output=True, text=True, timeout=30, check=True).stdout
        found = set()
        for line in listed.splitlines():
            match = _ENTRY.match(line)
            assert match, f"cannot read the entry {line!r}"
            vip, port, address, rport = match.groups()
            found.add((vip, int(port), address, int(rport)))
        return found


@pytest.fixture
def conntrack_cleaner() -> ConntrackTool:
    return ConntrackTool()


@pytest.fixture
def conntrack_table() -> Table:
    return Table()


class TestConntrackTool(ConntrackContract):
    pass
