"""VM tier: tests that need a real kernel with IPVS, dummy links, ipset... .

The whole pytest session of this tier runs *inside* the VM that vm/run boots on
Debian's 6.1 kernel, as root, with the host's root read-only, the project
read-write and a VM-local /run and /tmp:

    vm/run -- .venv/bin/python -m pytest tests/vm

Outside the VM (VSOP_IN_VM unset) collecting any test of this directory is a
usage error, never a silent skip. Every test here gets the `vm` marker.

Python runs 10-40x slower under software emulation and every process started
costs ~0.1-0.3 s, so the helpers below avoid spawning where they can (netns
switches and HTTP requests are done in-process) and tests should keep their
work small.

Generic helpers and fixtures (nothing vsop-specific):

- `run(*argv)`: run a command, raise with its output if it fails.
- `netns_factory(hint)` -> `Netns`: a throwaway network namespace with `lo`
  up, deleted after the test with the processes started in it and its veths;
  `Namespaces` does the same for fixtures of a wider scope. `Netns.run`,
  `Netns.popen`, `Netns.cmd` run commands in it; `with ns.entered():` switches
  the calling thread into it (sockets created there stay there).
- `veth(a, a_addr, b, b_addr)`: a veth pair between two namespaces (`None` is
  the VM's root namespace), addresses assigned, both ends up.
- `backend_factory(hint, addr)`: a namespace linked to the root namespace by a
  veth, `addr` inside (e.g. "10.200.1.2/24"), the first address of the subnet
  on the root side; optional default route via the root side.
- `http_server(ns, port=80, body=None, files=None)`: busybox httpd in `ns`; GET /
  answers `body` (default: the namespace's name); returns once it listens
  (`start_http_server` for fixtures of a wider scope).
- `http_get(host, port=80, path="/", netns=None)` / `http_request(...)`: a plain
  HTTP/1.0 GET done in-process, optionally from inside a namespace.

Startup matters more than usual: pytest's plugins are imported at every start
(kmock pulls in aiohttp, hypothesis its strategies), ~6 s of a pytest start in
the VM; `-p no:kmock -p no:hypothesispytest` drops them for this tier.

Test modules import the plain helpers with `from tests.vm.conftest import ...`
(with the repository on sys.path, as the tier's modules do).
"""

from __future__ import annotations

import contextlib
import ctypes
import ipaddress
import itertools
import os
import secrets
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
HOW_TO_RUN = "run this tier with vm/run -- .venv/bin/python -m pytest tests/vm"
BUSYBOX = "/bin/busybox"


# --- refuse to run outside the VM ----------------------------------------------------


def _in_this_tier(item: pytest.Item) -> bool:
    return HERE in Path(item.path).resolve().parents


def pytest_configure(config: pytest.Config) -> None:
    # pyproject.toml declares it too; this keeps a bare checkout free of warnings.
    config.addinivalue_line("markers", "vm: needs the real kernel booted under qemu (runs inside the VM)")


def pytest_itemcollected(item: pytest.Item) -> None:
    # Before `-m` selection, so that `-m "not vm"` deselects these tests.
    if _in_this_tier(item):
        item.add_marker(pytest.mark.vm)


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # trylast: only the tests still selected after -m/-k count.
    if not any(_in_this_tier(item) for item in items):
        return
    if os.environ.get("VSOP_IN_VM") != "1":
        raise pytest.UsageError(
            f"tests/vm needs the real kernel booted under qemu and must run inside the VM: {HOW_TO_RUN}"
            " (or deselect it: -m 'not vm')"
        )
    if os.geteuid() != 0:
        raise pytest.UsageError(f"tests/vm must run as root inside the VM: {HOW_TO_RUN}")
    if not Path("/proc/net/ip_vs").exists():
        raise pytest.UsageError("VSOP_IN_VM=1 but this kernel has no IPVS (/proc/net/ip_vs): was it booted by vm/run?")


# --- running commands ------------------------------------------------------------------


class CommandFailed(AssertionError):
    pass


