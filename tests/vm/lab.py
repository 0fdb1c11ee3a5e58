"""The lab shared by the vsop tests of the vm tier, and helpers to drive vsop in-process.

Topology (every address inside the VM, in namespaces made here):

    client ns 10.200.9.2 --veth-- node (VM root ns) --veth-- 10.200.1.2 backend "be1"
      default route via 10.200.9.1                   \\--veth-- 10.200.2.2 backend "be2"

The backends have no default route, so their answers reach a client only when
vsop's MASQUERADE rewrote the source to the node's address on their link. Each
backend runs busybox httpd on 8080 (answers its name), a TCP echo on 7007 and a
UDP echo on 5353 (in-process threads, answering "<name>:<data>").
"""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
import yaml

from tests.vm.conftest import Namespaces, Netns, http_get, run, start_http_server, veth
from vsop.cli.main import main as vsop

VIP = "169.254.11.2"
BACKENDS = {"be1": "10.200.1.2", "be2": "10.200.2.2"}
CLIENT = "10.200.9.2"
NODE_ON_CLIENT_SIDE = "10.200.9.1"


def serve_tcp_echo(ns: Netns, port: int, stop: threading.Event, ready: threading.Event) -> None:
    """A TCP echo in `ns` (a thread per connection) answering "<ns name>:<data>" until `stop`; `ready` once it listens."""
    with ns.entered():
        server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("0.0.0.0", port))
    server.listen(16)
    ready.set()
    server.settimeout(0.2)

    def handle(conn: socket.socket) -> None:
        with conn:
            while data := conn.recv(4096):
                conn.sendall(f"{ns.name}:{data.decode()}".encode())

    while not stop.is_set():
        try:
            conn, _ = server.accept()
        except socket.timeout:
            continue
        threading.Thread(target=handle, args=(conn,), daemon=True).start()
    server.close()


def _serve_udp_echo(ns: Netns, port: int, stop: threading.Event, ready: threading.Event) -> None:
    with ns.entered():
        server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.bind(("0.0.0.0", port))
    ready.set()
    server.settimeout(0.2)
    while not stop.is_set():
        try:
            data, peer = server.recvfrom(4096)
        except socket.timeout:
            continue
        server.sendto(f"{ns.name}:{data.decode()}".encode(), peer)
    server.close()


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Netns]]:
    pool = Namespaces()
    stop = threading.Event()
    spaces: dict[str, Netns] = {}
    www = tmp_path_factory.mktemp("www")
    bound: list[threading.Event] = []
    for name, address in BACKENDS.items():
        ns = pool.add(name, name=name)
        veth(None, address.rsplit(".", 1)[0] + ".1/24", ns, f"{address}/24")
        start_http_server(ns, www / name, port=8080)
        for serve, port in ((serve_tcp_echo, 7007), (_serve_udp_echo, 5353)):
            ready = threading.Event()
            threading.Thread(target=serve, args=(ns, port, stop, ready), daemon=True).start()
            bound.append(ready)
        spaces[name] = ns
    client = pool.add("client", name="client")
    veth(None, f"{NODE_ON_CLIENT_SIDE}/24", client, f"{CLIENT}/24")
    client.run("ip", "route", "add", "default", "via", NODE_ON_CLIENT_SIDE)
    spaces["client"] = client
    for ready in bound:  # the echo threads have bound their sockets
        assert ready.wait(30), "an echo server did not bind"
    yield spaces
    stop.set()
    pool.close()


