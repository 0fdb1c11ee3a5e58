"""Which node announces a VIP, in the cluster: the agents' NodeReports and the controller's status.announcedBy.

VRRP: two agents (node-a, node-b) run with a KeepalivedWriter each (a fake `keepalived -t` and
signaller) on an `announce: vrrp` object in mode ipvs; keepalived's transitions are written into
each agent's real notify FIFO as keepalived writes them. Each node's entry says its VRRP state, and
the controller names the master in status.announcedBy (the printer column ANNOUNCED-BY), also after
a failover. BGP: an agent with --bgp-speaker and a fake birdc: its entry says the VIP is announced
while a session is Established, `nosession` once none is, and the NodeReport carries the sessions.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any, AsyncIterator

import pytest
import yaml

from tests.kube.conftest import VS, Cluster, RecordingWriter, resync, run_controller, running, until
from tests.kube.test_bgp import SPEAKER, WEB as BGP_WEB, FakeBird
from tests.kube.test_keepalived import FakeCheck, FakeSignaller
from tests.unit.bgp.test_sessions import ANSWER
from vsop.adapters.conntrack import FakeConntrack
from vsop.adapters.kernel import fake_kernel
from vsop.bgp.writer import BirdAnnouncer, BirdWriter
from vsop.keepalived.writer import KeepalivedConfig, KeepalivedWriter
from vsop.kube.agent import Agent, AgentOptions
from vsop.kube.client import Connection

pytestmark = pytest.mark.asyncio

ADDRESSES = {"node-a": "10.0.0.11", "node-b": "10.0.0.12"}
VRRP_WEB = {
    "vip": "169.254.11.2", "mode": "ipvs", "announce": "vrrp",
    "ports": [{"name": "http", "port": 80, "targetPort": 8080}],
    "backends": [{"address": "192.168.2.111"}],
    "vrrp": {"interface": "eth0", "virtualRouterID": 61, "peers": sorted(ADDRESSES.values())},
}
INSTANCE = "vsop_eth0_61"


def entry(cluster: Cluster, node: str, name: str = "web") -> dict[str, Any]:
    return cluster.report(node).get(f"default/{name}") or {}


def announced_by(cluster: Cluster, name: str = "web") -> Any:
    return cluster.status("default", name).get("announcedBy")


def tell(writer: KeepalivedWriter, state: str) -> None:
    """One line into the agent's notify FIFO, as keepalived writes it at a transition."""
    assert writer.notify is not None
    fd = os.open(writer.notify.path, os.O_WRONLY | os.O_NONBLOCK)
    try:
        os.write(fd, f'INSTANCE "{INSTANCE}" {state} 250\n'.encode())
    finally:
        os.close(fd)


@contextlib.asynccontextmanager
async def vrrp_agents(cluster: Cluster, tmp_path: Path) -> AsyncIterator[dict[str, KeepalivedWriter]]:
    writers, agents = {}, []
    for node, address in ADDRESSES.items():
        await cluster.node(node, addresses=(address,))
        writers[node] = KeepalivedWriter(
            KeepalivedConfig(directory=tmp_path / node / "keepalived", pidfile=tmp_path / node / "keepalived.pid",
                             track_dir=tmp_path / node / "vrrp"),
            check=FakeCheck(), signaller=FakeSignaller())
        kernel, _ = fake_kernel()
        connection = Connection.for_url(cluster.url)
        agent = Agent(AgentOptions(node_name=node, resync_seconds=3600.0, debounce_seconds=0.01, vip_policy="any"), kernel,
                      RecordingWriter(connection, "vsop-agent", host=node), conntrack=FakeConntrack(), keepalived=writers[node])
        connection.register_login(agent.registry)
        agents.append(agent)
    async with running(*agents):
        yield writers


