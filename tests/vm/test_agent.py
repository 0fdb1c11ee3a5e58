"""`vsop agent --from DIR` on a real kernel, proven by packets.

The agent runs as the real console script in a subprocess, as systemd would start
it, against the lab of tests/vm/lab.py. Timings measured here (backend death to
removal, UDP failover) are printed for the record.
"""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest

REPOSITORY = Path(__file__).resolve().parents[2]
if str(REPOSITORY) not in sys.path:
    sys.path.insert(0, str(REPOSITORY))

from tests.vm.conftest import http_get, run, start_http_server  # noqa: E402
from tests.vm.lab import BACKENDS, VIP, FolderAgent, folder_agent, clean_node, connect, echo, lab, manifest, udp_asker, wait_for  # noqa: E402,F401

pytestmark = [pytest.mark.vm, pytest.mark.usefixtures("clean_node")]


def record(capsys: pytest.CaptureFixture[str], text: str) -> None:
    with capsys.disabled():
        print(f"\n[measured] {text}", flush=True)
    with open(REPOSITORY / ".cache" / "measurements.txt", "a") as out:
        out.write(text + "\n")


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[FolderAgent]:
    with folder_agent(tmp_path) as running:
        yield running


def real_servers_in_kernel() -> str:
    """/proc/net/ip_vs: reading it spawns nothing (cheap under emulation)."""
    return Path("/proc/net/ip_vs").read_text()


def hex_endpoint(address: str, port: int) -> str:
    return "".join(f"{int(octet):02X}" for octet in address.split(".")) + f":{port:04X}"


def weight_of(address: str, port: int) -> int | None:
    for line in real_servers_in_kernel().splitlines():
        fields = line.split()
        if len(fields) >= 4 and fields[0] == "->" and fields[1] == hex_endpoint(address, port):
            return int(fields[3])
    return None


def test_agent_follows_the_folder_and_a_broken_file_harms_nothing(lab, agent, tmp_path) -> None:
    client = lab["client"]
    agent.start()
    web = Path(manifest(agent.directory, "web"))
    wait_for("the new file's VIP to answer", lambda: http_get(VIP, netns=client, timeout=2).strip() in BACKENDS, 60)
    api = Path(manifest(agent.directory, "api", vip="169.254.11.3"))
    wait_for("a second file's VIP", lambda: http_get("169.254.11.3", netns=client, timeout=2).strip() in BACKENDS, 60)

    web.write_text(web.read_text().replace("scheduler: rr", "scheduler: rr\n  schedular: wlc"))
    wait_for("the broken file to be reported", lambda: str(web) in agent.status().get("errors", {}), 30)
    assert "unknown field" in agent.status()["errors"][str(web)]
    assert http_get(VIP, netns=client, timeout=3).strip() in BACKENDS  # last good state kept

    api.unlink()
    wait_for("the removed file's VIP to go", lambda: "169.254.11.3" not in run("ip", "-o", "addr", "show", "dev", "vsop0").stdout, 30)
    with pytest.raises(OSError):
        http_get("169.254.11.3", netns=client, timeout=2)
    assert http_get(VIP, netns=client, timeout=3).strip() in BACKENDS

    agent.stop()
    assert http_get(VIP, netns=client, timeout=3).strip() in BACKENDS  # SIGTERM leaves the dataplane serving


def test_tcp_health_check_takes_a_dead_backend_out_and_back(lab, agent, tmp_path, capsys) -> None:
    client = lab["client"]
    servers = {name: start_http_server(lab[name], tmp_path / f"h-{name}", port=9090) for name in BACKENDS}
    check = {"type": "tcp", "intervalSeconds": 2, "timeoutSeconds": 1, "failureThreshold": 2, "successThreshold": 1}
    manifest(agent.directory, "web", ports=[{"port": 80, "targetPort": 9090}], healthCheck=check)
    agent.start()
    wait_for("both backends", lambda: {http_get(VIP, netns=client, timeout=2).strip() for _ in range(4)} == set(BACKENDS), 60)

    servers["be2"].kill()
    servers["be2"].wait()
    took = wait_for("be2 out of service", lambda: weight_of(BACKENDS["be2"], 9090) == 0, 30, 0.05)
    record(capsys, f"TCP health: backend death to weight 0 in {took:.2f}s (interval 2s x threshold 2 = 4s)")
    # The figure is printed above (interval x threshold + 1 s natively); under emulation on a
    # shared machine it is not asserted: the 30 s deadline is the property's only bound.
    answered = [http_get(VIP, netns=client, timeout=3).strip() for _ in range(8)]
    assert answered == ["be1"] * 8  # none failed, none went to the dead backend

    servers["be2"] = start_http_server(lab["be2"], tmp_path / "h-be2-again", port=9090)
    back = wait_for("be2 back in service", lambda: weight_of(BACKENDS["be2"], 9090) == 1, 30, 0.05)
    record(capsys, f"TCP health: backend recovery to weight 1 in {back:.2f}s")
    assert "be2" in {http_get(VIP, netns=client, timeout=3).strip() for _ in range(6)}