def run(
    *argv: str, check: bool = True, timeout: float = 60, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run argv, capture its output; on failure raise with the command and its output."""
    proc = subprocess.run(list(argv), check=False, capture_output=True, text=True, timeout=timeout, input=input)
    if check and proc.returncode != 0:
        raise CommandFailed(
            f"{' '.join(argv)!s} exited with {proc.returncode}\n--- stdout\n{proc.stdout}--- stderr\n{proc.stderr}"
        )
    return proc


# --- network namespaces ----------------------------------------------------------------

_libc = ctypes.CDLL(None, use_errno=True)
CLONE_NEWNET = 0x40000000


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


@contextlib.contextmanager
def entered_netns(path: str) -> Iterator[None]:
    """Switch the calling thread into the namespace at `path`, and back afterwards."""
    with open("/proc/thread-self/ns/net") as home, open(path) as target:
        _setns(target.fileno())
        try:
            yield
        finally:
            _setns(home.fileno())


@dataclass
class Netns:
    name: str
    processes: list[subprocess.Popen] = field(default_factory=list, repr=False)
    links: list[str] = field(default_factory=list, repr=False)  # veth ends made by veth()

    @property
    def path(self) -> str:
        return f"/run/netns/{self.name}"

    def cmd(self, *argv: str) -> list[str]:
        """argv prefixed to run inside this namespace."""
        return ["ip", "netns", "exec", self.name, *argv]

    def run(self, *argv: str, **kwargs) -> subprocess.CompletedProcess[str]:
        return run(*self.cmd(*argv), **kwargs)

    def popen(self, *argv: str, **kwargs) -> subprocess.Popen:
        """Start argv in this namespace; it is killed when the namespace is removed."""
        kwargs.setdefault("stdin", subprocess.DEVNULL)
        kwargs.setdefault("stdout", subprocess.DEVNULL)
        kwargs.setdefault("stderr", subprocess.DEVNULL)
        proc = subprocess.Popen(self.cmd(*argv), start_new_session=True, **kwargs)
        self.processes.append(proc)
        return proc

    def entered(self) -> contextlib.AbstractContextManager[None]:
        """`with ns.entered():` runs the block's socket work inside this namespace."""
        return entered_netns(self.path)

    def __str__(self) -> str:
        return self.name


def kill_process(proc: subprocess.Popen) -> None:
    """SIGKILL proc's process group (Netns.popen starts a new session) and reap it."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, 9)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)


class Namespaces:
    """Makes throwaway namespaces; close() removes them and kills what was started in them.

    The fixtures use it per test; a module- or session-scoped fixture can use
    it directly (`pool = Namespaces()`, `request.addfinalizer(pool.close)`).
    """

    def __init__(self) -> None:
        self.made: list[Netns] = []

    def add(self, hint: str = "ns", name: str | None = None) -> Netns:
        ns = Netns(name or f"{hint[:6]}-{secrets.token_hex(3)}")
        run("ip", "netns", "add", ns.name)
        self.made.append(ns)
        run("ip", "-n", ns.name, "link", "set", "lo", "up")
        return ns

    def close(self) -> None:
        while self.made:
            ns = self.made.pop()
            for proc in ns.processes:
                kill_process(proc)
            # `ip netns del` only drops the name: the namespace, with its veths
            # and the addresses and routes of their peers in other namespaces,
            # lives on while anything holds it (a socket a test left open, a
            # process). Deleting the veths first cleans the peers at once.
            if ns.links:
                batch = "".join(f"link del {ifname}\n" for ifname in ns.links)
                run("ip", "-n", ns.name, "-force", "-batch", "-", input=batch, check=False)
            run("ip", "netns", "del", ns.name, check=False)


@pytest.fixture
def netns_factory():
    """make(hint="ns", name=None) -> Netns: a fresh namespace with lo up, removed after the test."""
    pool = Namespaces()
    yield pool.add
    pool.close()


_veth_ids = itertools.count()


def veth(a: Netns | None, a_addr: str | None, b: Netns | None, b_addr: str | None) -> tuple[str, str]:
    """Link namespaces a and b (None: the root namespace) with a veth pair.

    Addresses are CIDR strings ("10.200.1.1/24") or None. Both ends are brought
    up. Returns the interface names (a's end, b's end). IPv6 addresses are added
    with nodad so that they are usable at once.
    """
    tag = f"{next(_veth_ids)}x{secrets.token_hex(2)}"
    ends = ((a, f"va{tag}", a_addr), (b, f"vb{tag}", b_addr))

    def setup(ifname: str, addr: str | None) -> list[str]:
        lines = []
        if addr:
            nodad = " nodad" if ipaddress.ip_interface(addr).version == 6 else ""
            lines.append(f"addr add {addr} dev {ifname}{nodad}")
        return [*lines, f"link set {ifname} up"]

    # One `ip -batch` per namespace involved: every process costs under emulation.
    root = [f"link add {ends[0][1]} type veth peer name {ends[1][1]}"]
    for ns, ifname, addr in ends:
        root += [f"link set {ifname} netns {ns.name}"] if ns is not None else setup(ifname, addr)
    run("ip", "-batch", "-", input="\n".join(root) + "\n")
    for ns, ifname, addr in ends:
        if ns is not None:
            ns.links.append(ifname)
            run("ip", "-n", ns.name, "-batch", "-", input="\n".join(setup(ifname, addr)) + "\n")
    return ends[0][1], ends[1][1]


@pytest.fixture
def backend_factory(netns_factory):
    """make(hint, addr, default_route=False) -> Netns linked to the root namespace.

    `addr` ("10.200.1.2/24") goes inside the namespace; the root side of the
    veth gets the first host address of that subnet (10.200.1.1/24). With
    default_route=True the namespace's default route goes via the root side.
    """

    def make(hint: str, addr: str, default_route: bool = False) -> Netns:
        iface = ipaddress.ip_interface(addr)
        gateway = next(iface.network.hosts())
        ns = netns_factory(hint)
        veth(None, f"{gateway}/{iface.network.prefixlen}", ns, addr)
        if default_route:
            ns.run("ip", "route", "add", "default", "via", str(gateway))
        return ns

    return make


# --- HTTP ---------------------------------------------------------------------------


def listening(proc: subprocess.Popen, ns: Netns, port: int) -> bool:
    """Whether proc, once inside ns, has a TCP socket listening on port. Spawns nothing."""
    try:
        # Until `ip netns exec` has switched, /proc/PID/net shows the old namespace.
        if os.stat(f"/proc/{proc.pid}/ns/net").st_ino != os.stat(ns.path).st_ino:
            return False
    except FileNotFoundError:
        return False
    for table in ("tcp", "tcp6"):
        try:
            lines = Path(f"/proc/{proc.pid}/net/{table}").read_text().splitlines()[1:]
        except FileNotFoundError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                return True
    return False


def wait_listening(proc: subprocess.Popen, ns: Netns, port: int, timeout: float = 20) -> None:
    """Return once proc listens on port inside ns; CommandFailed if it exits or times out."""
    deadline = time.monotonic() + timeout
    while not listening(proc, ns, port):
        if proc.poll() is not None:
            raise CommandFailed(f"{proc.args} exited with {proc.returncode}")
        if time.monotonic() > deadline:
            raise CommandFailed(f"{proc.args} not listening on {port} after {timeout}s")
        time.sleep(0.05)


def start_http_server(
    ns: Netns,
    docroot: Path,
    port: int = 80,
    body: str | None = None,
    files: dict[str, str] | None = None,
    wait: bool = True,
) -> subprocess.Popen:
    """busybox httpd in ns serving docroot (created here); see the http_server fixture."""
    docroot.mkdir(parents=True)
    (docroot / "index.html").write_text((ns.name if body is None else body) + "\n")
    for name, content in (files or {}).items():
        (docroot / name).parent.mkdir(parents=True, exist_ok=True)
        (docroot / name).write_text(content)
    proc = ns.popen(BUSYBOX, "httpd", "-f", "-p", str(port), "-h", str(docroot))
    if wait:
        wait_listening(proc, ns, port)
    return proc


@pytest.fixture
def http_server(tmp_path):
    """start(ns, port=80, body=None, files=None) -> Popen: busybox httpd in `ns`.

    GET / answers `body` plus a newline (default: the namespace's name, so a
    client can tell which backend answered); `files` adds more paths, e.g.
    {"healthz": "ok"}; anything else is a 404. busybox httpd is listening in
    ~0.1 s where python's http.server takes seconds under emulation. Returns
    once the socket listens; stopped with its namespace.
    """

    def start(ns: Netns, port: int = 80, body: str | None = None, files: dict[str, str] | None = None):
        return start_http_server(ns, tmp_path / f"www-{ns.name}-{port}", port, body, files)

    return start


def http_request(
    host: str, port: int = 80, path: str = "/", netns: Netns | None = None, timeout: float = 10
) -> tuple[int, str]:
    """GET http://host:port/path (HTTP/1.0, in-process), optionally from inside `netns`.

    Returns (status, body). Raises OSError (socket.timeout, ConnectionRefusedError...)
    when no answer comes.
    """
    with netns.entered() if netns is not None else contextlib.nullcontext():
        # The socket belongs to the namespace it was created in.
        family = socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
    with sock:
        sock.settimeout(timeout)
        sock.connect((host, port))
        netloc = f"[{host}]" if family == socket.AF_INET6 else host
        sock.sendall(f"GET {path} HTTP/1.0\r\nHost: {netloc}\r\nConnection: close\r\n\r\n".encode())
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    status_line = head.split(b"\r\n", 1)[0].decode(errors="replace")
    try:
        status = int(status_line.split()[1])
    except (IndexError, ValueError):
        raise OSError(f"http://{host}:{port}{path}: not an HTTP answer: {status_line!r}") from None
    return status, body.decode(errors="replace")


def http_get(host: str, port: int = 80, path: str = "/", netns: Netns | None = None, timeout: float = 10) -> str:
    """The body of a 200 answer to GET http://host:port/path; OSError otherwise."""
    status, body = http_request(host, port, path, netns=netns, timeout=timeout)
    if status != 200:
        raise OSError(f"http://{host}:{port}{path}: HTTP {status}")
    return body
