"""The agent's keepalived writer with a fake `keepalived -t` and a fake signaller.

Asserts the files on disk and the signals sent: the candidate is checked before it
replaces anything, SIGHUP only when the content changed, an invalid candidate keeps
the live files and is reported, a foreign keepalived.conf is never overwritten.
"""

from __future__ import annotations

import json
import signal
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml

from tests.conftest import SEED, make_vs
from vsop.core.desired import Node
from vsop.core.state import RealServer, RealServerKey, ServiceKey, VirtualServer
from vsop.adapters.kernel import fake_kernel
from vsop.host.agent import AgentConfig, HostAgent
from vsop.keepalived.writer import (
    Check,
    KeepalivedConfig,
    KeepalivedWriter,
    NotRunning,
    ProcessSignaller,
    ReloadFailed,
    keepalived_check,
)
from vsop.adapters.conntrack import FakeConntrack

KA = {"mode": "keepalived", "healthCheck": {"type": "tcp", "intervalSeconds": 3, "timeoutSeconds": 1}}


def ka(name: str = "web", **spec: Any):  # type: ignore[no-untyped-def]
    return make_vs(name, **{**KA, **spec})


class FakeCheck:
    """keepalived -t: records the candidate it saw; refuses when `refuse` is set."""

    def __init__(self) -> None:
        self.calls: list[dict[str, str]] = []
        self.refuse = ""

    def __call__(self, binary: str, main_file: Path) -> Check:
        root = main_file.parent
        self.calls.append({str(p.relative_to(root)): p.read_text() for p in root.rglob("*.conf")})
        return Check(False, self.refuse) if self.refuse else Check(True, "")


class FakeSignaller:
    def __init__(self, outcome: Exception | None = None) -> None:
        self.sent: list[Path] = []
        self.outcome = outcome
        self.alive: bool | None = True  # what `running` says: False once the test "kills" keepalived

    def running(self, pidfile: Path) -> bool | None:
        return self.alive

    def reload(self, pidfile: Path) -> str:
        if self.outcome is not None:
            raise self.outcome
        self.sent.append(pidfile)
        return "SIGHUP sent to keepalived 42"


def writer(tmp_path: Path, **config: Any) -> tuple[KeepalivedWriter, FakeCheck, FakeSignaller]:
    check, signaller = FakeCheck(), FakeSignaller()
    w = KeepalivedWriter(KeepalivedConfig(directory=tmp_path / "ka", pidfile=tmp_path / "ka.pid", **config), check=check, signaller=signaller)
    return w, check, signaller


def live(w: KeepalivedWriter) -> dict[str, str]:
    root = w.config.directory
    return {str(p.relative_to(root)): p.read_text() for p in root.rglob("*.conf") if ".vsop-candidate" not in str(p)}


def test_first_write_is_checked_swapped_in_and_reloaded(tmp_path: Path) -> None:
    w, check, signaller = writer(tmp_path)
    outcome = w.update([ka("web"), ka("api", vip="169.254.11.3")])
    assert outcome.changed and outcome.reloaded and not outcome.error
    assert set(live(w)) == {"keepalived.conf", "conf.d/default_web.conf", "conf.d/default_api.conf"}
    assert check.calls == [live(w)]  # exactly the candidate that went live was checked
    assert signaller.sent == [tmp_path / "ka.pid"]
    status = w.status()
    assert status["lastWritten"]["reload"] == "SIGHUP sent to keepalived 42"
    assert status["lastWritten"]["virtualServices"] == ["default/api", "default/web"]
    assert status["lastError"] == {}
    assert not list(w.config.directory.glob(".vsop-candidate-*"))  # the candidate folder is gone


