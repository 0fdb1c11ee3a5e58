"""The host agent on fake adapters: folder following, bad files, restart, health, draining, UDP conntrack."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import os
import time
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from tests.conftest import SEED
from vsop.adapters.conntrack import FakeConntrack
from vsop.core.desired import Node
from vsop.core.health import Thresholds
from vsop.core.state import RealServerKey, ServiceKey
from vsop.adapters.kernel import fake_kernel
from vsop.host.folder import FolderSource
from vsop.host.agent import AgentConfig, HostAgent

WEB = ServiceKey("tcp", "169.254.11.2", 80)


def write(folder: Path, name: str, **spec) -> Path:
    doc = json.loads(json.dumps(SEED))
    doc["metadata"]["name"] = name
    doc["spec"].update(spec)
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def settle(agent) -> None:
    """Let the folder's files become stable: a first look, then a poll later (sync_once polls again)."""
    agent.poll()
    time.sleep(agent.config.poll_seconds * 1.5)


def agent_for(folder: Path, state=None, clock=None):
    kernel, fake = fake_kernel(state)
    config = AgentConfig(folder, Node("n"), status_file=folder.parent / "status.json", poll_seconds=0.02, debounce_seconds=0.01)
    agent = HostAgent(kernel, config, FakeConntrack(), **({"clock": clock} if clock else {}))
    return agent, fake


def test_new_file_programs_and_removed_file_unprograms(tmp_path: Path) -> None:
    folder = tmp_path / "vs"
    folder.mkdir()
    agent, fake = agent_for(folder)
    write(folder, "web")
    settle(agent)
    assert agent.sync_once().writes > 0
    assert WEB in fake.state.services
    second = write(folder, "api", vip="169.254.11.3")
    settle(agent)
    agent.sync_once()
    assert {k.vip for k in fake.state.services} == {"169.254.11.2", "169.254.11.3"}
    second.unlink()
    assert agent.source.poll() is True
    agent.sync_once()
    assert {k.vip for k in fake.state.services} == {"169.254.11.2"}


def test_broken_file_keeps_last_good_state_and_harms_nothing(tmp_path: Path) -> None:
    folder = tmp_path / "vs"
    folder.mkdir()
    agent, fake = agent_for(folder)
    path = write(folder, "web")
    write(folder, "api", vip="169.254.11.3")
    settle(agent)
    agent.sync_once()
    before = fake.state
    path.write_text(path.read_text().replace("scheduler: rr", "scheduler: bogus").replace("vip: 169.254.11.2", "vip: 169.254.11.2\n  sheduler: x"))
    settle(agent)
    result = agent.sync_once()
    assert result.writes == 0 and fake.state == before
    status = json.loads((tmp_path / "status.json").read_text())
    assert "sheduler" in status["errors"][str(path)] and "unknown field" in status["errors"][str(path)]


def test_restart_with_unchanged_files_writes_nothing(tmp_path: Path) -> None:
    folder = tmp_path / "vs"
    folder.mkdir()
    write(folder, "web", healthCheck={"type": "tcp"})
    agent, fake = agent_for(folder)
    settle(agent)
    agent.sync_once()
    restarted = HostAgent(agent.kernel, agent.config, FakeConntrack())
    settle(restarted)
    assert restarted.sync_once().writes == 0


def test_failing_health_check_sets_weight_zero_and_recovery_restores(tmp_path: Path) -> None:
    folder = tmp_path / "vs"
    folder.mkdir()
    write(folder, "web", healthCheck={"type": "tcp", "failureThreshold": 2})
    agent, fake = agent_for(folder)
    settle(agent)
    agent.sync_once()
    bad = RealServerKey(WEB, "192.168.2.111", 8080)
    assert {t.key for t in agent.targets} == {bad, RealServerKey(WEB, "192.168.2.222", 8080)}
    for _ in range(2):
        agent.tracker.record(bad, False, Thresholds(2, 1), "connection refused")
    agent.sync_once()
    assert fake.state.real_servers[bad].weight == 0
    assert bad in {t.key for t in agent.targets}  # still checked, so it can come back
    agent.tracker.record(bad, True, Thresholds(2, 1))
    agent.sync_once()
    assert fake.state.real_servers[bad].weight == 1