async def test_the_vrrp_master_is_in_its_report_and_in_status_and_a_failover_moves_it(cluster: Cluster, tmp_path: Path) -> None:
    await cluster.vs("web", VRRP_WEB)
    async with vrrp_agents(cluster, tmp_path) as writers, run_controller(cluster) as (controller, writer):
        for node in ADDRESSES:
            await until(lambda: entry(cluster, node).get("announced") == "unknown", f"{node}: keepalived said nothing yet")
        await until(lambda: announced_by(cluster) == "none", "nobody announces before keepalived says so")

        tell(writers["node-a"], "MASTER")
        tell(writers["node-b"], "BACKUP")
        await until(lambda: entry(cluster, "node-a").get("announced") == "master", "node-a's report: master")
        await until(lambda: entry(cluster, "node-b").get("announced") == "backup", "node-b's report: backup")
        await until(lambda: announced_by(cluster) == "node-a", "status.announcedBy: the master")
        assert entry(cluster, "node-a") == {"programmed": True, "backends": {"total": 1, "healthy": 1}, "message": "",
                                            "observedGeneration": 1, "announced": "master"}

        # Nothing changes: the controller writes nothing.
        patches = len(writer.patches)
        await resync(controller)
        assert len(writer.patches) == patches

        # The master fails over to node-b.
        tell(writers["node-a"], "FAULT")
        tell(writers["node-b"], "MASTER")
        await until(lambda: announced_by(cluster) == "node-b", "status.announcedBy follows the failover")
        assert entry(cluster, "node-a")["announced"] == "fault"


async def test_a_master_whose_keepalived_was_killed_reports_stop_and_gives_up_announced_by(cluster: Cluster, tmp_path: Path) -> None:
    """keepalived SIGKILLed (or OOM-killed) writes nothing to the FIFO: the agent finds it gone by its pidfile at
    its next turn, its report says stop, and status.announcedBy no longer names the node."""
    await cluster.vs("web", VRRP_WEB)
    async with vrrp_agents(cluster, tmp_path) as writers, run_controller(cluster):
        for node in ADDRESSES:
            await until(lambda: entry(cluster, node).get("announced") == "unknown", f"{node}: keepalived said nothing yet")
        tell(writers["node-a"], "MASTER")
        tell(writers["node-b"], "BACKUP")
        await until(lambda: announced_by(cluster) == "node-a", "status.announcedBy: the master")
        signaller = writers["node-a"].signaller
        assert isinstance(signaller, FakeSignaller)
        signaller.alive = False  # killed without a word
        # The next turn (here: a change of the object; the periodic resync otherwise) finds it gone.
        await cluster.patch(VS, "default", "web", {"spec": {"backends": [{"address": "192.168.2.112"}]}})
        await until(lambda: entry(cluster, "node-a").get("announced") == "stop", "node-a's report: stop")
        await until(lambda: announced_by(cluster) == "none", "nobody announces: node-b's keepalived has not taken over yet")
        assert entry(cluster, "node-b").get("announced") == "backup"


async def test_an_object_not_announced_has_no_announced_by(cluster: Cluster, tmp_path: Path) -> None:
    await cluster.vs("plain", {k: v for k, v in VRRP_WEB.items() if k not in ("announce", "vrrp")})
    async with vrrp_agents(cluster, tmp_path), run_controller(cluster):
        await until(lambda: entry(cluster, "node-a", "plain").get("programmed"), "programmed")
        await until(lambda: cluster.status("default", "plain").get("conditions"), "the status")
        assert "announced" not in entry(cluster, "node-a", "plain") and announced_by(cluster, "plain") is None


class Sessions(FakeBird):
    """FakeBird whose `show protocols all` answer the test changes."""

    def __init__(self) -> None:
        super().__init__()
        self.answer = ANSWER

    def __call__(self, argv: Any) -> Any:
        done = super().__call__(argv)
        if argv[-1] == "all":
            done.stdout = self.answer
        return done