def test_unchanged_content_is_neither_checked_nor_signalled(tmp_path: Path) -> None:
    w, check, signaller = writer(tmp_path)
    w.update([ka()])
    mtime = (w.config.directory / "conf.d" / "default_web.conf").stat().st_mtime_ns
    for _ in range(3):
        outcome = w.update([ka()])
        assert not outcome.changed and not outcome.reloaded
    assert len(check.calls) == 1 and len(signaller.sent) == 1
    assert (w.config.directory / "conf.d" / "default_web.conf").stat().st_mtime_ns == mtime
    # A fresh writer (agent restart) over the same files: nothing written, no SIGHUP.
    again, check2, signaller2 = writer(tmp_path)
    assert again.active and again.update([ka()]).changed is False
    assert check2.calls == [] and signaller2.sent == []


def test_change_reloads_once_and_removal_deletes_the_stale_file(tmp_path: Path) -> None:
    w, check, signaller = writer(tmp_path)
    w.update([ka("web"), ka("api", vip="169.254.11.3")])
    outcome = w.update([ka("web", scheduler="wlc"), ka("api", vip="169.254.11.3")])
    assert outcome.reloaded and "lb_algo wlc" in live(w)["conf.d/default_web.conf"]
    outcome = w.update([ka("web", scheduler="wlc")])
    assert outcome.reloaded and "conf.d/default_api.conf" not in live(w)
    assert "conf.d/default_api.conf" not in check.calls[-1]  # the candidate had no stale file either
    assert len(signaller.sent) == 3
    # The last keepalived-mode object goes: vsop's files stay managed and become empty.
    assert w.wanted([make_vs("web")])
    w.update([make_vs("web")])
    assert set(live(w)) == {"keepalived.conf"}


def test_invalid_candidate_keeps_the_live_files_and_says_why(tmp_path: Path) -> None:
    w, check, signaller = writer(tmp_path)
    w.update([ka()])
    before = live(w)
    check.refuse = "(conf.d/default_web.conf: Line 9) Virtual server [169.254.11.2]:tcp:80 total weight 0"
    outcome = w.update([ka(backends=[{"address": "192.168.2.111", "weight": 0}])])
    assert not outcome.changed and not outcome.reloaded
    assert "keepalived -t rejected the new configuration; the old one stays" in outcome.error
    assert "total weight 0" in outcome.error
    assert live(w) == before and len(signaller.sent) == 1
    assert w.status()["lastError"]["stage"] == "check"
    # The same candidate is not checked again at every resync; it stays reported.
    calls = len(check.calls)
    assert w.update([ka(backends=[{"address": "192.168.2.111", "weight": 0}])]).error
    assert len(check.calls) == calls
    # Going back to what is live clears the error without a write; a good change goes through.
    check.refuse = ""
    assert w.update([ka()]).changed is False and w.status()["lastError"] == {}
    assert w.update([ka(scheduler="lc")]).reloaded


def test_keepalived_not_running_is_a_note_not_an_error(tmp_path: Path) -> None:
    w, _, signaller = writer(tmp_path)
    w.signaller = FakeSignaller(NotRunning("no keepalived is running (x.pid does not exist)"))
    outcome = w.update([ka()])
    assert outcome.changed and not outcome.reloaded and not outcome.error
    assert "it reads the files when it starts" in w.status()["lastWritten"]["reload"]
    w.signaller = FakeSignaller(ReloadFailed("process 7 of x.pid is 'sshd', not keepalived; not signalled"))
    outcome = w.update([ka(scheduler="lc")])
    assert outcome.changed and outcome.error and w.status()["lastError"]["stage"] == "reload"
    # The next sync retries the SIGHUP for what was written, without writing again.
    w.signaller = FakeSignaller()
    outcome = w.update([ka(scheduler="lc")])
    assert not outcome.changed and outcome.reloaded and w.status()["lastError"] == {}
    assert w.update([ka(scheduler="lc")]).reloaded is False and len(w.signaller.sent) == 1


