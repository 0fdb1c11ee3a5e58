"""ConntrackTool against stand-in `conntrack` binaries: nothing matched is fine, anything else is a failure."""

from __future__ import annotations

from pathlib import Path

import pytest

from vsop.adapters.conntrack import ConntrackFailed, ConntrackTool


def tool(tmp_path: Path, code: int, message: str) -> ConntrackTool:
    script = tmp_path / "conntrack"
    script.write_text(f"#!/bin/sh\necho \"$*\" > {tmp_path}/argv\necho '{message}' >&2\nexit {code}\n")
    script.chmod(0o755)
    return ConntrackTool(str(script))


def test_nothing_matched_is_not_a_failure(tmp_path: Path) -> None:
    tool(tmp_path, 1, "conntrack v1.4.7 (conntrack-tools): 0 flow entries have been deleted.").forget_udp("fd00::53", 53, "fd00::2", 5353)
    assert (tmp_path / "argv").read_text().split() == [
        "-D", "-f", "ipv6", "-p", "udp", "--orig-dst", "fd00::53", "--orig-port-dst", "53", "--reply-src", "fd00::2", "--reply-port-src", "5353"
    ]


def test_a_refusal_is_a_failure_with_the_tools_words(tmp_path: Path) -> None:
    with pytest.raises(ConntrackFailed, match="conntrack -D exited 1: conntrack v1.4.7 .*Operation not permitted"):
        tool(tmp_path, 1, "conntrack v1.4.7 (conntrack-tools): Operation failed: Operation not permitted").forget_udp("10.0.0.1", 53, "10.0.0.2", 53)


def test_a_missing_tool_is_a_failure(tmp_path: Path) -> None:
    missing = ConntrackTool(str(tmp_path / "nowhere"))
    missing.binary = None
    with pytest.raises(ConntrackFailed, match="not installed"):
        missing.forget_udp("10.0.0.1", 53, "10.0.0.2", 53)


# -- the contract on the fake -------------------------------------------------------------------

from tests.contracts.conntrack_contract import ConntrackContract  # noqa: E402
from vsop.adapters.conntrack import FakeConntrack  # noqa: E402


class FakeTable:
    def __init__(self, fake: FakeConntrack):
        self.fake = fake

    def insert(self, vip: str, port: int, client: str, client_port: int, address: str, rport: int) -> None:
        self.fake.entries.add((vip, port, address, rport))

    def entries(self) -> set[tuple[str, int, str, int]]:
        return set(self.fake.entries)


@pytest.fixture
def conntrack_cleaner() -> FakeConntrack:
    return FakeConntrack()


@pytest.fixture
def conntrack_table(conntrack_cleaner: FakeConntrack) -> FakeTable:
    return FakeTable(conntrack_cleaner)


class TestFakeConntrack(ConntrackContract):
    pass
