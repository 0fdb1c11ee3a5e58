"""BIRD from the image, as deploy/bgp runs it beside the agent, announcing a route the image's vsop keeps.

The VM's root namespace is the node (host network). A router namespace runs the VM's own BIRD
and peers with the node over a veth. The bird container of deploy/bgp/daemonset.yaml runs its
own script from the exported image, with its capabilities (NET_ADMIN, NET_BIND_SERVICE) and its
two volumes (bird.conf read-only, the control socket); the agent's side (`vsop apply`, `vsop
render bird --out`, `birdc`) runs in the agent's context with the same volumes. The route the
image's vsop puts in table 4242 reaches the router's kernel; `vsop cleanup` withdraws it and
leaves BIRD and its session alone.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from pathlib import Path
from typing import Iterator

import pytest
import yaml

from tests.image.container import AGENT, BIRD, REPOSITORY, Image, Mount
from tests.image.vm.test_kernel import SERVICE, image, volumes  # noqa: F401
from tests.vm.conftest import Namespaces, veth
from tests.vm.lab import lab, wait_for  # noqa: F401

pytestmark = pytest.mark.vm
ROUTER, NODE = "10.211.0.1", "10.211.0.2"
ROUTER_CONF = f"""\
router id {ROUTER};
protocol device {{}}
protocol kernel {{ ipv4 {{ import none; export all; }}; }}
protocol bgp node {{
	local as 65000;
	neighbor {NODE} as 65001;
	hold time 9;
	ipv4 {{ import all; export none; }};
}}
"""
SPEAKER = {"apiVersion": "vsop.dev/v1alpha1", "kind": "BGPSpeaker", "metadata": {"name": "edge"},
           "spec": {"localASN": 65001, "routerID": NODE, "peers": [{"address": ROUTER, "asn": 65000, "holdTimeSeconds": 9}]}}


def bird_container() -> dict:
    [doc] = yaml.safe_load_all((REPOSITORY / "deploy" / "bgp" / "daemonset.yaml").read_text())
    return next(c for c in doc["spec"]["template"]["spec"]["containers"] if c["name"] == "bird")


@pytest.fixture
def router(tmp_path: Path) -> Iterator[tuple]:
    pool = Namespaces()
    try:
        ns = pool.add("imgrtr")
        veth(ns, f"{ROUTER}/24", None, f"{NODE}/24")
        (tmp_path / "router.conf").write_text(ROUTER_CONF)
        ns.popen("/usr/sbin/bird", "-f", "-c", str(tmp_path / "router.conf"), "-s", str(tmp_path / "router.ctl"))
        yield ns, str(tmp_path / "router.ctl")
    finally:
        pool.close()


def test_the_images_bird_announces_what_the_images_vsop_routes(lab, image: Image, volumes, router, tmp_path: Path) -> None:  # noqa: F811
    ns, router_socket = router
    config, run_dir = tmp_path / "etc-bird", tmp_path / "run-bird"
    config.mkdir()
    run_dir.mkdir()
    (config / "speaker.yaml").write_text(yaml.safe_dump(SPEAKER))
    spec = bird_container()
    assert spec["securityContext"]["capabilities"]["add"] == list(BIRD.capabilities)
    shared = (Mount(str(config), "/etc/bird", writable=True), Mount(str(run_dir), "/run/bird", writable=True))
    bird = image.start(spec["args"], entrypoint=spec["command"], context=BIRD, log=tmp_path / "bird.log",
                       mounts=(Mount(str(config), "/etc/bird"), Mount(str(run_dir), "/run/bird", writable=True)))

    def birdc(*args: str) -> str:
        done = image.run(["-s", "/run/bird/bird.ctl", *args], entrypoint=["birdc"], context=AGENT, mounts=shared)
        return done.stdout + done.stderr

    def router_has_vip() -> bool:
        return f"via {NODE}" in ns.run("ip", "route", "show", f"{SERVICE['spec']['vip']}/32").stdout

    announced = {**SERVICE, "spec": {**SERVICE["spec"], "announce": "bgp"}}
    try:
        applied = image.run(["apply", "-f", "-", "--store", "/run/vsop/virtualservices.d"], context=AGENT, mounts=volumes,
                            stdin=yaml.safe_dump(announced))
        assert applied.returncode == 0, applied
        assert "proto 118" in subprocess.run(["ip", "route", "show", "table", "4242"], capture_output=True, text=True).stdout
        rendered = image.run(["render", "bird", "--speaker", "/etc/bird/speaker.yaml", "--out", "/etc/bird/bird.conf",
                              "--control-socket", "/run/bird/bird.ctl", "--log", "stderr"], context=AGENT, mounts=shared)
        assert rendered.returncode == 0 and "wrote /etc/bird/bird.conf" in rendered.stdout, rendered
        # The container's script was waiting for this file; now it is BIRD.
        wait_for("BIRD up on the control socket", lambda: "Daemon is up and running" in birdc("show", "status"), 30, 0.2)
        assert "<INFO> Started" in (tmp_path / "bird.log").read_text(), "BIRD's lines reach the container's output (kubectl logs)"
        try:
            took = wait_for("the VIP in the router's kernel, via the node", router_has_vip, 60, 0.2)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{birdc('show', 'protocols', 'all')}\n{(tmp_path / 'bird.log').read_text()}") from None
        print(f"image BIRD: the VIP reached the router's kernel {took:.1f}s after BIRD answered")
        listening = subprocess.run(["ss", "-Hltn", "sport", "= :179"], capture_output=True, text=True).stdout
        assert listening.strip(), "BIRD listens on TCP 179 with NET_BIND_SERVICE"
        assert "Reconfigured" in birdc("configure"), "the agent's birdc reconfigures BIRD over the shared socket"

        cleaned = image.run(["cleanup"], context=AGENT, mounts=volumes)
        assert cleaned.returncode == 0, cleaned
        wait_for("the VIP withdrawn from the router", lambda: not router_has_vip(), 30, 0.2)
        assert "Established" in birdc("show", "protocols", "all", "vsop_peer_1"), "cleanup leaves BIRD and its session alone"
        assert bird.poll() is None
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(bird.pid, signal.SIGTERM)
        bird.wait(timeout=30)
        image.run(["cleanup"], context=AGENT, mounts=volumes)