@pytest.fixture
def clean_node(capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    # Each test gets its own host store and writer lock (the host's /etc is read-only in the VM);
    # subprocesses (the agent, the console script) inherit them through the environment.
    monkeypatch.setenv("VSOP_STORE", str(tmp_path / "store"))
    monkeypatch.setenv("VSOP_LOCK", str(tmp_path / "lock"))
    monkeypatch.setenv("VSOP_STATE_FILE", str(tmp_path / "state.json"))  # the AgentProcess's --state-file: apply reads it
    yield
    assert vsop(["cleanup"]) == 0
    capsys.readouterr()
    assert "VSOP" not in run("iptables-save").stdout
    assert "VSOP" not in run("ipset", "list", "-n").stdout
    assert run("ip", "link", "show", "vsop0", check=False).returncode != 0


def manifest(tmp_path: Path, name: str = "web", **spec: Any) -> str:
    doc = {
        "apiVersion": "vsop.dev/v1alpha1",
        "kind": "VirtualService",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "vip": VIP,
            "ports": [{"name": "http", "port": 80, "targetPort": 8080}],
            "scheduler": "rr",
            "backends": [{"address": address} for address in BACKENDS.values()],
            **spec,
        },
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return str(path)


def apply(capsys: pytest.CaptureFixture[str], *paths: str) -> dict[str, Any]:
    capsys.readouterr()
    args = ["apply", "-o", "json"]
    for path in paths:
        args += ["-f", path]
    code = vsop(args)
    out = capsys.readouterr()
    assert code == 0, out.err
    return json.loads(out.out)


def kinds(report: dict[str, Any]) -> list[str]:
    return [op["kind"] for op in report["operations"]]


def answers(count: int, host: str = VIP, port: int = 80, netns: Netns | None = None) -> list[str]:
    return [http_get(host, port, netns=netns, timeout=5).strip() for _ in range(count)]


def echo(conn: socket.socket, text: str) -> str:
    conn.sendall(text.encode())
    return conn.recv(4096).decode()


def connect(netns: Netns, host: str, port: int, timeout: float = 5) -> socket.socket:
    """A TCP connection to host:port opened from inside `netns` (the socket stays there); close it with `with`."""
    with netns.entered():
        conn = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    conn.settimeout(timeout)
    try:
        conn.connect((host, port))
    except OSError:
        conn.close()
        raise
    return conn


# --- helpers several vm test files share -----------------------------------------------------

VSOP = str(Path(sys.executable).parent / "vsop")  # the console script, as a service manager runs it
STARTUP_TIMEOUT = 120  # python imports are slow under software emulation


def wait_for(what: str, check: Callable[[], Any], timeout: float, interval: float = 0.1) -> float:
    """Poll until check() is truthy (an OSError counts as not yet); return the seconds it took."""
    started = time.monotonic()
    while True:
        try:
            if check():
                return time.monotonic() - started
        except OSError:
            pass
        if time.monotonic() - started > timeout:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


class AgentProcess:
    """`vsop agent ARGS` as a process (optionally behind `prefix`, e.g. setpriv), started and stopped by a test."""

    def __init__(self, workdir: Path, *args: str, prefix: list[str] | None = None, resync_seconds: float = 30):
        self.args = list(args)
        self.prefix = prefix or []
        self.resync_seconds = resync_seconds
        self.status_file = workdir / "agent.json"
        self.state_file = workdir / "state.json"  # kept across this agent's restarts, as /run/vsop/state.json is
        self.log = workdir / "agent.log"
        self.process: subprocess.Popen | None = None

    def spawn(self) -> subprocess.Popen:
        """Start it without waiting for anything (its log appended to `log`)."""
        self.status_file.unlink(missing_ok=True)
        with open(self.log, "a") as log:
            self.process = subprocess.Popen(
                [*self.prefix, VSOP, "agent", *self.args, "--poll-seconds", "0.2", "--resync-seconds", str(self.resync_seconds),
                 "--status-file", str(self.status_file), "--state-file", str(self.state_file), "-v"],
                stdout=subprocess.DEVNULL, stderr=log, start_new_session=True,
            )
        return self.process

    def start(self) -> None:
        """Start it and wait for its first sync; a timeout shows its exit code and log."""
        self.spawn()
        try:
            wait_for("the agent's first sync", lambda: self.status().get("lastSync", {}).get("at"), STARTUP_TIMEOUT, 0.5)
        except AssertionError as exc:
            log = "\n".join(line for line in self.log.read_text().splitlines() if "pyroute2" not in line)[-3000:]
            raise AssertionError(f"{exc}; agent exit code {self.process.poll()}; its log:\n{log}") from None

    def status(self) -> dict[str, Any]:
        try:
            return json.loads(self.status_file.read_text())
        except (OSError, ValueError):
            return {}

    def wait_resyncs(self, count: int, timeout: float = 120, full: bool = True) -> None:
        """Return once `count` more syncs finished (full resyncs only, unless `full` is False), as the
        status file's lastSync says: the evidence a negative assertion waits for, not a fixed sleep."""
        seen = [self.status().get("lastSync", {}).get("at")]

        def more() -> bool:
            last = self.status().get("lastSync", {})
            if (last.get("full") or not full) and last.get("at") not in seen:
                seen.append(last.get("at"))
            return len(seen) > count

        wait_for(f"{count} more resyncs of the agent", more, timeout, 0.1)

    def stop(self, timeout: float = 60) -> None:
        """SIGTERM, and its exit awaited. An agent still running after `timeout` is asked for its threads'
        stacks (SIGUSR1, vsop.node.logs), killed, and the test fails with them: nothing is left running."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
            return
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGUSR1)
            time.sleep(2)
            process.kill()
            process.wait()
        stacks = self.log.read_text(errors="replace").rsplit("stopping signal=SIGTERM", 1)[-1][-6000:]
        raise AssertionError(f"the agent did not exit within {timeout:g} s of SIGTERM; killed. Its log since then, with its threads' stacks:\n{stacks}")


@contextlib.contextmanager
def udp_asker(netns: Netns, source_port: int, host: str = VIP, port: int = 53) -> Iterator[Callable[[], str | None]]:
    """ask() sends from one fixed source port in `netns` (one conntrack entry throughout) and
    returns the name of the backend that answered, or None after 0.2 s."""
    with netns.entered():
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with sock:
        sock.bind(("0.0.0.0", source_port))
        sock.settimeout(0.2)

        def ask() -> str | None:
            sock.sendto(b"q", (host, port))
            try:
                return sock.recvfrom(4096)[0].decode().split(":")[0]
            except socket.timeout:
                return None

        yield ask


def ipv6_client_and_backends(pool: Namespaces, tmp_path: Path, prefix: str, name: str) -> tuple[Netns, list[dict[str, str]]]:
    """An IPv6 client ns `{name}c` routed through the node on {prefix}:9::/64 and two backends
    `{name}b1`, `{name}b2` on {prefix}:1::/64 and {prefix}:2::/64 without a default route (their
    answers come back only masqueraded), serving HTTP on 8080 ("v6-1", "v6-2"). Returns the client
    and the backends as a VirtualService lists them."""
    client = pool.add(f"{name}c")
    veth(None, f"{prefix}:9::1/64", client, f"{prefix}:9::2/64")
    client.run("ip", "-6", "route", "add", "default", "via", f"{prefix}:9::1")
    backends = []
    for index in (1, 2):
        backend = pool.add(f"{name}b{index}")
        veth(None, f"{prefix}:{index}::1/64", backend, f"{prefix}:{index}::2/64")  # no default route
        start_http_server(backend, tmp_path / f"www6-{index}", port=8080, body=f"v6-{index}")
        backends.append({"address": f"{prefix}:{index}::2"})
    return client, backends


class FolderAgent(AgentProcess):
    """The host agent following a folder (--from DIR)."""

    def __init__(self, directory: Path, workdir: Path, resync_seconds: float = 30):
        super().__init__(workdir, "--from", str(directory), resync_seconds=resync_seconds)
        self.directory = directory


@contextlib.contextmanager
def folder_agent(tmp_path: Path, resync_seconds: float = 30) -> Iterator[FolderAgent]:
    """A FolderAgent over the empty folder tmp_path/services, not started; stopped afterwards,
    with the tail of its log on stderr (pytest shows it beside a failure)."""
    folder = tmp_path / "services"
    folder.mkdir()
    running = FolderAgent(folder, tmp_path, resync_seconds)
    try:
        yield running
    finally:
        running.stop()
        if running.log.exists():
            sys.stderr.write(running.log.read_text()[-4000:])