def test_a_foreign_keepalived_conf_is_never_overwritten(tmp_path: Path) -> None:
    w, check, _ = writer(tmp_path)
    w.config.directory.mkdir()
    (w.config.directory / "keepalived.conf").write_text("global_defs {\n}\n")
    assert not w.active and not w.wanted([make_vs()])
    outcome = w.update([ka()])
    assert "was not written by vsop" in outcome.error and check.calls == []
    assert (w.config.directory / "keepalived.conf").read_text() == "global_defs {\n}\n"


def test_foreign_confd_files_are_part_of_the_candidate_and_survive(tmp_path: Path) -> None:
    w, check, _ = writer(tmp_path)
    (w.config.directory / "conf.d").mkdir(parents=True)
    (w.config.directory / "conf.d" / "mine.conf").write_text("# by hand\n")
    w.update([ka()])
    assert check.calls[0]["conf.d/mine.conf"] == "# by hand\n"
    assert live(w)["conf.d/mine.conf"] == "# by hand\n"


def test_auth_file_problems_are_reported(tmp_path: Path) -> None:
    w, check, _ = writer(tmp_path, auth_file=tmp_path / "missing")
    outcome = w.update([ka()])
    assert "cannot read the VRRP password" in outcome.error and check.calls == []
    (tmp_path / "missing").write_text("pw1\n")
    vrrp = {"interface": "eth0", "virtualRouterID": 51, "priority": 100, "advertIntervalSeconds": 1}
    assert w.update([ka(announce="vrrp", vrrp=vrrp)]).reloaded
    main = live(w)["conf.d/default_web.conf"]
    assert "auth_pass pw1" in main
    assert (w.config.directory / "conf.d" / "default_web.conf").stat().st_mode & 0o777 == 0o600


def test_process_signaller_checks_the_pid_names_keepalived(tmp_path: Path) -> None:
    sent: list[tuple[int, int]] = []
    proc = tmp_path / "proc"
    signaller = ProcessSignaller(kill=lambda pid, sig: sent.append((pid, sig)), proc=proc)
    pidfile = tmp_path / "keepalived.pid"
    try:
        signaller.reload(pidfile)
        raise AssertionError("expected NotRunning")
    except NotRunning as exc:
        assert "does not exist" in str(exc)
    pidfile.write_text("123\n")
    try:
        signaller.reload(pidfile)
        raise AssertionError("expected NotRunning")
    except NotRunning as exc:
        assert "process 123" in str(exc)
    (proc / "123").mkdir(parents=True)
    (proc / "123" / "comm").write_text("sshd\n")
    (proc / "123" / "stat").write_text("123 (sshd) S 1 123 123 0 -1\n")
    try:
        signaller.reload(pidfile)
        raise AssertionError("expected ReloadFailed")
    except ReloadFailed as exc:
        assert "not keepalived" in str(exc)
    assert sent == []
    (proc / "123" / "comm").write_text("keepalived\n")
    (proc / "123" / "stat").write_text("123 (keepalived) S 1 123 123 0 -1\n")
    assert signaller.reload(pidfile) == "SIGHUP sent to keepalived 123"
    assert sent == [(123, signal.SIGHUP)]


def test_keepalived_check_reads_exit_code_and_stderr(tmp_path: Path) -> None:
    script = tmp_path / "fake-keepalived"
    script.write_text("#!/bin/sh\necho \"($(dirname $3)/conf.d/x.conf: Line 1) Unknown keyword 'bogus'\" >&2\nexit 0\n")
    script.chmod(0o755)
    result = keepalived_check(str(script), tmp_path / "cand" / "keepalived.conf")
    assert not result.ok and result.message == "(conf.d/x.conf: Line 1) Unknown keyword 'bogus'"  # exit 0 with stderr is not clean
    script.write_text("#!/bin/sh\nexit 0\n")
    assert keepalived_check(str(script), tmp_path / "keepalived.conf").ok
    missing = keepalived_check(str(tmp_path / "nope"), tmp_path / "keepalived.conf")
    assert not missing.ok and "not found" in missing.message