async def test_bgp_sessions_and_the_announcing_node_in_report_and_status(cluster: Cluster, tmp_path: Path) -> None:
    await cluster.node("node-a", addresses=("10.0.0.11",))
    (tmp_path / "speaker.yaml").write_text(yaml.safe_dump(SPEAKER))
    bird = Sessions()
    announcer = BirdAnnouncer(tmp_path / "speaker.yaml", BirdWriter(tmp_path / "bird.conf", str(tmp_path / "bird.ctl"), run=bird),
                              sessions_seconds=0.05)
    kernel, fake = fake_kernel()
    connection = Connection.for_url(cluster.url)
    agent = Agent(AgentOptions(node_name="node-a", resync_seconds=3600.0, debounce_seconds=0.01, vip_policy="any"), kernel,
                  RecordingWriter(connection, "vsop-agent", host="node-a"), conntrack=FakeConntrack(), bird=announcer)
    connection.register_login(agent.registry)
    await cluster.vs("web", BGP_WEB)
    async with running(agent), run_controller(cluster):
        await until(lambda: entry(cluster, "node-a").get("announced") == "announced", "announced: route in table 4242, a session up")
        await until(lambda: announced_by(cluster) == "every selected node", "status.announcedBy")
        sessions = await until(lambda: cluster.get("vsop.dev/v1alpha1/nodereports", None, "node-a")["status"].get("bgpSessions"),
                               "the sessions in the NodeReport")
        assert sessions == [
            {"peer": "10.99.0.2", "asn": 65000, "up": False, "bgpState": "Active", "lastError": "Hold timer expired"},
            {"peer": "10.99.0.3", "asn": 65002, "up": True, "bgpState": "Established"},
        ]

        # The Established session goes down: no router hears the route.
        bird.answer = ANSWER.replace("Established", "Active").replace("up     07:06:21.802", "start  07:06:30.000")
        await until(lambda: entry(cluster, "node-a").get("announced") == "nosession", "nosession in the report")
        await until(lambda: announced_by(cluster) == "none", "nobody announces it")
        await until(lambda: [s["up"] for s in cluster.get("vsop.dev/v1alpha1/nodereports", None, "node-a")["status"]["bgpSessions"]]
                    == [False, False], "the sessions down in the NodeReport")
        assert "169.254.11.2/32" in fake.state.routes  # the route stays: BIRD announces it once a session is back

        bird.answer = ANSWER
        await until(lambda: announced_by(cluster) == "every selected node", "announced again")


def unicast_peers(conf: str) -> list[str]:
    """The addresses in a rendered vrrp_instance's unicast_peer block."""
    block = conf.split("unicast_peer {", 1)[1].split("}", 1)[0] if "unicast_peer {" in conf else ""
    return block.split()


