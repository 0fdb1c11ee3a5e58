"""keepalived mode on a real kernel, with Debian's keepalived daemon, proven by packets.

The first three tests share one stack, started once (process starts are dear under
emulation): the vsop agent (`vsop agent --from DIR --keepalived-dir ...`, the real
console script) owns vsop0, the ipsets, chains and sysctls of the VM's root namespace
and writes keepalived's configuration; keepalived, started on that configuration in
the same namespace, owns IPVS and the health checks. Backends and client are the lab
of tests/vm/lab.py.

The VRRP test builds its own LAN: a bridge in a "lan" namespace with two nodes, two
backends and a client on it. Each node is a namespace where `vsop apply` programs the
chains and sysctls and keepalived runs the same rendered configuration.

Timings (health-check removal, VRRP failover) are printed and appended to
.cache/measurements.txt.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

REPOSITORY = Path(__file__).resolve().parents[2]
if str(REPOSITORY) not in sys.path:
    sys.path.insert(0, str(REPOSITORY))

from tests.vm.conftest import Namespaces, Netns, http_get, kill_process, run, start_http_server, veth  # noqa: E402
from tests.vm.lab import BACKENDS, VIP, connect, echo, lab, manifest  # noqa: E402,F401
from tests.vm.lab import STARTUP_TIMEOUT, VSOP, wait_for  # noqa: E402
from tests.vm.test_agent import record, weight_of  # noqa: E402
from vsop.cli.main import main as vsop  # noqa: E402

pytestmark = [pytest.mark.vm]

KEEPALIVED = shutil.which("keepalived") or "/usr/sbin/keepalived"
WEB_PORT = 9090  # the stack's own httpd on each backend (killed and restarted by the health test)
CHECK = {"type": "tcp", "intervalSeconds": 2, "timeoutSeconds": 1, "failureThreshold": 2, "successThreshold": 1}
PORTS = [{"name": "http", "port": 80, "targetPort": WEB_PORT}, {"name": "echo", "port": 7, "targetPort": 7007}]


def start_keepalived(run_dir: Path, config: Path, tag: str, ns: Netns | None = None) -> subprocess.Popen:
    """keepalived in the foreground, logging to run_dir/TAG.log, its pidfiles in run_dir."""
    argv = [KEEPALIVED, "--dont-fork", "--log-console", "--log-detail", "-f", str(config),
            "-p", str(run_dir / f"{tag}.pid"), "-r", str(run_dir / f"{tag}-vrrp.pid"), "-c", str(run_dir / f"{tag}-checkers.pid")]
    log = open(run_dir / f"{tag}.log", "a")
    if ns is not None:
        return ns.popen(*argv, stdout=log, stderr=subprocess.STDOUT)
    return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def stop_process(proc: subprocess.Popen | None) -> None:
    if proc is not None and proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            kill_process(proc)


class Stack:
    def __init__(self, root: Path):
        self.services = root / "services"
        self.services.mkdir()
        self.keepalived_dir = root / "keepalived"
        self.run = root / "run"
        self.run.mkdir()
        self.status_file = root / "agent.json"
        self.agent_log = root / "agent.log"
        self.pidfile = self.run / "keepalived.pid"
        self.agent: subprocess.Popen | None = None
        self.keepalived: subprocess.Popen | None = None
        self.servers: dict[str, subprocess.Popen] = {}

    def status(self) -> dict[str, Any]:
        import json

        try:
            return json.loads(self.status_file.read_text())
        except (OSError, ValueError):
            return {}

    def keepalived_status(self) -> dict[str, Any]:
        return self.status().get("keepalived", {})

    def wait(self, what: str, check, timeout: float, interval: float = 0.1) -> float:  # type: ignore[no-untyped-def]
        """wait_for, with the agent's keepalived state and the logs in the failure."""
        try:
            return wait_for(what, check, timeout, interval)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\nkeepalived state: {self.keepalived_status()}\n{self.logs()}") from None

    def logs(self) -> str:
        out = []
        for path in (self.agent_log, self.run / "keepalived.log"):
            if path.exists():
                out.append(f"--- {path.name}\n{path.read_text()[-3000:]}")
        return "\n".join(out)


