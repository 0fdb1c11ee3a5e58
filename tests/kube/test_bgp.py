"""The node agent with --bgp-speaker, against the API emulator, on a fake kernel.

The agent is given a BirdAnnouncer writing bird.conf into tmp_path, with a fake `bird -p`
and `birdc` (configure and `show protocols all` answered as BIRD 2.0.12 answers): bird.conf
is written at the first sync and again when an object's bgp options change; an announce: bgp
object's route is in the fake kernel's table, withdrawn first when the object is deleted,
its IPVS service gone after its drain; BIRD's sessions are served as metrics.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Sequence

import pytest
import yaml
from prometheus_client import generate_latest

from tests.kube.conftest import VS, Cluster, RecordingWriter, running, until
from tests.unit.bgp.test_sessions import ANSWER
from vsop.adapters.conntrack import FakeConntrack
from vsop.adapters.kernel import fake_kernel
from vsop.bgp.writer import BirdAnnouncer, BirdWriter
from vsop.core.state import ServiceKey
from vsop.kube.agent import Agent, AgentOptions
from vsop.kube.client import Connection

pytestmark = pytest.mark.asyncio

HTTP = ServiceKey("tcp", "169.254.11.2", 80)
SPEAKER = {"apiVersion": "vsop.dev/v1alpha1", "kind": "BGPSpeaker", "metadata": {"name": "edge"},
           "spec": {"localASN": 65001, "routerID": "10.0.0.11", "peers": [{"address": "10.99.0.2", "asn": 65000}]}}
WEB = {"vip": "169.254.11.2", "announce": "bgp", "ports": [{"name": "http", "port": 80, "targetPort": 8080}],
       "backends": [{"address": "192.168.2.111"}], "drain": {"timeoutSeconds": 5}}


class FakeBird:
    """`bird -p` accepts; `birdc configure` reconfigures; `birdc show protocols all` answers ANSWER."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def __call__(self, argv: Sequence[str]) -> "subprocess.CompletedProcess[str]":
        self.calls.append(list(argv))
        out = {"configure": "BIRD 2.0.12 ready.\nReading configuration from x\nReconfigured\n", "all": ANSWER}.get(argv[-1], "")
        return subprocess.CompletedProcess(list(argv), 0, out, "")

    def configures(self) -> int:
        return sum(1 for call in self.calls if call[-1] == "configure")


async def test_bird_conf_routes_withdrawal_order_and_session_metrics(cluster: Cluster, tmp_path: Path) -> None:
    await cluster.node("node-a", addresses=("10.0.0.11",))
    (tmp_path / "speaker.yaml").write_text(yaml.safe_dump(SPEAKER))
    bird = FakeBird()
    announcer = BirdAnnouncer(tmp_path / "speaker.yaml", BirdWriter(tmp_path / "bird.conf", str(tmp_path / "bird.ctl"), run=bird))
    kernel, fake = fake_kernel()
    connection = Connection.for_url(cluster.url)
    agent = Agent(AgentOptions(node_name="node-a", resync_seconds=3600.0, debounce_seconds=0.01, vip_policy="any"), kernel,
                  RecordingWriter(connection, "vsop-agent", host="node-a"), conntrack=FakeConntrack(), bird=announcer)
    connection.register_login(agent.registry)
    conf = tmp_path / "bird.conf"
    async with running(agent):
        await until(lambda: conf.exists(), "bird.conf written at the first sync")
        assert "neighbor 10.99.0.2 port 179 as 65000;" in conf.read_text() and bird.configures() == 1
        await cluster.vs("web", WEB)
        await until(lambda: "169.254.11.2/32" in fake.state.routes, "the VIP's route in table 4242")
        assert bird.configures() == 1  # a VIP coming needs nothing of BIRD's configuration
        await cluster.vs("tagged", {**WEB, "vip": "169.254.11.3", "bgp": {"communities": ["65000:100"]}})
        await until(lambda: "bgp_community.add((65000, 100));" in conf.read_text(), "the community in bird.conf")
        text = generate_latest(agent.metrics.registry).decode()
        assert 'vsop_bgp_session_up{peer="10.99.0.3",protocol="vsop_peer_2"} 1.0' in text and "vsop_bgp_bird_up 1.0" in text
        await cluster.delete(VS, "default", "web")
        await until(lambda: "169.254.11.2/32" not in fake.state.routes, "the route withdrawn")
        assert HTTP in fake.state.services  # IPVS stays for the drain, after the route went
        await until(lambda: HTTP not in fake.state.services, "the service removed after its drain")