async def test_vrrp_peers_from_the_selected_nodes_follow_joins_and_leaves_and_nothing_else(cluster: Cluster, tmp_path: Path) -> None:
    lb = {"vsop.dev/lb": "true"}
    await cluster.node("node-a", labels=lb, addresses=("10.0.0.11",))
    await cluster.node("node-b", labels=lb, addresses=("10.0.0.12",))
    await cluster.node("node-x", addresses=("10.0.0.99",))  # not selected
    await cluster.vs("web", {**VRRP_WEB, "vrrp": {"interface": "eth0", "virtualRouterID": 61}, "nodeSelector": {"matchLabels": lb}})
    check, signaller = FakeCheck(), FakeSignaller()
    keepalived = KeepalivedWriter(KeepalivedConfig(directory=tmp_path / "keepalived", pidfile=tmp_path / "keepalived.pid",
                                                   track_dir=tmp_path / "vrrp"), check=check, signaller=signaller)
    kernel, _ = fake_kernel()
    connection = Connection.for_url(cluster.url)
    agent = Agent(AgentOptions(node_name="node-a", resync_seconds=3600.0, debounce_seconds=0.01, vip_policy="any", node_peers=True),
                  kernel, RecordingWriter(connection, "vsop-agent", host="node-a"), conntrack=FakeConntrack(), keepalived=keepalived)
    connection.register_login(agent.registry)
    conf = tmp_path / "keepalived" / "conf.d" / "default_web.conf"

    def text() -> str:
        return conf.read_text() if conf.exists() else ""

    async with running(agent):
        await until(lambda: unicast_peers(text()) == ["10.0.0.12"], "node-b's InternalIP as the only unicast peer")
        assert "unicast_src_ip 10.0.0.11" in text() and "10.0.0.99" not in text()
        await until(lambda: len(signaller.sent) == 1, "the SIGHUP after the files are in place")
        assert len(check.calls) == 1

        await cluster.node("node-c", labels=lb, addresses=("10.0.0.13",))
        await until(lambda: unicast_peers(text()) == ["10.0.0.12", "10.0.0.13"], "node-c joins the peers")
        await until(lambda: len(signaller.sent) == 2, "one SIGHUP for the join")
        assert len(check.calls) == 2

        # A heartbeat, a label that selects nothing new, an unselected node joining: nothing is written.
        stat = conf.stat()
        await cluster.patch("v1/nodes", None, "node-c", {"status": {"conditions": [{"type": "Ready", "status": "True",
                                                                                      "lastHeartbeatTime": "2026-01-01T00:00:00Z"}]}})
        await cluster.patch("v1/nodes", None, "node-x", {"metadata": {"labels": {"zone": "b"}}})
        await cluster.node("node-y", addresses=("10.0.0.98",))
        await resync(agent)
        await resync(agent)
        assert (len(check.calls), len(signaller.sent)) == (2, 2)
        assert (conf.stat().st_ino, conf.stat().st_mtime_ns) == (stat.st_ino, stat.st_mtime_ns)

        await cluster.delete("v1/nodes", None, "node-b")
        await until(lambda: unicast_peers(text()) == ["10.0.0.13"], "node-b leaves the peers")
        await until(lambda: len(signaller.sent) == 3, "one SIGHUP for the leave")
        # node-x selected by a label change joins too.
        await cluster.patch("v1/nodes", None, "node-x", {"metadata": {"labels": lb}})
        await until(lambda: unicast_peers(text()) == ["10.0.0.13", "10.0.0.99"], "node-x selected now")