@pytest.fixture(scope="module")
def stack(lab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("keepalived-stack")
    s = Stack(root)
    for name in BACKENDS:
        s.servers[name] = start_http_server(lab[name], root / f"www-{name}", port=WEB_PORT)
    manifest(s.services, "web", mode="keepalived", ports=PORTS, healthCheck=CHECK)
    s.agent = subprocess.Popen(
        [VSOP, "agent", "--from", str(s.services), "--poll-seconds", "0.2", "--resync-seconds", "3",
         "--status-file", str(s.status_file), "--state-file", str(s.status_file.with_name("state.json")), "--keepalived-dir", str(s.keepalived_dir),
         "--keepalived-pidfile", str(s.pidfile), "--keepalived-binary", KEEPALIVED],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=open(s.agent_log, "a"), start_new_session=True,
    )
    try:
        wait_for("the agent to write keepalived's configuration", lambda: s.keepalived_status().get("lastWritten"), STARTUP_TIMEOUT, 0.3)
        s.keepalived = start_keepalived(s.run, s.keepalived_dir / "keepalived.conf", "keepalived")
        wait_for(
            "keepalived's virtual servers",
            lambda: all(weight_of(addr, WEB_PORT) == 1 and weight_of(addr, 7007) == 1 for addr in BACKENDS.values()),
            60,
        )
        yield s
    except BaseException:
        sys.stderr.write(s.logs())
        raise
    finally:
        stop_process(s.keepalived)  # keepalived removes its virtual servers when it stops
        stop_process(s.agent)
        with contextlib.redirect_stdout(open(os.devnull, "w")):
            assert vsop(["cleanup"]) == 0
        assert "VSOP" not in run("iptables-save").stdout
        assert run("ip", "link", "show", "vsop0", check=False).returncode != 0


def test_keepalived_mode_serves_round_robin_from_a_namespace_and_from_the_node(stack, lab) -> None:
    client = lab["client"]
    from_client = [http_get(VIP, netns=client, timeout=5).strip() for _ in range(4)]
    assert set(from_client) == set(BACKENDS) and from_client[0] != from_client[1], from_client  # rr alternates
    from_node = [http_get(VIP, timeout=5).strip() for _ in range(4)]
    assert set(from_node) == set(BACKENDS), from_node
    # vsop holds the VIP and the rules; the IPVS service is keepalived's, and survives vsop's resyncs.
    assert f"inet {VIP}/32" in run("ip", "-o", "addr", "show", "dev", "vsop0").stdout
    assert f"{VIP},tcp:80" in run("ipset", "list", "VSOP-VIP-PORTS").stdout
    synced = stack.status()["lastSync"]["at"]
    wait_for("a resync of the agent", lambda: stack.status()["lastSync"]["at"] > synced, 30, 0.3)
    assert weight_of(BACKENDS["be1"], WEB_PORT) == 1 and weight_of(BACKENDS["be2"], WEB_PORT) == 1
    written = stack.keepalived_status()["lastWritten"]
    assert written["virtualServices"] == ["default/web"]
    assert stack.keepalived_status()["lastError"] == {}


def test_health_check_removes_a_dead_backend_and_brings_it_back(stack, lab, capsys) -> None:
    client = lab["client"]
    stack.servers["be2"].kill()
    stack.servers["be2"].wait()
    took = wait_for("keepalived to take be2 out", lambda: weight_of(BACKENDS["be2"], WEB_PORT) == 0, 30, 0.05)
    bound = CHECK["intervalSeconds"] * CHECK["failureThreshold"]  # delay_loop x (retry + 1): keepalived's tries
    record(capsys, f"keepalived TCP_CHECK: backend death to weight 0 in {took:.2f}s (delay_loop 2s x 2 tries = {bound}s)")
    answered = [http_get(VIP, netns=client, timeout=3).strip() for _ in range(8)]
    assert answered == ["be1"] * 8  # none failed, none went to the dead backend

    root = stack.run.parent
    stack.servers["be2"] = start_http_server(lab["be2"], root / "www-be2-again", port=WEB_PORT)
    back = wait_for("keepalived to bring be2 back", lambda: weight_of(BACKENDS["be2"], WEB_PORT) == 1, 30, 0.05)
    record(capsys, f"keepalived TCP_CHECK: backend recovery to weight 1 in {back:.2f}s")
    assert "be2" in {http_get(VIP, netns=client, timeout=3).strip() for _ in range(4)}


def test_change_reloads_with_sighup_keeping_connections_and_invalid_candidate_keeps_old(stack, lab) -> None:
    client = lab["client"]
    pid = stack.keepalived.pid
    live = stack.keepalived_dir / "conf.d"
    with connect(client, VIP, 7) as conn:
        first = echo(conn, "a")
        # A change: be1 weight 2, and a second VirtualService.
        backends = [{"address": BACKENDS["be1"], "weight": 2}, {"address": BACKENDS["be2"]}]
        manifest(stack.services, "web", mode="keepalived", ports=PORTS, healthCheck=CHECK, backends=backends)
        manifest(stack.services, "api", mode="keepalived", vip="169.254.11.3", ports=[{"port": 80, "targetPort": 8080}])
        stack.wait("keepalived to reload", lambda: weight_of(BACKENDS["be1"], 8080) == 1, 60, 0.1)
        stack.wait("be1's new weight", lambda: weight_of(BACKENDS["be1"], WEB_PORT) == 2, 10, 0.1)
        stack.wait("the new VirtualService", lambda: http_get("169.254.11.3", netns=client, timeout=2).strip() in BACKENDS, 30)
        assert stack.keepalived.poll() is None and stack.keepalived.pid == pid  # reloaded, not restarted
        assert stack.keepalived_status()["lastWritten"]["reload"] == f"SIGHUP sent to keepalived {pid}"
        assert echo(conn, "b") == f"{first.split(':')[0]}:b"  # the established connection survived the reload

        # An invalid candidate (keepalived -t refuses a virtual server whose real servers all weigh 0).
        before = (live / "default_api.conf").read_text()
        drained = [{"address": a, "weight": 0} for a in BACKENDS.values()]
        manifest(stack.services, "api", mode="keepalived", vip="169.254.11.3", ports=[{"port": 80, "targetPort": 8080}], backends=drained)
        stack.wait("the rejection to be reported", lambda: stack.keepalived_status().get("lastError", {}).get("stage") == "check", 30, 0.2)
        error = stack.keepalived_status()["lastError"]["message"]
        assert "keepalived -t rejected" in error and "the old one stays" in error, error
        assert (live / "default_api.conf").read_text() == before  # the live file is untouched
        assert {http_get("169.254.11.3", netns=client, timeout=3).strip() for _ in range(4)} == set(BACKENDS)
        assert echo(conn, "c").endswith(":c")

        # Back to a valid state: the error clears, the stale file goes.
        (stack.services / "api.yaml").unlink()
        manifest(stack.services, "web", mode="keepalived", ports=PORTS, healthCheck=CHECK)
        stack.wait("the api file removed", lambda: not (live / "default_api.conf").exists(), 30, 0.2)
        stack.wait("keepalived to drop the api service", lambda: weight_of(BACKENDS["be1"], 8080) is None, 30, 0.1)
        stack.wait("be1 back at weight 1", lambda: weight_of(BACKENDS["be1"], WEB_PORT) == 1, 30, 0.1)  # maybe a later sync
        assert stack.keepalived_status()["lastError"] == {}
        assert echo(conn, "d").endswith(":d")


# --- VRRP ---------------------------------------------------------------------------

LAN_VIP = "10.201.0.100"
NODES = {"node1": "10.201.0.11", "node2": "10.201.0.12"}
LAN_BACKENDS = {"lbe1": "10.201.0.21", "lbe2": "10.201.0.22"}
LAN_CLIENT = "10.201.0.50"
ADVERT = 1


def _on_lan(lan: Netns, ns: Netns, address: str, ifname: str = "eth0") -> None:
    v6 = ":" in address
    lan_end, ns_end = veth(lan, None, ns, None if v6 else f"{address}/24")
    run("ip", "-n", lan.name, "link", "set", lan_end, "master", "br0")
    batch = f"link set {ns_end} down\nlink set {ns_end} name {ifname}\nlink set {ifname} up\n"
    # An IPv6 address leaves with its link going down (for the rename): given after it.
    batch += f"addr add {address}/64 dev {ifname} nodad\n" if v6 else ""
    run("ip", "-n", ns.name, "-batch", "-", input=batch)
    ns.links.remove(ns_end)
    ns.links.append(ifname)


class AddressWatch:
    """Reads a namespace's addresses over a netlink socket opened inside it: no process per sample."""

    def __init__(self, ns: Netns):
        from pyroute2 import IPRoute

        with ns.entered():
            self.ipr = IPRoute()

    def holds(self, address: str) -> bool:
        return any(msg.get_attr("IFA_ADDRESS") == address for msg in self.ipr.get_addr(family=socket.AF_INET))

    def close(self) -> None:
        self.ipr.close()


def test_vrrp_failover_moves_the_vip_to_the_backup_and_the_client_keeps_working(tmp_path, capsys) -> None:
    pool = Namespaces()
    watches: list[AddressWatch] = []
    try:
        lan = pool.add("lan")
        run("ip", "-n", lan.name, "-batch", "-", input="link add br0 type bridge\nlink set br0 up\n")
        nodes = {name: pool.add(name) for name in NODES}
        for name, address in NODES.items():
            _on_lan(lan, nodes[name], address)
        backends = {}
        for name, address in LAN_BACKENDS.items():
            backends[name] = pool.add(name)
            _on_lan(lan, backends[name], address)
            start_http_server(backends[name], tmp_path / f"www-{name}", port=8080, body=name)
        client = pool.add("client")
        _on_lan(lan, client, LAN_CLIENT)

        spec = dict(
            vip=LAN_VIP, mode="keepalived", announce="vrrp",
            vrrp={"interface": "eth0", "virtualRouterID": 51, "priority": 100, "advertIntervalSeconds": ADVERT},
            backends=[{"address": a} for a in LAN_BACKENDS.values()],
        )
        path = manifest(tmp_path, "lanweb", **spec)
        config = tmp_path / "keepalived"
        with contextlib.redirect_stdout(open(os.devnull, "w")):
            assert vsop(["render", "keepalived", "-f", path, "--out", str(config)]) == 0
        procs = {}
        for name, ns in nodes.items():
            # vsop's chains, sets and sysctls on each node; each "host" has its own store and lock
            ns.run("env", f"VSOP_STORE={tmp_path / name / 'store'}", f"VSOP_LOCK={tmp_path / name / 'lock'}",
                   VSOP, "apply", "-f", path, timeout=120)
            watches.append(AddressWatch(ns))
        watch = dict(zip(nodes, watches))

        procs["node1"] = start_keepalived(tmp_path, config / "keepalived.conf", "node1", nodes["node1"])
        wait_for("node1 to become MASTER", lambda: watch["node1"].holds(LAN_VIP), 30, 0.1)
        procs["node2"] = start_keepalived(tmp_path, config / "keepalived.conf", "node2", nodes["node2"])
        # Evidence first: node2's VRRP instance is running and BACKUP (its master-down timer armed
        # then); only after that timer's whole length (3 x advert + skew < 3 x advert + 1 s) can
        # "node2 stays BACKUP" mean it heard node1's adverts rather than that it had not started.
        node2_log = tmp_path / "node2.log"
        wait_for("node2's VRRP instance to enter BACKUP", lambda: "Entering BACKUP STATE" in node2_log.read_text(), 60, 0.1)
        time.sleep(3 * ADVERT + 1)
        assert watch["node1"].holds(LAN_VIP) and not watch["node2"].holds(LAN_VIP)
        assert {http_get(LAN_VIP, 80, netns=client, timeout=5).strip() for _ in range(4)} == set(LAN_BACKENDS)

        # node1 dies: keepalived killed outright (no goodbye advert) and its link gone with its addresses.
        from pyroute2 import IPRoute

        with nodes["node1"].entered():
            ipr = IPRoute()
        eth0 = ipr.link_lookup(ifname="eth0")[0]
        killed = time.monotonic()
        os.killpg(procs["node1"].pid, signal.SIGKILL)
        ipr.link("del", index=eth0)
        ipr.close()
        nodes["node1"].links.remove("eth0")
        both = []
        while True:
            now = time.monotonic() - killed
            held = [name for name, w in watch.items() if w.holds(LAN_VIP)]
            if len(held) > 1:
                both.append(round(now, 2))
            if held == ["node2"]:
                break
            assert now < 30, "node2 never took the VIP"
            time.sleep(0.1)
        took = time.monotonic() - killed
        bound = 3 * ADVERT + 1
        record(capsys, f"VRRP: master killed to backup owning the VIP in {took:.2f}s (bound 3 x advert_int + 1 s = {bound}s)")
        assert not both, f"both nodes held the VIP at {both}"
        # The client's ARP entry moves with keepalived's gratuitous ARP; it keeps being served.
        wait_for("the client served through node2", lambda: http_get(LAN_VIP, 80, netns=client, timeout=1).strip() in LAN_BACKENDS, 10, 0.1)
        answers = [http_get(LAN_VIP, 80, netns=client, timeout=3).strip() for _ in range(6)]
        assert set(answers) == set(LAN_BACKENDS), answers
        assert not watch["node1"].holds(LAN_VIP)
    except BaseException:
        for log in sorted(tmp_path.glob("node*.log")):
            sys.stderr.write(f"--- {log.name}\n{log.read_text()[-2000:]}\n")
        raise
    finally:
        for w in watches:
            w.close()
        pool.close()