def test_removed_backend_drains_its_open_connection_then_goes(lab, agent, tmp_path) -> None:
    client = lab["client"]
    ports = [{"name": "echo", "port": 7, "targetPort": 7007}]
    manifest(agent.directory, "echo", ports=ports, drain={"timeoutSeconds": 120})
    agent.start()
    with connect(client, VIP, 7) as conn:
        first = echo(conn, "a")
        leaving = first.split(":")[0]
        staying = next(name for name in BACKENDS if name != leaving)
        manifest(agent.directory, "echo", ports=ports, drain={"timeoutSeconds": 120}, backends=[{"address": BACKENDS[staying]}])
        wait_for("the leaving backend drained to weight 0", lambda: weight_of(BACKENDS[leaving], 7007) == 0, 30, 0.05)
        assert echo(conn, "b") == f"{leaving}:b"  # the open connection keeps working
        for _ in range(4):
            with connect(client, VIP, 7) as fresh:
                assert echo(fresh, "n").startswith(f"{staying}:")  # no new connection goes to it
        agent.wait_resyncs(2, full=False)  # the agent has looked again (every second while draining)
        assert weight_of(BACKENDS[leaving], 7007) == 0  # still there while the connection lives
    wait_for("the drained backend deleted", lambda: weight_of(BACKENDS[leaving], 7007) is None, 30, 0.1)


def test_udp_client_on_a_fixed_port_moves_to_a_live_backend(lab, agent, tmp_path, capsys) -> None:
    client = lab["client"]
    ports = [{"port": 53, "protocol": "UDP", "targetPort": 5353}]
    manifest(agent.directory, "dns", ports=ports)
    agent.start()
    with udp_asker(client, 40053) as ask:
        current = next(filter(None, (ask() for _ in range(50))))
        other = next(name for name in BACKENDS if name != current)
        manifest(agent.directory, "dns", ports=ports, backends=[{"address": BACKENDS[other]}])
        wait_for("the UDP backend removed", lambda: weight_of(BACKENDS[current], 5353) is None, 30, 0.02)
        removed_at = time.monotonic()
        answer = None
        # The client asks without pause, so its conntrack entry never idles out: without the
        # agent forgetting it, no deadline would see the move. 20 s is generous, not a figure.
        while time.monotonic() - removed_at < 20:
            answer = ask()
            if answer == other:
                break
        moved = time.monotonic() - removed_at
        record(capsys, f"UDP: fixed-port client reached a live backend {moved:.2f}s after its backend was removed")
        assert answer == other, f"answer {answer} after {moved:.2f}s"


def test_agent_restart_under_load_fails_no_request_and_writes_nothing(lab, agent, tmp_path) -> None:
    client = lab["client"]
    manifest(agent.directory, "web")
    agent.start()
    failures: list[str] = []
    done = threading.Event()
    count = [0]

    def load() -> None:
        while not done.is_set():
            try:
                http_get(VIP, netns=client, timeout=3)
                count[0] += 1
            except OSError as exc:
                failures.append(repr(exc))
            time.sleep(0.05)

    worker = threading.Thread(target=load, daemon=True)
    worker.start()
    try:
        wait_for("requests flowing", lambda: count[0] >= 5, 30, 0.05)
        agent.stop()
        served = count[0]
        wait_for("requests served while the agent is down", lambda: count[0] >= served + 5, 30, 0.05)
        agent.start()  # returns after its first sync (the status file says so)
        served = count[0]
        wait_for("requests served after the restart", lambda: count[0] >= served + 5, 30, 0.05)
    finally:
        done.set()
        worker.join(10)
    assert agent.status()["lastSync"]["writes"] == 0
    assert failures == [] and count[0] > 5


@pytest.mark.parametrize("how", ["SIGTERM", "SIGKILL"])
def test_a_dead_backend_stays_out_across_an_agent_restart(lab, agent, tmp_path, capsys, how) -> None:
    """Health verdicts survive a restart (/run/vsop/state.json, here the agent's --state-file):
    without them the first sync after a restart put a dead real server back at weight 1 until it
    failed its checks again, failureThreshold x interval of refused connections."""
    client = lab["client"]
    port = {"SIGTERM": 9091, "SIGKILL": 9092}[how]  # the earlier tests' servers may still hold 9090
    servers = {name: start_http_server(lab[name], tmp_path / f"h-{name}", port=port) for name in BACKENDS}
    check = {"type": "tcp", "intervalSeconds": 2, "timeoutSeconds": 1, "failureThreshold": 2, "successThreshold": 1}
    manifest(agent.directory, "web", ports=[{"port": 80, "targetPort": port}], healthCheck=check)
    agent.start()
    wait_for("both backends", lambda: {http_get(VIP, netns=client, timeout=2).strip() for _ in range(4)} == set(BACKENDS), 60)
    servers["be2"].kill()
    servers["be2"].wait()
    wait_for("be2 out of service", lambda: weight_of(BACKENDS["be2"], port) == 0, 30, 0.05)
    wait_for("the verdict kept", lambda: agent.state_file.exists() and '"healthy": false' in agent.state_file.read_text(), 10, 0.05)

    failures: list[str] = []
    answered: list[str] = []
    done = threading.Event()

    def load() -> None:
        while not done.is_set():
            try:
                answered.append(http_get(VIP, netns=client, timeout=3).strip())
            except OSError as exc:
                failures.append(repr(exc))
            time.sleep(0.05)

    worker = threading.Thread(target=load, daemon=True)
    worker.start()
    weights: list[int | None] = []
    try:
        if how == "SIGKILL":
            assert agent.process is not None
            agent.process.kill()
            agent.process.wait(30)
            agent.process = None
        else:
            agent.stop()
        agent.start()
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:  # sampled every 100 ms for 15 s
            weights.append(weight_of(BACKENDS["be2"], port))
            time.sleep(0.1)
    finally:
        done.set()
        worker.join(10)
        servers["be1"].kill()
        servers["be1"].wait()
    record(capsys, f"restart ({how}) with a dead backend: {len(weights)} weight samples, highest {max(w or 0 for w in weights)}; "
                   f"{len(answered)} requests, {len(failures)} failed")
    assert weights and set(weights) == {0}, weights
    assert failures == [] and answered and set(answered) == {"be1"}
    assert "recalled the previous agent's health verdicts" in agent.log.read_text()
