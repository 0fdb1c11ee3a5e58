"""A read of the kernel that fails once (`iptables-save`, `ipset list`) under the running host agent.

Such a failure raises out of the turn instead of being reported by it: the loop's guard
(vsop.node.loop) logs it, counts it in vsop_errors_total{source="turn"} and retries with
backoff, and the agent keeps running and converges. Before the guard the host agent died of
it. The agent runs on this machine's kernel inside the test's namespace: real ipsets and
iptables, IPVS, links and sysctls faked (no IPVS here). The tool that fails is a wrapper first
on the adapter's search path, armed once the agent has synced: it fails once, then runs the
real tool.
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import time
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from tests.conftest import SEED
from vsop.adapters.conntrack import FakeConntrack
from vsop.adapters.ipset import IPSetKernel
from vsop.adapters.iptables import IPTablesKernel, detect_backend
from vsop.adapters.kernel import fake_kernel
from vsop.core.desired import Node
from vsop.core.state import ServiceKey
from vsop.host.agent import AgentConfig, HostAgent
from vsop.node.metrics import NodeMetrics

WEB = ServiceKey("tcp", "169.254.11.2", 80)
SYSTEM = "/usr/sbin:/sbin:/usr/bin:/bin"


def failing_once(folder: Path, name: str, armed: Path) -> Path:
    real = shutil.which(name, path=SYSTEM)
    assert real is not None, f"{name} is not installed"
    script = folder / name
    script.write_text(f"#!/bin/sh\nif rm {armed} 2>/dev/null; then echo '{name}: simulated read failure' >&2; exit 1; fi\nexec {real} \"$@\"\n")
    script.chmod(0o755)
    return script


@pytest.mark.parametrize("tool", ["iptables", "ipset"])
def test_a_read_that_fails_once_is_logged_counted_retried_and_the_agent_stays_up(
    tool: str, tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    folder = tmp_path / "vs"
    folder.mkdir()
    (folder / "web.yaml").write_text(yaml.safe_dump(json.loads(json.dumps(SEED))))
    wrappers = tmp_path / "bin"
    wrappers.mkdir()
    armed = tmp_path / "armed"
    backend = detect_backend(SYSTEM)
    kernel, fake = fake_kernel()
    if tool == "iptables":
        failing_once(wrappers, f"iptables-{backend}-save", armed)
        kernel = replace(kernel, ipsets=IPSetKernel(), iptables=IPTablesKernel(backend, search_path=f"{wrappers}:{SYSTEM}"))
        raised = "IPTablesReadFailed"
    else:  # the command path of the ipset reader (netlink off)
        ipset = failing_once(wrappers, "ipset", armed)
        kernel = replace(kernel, ipsets=IPSetKernel(str(ipset), netlink_from=None), iptables=IPTablesKernel(backend))
        raised = "IPSetReadFailed"
    config = AgentConfig(folder, Node("n"), status_file=tmp_path / "status.json", poll_seconds=0.05, debounce_seconds=0.01,
                         resync_seconds=0.5, retry_seconds=0.2)
    metrics = NodeMetrics()
    agent = HostAgent(kernel, config, FakeConntrack(), metrics=metrics)
    resynced_after: list[int] = []
    armings: list[float] = []

    async def scenario() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(agent.run(stop))
        started = time.monotonic()
        while time.monotonic() - started < 120 and not resynced_after:
            await asyncio.sleep(0.05)
            assert not task.done(), f"the agent stopped: {task.exception() if task.done() else ''}"
            # Armed once: between the wrapper's failure (which removes the mark) and the loop counting
            # it, the mark is gone and no turn has failed yet; arming again there failed twice.
            if not armings and agent.syncs and WEB in fake.state.services:
                armed.touch()  # the next full resync's read fails
                armings.append(time.monotonic())
            elif agent.loop.failed_turns and agent.last.get("full") and agent.last.get("error") is None:
                resynced_after.append(agent.syncs)  # a full resync completed after the failed turn
        stop.set()
        await asyncio.wait_for(task, 30)

    with caplog.at_level(logging.INFO):
        asyncio.run(scenario())
    assert resynced_after, "no full resync completed after the failed read"
    assert not armed.exists() and agent.loop.failed_turns == 1
    assert metrics.registry.get_sample_value("vsop_errors_total", {"source": "turn"}) == 1.0
    [failed] = [r.getMessage() for r in caplog.records if "Turn failed" in r.getMessage()]
    assert f'errorType="{raised}"' in failed and "simulated read failure" in failed and "failedTurns=1" in failed
    assert WEB in fake.state.services