async def test_a_drained_node_withdraws_its_routes_and_gives_its_vrrp_vips_away_first(cluster: Cluster, tmp_path: Path) -> None:
    """Cordoned (kubectl drain's first step) or labelled exclude-from-external-load-balancers: the BGP route goes and
    the VRRP track file says 1 (keepalived puts the instance in FAULT); IPVS stays for what still arrives."""
    await cluster.node("node-a", addresses=("10.0.0.11",))
    (tmp_path / "speaker.yaml").write_text(yaml.safe_dump(SPEAKER))
    announcer = BirdAnnouncer(tmp_path / "speaker.yaml", BirdWriter(tmp_path / "bird.conf", str(tmp_path / "bird.ctl"), run=Sessions()),
                              sessions_seconds=0.05)
    keepalived = KeepalivedWriter(KeepalivedConfig(directory=tmp_path / "keepalived", pidfile=tmp_path / "keepalived.pid",
                                                   track_dir=tmp_path / "vrrp"), check=FakeCheck(), signaller=FakeSignaller())
    kernel, fake = fake_kernel()
    connection = Connection.for_url(cluster.url)
    agent = Agent(AgentOptions(node_name="node-a", resync_seconds=3600.0, debounce_seconds=0.01, vip_policy="any"), kernel,
                  RecordingWriter(connection, "vsop-agent", host="node-a"), conntrack=FakeConntrack(), bird=announcer, keepalived=keepalived)
    connection.register_login(agent.registry)
    await cluster.vs("web", BGP_WEB)
    await cluster.vs("lan", {**VRRP_WEB, "vip": "169.254.11.5"})
    track = tmp_path / "vrrp" / "default_lan"

    def track_says() -> str:
        return track.read_text() if track.exists() else ""

    async with running(agent), run_controller(cluster):
        await until(lambda: "169.254.11.2/32" in fake.state.routes, "the BGP route")
        await until(lambda: track_says() == "0\n", "the VRRP track file: this node serves")
        await until(lambda: announced_by(cluster) == "every selected node", "announced")

        await cluster.patch("v1/nodes", None, "node-a", {"spec": {"unschedulable": True}})
        await until(lambda: "169.254.11.2/32" not in fake.state.routes, "the route withdrawn on cordon")
        await until(lambda: track_says() == "1\n", "the track file: keepalived gives the VIP away")
        assert any(key.vip == "169.254.11.2" for key in fake.state.services)  # IPVS stays
        assert any(key.vip == "169.254.11.5" for key in fake.state.services)
        await until(lambda: entry(cluster, "node-a").get("announced") == "withdrawn", "withdrawn in the report")
        await until(lambda: announced_by(cluster) == "none", "nobody announces it")

        await cluster.patch("v1/nodes", None, "node-a", {"spec": {"unschedulable": False}})
        await until(lambda: "169.254.11.2/32" in fake.state.routes and track_says() == "0\n", "announced again when uncordoned")

        await cluster.patch("v1/nodes", None, "node-a", {"metadata": {"labels": {"node.kubernetes.io/exclude-from-external-load-balancers": ""}}})
        await until(lambda: "169.254.11.2/32" not in fake.state.routes and track_says() == "1\n", "withdrawn when excluded by label")


async def test_the_bgpspeaker_selecting_this_node_is_watched_and_bird_reconfigured_on_change(cluster: Cluster, tmp_path: Path) -> None:
    from tests.kube.conftest import SPEAKERS

    lb = {"vsop.dev/lb": "true"}
    await cluster.node("node-a", labels=lb, addresses=("10.0.0.11",))
    other = {**SPEAKER, "metadata": {"name": "other"},
             "spec": {"localASN": 65009, "routerID": "10.9.9.9", "nodeSelector": {"matchLabels": {"zone": "b"}},
                      "peers": [{"address": "10.99.9.9", "asn": 65000}]}}
    await cluster.create(SPEAKERS, other)  # selects another node
    bird = Sessions()
    announcer = BirdAnnouncer("BGPSpeaker", BirdWriter(tmp_path / "bird.conf", str(tmp_path / "bird.ctl"), run=bird), sessions_seconds=3600)
    kernel, _ = fake_kernel()
    connection = Connection.for_url(cluster.url)
    agent = Agent(AgentOptions(node_name="node-a", resync_seconds=3600.0, debounce_seconds=0.01, vip_policy="any", watch_speakers=True),
                  kernel, RecordingWriter(connection, "vsop-agent", host="node-a"), conntrack=FakeConntrack(), bird=announcer)
    connection.register_login(agent.registry)
    conf = tmp_path / "bird.conf"

    def text() -> str:
        return conf.read_text() if conf.exists() else ""

    async with running(agent):
        await until(lambda: agent.syncs >= 1, "the first sync")
        assert not conf.exists() and "no BGPSpeaker selects node node-a" in (announcer.last_error or "")

        edge = {**SPEAKER, "spec": {"localASN": 65001, "nodeSelector": {"matchLabels": lb}, "peers": [{"address": "10.99.0.2", "asn": 65000}]}}
        await cluster.create(SPEAKERS, edge)
        await until(lambda: "neighbor 10.99.0.2 port 179 as 65000;" in text(), "bird.conf from the BGPSpeaker selecting node-a")
        assert "router id 10.0.0.11;" in text() and "10.99.9.9" not in text()  # the node's InternalIP as router ID
        await until(lambda: bird.configures() == 1, "BIRD told (birdc configure follows the rename)")

        await cluster.patch(SPEAKERS, None, "edge", {"spec": {"peers": [{"address": "10.99.0.7", "asn": 65007}]}})
        await until(lambda: "neighbor 10.99.0.7 port 179 as 65007;" in text(), "the changed peer rendered")
        assert "10.99.0.2" not in text()
        await until(lambda: bird.configures() == 2, "BIRD told again")

        # A change of neither spec nor labels, or of a speaker selecting another node: nothing is written.
        await cluster.patch(SPEAKERS, None, "edge", {"metadata": {"annotations": {"note": "x"}}})
        await cluster.patch(SPEAKERS, None, "other", {"spec": {"localASN": 65010}})
        await resync(agent)
        assert bird.configures() == 2

        # The speaker gone: BIRD keeps its last configuration, and the agent says why.
        await cluster.delete(SPEAKERS, None, "edge")
        await until(lambda: "no BGPSpeaker selects node node-a" in (announcer.last_error or ""), "no speaker any more")
        assert "10.99.0.7" in text() and bird.configures() == 2


