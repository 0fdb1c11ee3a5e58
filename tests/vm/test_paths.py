"""Paths no other vm test carries, proven by packets: the agent's HTTP check, SCTP, a UDP
VirtualService replaced on the same VIP:port, and drift repaired by the agent's resync.

The lab (tests/vm/lab.py): a client namespace and two backends without a default route.
The agent runs as the real console script (tests/vm/test_agent.py's fixture).
"""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

REPOSITORY = Path(__file__).resolve().parents[2]
if str(REPOSITORY) not in sys.path:
    sys.path.insert(0, str(REPOSITORY))

from tests.vm.conftest import Netns, http_get, run  # noqa: E402
from tests.vm.lab import FolderAgent, BACKENDS, VIP, apply, clean_node, lab, manifest, udp_asker, wait_for  # noqa: E402,F401
from tests.vm.test_agent import agent, record, weight_of  # noqa: E402,F401

pytestmark = [pytest.mark.vm, pytest.mark.usefixtures("clean_node")]


# --- 3. the HTTP health check through the host agent ------------------------------------------


class StatusServer:
    """HTTP/1.0 in a namespace: GET /healthz answers `health["code"]`, anything else 200 with the name."""

    def __init__(self, ns: Netns, port: int, name: str, code: int):
        self.health = {"code": code}
        self.name = name
        self.stop = threading.Event()
        with ns.entered():
            self.server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.server.bind(("0.0.0.0", port))
        self.server.listen(16)
        self.server.settimeout(0.2)
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.server.accept()
            except socket.timeout:
                continue
            with conn:
                conn.settimeout(2)
                try:
                    request = conn.recv(4096).decode("latin-1")
                except OSError:
                    continue
                path = request.split(" ")[1] if request.count(" ") >= 2 else "/"
                code = self.health["code"] if path == "/healthz" else 200
                conn.sendall(f"HTTP/1.0 {code} X\r\nContent-Type: text/plain\r\n\r\n{self.name}\n".encode())
        self.server.close()


def test_http_health_check_500_out_200_back_404_out(lab, agent, tmp_path, capsys) -> None:
    be1, be2 = BACKENDS["be1"], BACKENDS["be2"]
    servers = [
        StatusServer(lab["be1"], 8181, "be1", 200),
        StatusServer(lab["be2"], 8181, "be2", 500),  # its health path fails
        StatusServer(lab["be1"], 8182, "be1-nohealth", 404),  # it has no health path
    ]
    try:
        check = {"type": "http", "path": "/healthz", "expectStatus": 200, "intervalSeconds": 1, "timeoutSeconds": 1,
                 "failureThreshold": 2, "successThreshold": 1}
        backends = [{"address": be1, "port": 8181}, {"address": be2, "port": 8181}, {"address": be1, "port": 8182}]
        manifest(agent.directory, "web", ports=[{"port": 80}], backends=backends, healthCheck=check)
        started = time.monotonic()
        agent.start()
        wait_for("the 500 and the 404 out of service", lambda: weight_of(be2, 8181) == 0 and weight_of(be1, 8182) == 0, 30, 0.05)
        took = time.monotonic() - started
        record(capsys, f"HTTP health: 500 and 404 backends at weight 0 {took:.2f}s after the agent started (interval 1s x threshold 2)")
        assert weight_of(be1, 8181) == 1
        assert [http_get(VIP, 80, netns=lab["client"], timeout=3).strip() for _ in range(6)] == ["be1"] * 6
        status = {h["realServer"]: h for h in agent.status()["health"]}
        assert status[f"{be2}:8181"]["lastError"] == "HTTP status 500, expected 200"
        assert status[f"{be1}:8182"]["lastError"] == "HTTP status 404, expected 200"

        servers[1].health["code"] = 200
        back = wait_for("the repaired backend back in service", lambda: weight_of(be2, 8181) == 1, 30, 0.05)
        record(capsys, f"HTTP health: 500 -> 200 back at weight 1 in {back:.2f}s")
        assert "be2" in {http_get(VIP, 80, netns=lab["client"], timeout=3).strip() for _ in range(6)}
        assert weight_of(be1, 8182) == 0  # the path is still missing
    finally:
        for server in servers:
            server.stop.set()


