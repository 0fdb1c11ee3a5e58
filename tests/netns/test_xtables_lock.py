"""Another program holds the xtables lock (`iptables -w`, a firewall reload) while the host agent syncs.

iptables-legacy-restore takes the xtables lock and vsop passes `-w 30`: it waits up to 30 s,
then gives up. The agent logs the refusal (the lock named), keeps running, retries, and
converges once the lock is free. iptables-nft never takes that lock: a holder changes nothing.
The lock here is a private file (XTABLES_LOCKFILE), so the host's own firewall tools never
stall; vsop's wait is cut to 1 s and the holder keeps the lock for 3 s, the same path a 30 s
holder takes against the default wait. The agent runs on this machine's kernel inside the
test's namespace: real ipsets and iptables, IPVS, links and sysctls faked (no IPVS here).
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import logging
import os
import subprocess
import time
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from tests.conftest import SEED
from vsop.adapters.conntrack import FakeConntrack
from vsop.adapters.ipset import IPSetKernel
from vsop.adapters.iptables import IPTablesKernel
from vsop.adapters.kernel import fake_kernel
from vsop.core.desired import Node
from vsop.core.state import ServiceKey
from vsop.host.agent import AgentConfig, HostAgent

WEB = ServiceKey("tcp", "169.254.11.2", 80)
HELD_SECONDS = 3.0


def vsop_filter_present(backend: str) -> bool:
    saved = subprocess.run([f"iptables-{backend}-save", "-t", "filter"], capture_output=True, text=True, check=True).stdout
    return ":VSOP-FILTER" in saved and "-j VSOP-FILTER" in saved


@pytest.mark.parametrize("backend", ["legacy", "nft"])
def test_the_agent_waits_out_a_held_xtables_lock_logs_it_and_converges(
    backend: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    lock_path = tmp_path / "xtables.lock"
    monkeypatch.setenv("XTABLES_LOCKFILE", str(lock_path))
    folder = tmp_path / "vs"
    folder.mkdir()
    (folder / "web.yaml").write_text(yaml.safe_dump(json.loads(json.dumps(SEED))))
    kernel, fake = fake_kernel()
    kernel = replace(kernel, ipsets=IPSetKernel(), iptables=IPTablesKernel(backend, lock_wait_seconds=1))
    config = AgentConfig(folder, Node("n"), status_file=tmp_path / "status.json", poll_seconds=0.05, debounce_seconds=0.01,
                         retry_seconds=0.2)
    agent = HostAgent(kernel, config, FakeConntrack())
    holder = os.open(lock_path, os.O_CREAT | os.O_RDWR, 0o600)
    fcntl.flock(holder, fcntl.LOCK_EX)  # as `iptables -w` or a firewall reload holds it
    converged: list[float] = []

    async def scenario() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(agent.run(stop))
        taken = time.monotonic()
        held = True
        while time.monotonic() - taken < 120 and not converged:
            await asyncio.sleep(0.05)
            assert not task.done(), "the agent stopped"
            if held and time.monotonic() - taken >= HELD_SECONDS:
                os.close(holder)  # the other program is done
                held = False
            if agent.last.get("error") is None and agent.syncs and WEB in fake.state.services and vsop_filter_present(backend):
                converged.append(time.monotonic() - taken)
        stop.set()
        await asyncio.wait_for(task, 30)

    with caplog.at_level(logging.INFO):
        asyncio.run(scenario())
    refused = [r.getMessage() for r in caplog.records if "xtables lock" in r.getMessage()]
    assert converged, "the agent never converged"
    if backend == "legacy":
        assert any(line.startswith("sync failed, will retry") for line in refused)
        assert all("another program held the xtables lock for over 1 s" in line for line in refused)
        assert converged[0] >= HELD_SECONDS  # nothing was written while the lock was held
    else:
        assert refused == []  # iptables-nft does not take the xtables lock
    print(f"\n[measured] xtables lock held {HELD_SECONDS:g}s, vsop waiting 1s, backend {backend}: converged after {converged[0]:.2f}s, "
          f"{len(refused)} refusal(s) logged")
