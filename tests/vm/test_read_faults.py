"""The host agent never dies of a read: ip_vs unloaded and loaded again under it. The agent runs
as the real console script, against the lab of tests/vm/lab.py.

`rmmod ip_vs; modprobe ip_vs` gives the IPVS generic netlink family a new id: every request to the
old one answers ENOENT, which the agent once kept reading as a missing scheduler, for good. It now
looks the family up again, so a new object is programmed within two turns and the next full resync
puts back what the unload flushed. (A read that fails once, `iptables-save` or `ipset`, is proven with
the real tools in tests/netns/test_read_fails_once.py.)
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Iterator

import pytest

REPOSITORY = Path(__file__).resolve().parents[2]
if str(REPOSITORY) not in sys.path:
    sys.path.insert(0, str(REPOSITORY))

from tests.vm.conftest import http_get, run  # noqa: E402
from tests.vm.lab import VIP, FolderAgent, folder_agent, clean_node, lab, manifest, wait_for  # noqa: E402,F401

pytestmark = [pytest.mark.vm, pytest.mark.usefixtures("clean_node")]

OTHER_VIP = "169.254.11.3"
KERNEL_TREE = REPOSITORY / ".cache" / "vm" / "kernel"  # the guest's modules (vm/initramfs-init)


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[FolderAgent]:
    with folder_agent(tmp_path, resync_seconds=2) as running:
        yield running


def served(vip: str, netns: object) -> bool:
    try:
        http_get(vip, netns=netns, timeout=3)  # type: ignore[arg-type]
        return True
    except OSError:
        return False


def reload_ip_vs() -> None:
    """`ipvsadm -C` (a scheduler in use holds its module), every module using ip_vs out, ip_vs out, ip_vs in.
    The agent's resync may add a service back in between: then once more."""
    for _ in range(5):
        run("ipvsadm", "-C")
        holders = sorted(os.listdir("/sys/module/ip_vs/holders"))
        if run("rmmod", *holders, "ip_vs", check=False).returncode == 0:
            break
    assert not Path("/sys/module/ip_vs").exists()
    run("modprobe", "-d", str(KERNEL_TREE), "ip_vs")


def test_ip_vs_reloaded_under_a_running_agent_new_objects_are_programmed_within_two_turns(lab, agent) -> None:
    client = lab["client"]
    manifest(agent.directory, "web")
    agent.start()
    wait_for("the VIP served", lambda: served(VIP, client), 30, 0.2)
    reload_ip_vs()
    manifest(agent.directory, "api", vip=OTHER_VIP)
    agent.wait_resyncs(2, full=False)  # two turns after the new file
    services = run("ipvsadm", "-Ln").stdout
    assert f"{OTHER_VIP}:80" in services, services
    # What the unload flushed comes back at the next resync: its read, made aside while turns go on,
    # began after the reload, or it is refused (the IPVS generation moved) and the resync reads again.
    agent.wait_resyncs(1, full=True)
    services = run("ipvsadm", "-Ln").stdout
    assert f"{OTHER_VIP}:80" in services and f"{VIP}:80" in services, services
    assert served(OTHER_VIP, client) and served(VIP, client)
    assert agent.process is not None and agent.process.poll() is None
    log = agent.log.read_text()
    assert "the ip_vs module was reloaded" in log
    assert "is not available in this kernel" not in log  # not misread as a missing scheduler