def _write(folder: Path, name: str, **spec: Any) -> None:
    doc = json.loads(json.dumps(SEED))
    doc["metadata"]["name"] = name
    doc["spec"].update(spec)
    (folder / f"{name}.yaml").write_text(yaml.safe_dump(doc))


def test_host_agent_writes_keepalived_after_sync_and_keeps_keepalived_ipvs(tmp_path: Path) -> None:
    folder = tmp_path / "vs"
    folder.mkdir()
    _write(folder, "web", **KA)
    kernel, fake = fake_kernel()
    w, check, signaller = writer(tmp_path)
    config = AgentConfig(folder, Node("n"), status_file=tmp_path / "status.json", poll_seconds=0.02)
    agent = HostAgent(kernel, config, FakeConntrack(), keepalived=w)
    agent.poll()
    time.sleep(0.03)  # a file is taken once stable over two polls
    assert agent.sync_once() is not None
    assert fake.state.services == {}  # keepalived owns IPVS for it
    assert "169.254.11.2/32" in fake.state.addresses and signaller.sent
    status = json.loads((tmp_path / "status.json").read_text())
    assert status["keepalived"]["lastWritten"]["virtualServices"] == ["default/web"]
    # What keepalived programs on the VIP bound on vsop0 survives vsop's syncs (no delete, no drain).
    key = ServiceKey("tcp", "169.254.11.2", 80)
    rs = RealServerKey(key, "192.168.2.111", 8080)
    theirs = replace(
        fake.state,
        services={key: VirtualServer(key, "rr", 0, "")},
        real_servers={rs: RealServer(rs, weight=1, active_connections=3)},
    )
    fake.state = theirs
    assert agent.sync_once().writes == 0
    assert key in fake.state.services and fake.state.real_servers[rs].weight == 1
    assert len(signaller.sent) == 1 and len(check.calls) == 1


def test_host_agent_without_keepalived_objects_does_not_touch_the_folder(tmp_path: Path) -> None:
    folder = tmp_path / "vs"
    folder.mkdir()
    _write(folder, "web")
    kernel, _ = fake_kernel()
    w, check, _ = writer(tmp_path)
    agent = HostAgent(kernel, AgentConfig(folder, Node("n"), status_file=None), FakeConntrack(), keepalived=w)
    agent.source.poll()
    agent.sync_once()
    assert check.calls == [] and not w.config.directory.exists()
    assert agent.status()["keepalived"]["active"] is False


def test_vsop_show_reports_the_keepalived_state(tmp_path: Path) -> None:
    from vsop.core.state import KernelState, LinkState, Names
    from vsop.diagnose.show import show_json, show_text

    w, check, _ = writer(tmp_path)
    w.update([ka()])
    check.refuse = "total weight 0"
    w.update([ka(scheduler="lc")])
    agent = {"directory": "/etc/vsop/services", "keepalived": w.status()}
    assert show_json(KernelState(), Names(), agent)["agent"]["keepalived"]["lastError"]["stage"] == "check"
    text = show_text(KernelState(link=LinkState("vsop0", up=True)), Names(), agent)
    assert "keepalived: not applied (check): keepalived -t rejected the new configuration" in text
    assert "SIGHUP sent to keepalived 42" in text


VRRP_IPVS = {"interface": "eth0", "virtualRouterID": 61, "peers": ["192.168.50.1", "192.168.50.2"]}


