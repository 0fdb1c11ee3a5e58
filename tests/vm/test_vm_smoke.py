"""VM tier smoke test: the kernel and the host's tools carry real packets, without vsop.

Builds by hand, with ipvsadm, ipset, iptables-restore and sysctl, the reference
setup vsop reproduces (DESIGN.md, "What it must reproduce"), in the VM's root
namespace (the node):

    client ns 10.200.9.2 --veth-- node --veth-- 10.200.1.2 backend ns "be1"
      (default route                 \\--veth-- 10.200.2.2 backend ns "be2"
       via the node)       VIP 169.254.11.2/32 on dummy vsop0, IPVS rr, masq

The backends have no default route: they only reach the node's veth addresses,
so a reply to the client (10.200.9.2) or to the VIP (the source of the node's
own requests) only gets back because MASQUERADE rewrote the source. Every
address is inside the VM, in namespaces made here.
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from pathlib import Path

import pytest

REPOSITORY = Path(__file__).resolve().parents[2]
if str(REPOSITORY) not in sys.path:
    sys.path.insert(0, str(REPOSITORY))

from tests.vm.conftest import Namespaces, http_get, run, start_http_server, veth, wait_listening  # noqa: E402

pytestmark = pytest.mark.vm

VIP, PORT = "169.254.11.2", 80
DUMMY = "vsop0"
SET = "SMOKE-VIP-PORTS"
MARK = "0x2000/0x2000"
BACKENDS = {"be1": "10.200.1.2/24", "be2": "10.200.2.2/24"}
CLIENT = "10.200.9.2/24"

NAT_RULES = f"""*nat
:SMOKE-SERVICES - [0:0]
:SMOKE-MARK-MASQ - [0:0]
:SMOKE-POSTROUTING - [0:0]
-A PREROUTING -j SMOKE-SERVICES
-A OUTPUT -j SMOKE-SERVICES
-A POSTROUTING -j SMOKE-POSTROUTING
-A SMOKE-SERVICES -m set --match-set {SET} dst,dst -j SMOKE-MARK-MASQ
-A SMOKE-MARK-MASQ -j MARK --set-xmark {MARK}
-A SMOKE-POSTROUTING -m mark --mark {MARK} -j MASQUERADE
COMMIT
"""
NAT_CLEANUP = """*nat
-D PREROUTING -j SMOKE-SERVICES
-D OUTPUT -j SMOKE-SERVICES
-D POSTROUTING -j SMOKE-POSTROUTING
-F SMOKE-SERVICES
-F SMOKE-MARK-MASQ
-F SMOKE-POSTROUTING
-X SMOKE-SERVICES
-X SMOKE-MARK-MASQ
-X SMOKE-POSTROUTING
COMMIT
"""
SYSCTLS = {"net.ipv4.ip_forward": "1", "net.ipv4.vs.conntrack": "1"}


def _sysctl_path(name: str) -> Path:
    return Path("/proc/sys") / name.replace(".", "/")


@pytest.fixture(scope="module")
def proxy(request, tmp_path_factory):
    """The hand-built IPVS proxy on the node; namespaces for two backends and a client."""
    started = time.monotonic()
    namespaces = Namespaces()
    saved = {name: _sysctl_path(name).read_text().strip() for name in SYSCTLS}

    def teardown() -> None:
        namespaces.close()
        run("iptables-restore", "--noflush", "-w", input=NAT_CLEANUP, check=False)
        run("ipvsadm", "-D", "-t", f"{VIP}:{PORT}", check=False)
        run("ipset", "destroy", SET, check=False)
        run("ip", "link", "del", DUMMY, check=False)
        for name, value in saved.items():
            _sysctl_path(name).write_text(value)

    # Addresses an earlier test left in the node would steal this test's traffic.
    leftovers = (
        run("ip", "-o", "addr", "show", "to", "10.200.0.0/16").stdout
        + run("ip", "-o", "addr", "show", "to", f"{VIP}/32").stdout
    )
    assert not leftovers, f"the node still has test addresses from an earlier test:\n{leftovers}"
    request.addfinalizer(teardown)

    # Backends: no default route; busybox httpd answering the backend's name,
    # started now and waited for once the node is set up.
    docroot = tmp_path_factory.mktemp("smoke-www")
    backends, servers = {}, []
    for name, addr in BACKENDS.items():
        ns = namespaces.add(name=f"smoke-{name}")
        veth(None, addr.rsplit(".", 1)[0] + ".1/24", ns, addr)
        servers.append((start_http_server(ns, docroot / name, PORT, body=name, wait=False), ns))
        backends[name] = ns
    client = namespaces.add(name="smoke-client")
    veth(None, "10.200.9.1/24", client, CLIENT)
    client.run("ip", "route", "add", "default", "via", "10.200.9.1")

    # The node: the reference setup of DESIGN.md, one command per tool.
    run("ip", "-batch", "-", input=f"link add {DUMMY} type dummy\naddr add {VIP}/32 dev {DUMMY}\nlink set {DUMMY} up\n")
    run("sysctl", "-q", "-w", *(f"{name}={value}" for name, value in SYSCTLS.items()))
    reals = "".join(f"-a -t {VIP}:{PORT} -r {addr.split('/')[0]}:{PORT} -m -w 1\n" for addr in BACKENDS.values())
    run("ipvsadm", "-R", input=f"-A -t {VIP}:{PORT} -s rr\n{reals}")
    run("ipset", "restore", input=f"create {SET} hash:ip,port\nadd {SET} {VIP},tcp:{PORT}\n")
    run("iptables-restore", "--noflush", "-w", input=NAT_RULES)

    for proc, ns in servers:
        wait_listening(proc, ns, PORT)
    print(f"smoke topology and proxy set up in {time.monotonic() - started:.1f}s")
    return {"backends": backends, "client": client}


def test_the_kernel_is_the_vms():
    release = run("uname", "-r").stdout.strip()
    assert release.startswith("6.1."), f"expected Debian's 6.1 kernel, got {release}"
    assert "nf_tables" in run("iptables", "-V").stdout  # Debian's default backend


def test_node_client_reaches_both_backends_round_robin(proxy):
    # Locally originated: OUTPUT marks, IPVS (LOCAL_OUT) picks a backend,
    # POSTROUTING masquerades the VIP source. curl, with a fresh connection
    # per URL (busybox httpd closes each one), so rr alternates.
    url = f"http://{VIP}:{PORT}/"
    out = run("curl", "-sS", "--max-time", "10", *[url] * 4).stdout.split()
    assert Counter(out) == {"be1": 2, "be2": 2}
    assert out[0] != out[1]


def test_client_in_another_namespace_reaches_both_backends(proxy):
    # Forwarded: PREROUTING marks, IPVS (LOCAL_IN) picks a backend.
    answers = [http_get(VIP, PORT, netns=proxy["client"]).strip() for _ in range(4)]
    assert Counter(answers) == {"be1": 2, "be2": 2}
    assert answers[0] != answers[1]


def test_ipvs_and_conntrack_saw_the_connections(proxy):
    # IPVS's connection table (ipvsadm --stats lags: the estimator sums the
    # per-CPU counters every 2 s).
    connections = run("ipvsadm", "-Lnc").stdout
    for addr in BACKENDS.values():
        assert f"{addr.split('/')[0]}:{PORT}" in connections, connections
    # net.ipv4.vs.conntrack=1: IPVS connections are in conntrack too, which is
    # what lets MASQUERADE see them.
    tracked = run("conntrack", "-L", "-d", VIP, "-p", "tcp").stdout
    for addr in BACKENDS.values():
        assert addr.split("/")[0] in tracked, tracked


def test_without_masquerade_the_backend_cannot_answer(proxy):
    # The backends have no route back to the client: without the SNAT the
    # connection hangs (DESIGN.md, item 4).
    rule = f"-m mark --mark {MARK} -j MASQUERADE"
    run("iptables-restore", "--noflush", "-w", input=f"*nat\n-D SMOKE-POSTROUTING {rule}\nCOMMIT\n")
    try:
        with pytest.raises(OSError):
            http_get(VIP, PORT, netns=proxy["client"], timeout=2)
    finally:
        run("iptables-restore", "--noflush", "-w", input=f"*nat\n-A SMOKE-POSTROUTING {rule}\nCOMMIT\n")
    assert http_get(VIP, PORT, netns=proxy["client"]).strip() in BACKENDS