def test_removed_backend_drains_until_idle(tmp_path: Path) -> None:
    folder = tmp_path / "vs"
    folder.mkdir()
    now = [100.0]
    path = write(folder, "web")
    agent, fake = agent_for(folder, clock=lambda: now[0])
    settle(agent)
    agent.sync_once()
    leaving = RealServerKey(WEB, "192.168.2.222", 8080)
    fake.state = replace(fake.state, real_servers={**fake.state.real_servers, leaving: replace(fake.state.real_servers[leaving], active_connections=1)})
    write(folder, "web", backends=[{"address": "192.168.2.111"}])
    assert path.exists()
    settle(agent)
    agent.sync_once()
    assert fake.state.real_servers[leaving].weight == 0 and agent.draining.since
    fake.state = replace(fake.state, real_servers={**fake.state.real_servers, leaving: replace(fake.state.real_servers[leaving], active_connections=0)})
    now[0] += 2
    agent.sync_once()
    assert leaving not in fake.state.real_servers and not agent.draining.since


def test_removed_udp_backend_forgets_its_conntrack_entries(tmp_path: Path) -> None:
    folder = tmp_path / "vs"
    folder.mkdir()
    write(folder, "dns", ports=[{"port": 53, "protocol": "UDP"}])
    agent, fake = agent_for(folder)
    settle(agent)
    agent.sync_once()
    write(folder, "dns", ports=[{"port": 53, "protocol": "UDP"}], backends=[{"address": "192.168.2.111"}])
    settle(agent)
    agent.sync_once()
    assert agent.conntrack.forgotten == [("169.254.11.2", 53, "192.168.2.222", 53)]


def test_object_in_two_files_is_kept_once_and_reported(tmp_path: Path) -> None:
    folder = tmp_path / "vs"
    folder.mkdir()
    write(folder, "web")
    (folder / "zz-copy.yaml").write_text((folder / "web.yaml").read_text())
    source = FolderSource(folder, settle_seconds=0)
    source.poll()
    assert [vs.ref for vs in source.services()] == ["default/web"]
    assert "already served from" in source.errors()[str(folder / "zz-copy.yaml")]


def test_run_loop_follows_changes_and_stops_without_removing(tmp_path: Path) -> None:
    folder = tmp_path / "vs"
    folder.mkdir()
    agent, fake = agent_for(folder)

    async def scenario() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(agent.run(stop))
        write(folder, "web")
        for _ in range(200):
            await asyncio.sleep(0.02)
            if WEB in fake.state.services:
                break
        assert WEB in fake.state.services
        stop.set()
        await asyncio.wait_for(task, 5)

    asyncio.run(scenario())
    assert WEB in fake.state.services  # stopping removed nothing


def test_drift_is_repaired_counted_and_shown_but_a_file_change_is_not_drift(tmp_path: Path) -> None:
    folder = tmp_path / "vs"
    folder.mkdir()
    agent, fake = agent_for(folder)
    write(folder, "web")
    settle(agent)
    agent.sync_once()
    write(folder, "web", backends=[{"address": "192.168.2.111", "weight": 2}])  # a change, not drift
    settle(agent)
    agent.sync_once()
    assert agent.drift_repairs == 0
    key = RealServerKey(WEB, "192.168.2.111", 8080)
    fake.state = replace(fake.state, real_servers={**fake.state.real_servers, key: replace(fake.state.real_servers[key], weight=7)})
    agent.sync_once()  # the periodic resync
    assert fake.state.real_servers[key].weight == 2
    assert agent.drift_repairs == 1
    status = json.loads(agent.config.status_file.read_text())
    assert status["driftRepairs"]["total"] == 1
    assert "found masq weight 7, put back masq weight 2" in status["driftRepairs"]["last"][0]
    assert status["driftRepairs"]["last"][0].startswith("default/web: realserver.edit")


def test_a_new_file_is_planned_alone_and_another_writer_makes_the_next_reconcile_read_the_kernel(tmp_path: Path) -> None:
    folder = tmp_path / "vs"
    folder.mkdir()
    kernel, fake = fake_kernel()
    lock = tmp_path / "lock"
    config = AgentConfig(folder, Node("n"), status_file=None, poll_seconds=0.02, lock=lock)
    agent = HostAgent(kernel, config, FakeConntrack())
    write(folder, "web")
    settle(agent)
    assert agent.sync_once().full
    reads, writes = agent.reconciler.reads, fake.writes
    write(folder, "api", vip="169.254.11.3")
    settle(agent)
    change = agent.sync_once(full=False)
    assert not change.full and agent.reconciler.reads == reads and change.writes == fake.writes - writes > 0
    assert {k.vip for k in fake.state.services} == {"169.254.11.2", "169.254.11.3"}
    # `vsop apply` (another writer) takes the lock and changes the kernel meanwhile.
    from vsop.node.lock import writer_lock

    time.sleep(0.01)
    with writer_lock(lock, 1.0):
        fake.state = replace(fake.state, real_servers={k: v for k, v in fake.state.real_servers.items() if k.service.vip != "169.254.11.3"})
    after = agent.sync_once(full=False)
    assert after.full and agent.reconciler.reads == reads + 1  # what it wrote was read first
    assert any(k.service.vip == "169.254.11.3" for k in fake.state.real_servers)