def vrrp_agent(tmp_path: Path, metrics: Any = None) -> tuple[HostAgent, Any, KeepalivedWriter, FakeCheck, FakeSignaller, Path]:
    """A host agent on node 192.168.50.2 with one ipvs-mode object announced by VRRP, after its first sync."""
    folder = tmp_path / "vs"
    folder.mkdir()
    _write(folder, "web", vip="192.168.50.100", announce="vrrp", vrrp=VRRP_IPVS)
    kernel, fake = fake_kernel()
    fake.state = replace(fake.state, node_addresses=frozenset({"192.168.50.2"}))
    w, check, signaller = writer(tmp_path, track_dir=tmp_path / "vrrp")
    agent = HostAgent(kernel, AgentConfig(folder, Node("n"), status_file=None, poll_seconds=0.02), FakeConntrack(), keepalived=w, metrics=metrics)
    agent.poll()
    time.sleep(0.03)
    assert agent.sync_once() is not None
    return agent, fake, w, check, signaller, folder


def test_host_agent_announces_an_ipvs_vip_by_vrrp_and_tracks_its_health(tmp_path: Path) -> None:
    agent, fake, w, check, signaller, folder = vrrp_agent(tmp_path)
    # vsop programs IPVS and binds the VIP on vsop0 with ARP suppressed; keepalived gets the vrrp_instance only.
    assert len(fake.state.services) == 1 and "192.168.50.100/32" in fake.state.addresses
    assert fake.state.sysctls["net.ipv4.conf.all.arp_ignore"] == "1"
    conf = live(w)["conf.d/default_web.conf"]
    assert "virtual_server" not in conf and "unicast_src_ip 192.168.50.2" in conf and f"file {tmp_path}/vrrp/default_web" in conf
    assert (tmp_path / "vrrp" / "default_web").read_text() == "0\n" and len(signaller.sent) == 1
    # keepalived tells its transitions through the FIFO the agent made and reads (no script runs).
    assert f"vrrp_notify_fifo {tmp_path}/vrrp/notify.fifo" in live(w)["keepalived.conf"]
    assert w.status()["announced"] == {"192.168.50.100": "unknown"}
    with open(tmp_path / "vrrp" / "notify.fifo", "w") as fifo:
        fifo.write('INSTANCE "vsop_eth0_61" MASTER 250\nGROUP "other" BACKUP 100\n')
    deadline = time.monotonic() + 10
    while w.status()["announced"]["192.168.50.100"] != "master" and time.monotonic() < deadline:
        time.sleep(0.01)
    assert w.status()["announced"] == {"192.168.50.100": "master"}
    assert "announced: 192.168.50.100 master (VRRP: this node holds it)" in show_text_of(agent, fake.state)
    # Every backend drained: this node serves nothing of it, the track file says so; keepalived's files stay.
    _write(folder, "web", vip="192.168.50.100", announce="vrrp", vrrp=VRRP_IPVS,
           backends=[{"address": "192.168.2.111", "weight": 0}, {"address": "192.168.2.222", "weight": 0}])
    agent.poll()
    time.sleep(0.03)
    agent.poll()
    agent.sync_once()
    assert (tmp_path / "vrrp" / "default_web").read_text() == "1\n"
    assert len(signaller.sent) == 1 and len(check.calls) == 1
    assert w.status()["vrrpTracks"]["serving"] == {"default_web": False}
    # The object gone: its track file goes with its section.
    (folder / "web.yaml").unlink()
    agent.poll()
    agent.sync_once()
    assert not (tmp_path / "vrrp" / "default_web").exists() and "conf.d/default_web.conf" not in live(w)


def show_text_of(agent: HostAgent, state: Any) -> str:
    from vsop.core.state import Names
    from vsop.diagnose.show import show_text

    return show_text(state, Names(), agent.status())


def test_notify_lines_are_parsed_for_vrrp_instances_only() -> None:
    from vsop.keepalived.notify import parse

    assert parse('INSTANCE "vsop_eth0_61" FAULT 0\n') == ("vsop_eth0_61", "fault")
    assert parse("INSTANCE vsop_eth0_61 BACKUP 245") == ("vsop_eth0_61", "backup")
    assert parse('GROUP "g" MASTER 100') is None and parse('VS "x" UP') is None and parse("") is None