class MisbehavingServer:
    """HTTP in a namespace, one thread per connection; `mode["how"]` says how it answers:
    ok (200 and its name), hang (accepts, reads the request, never answers), slow (the status
    line, then one header a second: slower than the check's timeout), huge (a 70,000-byte
    status line: over 64 KiB, which used to kill the checker's task for that backend)."""

    def __init__(self, ns: Netns, port: int, name: str, how: str):
        self.mode = {"how": how}
        self.name = name
        self.stop = threading.Event()
        with ns.entered():
            self.server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.server.bind(("0.0.0.0", port))
        self.server.listen(64)
        self.server.settimeout(0.2)
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.server.accept()
            except socket.timeout:
                continue
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()
        self.server.close()

    def _answer(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(2)
            try:
                conn.recv(4096)
                how = self.mode["how"]
                if how == "hang":
                    self.stop.wait(30)
                elif how == "slow":
                    conn.sendall(b"HTTP/1.0 200 OK\r\n")
                    for header in range(10):
                        if self.stop.wait(1):
                            return
                        conn.sendall(f"X-Slow-{header}: 1\r\n".encode())
                    conn.sendall(b"\r\n")
                elif how == "huge":
                    conn.sendall(b"HTTP/1.0 200 " + b"x" * 70000 + b"\r\n\r\n")
                else:
                    conn.sendall(f"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\n{self.name}\n".encode())
            except OSError:
                pass


def test_http_checks_take_hanging_slow_and_oversized_answers_out_and_keep_checking(lab, agent, tmp_path, capsys) -> None:
    be1, be2 = BACKENDS["be1"], BACKENDS["be2"]
    servers = {
        "ok": MisbehavingServer(lab["be1"], 8181, "be1", "ok"),
        "hang": MisbehavingServer(lab["be2"], 8181, "be2-hang", "hang"),
        "slow": MisbehavingServer(lab["be1"], 8183, "be1-slow", "slow"),
        "huge": MisbehavingServer(lab["be2"], 8183, "be2-huge", "huge"),
    }
    endpoint = {"ok": (be1, 8181), "hang": (be2, 8181), "slow": (be1, 8183), "huge": (be2, 8183)}
    try:
        check = {"type": "http", "path": "/healthz", "expectStatus": 200, "intervalSeconds": 1, "timeoutSeconds": 1,
                 "failureThreshold": 2, "successThreshold": 1}
        backends = [{"address": address, "port": port} for address, port in endpoint.values()]
        manifest(agent.directory, "web", ports=[{"port": 80}], backends=backends, healthCheck=check)
        agent.start()
        bad = ("hang", "slow", "huge")
        wait_for("the hanging, slow and oversized backends out of service",
                 lambda: all(weight_of(*endpoint[name]) == 0 for name in bad), 60, 0.1)
        assert weight_of(*endpoint["ok"]) == 1
        assert [http_get(VIP, 80, netns=lab["client"], timeout=3).strip() for _ in range(4)] == ["be1"] * 4
        status = {h["realServer"]: h["lastError"] for h in agent.status()["health"]}
        assert status[f"{be2}:8181"] == status[f"{be1}:8183"] == "no complete HTTP answer within 1s", status
        assert status[f"{be2}:8183"] == "HTTP answer line over 8192 bytes", status
        # The checker of the oversized backend lives on: once it answers well, it is back.
        servers["huge"].mode["how"] = "ok"
        wait_for("the formerly oversized backend back in service", lambda: weight_of(*endpoint["huge"]) == 1, 30, 0.1)
        # And the others are still checked: the good one starts hanging, and goes out.
        servers["ok"].mode["how"] = "hang"
        wait_for("the good backend, now hanging, out of service", lambda: weight_of(*endpoint["ok"]) == 0, 30, 0.1)
        assert {http_get(VIP, 80, netns=lab["client"], timeout=3).strip() for _ in range(4)} == {"be2-huge"}
        assert agent.process is not None and agent.process.poll() is None
        try:
            agent.stop()  # SIGTERM, with probes hanging on three backends
        except subprocess.TimeoutExpired:
            raise AssertionError(f"the agent did not stop on SIGTERM within 60 s:\n{agent.log.read_text()[-6000:]}") from None
    finally:
        for server in servers.values():
            server.stop.set()


# --- 4. SCTP ------------------------------------------------------------------------------------


def _sctp_listening(pid: int, port: int) -> bool:
    """Whether process pid has an SCTP endpoint on port (its namespace's /proc/net/sctp/eps: LPORT is the 6th column)."""
    try:
        lines = Path(f"/proc/{pid}/net/sctp/eps").read_text().splitlines()[1:]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return any(len(fields) > 5 and fields[5] == str(port) for fields in (line.split() for line in lines))


def test_sctp_round_robin_through_the_vip(lab, tmp_path, capsys) -> None:
    listeners = []
    try:
        for name in BACKENDS:
            listeners.append(lab[name].popen("socat", "SCTP-LISTEN:9999,fork,reuseaddr", f"SYSTEM:echo {name}"))
        wait_for("socat listening on SCTP 9999", lambda: all(_sctp_listening(p.pid, 9999) for p in listeners), 30, 0.05)
        apply(capsys, manifest(tmp_path, "sctp", ports=[{"port": 99, "protocol": "SCTP", "targetPort": 9999}]))
        assert re.search(r"SCTP\s+169\.254\.11\.2:99\s+rr", run("ipvsadm", "-Ln").stdout)
        seen = [lab["client"].run("socat", "-T", "5", "-u", f"SCTP:{VIP}:99", "-", timeout=30).stdout.strip() for _ in range(4)]
        assert Counter(seen) == {"be1": 2, "be2": 2}, seen
        assert seen[0] != seen[1] and seen[1] != seen[2], f"not round robin: {seen}"
    finally:
        for listener in listeners:
            listener.kill()


# --- 5. UDP: the whole VirtualService replaced on the same VIP:port ------------------------------


def test_udp_client_on_a_fixed_port_survives_its_virtualservice_being_replaced(lab, agent, tmp_path, capsys) -> None:
    ports = [{"port": 53, "protocol": "UDP", "targetPort": 5353}]
    old = Path(manifest(agent.directory, "dns-old", ports=ports, backends=[{"address": BACKENDS["be1"]}]))
    agent.start()
    with udp_asker(lab["client"], 40054) as ask:  # one source port throughout: one conntrack entry
        assert next(filter(None, (ask() for _ in range(50)))) == "be1"
        # The whole object goes (its IPVS service with it), then another takes the same VIP:port.
        old.unlink()
        wait_for("the old UDP service gone", lambda: weight_of(BACKENDS["be1"], 5353) is None, 30, 0.05)
        manifest(agent.directory, "dns-new", ports=ports, backends=[{"address": BACKENDS["be2"]}])
        wait_for("the new UDP service", lambda: weight_of(BACKENDS["be2"], 5353) == 1, 30, 0.05)
        programmed = time.monotonic()
        answer = None
        # Asked without pause: a stale conntrack entry would never idle out, so a generous deadline still tells.
        while time.monotonic() - programmed < 20:
            answer = ask()
            if answer is not None:
                break
        moved = time.monotonic() - programmed
        record(capsys, f"UDP: fixed-port client answered by the replacing VirtualService {moved:.2f}s after it was programmed")
        assert answer == "be2", f"answer {answer} after {moved:.2f}s"
        assert "forgot UDP conntrack entries" in agent.log.read_text()


# --- 6. drift -----------------------------------------------------------------------------------


@pytest.fixture
def quick_agent(tmp_path: Path):
    folder = tmp_path / "quick"
    folder.mkdir()
    running = FolderAgent(folder, tmp_path, resync_seconds=2)
    yield running
    running.stop()
    if running.log.exists():
        sys.stderr.write(running.log.read_text()[-4000:])


def test_drift_made_by_hand_is_repaired_logged_and_counted(lab, quick_agent, tmp_path) -> None:
    manifest(quick_agent.directory, "web")
    quick_agent.start()
    wait_for("programmed", lambda: weight_of(BACKENDS["be1"], 8080) == 1, 60, 0.1)
    run("ipvsadm", "-e", "-t", f"{VIP}:80", "-r", f"{BACKENDS['be1']}:8080", "-m", "-w", "5")
    assert weight_of(BACKENDS["be1"], 8080) == 5
    wait_for("the weight put back by the resync", lambda: weight_of(BACKENDS["be1"], 8080) == 1, 30, 0.1)
    wait_for("the repair counted", lambda: quick_agent.status().get("driftRepairs", {}).get("total") == 1, 10, 0.1)
    [repair] = quick_agent.status()["driftRepairs"]["last"]
    assert repair.startswith("default/web: realserver.edit") and "found masq weight 5, put back masq weight 1" in repair
    log = quick_agent.log.read_text()
    assert "repaired drift" in log and "found='masq weight 5'" in log and "put_back='masq weight 1'" in log
    # The resyncs that follow (each audits the node's VIPs from scratch against the read) find
    # the real kernel as vsop's objects want it: nothing more written, nothing more counted.
    quick_agent.wait_resyncs(3)
    assert quick_agent.status()["driftRepairs"]["total"] == 1
    assert "audit repaired" not in quick_agent.log.read_text()