def test_keep_accept_ra_refuses_ipv6_vips_and_reports_them(tmp_path: Path) -> None:
    from vsop.core.state import KernelState

    folder = tmp_path / "vs"
    folder.mkdir()
    kernel, fake = fake_kernel(KernelState(sysctls={"net.ipv6.conf.eth0.accept_ra": "1", "net.ipv6.conf.all.forwarding": "0"}))
    config = AgentConfig(folder, Node("n"), status_file=tmp_path / "status.json", poll_seconds=0.02, keep_accept_ra=True)
    agent = HostAgent(kernel, config, FakeConntrack())
    write(folder, "web")
    write(folder, "six", vip="fd00:11::2", backends=[{"address": "fd00:200:1::2", "port": 8080}])
    settle(agent)
    agent.sync_once()
    assert fake.state.bound_vips() == {"169.254.11.2"} and fake.state.sysctls["net.ipv6.conf.eth0.accept_ra"] == "1"
    status = json.loads((tmp_path / "status.json").read_text())
    assert [(p["obj"], p["reason"]) for p in status["lastSync"]["problems"]] == [("default/six", "RouterAdvertisements")]
    assert status["lastSync"]["programmed"] == ["default/web"]  # what `vsop show` lists as programmed


def test_vsop_agent_keep_accept_ra_reaches_the_reconciler(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import vsop.adapters.real
    import vsop.host.agent
    from vsop.cli.main import main

    kernel, _ = fake_kernel()
    monkeypatch.setattr(vsop.adapters.real, "real_kernel", lambda: kernel)
    configs: list[AgentConfig] = []
    monkeypatch.setattr(vsop.host.agent, "run_agent", lambda kernel, config, *a, **k: configs.append(config) or 0)
    for flags, expected in (([], False), (["--keep-accept-ra"], True)):
        assert main(["agent", "--from", str(tmp_path), "--status-file", "", *flags]) == 0
        assert configs[-1].keep_accept_ra is expected
        assert HostAgent(kernel, configs[-1], FakeConntrack()).reconciler.keep_accept_ra is expected


def test_a_dangling_symlink_keeps_its_keepalived_section_while_the_others_are_updated(tmp_path: Path) -> None:
    from tests.unit.keepalived.test_writer import FakeCheck, FakeSignaller
    from vsop.keepalived.writer import KeepalivedConfig, KeepalivedWriter

    folder = tmp_path / "vs"
    folder.mkdir()
    ka = {"mode": "keepalived"}

    def agent_on(state):  # type: ignore[no-untyped-def]
        kernel, fake = fake_kernel(state)
        writer = KeepalivedWriter(KeepalivedConfig(directory=tmp_path / "ka", pidfile=tmp_path / "ka.pid"), check=FakeCheck(), signaller=FakeSignaller())
        config = AgentConfig(folder, Node("n"), status_file=None, poll_seconds=0.02)
        return HostAgent(kernel, config, FakeConntrack(), keepalived=writer), fake

    confd = tmp_path / "ka" / "conf.d"
    agent, fake = agent_on(None)
    write(folder, "web", **ka)
    api = write(folder, "api", vip="169.254.11.3", **ka)
    settle(agent)
    assert agent.sync_once().ok
    assert sorted(p.name for p in confd.iterdir()) == ["default_api.conf", "default_web.conf"]
    api_section = (confd / "default_api.conf").read_text()
    # Restarted with api.yaml a symlink whose target is gone, named as the store names it.
    api.unlink()
    (folder / "default_api.yaml").symlink_to(tmp_path / "gone.yaml")
    write(folder, "db", vip="169.254.11.4", **ka)
    write(folder, "web", scheduler="wlc", **ka)
    agent, fake = agent_on(fake.state)
    settle(agent)
    assert agent.sync_once().ok and "default/api" in agent.status()["lastSync"]["kept"]
    assert sorted(p.name for p in confd.iterdir()) == ["default_api.conf", "default_db.conf", "default_web.conf"]
    assert (confd / "default_api.conf").read_text() == api_section  # the broken file's owner keeps what it had
    assert "lb_algo wlc" in (confd / "default_web.conf").read_text()
    assert agent.keepalived is not None and not agent.keepalived.last_error
    # A newcomer on the held owner's port is refused in the kernel and left out of keepalived too.
    write(folder, "thief", vip="169.254.11.3", **ka)
    settle(agent)
    assert agent.sync_once().ok
    assert "default_thief.conf" not in {p.name for p in confd.iterdir()} and (confd / "default_api.conf").read_text() == api_section


def test_a_file_taken_by_the_poll_task_during_a_sync_keeps_its_keepalived_section(tmp_path: Path) -> None:
    """The poll task may take a rewritten file while a sync runs: keepalived still renders from the
    sync's own look at the folder, so the object never meets its held stand-in and conflicts with itself."""
    from tests.unit.keepalived.test_writer import FakeCheck, FakeSignaller
    from vsop.keepalived.writer import KeepalivedConfig, KeepalivedWriter

    folder = tmp_path / "vs"
    folder.mkdir()
    ka = {"mode": "keepalived"}
    kernel, fake = fake_kernel(None)
    writer = KeepalivedWriter(KeepalivedConfig(directory=tmp_path / "ka", pidfile=tmp_path / "ka.pid"), check=FakeCheck(), signaller=FakeSignaller())
    agent = HostAgent(kernel, AgentConfig(folder, Node("n"), status_file=None, poll_seconds=0.02), FakeConntrack(), keepalived=writer)
    confd = tmp_path / "ka" / "conf.d"
    write(folder, "web", **ka)
    settle(agent)
    assert agent.sync_once().ok and (confd / "default_web.conf").exists()
    write(folder, "web", scheduler="wlc", **ka)
    agent.poll()  # first look at the rewritten file: settling, its owner held as the kernel has it
    time.sleep(agent.config.poll_seconds * 1.5)
    reconcile = agent.reconciler.reconcile

    def poll_task_meanwhile(**kwargs):  # type: ignore[no-untyped-def]
        outcome = reconcile(**kwargs)
        agent.poll()  # the poll task's look between the sync's reads: the new version is stable now
        return outcome

    agent.reconciler.reconcile = poll_task_meanwhile  # type: ignore[method-assign]
    agent.config = replace(agent.config, poll_seconds=3600.0)  # the sync itself does not poll again
    agent.polled_at = time.monotonic()
    assert agent.sync_once(full=False).ok
    assert (confd / "default_web.conf").exists(), "web lost its keepalived section"
    assert agent.keepalived is not None and not agent.keepalived.last_error


def test_the_host_agent_loads_the_http_stack_only_for_a_metrics_port() -> None:
    """aiohttp and prometheus_client are about 12 MB of the agent's RSS: loaded only with --metrics-port."""
    import subprocess
    import sys

    code = "import sys, vsop.cli.main, vsop.host.agent; print(sorted({m.split('.')[0] for m in sys.modules} & {'aiohttp', 'prometheus_client', 'kopf'}))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]", out


def test_vsop_agent_serves_metrics_and_health_on_its_metrics_port(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """run_agent with a metrics port (the lazily imported HTTP stack) serves /metrics and /healthz, and
    stops on SIGTERM, logging the signal and how long its stop took (stop_seconds)."""
    import os
    import signal
    import socket
    import threading
    import urllib.request

    from vsop.host.agent import run_agent

    folder = tmp_path / "vs"
    folder.mkdir()
    write(folder, "web")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    kernel, fake = fake_kernel(None)
    config = AgentConfig(folder, Node("n"), status_file=None, poll_seconds=0.05, debounce_seconds=0.01)
    scraped: dict[str, str] = {}

    def scrape() -> None:
        deadline = time.monotonic() + 20
        try:
            while time.monotonic() < deadline:
                try:
                    metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
                except OSError:
                    time.sleep(0.05)
                    continue
                if "vsop_" in metrics and fake.state.services:
                    scraped["metrics"] = metrics
                    scraped["healthz"] = str(urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2).status)
                    break
                time.sleep(0.05)
        finally:
            os.kill(os.getpid(), signal.SIGTERM)

    thread = threading.Thread(target=scrape, daemon=True)
    thread.start()
    caplog.set_level(logging.INFO, logger="vsop.agent")
    assert run_agent(kernel, config, FakeConntrack(), metrics_port=port) == 0
    thread.join(5)
    assert scraped.get("healthz") == "200", scraped
    assert "vsop_" in scraped["metrics"]
    said = [record.getMessage() for record in caplog.records if record.name == "vsop.agent"]
    assert "stopping signal=SIGTERM" in said, said
    assert any(line.startswith("agent stopped;") and " stop_seconds=" in line for line in said), said


def test_a_full_sync_hands_the_freed_heap_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A full sync drops the kernel's whole state as read, the desired state and the plan: the run
    loop trims the C heap after it (RSS at 10k services), and not after a change's small sync."""
    from vsop.node import heap

    folder = tmp_path / "vs"
    folder.mkdir()
    write(folder, "web")
    agent, fake = agent_for(folder)
    trims: list[bool] = []
    syncs: list[bool] = []
    sync_once = agent.sync_once
    monkeypatch.setattr(heap, "trim", lambda: trims.append(syncs[-1]) or True)
    monkeypatch.setattr(agent, "sync_once", lambda full=True, status=True: syncs.append(full) or sync_once(full, status))

    async def scenario() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(agent.run(stop))
        for _ in range(200):
            await asyncio.sleep(0.02)
            if WEB in fake.state.services:
                break
        write(folder, "api", vip="169.254.11.3")
        for _ in range(200):
            await asyncio.sleep(0.02)
            if len(syncs) >= 2:
                break
        stop.set()
        await asyncio.wait_for(task, 5)

    asyncio.run(scenario())
    assert syncs[:2] == [True, False], syncs
    assert trims == [True] * syncs.count(True), (trims, syncs)


def _vips_on_the_link(state) -> set[str]:
    return {address.split("/")[0] for address in state.addresses}


def _services_deleted_by_hand(fake) -> None:
    vips = _vips_on_the_link(fake.state)
    fake.state = replace(fake.state, services={k: v for k, v in fake.state.services.items() if k.vip not in vips},
                         real_servers={k: v for k, v in fake.state.real_servers.items() if k.service.vip not in vips})


def test_a_file_taken_during_a_resync_in_parts_is_programmed_before_the_resync_ends(tmp_path: Path) -> None:
    folder = tmp_path / "vs"
    folder.mkdir()
    agent, fake = agent_for(folder)
    agent.reconciler.resync_chunk = 2
    agent.reconciler.audit_chunk = 0  # the drift's parts alone (the audit: tests/unit/node/test_reconciler.py)
    for index in range(6):
        write(folder, f"s{index}", vip=f"169.254.11.{index + 2}")
    settle(agent)
    assert agent.sync_once().ok
    clean = dict(fake.state.services)
    _services_deleted_by_hand(fake)
    first = agent.sync_once()  # the periodic resync: one read, the first part of what it found
    assert first.full and first.vips == 2 and agent.reconciler.replanning and agent.drift_repairs > 0
    write(folder, "new", vip="169.254.11.20")
    settle(agent)
    agent.poll()  # the poll task's second look: a turn that goes on with a part does not poll
    step = agent.sync_once(full=False)  # the next turn: the new file with the next part
    assert not step.full and step.objects == 1 and step.vips == 3
    assert "169.254.11.20" in {k.vip for k in fake.state.services} and agent.reconciler.replanning
    turns = 2
    while agent.reconciler.replanning:
        assert not agent.sync_once(full=False).full
        turns += 1
    assert turns == 3 and agent.reconciler.reads == 2
    assert {k: v for k, v in fake.state.services.items() if k.vip != "169.254.11.20"}.keys() == clean.keys()
    assert agent.drift_repairs == 6 * (1 + 2)  # an IPVS service and its two real servers per file
    writes = fake.writes
    assert agent.sync_once().writes == 0 and fake.writes == writes


def test_the_run_loop_plans_a_resync_s_parts_at_once_not_one_per_period(tmp_path: Path) -> None:
    folder = tmp_path / "vs"
    folder.mkdir()
    kernel, fake = fake_kernel()
    config = AgentConfig(folder, Node("n"), status_file=None, poll_seconds=0.02, debounce_seconds=0.01, resync_seconds=1.0)
    agent = HostAgent(kernel, config, FakeConntrack())
    agent.reconciler.resync_chunk = 1
    agent.reconciler.audit_chunk = 0  # the drift's parts alone
    for index in range(5):
        write(folder, f"s{index}", vip=f"169.254.11.{index + 2}")
    calls: list[bool] = []
    reconcile = agent.reconciler.reconcile

    def counted(*, full: bool = False):  # type: ignore[no-untyped-def]
        calls.append(full)
        return reconcile(full=full)

    agent.reconciler.reconcile = counted  # type: ignore[method-assign]

    async def scenario() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(agent.run(stop))
        for _ in range(500):
            await asyncio.sleep(0.02)
            if len(fake.state.services) == 5:
                break
        clean = dict(fake.state.services)
        _services_deleted_by_hand(fake)
        calls.clear()
        for _ in range(500):
            await asyncio.sleep(0.02)
            if fake.state.services.keys() == clean.keys():
                break
        stop.set()
        await asyncio.wait_for(task, 5)
        assert fake.state.services.keys() == clean.keys()

    asyncio.run(scenario())
    # One periodic resync found the five VIPs; its parts followed at once, not a period apart.
    assert calls[:5] == [True, False, False, False, False]


def test_the_host_agents_metrics_count_its_virtualservices_by_state_when_scraped(tmp_path: Path) -> None:
    """vsop_virtualservices on the host agent's --metrics-port: counted when scraped, at most once per
    reconcile, never per change."""
    from prometheus_client import generate_latest

    from vsop.core.state import KernelState, VirtualServer
    from vsop.node.metrics import NodeMetrics

    folder = tmp_path / "vs"
    folder.mkdir()
    write(folder, "web")
    write(folder, "clash", backends=[{"address": "192.168.2.9"}])  # web's VIP and port: one of them loses
    write(folder, "elsewhere", vip="169.254.11.3", nodeSelector={"matchLabels": {"zone": "b"}})
    write(folder, "taken", vip="169.254.11.4")  # a VIP:port something else's IPVS service has
    write(folder, "lacking", vip="169.254.11.5", scheduler="twos")  # a scheduler module this kernel lacks
    (folder / "broken.yaml").write_text(yaml.safe_dump({**SEED, "metadata": {"name": "broken", "namespace": "default"},
                                                        "spec": {**SEED["spec"], "scheduler": "bogus"}}))
    foreign = VirtualServer(ServiceKey("tcp", "169.254.11.4", 80), "rr")
    kernel, fake = fake_kernel(KernelState(services={foreign.key: foreign}))
    fake.refuse = lambda op: "No such file or directory" if getattr(getattr(op, "service", None), "scheduler", "") == "twos" else None
    config = AgentConfig(folder, Node("n"), status_file=None, poll_seconds=0.02, debounce_seconds=0.01)
    metrics = NodeMetrics()
    agent = HostAgent(kernel, config, FakeConntrack(), metrics=metrics)
    source = metrics._object_source
    calls: list[int] = []
    metrics._object_source = lambda: (calls.append(1), source())[1]  # type: ignore[assignment, func-returns-value]

    def scrape() -> dict[str, float]:
        found = {}
        for line in generate_latest(metrics.registry).decode().splitlines():
            if line.startswith("vsop_virtualservices{"):
                labels, value = line.rsplit(" ", 1)
                found[labels.split('state="', 1)[1].split('"', 1)[0]] = float(value)
        return found

    settle(agent)
    agent.sync_once()
    agent.sync_once(full=False)
    assert calls == []  # nothing per reconcile
    assert scrape() == {"programmed": 1, "failed": 1, "kernel_error": 1, "conflict": 1, "invalid": 1, "not_selected": 1}
    assert scrape()["programmed"] == 1 and calls == [1]  # once per reconcile, however many scrapes
    (folder / "clash.yaml").unlink()
    agent.source.poll()
    agent.sync_once(full=False)
    assert scrape() == {"programmed": 1, "failed": 1, "kernel_error": 1, "conflict": 0, "invalid": 1, "not_selected": 1} and calls == [1, 1]


def test_a_walk_that_hangs_holds_up_neither_the_event_loop_nor_sigterm(tmp_path: Path) -> None:
    """The folder walk runs in a daemon thread: while one hangs (a hung network mount), the event
    loop keeps running (health, wake-ups), a turn that needs the folder gives up once the agent is
    stopping, and stopping never waits for the walk."""
    folder = tmp_path / "vs"
    folder.mkdir()
    write(folder, "web")
    agent, fake = agent_for(folder)
    agent.config.resync_seconds = 0.05  # turns keep coming, and each wants the folder
    looks, hung, release, walking = [0], threading.Event(), threading.Event(), threading.Event()
    poll = agent.source.poll

    def hanging_poll() -> bool:
        looks[0] += 1
        if looks[0] > 3:  # the first looks and the first turn's, then the walk hangs
            walking.set()
            hung.set()
            release.wait(20)
            walking.clear()
        return poll()

    agent.source.poll = hanging_poll  # type: ignore[method-assign]

    async def scenario() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(agent.run(stop))
        while not hung.is_set():
            await asyncio.sleep(0.02)  # the loop runs on while the walk hangs
        for _ in range(10):  # resyncs come due meanwhile: one of them waits for the folder
            await asyncio.sleep(0.02)
            assert walking.is_set()  # this loop runs while the walk hangs
        assert WEB in fake.state.services
        stop.set()
        await asyncio.wait_for(task, 30)
        assert walking.is_set()  # stopped while the walk still hangs

    try:
        asyncio.run(scenario())
    finally:
        release.set()
    assert WEB in fake.state.services  # stopping removed nothing


def test_the_metadata_address_is_refused_unless_allow_vip_names_it_and_the_rest_is_served(tmp_path: Path) -> None:
    from vsop.core.claims import ClaimRule

    folder = tmp_path / "vs"
    folder.mkdir()
    kernel, fake = fake_kernel()
    config = AgentConfig(folder, Node("n"), status_file=tmp_path / "status.json", poll_seconds=0.02)
    agent = HostAgent(kernel, config, FakeConntrack())
    write(folder, "web")
    write(folder, "metadata", vip="169.254.169.254")
    settle(agent)
    agent.sync_once()
    assert fake.state.bound_vips() == {"169.254.11.2"}, "the metadata address reaches no kernel; the other object is served"
    status = json.loads((tmp_path / "status.json").read_text())
    [problem] = status["lastSync"]["problems"]
    assert (problem["obj"], problem["reason"]) == ("default/metadata", "VIPNotAllowed")
    assert "refused unless --allow-vip=169.254.169.254 is given" in problem["message"]
    writes = fake.writes
    agent.sync_once()
    assert fake.writes == writes, "a second turn writes nothing"
    # The same store under `vsop agent --allow-vip 169.254.169.254`: programmed (a restart judges every object again).
    allowed = HostAgent(kernel, replace(config, claims=ClaimRule(host=True, allow=("169.254.169.254",))), FakeConntrack())
    settle(allowed)
    allowed.sync_once()
    assert fake.state.bound_vips() == {"169.254.11.2", "169.254.169.254"}


def test_vsop_agent_allow_vip_and_vip_policy_reach_the_agent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import vsop.adapters.real
    import vsop.host.agent
    from vsop.cli.main import main

    kernel, _ = fake_kernel()
    monkeypatch.setattr(vsop.adapters.real, "real_kernel", lambda: kernel)
    configs: list[AgentConfig] = []
    monkeypatch.setattr(vsop.host.agent, "run_agent", lambda kernel, config, *a, **k: configs.append(config) or 0)
    assert main(["agent", "--from", str(tmp_path), "--status-file", ""]) == 0
    assert (configs[-1].claims.policy, configs[-1].claims.allow, configs[-1].claims.host) == ("any", (), True)
    assert main(["agent", "--from", str(tmp_path), "--status-file", "", "--vip-policy", "pools", "--allow-vip", "10.0.0.0/24"]) == 0
    assert (configs[-1].claims.policy, configs[-1].claims.allow) == ("pools", ("10.0.0.0/24",))
    assert main(["agent", "--from", str(tmp_path), "--status-file", "", "--allow-vip", "10.0.0.1/24"]) == 2, "host bits set: invalid flags"


@pytest.mark.parametrize("liberal", ["0", "1"])
def test_the_agent_reads_tcp_be_liberal_once_and_leaves_the_invalid_rule_out_when_it_is_1(tmp_path: Path, liberal: str) -> None:
    """As kube-proxy: nf_conntrack_tcp_be_liberal=1 tracks the out-of-window segments the rule would drop."""
    from vsop.core.state import ChainKey, KernelState

    folder = tmp_path / "vs"
    folder.mkdir()
    agent, fake = agent_for(folder, KernelState(sysctls={"net.netfilter.nf_conntrack_tcp_be_liberal": liberal}))
    write(folder, "web")
    settle(agent)
    agent.sync_once()
    rules = fake.state.chains[ChainKey(4, "filter", "VSOP-FILTER")]
    invalid = [rule for rule in rules if "--ctstate INVALID" in rule]
    assert invalid == ([] if liberal == "1" else ["-m set --match-set VSOP-VIP-PORTS dst,dst -m set ! --match-set VSOP-VIP-PORTS-NOMASQ dst,dst -m conntrack --ctstate INVALID -j DROP"])
    assert agent.sync_once().writes == 0


def test_the_agent_removes_the_stores_leftover_staged_files_at_its_first_turn_and_no_other_folders(tmp_path: Path, monkeypatch) -> None:
    """A store writer killed between staging and renaming leaves `.NAME.PID.tmp`; the agent, at its first
    turn under the writer lock, removes those of dead writers from the host store, never from another folder."""
    from tests.unit.host.test_store import _a_dead_pid

    store, other = tmp_path / "store", tmp_path / "other"
    store.mkdir(), other.mkdir()
    dead = _a_dead_pid()
    stale, foreign = store / f".default_web.yaml.{dead}.tmp", other / f".default_web.yaml.{dead}.tmp"
    alive = store / f".default_api.yaml.{os.getppid()}.tmp"
    for path in (stale, foreign, alive):
        path.write_text("half a file")
    monkeypatch.setenv("VSOP_STORE", str(store))
    for folder in (store, other):
        agent, _ = agent_for(folder)
        settle(agent)
        assert agent.sync_once() is not None
    assert not stale.exists() and alive.exists() and foreign.exists()


def test_a_file_rewritten_in_place_is_planned_as_a_change_while_pending_and_once_taken(tmp_path: Path) -> None:
    """A store file being rewritten is unusable for a poll or two (not yet stable): its object is
    held, the kernel keeps what it has for it. Neither that moment nor its end reads the kernel or
    plans the whole node: only the VIP whose owner is kept is planned (at 10,000 services a
    rewrite cost two whole-node plans, 60 s in the VM)."""
    folder = tmp_path / "vs"
    folder.mkdir()
    agent, fake = agent_for(folder)
    write(folder, "web")
    write(folder, "api", vip="169.254.11.3")
    settle(agent)
    assert agent.sync_once().ok
    reads = agent.reconciler.reads
    write(folder, "api", vip="169.254.11.3", scheduler="wrr")  # rewritten: pending until stable
    agent.poll()
    pending = agent.sync_once(full=False)
    assert pending.ok and not pending.full and agent.reconciler.reads == reads
    assert pending.vips <= 1 and not pending.writes  # the kernel keeps it as it is
    assert ServiceKey("tcp", "169.254.11.3", 80) in fake.state.services
    settle(agent)
    taken = agent.sync_once(full=False)
    assert taken.ok and not taken.full and agent.reconciler.reads == reads and taken.vips == 1
    assert fake.state.services[ServiceKey("tcp", "169.254.11.3", 80)].scheduler == "wrr"
    assert agent.sync_once(full=True).writes == 0


def test_the_cold_syncs_parts_do_not_poll_the_folder_again(tmp_path: Path) -> None:
    """A part of the cold sync takes longer than half a poll period at 10k: polling in each part's
    turn stat-ed every file once per part. The poll task follows the folder meanwhile."""
    folder = tmp_path / "vs"
    folder.mkdir()
    for index in range(4):
        write(folder, f"web{index}", vip=f"169.254.20.{index + 1}")
    agent, fake = agent_for(folder)
    agent.reconciler.resyncing.cold_chunk = 1
    settle(agent)
    polls = []
    poll = agent.source.poll
    agent.source.poll = lambda: polls.append(agent.reconciler.replanning) or poll()
    parts = 0
    while True:
        time.sleep(agent.config.poll_seconds)  # the poll task's last look is stale at every turn
        agent.sync_once(full=False)
        parts += 1
        if not agent.reconciler.replanning:
            break
    assert parts > 2 and len(fake.state.services) == 4
    assert polls == [False]  # the first turn's poll, none in the parts that went on with it
    time.sleep(agent.config.poll_seconds)
    agent.sync_once(full=False)
    assert polls == [False, False]  # a turn after the cold sync looks again when the last look is stale