async def test_a_restarted_agent_takes_the_master_from_the_vip_on_an_interface_until_keepalived_speaks(cluster: Cluster, tmp_path: Path) -> None:
    """keepalived writes its FIFO at transitions only: an agent started beside a running master hears nothing.
    The VIP on one of the node's interfaces (keepalived put it on eth0) says who holds it meanwhile."""
    from vsop.core.state import KernelState

    await cluster.node("node-a", addresses=("10.0.0.11",))
    await cluster.vs("web", VRRP_WEB)
    keepalived = KeepalivedWriter(KeepalivedConfig(directory=tmp_path / "keepalived", pidfile=tmp_path / "keepalived.pid",
                                                   track_dir=tmp_path / "vrrp"), check=FakeCheck(), signaller=FakeSignaller())
    kernel, _ = fake_kernel(KernelState(node_addresses=frozenset({"10.0.0.11", "169.254.11.2"})))  # the VIP on eth0
    connection = Connection.for_url(cluster.url)
    agent = Agent(AgentOptions(node_name="node-a", resync_seconds=3600.0, debounce_seconds=0.01, vip_policy="any"), kernel,
                  RecordingWriter(connection, "vsop-agent", host="node-a"), conntrack=FakeConntrack(), keepalived=keepalived)
    connection.register_login(agent.registry)
    async with running(agent), run_controller(cluster):
        await until(lambda: entry(cluster, "node-a").get("announced") == "master", "master: the VIP is on an interface of the node")
        await until(lambda: announced_by(cluster) == "node-a", "status.announcedBy")
        tell(keepalived, "BACKUP")  # what keepalived says wins
        await until(lambda: entry(cluster, "node-a").get("announced") == "backup", "backup once keepalived says so")


