"""A half-programmed VIP never exposes the node: real packets against the plan's order.

The node listens on `*:8080` itself (busybox httpd answering "node"). A VirtualService
on VIP:8080 whose IPVS service cannot be created (scheduler `twos`: Debian's 6.1 has no
ip_vs_twos), or whose `vsop apply` is SIGKILLed between binding the VIP and adding the
service (the executor's failpoint, VSOP_FAILPOINT=after-address:kill), leaves the VIP
bound with no service: a client's connection to VIP:8080 is refused by VSOP-FILTER,
never answered by the node's listener. And the plan `vsop plan --from-empty` prints,
run by `sh` on a clean node, builds what `vsop apply` builds.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Iterator

import pytest

REPOSITORY = Path(__file__).resolve().parents[2]
if str(REPOSITORY) not in sys.path:
    sys.path.insert(0, str(REPOSITORY))

from tests.vm.conftest import http_get, run, wait_listening  # noqa: E402
from tests.vm.lab import BACKENDS, NODE_ON_CLIENT_SIDE, VIP, VSOP, answers, clean_node, lab, manifest, vsop  # noqa: E402,F401

pytestmark = [pytest.mark.vm, pytest.mark.usefixtures("clean_node")]

PORT = 8080  # the backends' httpd port too: the service forwards 8080 -> 8080


@pytest.fixture
def node_listener(tmp_path: Path) -> Iterator[None]:
    """A process of the node's own on *:8080, as sshd or the kubelet listen on theirs."""
    www = tmp_path / "node-www"
    www.mkdir()
    (www / "index.html").write_text("node\n")
    listener = subprocess.Popen(["/bin/busybox", "httpd", "-f", "-p", str(PORT), "-h", str(www)], start_new_session=True)
    try:
        wait_listening(listener, SimpleNamespace(path="/proc/self/ns/net"), PORT)  # type: ignore[arg-type]  # the node's own namespace
        yield
    finally:
        listener.kill()
        listener.wait()


def ports_manifest(tmp_path: Path, **spec: object) -> str:
    return manifest(tmp_path, ports=[{"name": "http", "port": PORT}], **spec)


def accepted() -> str:
    return run("ipset", "list", "VSOP-VIP-PORTS").stdout


def assert_rejected_not_answered(client) -> None:  # type: ignore[no-untyped-def]
    assert http_get(NODE_ON_CLIENT_SIDE, PORT, netns=client, timeout=5).strip() == "node"  # the listener is there
    with pytest.raises((ConnectionRefusedError, ConnectionResetError)):
        http_get(VIP, PORT, netns=client, timeout=5)
    with pytest.raises((ConnectionRefusedError, ConnectionResetError)):
        http_get(VIP, PORT, timeout=5)  # from the node itself too


def test_a_vip_port_whose_service_cannot_be_created_is_refused_not_served_by_the_node(lab, node_listener, tmp_path, capsys) -> None:
    assert vsop(["apply", "-f", ports_manifest(tmp_path, scheduler="twos")]) == 1
    err = capsys.readouterr().err
    assert "twos" in err or "scheduler" in err, err
    assert f"inet {VIP}/32" in run("ip", "-o", "addr", "show", "dev", "vsop0").stdout  # the VIP is bound
    assert run("ipvsadm", "-Ln", "-t", f"{VIP}:{PORT}", check=False).returncode != 0  # with no service
    assert f"{VIP},tcp:{PORT}" not in accepted()
    assert_rejected_not_answered(lab["client"])
    assert vsop(["apply", "-f", ports_manifest(tmp_path, scheduler="rr")]) == 0
    assert f"{VIP},tcp:{PORT}" in accepted()
    assert answers(2, port=PORT, netns=lab["client"])[0] in BACKENDS


def test_sigkill_between_the_address_and_the_service_leaves_the_port_refused(lab, node_listener, tmp_path) -> None:
    path = ports_manifest(tmp_path)
    env = {**os.environ, "VSOP_FAILPOINT": "after-address:kill"}
    killed = subprocess.run([VSOP, "apply", "-f", path], capture_output=True, text=True, timeout=300, env=env)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert f"inet {VIP}/32" in run("ip", "-o", "addr", "show", "dev", "vsop0").stdout
    assert run("ipvsadm", "-Ln", "-t", f"{VIP}:{PORT}", check=False).returncode != 0
    assert_rejected_not_answered(lab["client"])
    again = subprocess.run([VSOP, "apply", "-f", path], capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert answers(2, port=PORT, netns=lab["client"])[0] in BACKENDS


def test_the_plan_run_by_sh_builds_what_apply_builds(lab, tmp_path, capsys) -> None:
    path = manifest(tmp_path)
    assert vsop(["plan", "--from-empty", "-f", path]) == 0
    script = capsys.readouterr().out
    done = subprocess.run(["sh", "-e"], input=script, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert answers(2, netns=lab["client"])[0] in BACKENDS
    assert vsop(["apply", "-f", path, "-o", "json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["writes"], report["operations"]) == (0, []), report
