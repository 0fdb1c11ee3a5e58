"""The real entry points, `vsop agent` and `vsop controller`, started as the DaemonSet and the Deployment start them.

Each runs in its own process with a kubeconfig pointing at the emulator, probes and
metrics on loopback (port 0: each says in its log which port it got), and (agent)
`VSOP_FAKE_KERNEL=1`, the test-only switch to the in-memory kernel. SIGTERM, as the
kubelet sends it, must end both with exit code 0.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import re
import signal
import sys
from pathlib import Path
import aiohttp
import pytest

from tests.kube.conftest import POOLS, Cluster, until
from tests.kube.test_agent import WEB
from vsop.cli.agents import agent_main, controller_main

pytestmark = pytest.mark.asyncio

# The console script the image's entrypoint is, else the same main through the interpreter.
SCRIPT = Path(sys.executable).with_name("vsop")
VSOP = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "vsop.cli.main"]


def kubeconfig(path: Path, url: str) -> Path:
    path.write_text(
        "apiVersion: v1\nkind: Config\n"
        f"clusters: [{{name: emulator, cluster: {{server: '{url}'}}}}]\n"
        "users: [{name: test, user: {token: not-checked}}]\n"
        "contexts: [{name: emulator, context: {cluster: emulator, user: test}}]\n"
        "current-context: emulator\n"
    )
    return path


class Process:
    """A started entry point; collects its output, and knows the ports it bound (it is given port 0)."""

    def __init__(self, name: str, process: asyncio.subprocess.Process):
        self.name = name
        self.process = process
        self.lines: list[str] = []
        self.ports: dict[str, int] = {}
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.process.stdout is not None
        async for raw in self.process.stdout:
            line = raw.decode(errors="replace").rstrip("\n")
            self.lines.append(line)
            found = re.search(r'"Serving probes and metrics" .*healthPort=(\d+) metricsPort=(\d+)', line)
            if found:
                self.ports = {"health": int(found.group(1)), "metrics": int(found.group(2))}

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    async def stop(self) -> int:
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)  # what the kubelet sends
        try:
            await asyncio.wait_for(self.process.wait(), timeout=20)
        except asyncio.TimeoutError:
            self.process.kill()
            await self.process.wait()
        await self.reader
        return int(self.process.returncode or 0)


LIBC = ctypes.CDLL(None, use_errno=True)
PR_SET_PDEATHSIG = 1


def die_with_the_test_run() -> None:
    """In the child before exec: SIGTERM when pytest dies. The tier's per-test bound ends a hung run with
    os._exit, which runs no fixture teardown; without this the agent and controller outlive it."""
    LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


async def start(name: str, *args: str, **env: str) -> Process:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("KUBERNETES_")}
    environment.update(env)
    process = await asyncio.create_subprocess_exec(
        *VSOP, *args, "--health-port", "0", "--metrics-port", "0", "--health-bind-address", "127.0.0.1",  # /metrics: its default
        env=environment, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, preexec_fn=die_with_the_test_run,
    )
    return Process(name, process)


async def get(session: aiohttp.ClientSession, port: int, path: str) -> tuple[int, str]:
    try:
        async with session.get(f"http://127.0.0.1:{port}{path}") as response:
            return response.status, await response.text()
    except aiohttp.ClientConnectionError:
        return 0, ""


async def test_agent_and_controller_run_as_deployed(cluster: Cluster, tmp_path: Path) -> None:
    await cluster.node("node-a", addresses=("10.0.0.11",))
    # As deployed: --vip-policy=pools, so the VIP needs a VipPool granting its namespace.
    await cluster.create(POOLS, {"apiVersion": "vsop.dev/v1alpha1", "kind": "VipPool", "metadata": {"name": "lan"},
                                 "spec": {"addresses": [WEB["vip"]], "serviceAllocation": {"namespaces": ["default"]}}})
    await cluster.vs("web", WEB)
    config = str(kubeconfig(tmp_path / "kubeconfig", cluster.url))
    processes = [
        await start("agent", "agent", "--kubeconfig", config, VSOP_FAKE_KERNEL="1", NODE_NAME="node-a"),
        await start("controller", "controller", "--kubeconfig", config),
    ]
    agent_process, controller_process = processes
    try:
        async with aiohttp.ClientSession() as session:
            for process in processes:
                await until(lambda: process.ports or process.process.returncode is not None, f"{process.name} serving", timeout=30)
                assert process.ports, f"{process.name} exited:\n{process.output}"
                readyz: list[tuple[int, str]] = []

                async def ready(port: int = process.ports["health"]) -> bool:
                    readyz.append(await get(session, port, "/readyz"))
                    return readyz[-1][0] == 200

                for _ in range(600):
                    if await ready():
                        break
                    assert process.process.returncode is None, f"{process.name} exited:\n{process.output}"
                    await asyncio.sleep(0.05)
                else:
                    raise AssertionError(f"{process.name} never became ready: {readyz[-1]}\n{process.output}")
            assert (await get(session, agent_process.ports["health"], "/healthz"))[0] == 200

            await until(lambda: {c["type"]: c["status"] for c in cluster.status("default", "web").get("conditions", ())}.get("Programmed") == "True",
                        "Programmed=True from the controller", timeout=20)
            entry = cluster.report("node-a")["default/web"]
            assert entry["programmed"] is True and entry["backends"] == {"total": 2, "healthy": 2}

            status, metrics = await get(session, agent_process.ports["metrics"], "/metrics")
            assert status == 200
            assert "vsop_vips_programmed 1.0" in metrics
            assert 'vsop_real_servers_programmed{state="active"} 2.0' in metrics
            assert 'vsop_syncs_total{result="success"}' in metrics
            assert 'vsop_kernel_operations_total{kind="service.add"} 1.0' in metrics
            assert 'vsop_virtualservices{state="programmed"} 1.0' in metrics
            for _ in range(200):  # the gauge follows the status patch
                status, metrics = await get(session, controller_process.ports["metrics"], "/metrics")
                if 'vsop_controller_virtualservices{condition="Programmed",status="True"} 1.0' in metrics:
                    break
                await asyncio.sleep(0.05)
            else:
                raise AssertionError(f"controller metrics: {metrics}")
    finally:
        codes = {process.name: await process.stop() for process in processes}
    assert codes == {"agent": 0, "controller": 0}, "\n".join(p.output for p in processes)
    assert '"Programmed kernel" node="node-a"' in agent_process.output
    for process in processes:  # /metrics on loopback unless opened (kube-proxy's default)
        assert 'healthAddress="127.0.0.1" metricsAddress="127.0.0.1"' in process.output, process.output
    assert "in-memory fake kernel" in agent_process.output
    assert "Signal SIGTERM is received" in agent_process.output
    assert '"Updated status" virtualService="default/web"' in controller_process.output


async def test_flags_are_checked(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("NODE_NAME", raising=False)
    assert agent_main([]) == 2
    assert "--node-name" in capsys.readouterr().out
    assert agent_main(["--node-name", "n", "--resync-seconds", "0"]) == 2
    assert agent_main(["--no-such-flag"]) == 2
    assert controller_main(["--resync-seconds", "-1"]) == 2
    assert agent_main(["--help"]) == 0 and "NodeReport" in capsys.readouterr().out
    assert controller_main(["--help"]) == 0