async def test_a_peers_password_comes_from_the_secret_its_speaker_names_and_follows_it(cluster: Cluster, tmp_path: Path,
                                                                                        caplog: pytest.LogCaptureFixture) -> None:
    """passwordSecretRef: the agent GETs the named Secret in its own namespace (nothing else: the Role of deploy/bgp
    allows each request); without it BIRD's file is not written and the BGPSpeaker gets a Warning Event naming the
    Secret; with it bird.conf (0600) carries the password; a changed value is rendered once the last read is a
    resync period old (here 0 s: the next turn); a key gone keeps BIRD's last file. The value is in no log, Event, NodeReport or request vsop sends."""
    import base64

    from tests.kube.conftest import SPEAKERS
    from tests.kube.test_deploy import ROOT, build, role_allows, used
    from vsop.kube.client import ApiSecrets

    secrets, name = "v1/secrets", "vsop-bgp-passwords"
    lb = {"vsop.dev/lb": "true"}
    await cluster.node("node-a", labels=lb, addresses=("10.0.0.11",))
    await cluster.create(SPEAKERS, {**SPEAKER, "spec": {"localASN": 65001, "nodeSelector": {"matchLabels": lb}, "peers": [
        {"address": "10.99.0.2", "asn": 65000, "passwordSecretRef": {"name": name, "key": "router-1"}}]}})
    bird = Sessions()
    announcer = BirdAnnouncer("BGPSpeaker", BirdWriter(tmp_path / "bird.conf", str(tmp_path / "bird.ctl"), run=bird), sessions_seconds=3600)
    kernel, _ = fake_kernel()
    connection = Connection.for_url(cluster.url)
    writer = RecordingWriter(connection, "vsop-agent", host="node-a")
    agent = Agent(AgentOptions(node_name="node-a", resync_seconds=3600.0, debounce_seconds=0.01, vip_policy="any", watch_speakers=True,
                               secrets_namespace="vsop-system", secrets_seconds=0.0),  # read again at each turn
                  kernel, writer, conntrack=FakeConntrack(), bird=announcer, secrets=ApiSecrets(connection))
    connection.register_login(agent.registry)
    conf = tmp_path / "bird.conf"

    def text() -> str:
        return conf.read_text() if conf.exists() else ""

    def warnings() -> list[dict[str, Any]]:
        return [e for e in cluster.events("edge") if e["reason"] == "BirdConfigNotApplied"]

    def secret(data: dict[str, str]) -> dict[str, Any]:
        return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": "vsop-system"}, "type": "Opaque",
                "data": {key: base64.b64encode(value.encode()).decode() for key, value in data.items()}}

    caplog.set_level("DEBUG")
    async with running(agent):
        await until(lambda: warnings(), "a Warning Event on the BGPSpeaker")
        [event] = warnings()
        assert event["type"] == "Warning" and event["metadata"]["namespace"] == "vsop-system"
        assert event["involvedObject"]["kind"] == "BGPSpeaker" and "namespace" not in event["involvedObject"]
        assert f"Secret vsop-system/{name} not found" in event["message"] and "spec.peers[0].passwordSecretRef" in event["message"]
        assert not conf.exists(), "never rendered without its password"

        await cluster.create(secrets, secret({"router-1": "Pass-One"}))
        await resync(agent)  # a turn once the last read is secrets_seconds old reads it again
        await until(lambda: 'password "Pass-One";' in text(), "bird.conf with the Secret's password")
        assert conf.stat().st_mode & 0o777 == 0o600 and bird.configures() == 1

        await cluster.patch(secrets, "vsop-system", name, {"data": {"router-1": base64.b64encode(b"Pass-Two").decode()}})
        await resync(agent)
        await until(lambda: 'password "Pass-Two";' in text(), "the changed value rendered")
        await until(lambda: bird.configures() == 2, "BIRD told")

        await cluster.patch(secrets, "vsop-system", name, {"data": {"router-1": None, "router-2": base64.b64encode(b"Other").decode()}})
        await resync(agent)
        await until(lambda: len(warnings()) == 2, "a second Warning: the key is gone")
        assert "has no key 'router-1' (its keys: router-2)" in warnings()[-1]["message"]
        assert 'password "Pass-Two";' in text() and bird.configures() == 2, "BIRD keeps its last configuration"

    sent = str(writer.posted) + str(writer.reports) + str(writer.patches) + caplog.text
    assert "Pass-" not in sent and "Other" not in sent
    role = next(d for d in build(ROOT / "examples" / "k8s" / "bgp") if d["kind"] == "Role" and d["metadata"]["name"] == "vsop-agent-bgp-passwords")
    asked = {r for r in used(cluster, namespaced=True) if r[3] == "secrets"}
    assert asked == {("vsop-system", name, "", "secrets", "get")}
    assert all(role_allows(role, *r[:2], r[2:]) for r in asked)