def test_process_signaller_says_whether_keepalived_runs(tmp_path: Path) -> None:
    proc, pidfile = tmp_path / "proc", tmp_path / "keepalived.pid"
    signaller = ProcessSignaller(kill=lambda pid, sig: None, proc=proc)
    assert signaller.running(pidfile) is False  # no pidfile
    pidfile.write_text("123\n")
    assert signaller.running(pidfile) is False  # its process is gone
    (proc / "123").mkdir(parents=True)
    (proc / "123" / "comm").write_text("keepalived\n")
    (proc / "123" / "stat").write_text("123 (keepalived) S 1 123 123 0 -1\n")
    assert signaller.running(pidfile) is True
    # SIGKILLed and not reaped yet: a zombie keeps its /proc entry and its name.
    (proc / "123" / "stat").write_text("123 (keepalived) Z 1 123 123 0 -1\n")
    assert signaller.running(pidfile) is False
    try:
        signaller.reload(pidfile)
        raise AssertionError("expected NotRunning")
    except NotRunning as exc:
        assert "process 123" in str(exc) and "gone" in str(exc)
    (proc / "123" / "comm").write_text("sshd\n")  # the number reused by another process
    (proc / "123" / "stat").write_text("123 (sshd) S 1 123 123 0 -1\n")
    assert signaller.running(pidfile) is False
    pidfile.write_text("garbage\n")
    assert signaller.running(pidfile) is None  # cannot tell


def test_a_killed_keepalived_announces_nothing_from_the_next_turn(tmp_path: Path) -> None:
    """A keepalived killed while MASTER writes no STOP line: found gone at the next turn, its VIPs are `stop` in
    the status file, `vsop show` and the metrics, the FIFO's states are forgotten, and a new keepalived's lines count."""
    from vsop.node.metrics import NodeMetrics

    metrics = NodeMetrics()
    agent, fake, w, _, signaller, _ = vrrp_agent(tmp_path, metrics)
    assert w.notify is not None
    w.notify.feed('INSTANCE "vsop_eth0_61" MASTER 250\n')
    agent.sync_once()
    value = metrics.registry.get_sample_value
    assert w.status()["announced"] == {"192.168.50.100": "master"}
    assert value("vsop_vip_announced", {"vip": "192.168.50.100", "state": "master"}) == 1

    signaller.alive = False  # SIGKILL: no FAULT, no STOP on the FIFO
    assert w.status()["announced"] == {"192.168.50.100": "master"}  # not looked at before the next turn
    agent.sync_once()
    assert w.status()["announced"] == {"192.168.50.100": "stop"}
    assert w.status()["running"] is False
    assert w.notify.states() == {"vsop_eth0_61": "stop"}
    assert value("vsop_vip_announced", {"vip": "192.168.50.100", "state": "master"}) is None
    assert value("vsop_vip_announced", {"vip": "192.168.50.100", "state": "stop"}) == 1
    text = show_text_of(agent, fake.state)
    assert "announced: 192.168.50.100 stop (VRRP: keepalived is not running)" in text and "master" not in text

    # keepalived started again: it tells each instance's first state, and the next turn finds it running.
    signaller.alive = True
    w.notify.feed('INSTANCE "vsop_eth0_61" BACKUP 245\n')
    agent.sync_once()
    assert w.status()["announced"] == {"192.168.50.100": "backup"} and w.status()["running"] is True


def test_forget_leaves_what_a_new_keepalived_said_meanwhile() -> None:
    from vsop.keepalived.notify import NotifyFifo

    fifo = NotifyFifo(Path("/nonexistent/notify.fifo"))
    fifo.feed('INSTANCE "a" MASTER 250\n')
    seen = fifo.lines
    fifo.feed('INSTANCE "a" BACKUP 245\n')  # a keepalived started between the look and `forget`
    assert fifo.forget(seen) is False and fifo.states() == {"a": "backup"}
    assert fifo.forget(fifo.lines) is True and fifo.states() == {"a": "stop"}
