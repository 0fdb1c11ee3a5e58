"""The node agent in keepalived mode, against the API emulator, on a fake kernel.

The agent is given a KeepalivedWriter writing into tmp_path, with a fake `keepalived -t`
and a fake signaller: the files on disk, the checks run and the SIGHUPs sent are asserted,
with the fake kernel (link, sets, chains; no IPVS for keepalived-mode objects) and what the
agent reports in its NodeReport and Events.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, AsyncIterator

import pytest
import pytest_asyncio

from tests.kube.conftest import SLICES, VS, Cluster, RecordingWriter, resync, running, until
from vsop.adapters.conntrack import FakeConntrack
from vsop.core.state import ServiceKey
from vsop.adapters.kernel import fake_kernel
from vsop.keepalived.writer import Check, KeepalivedConfig, KeepalivedWriter
from vsop.cli import agents as agent_module
from vsop.kube.agent import Agent, AgentOptions
from vsop.kube.client import Connection

pytestmark = pytest.mark.asyncio

HTTP = ServiceKey("tcp", "169.254.11.2", 80)
PORTS = [{"name": "web", "port": 8080, "protocol": "TCP"}]
WEB = {
    "vip": "169.254.11.2",
    "mode": "keepalived",
    "ports": [{"name": "http", "port": 80, "targetPort": "web"}],
    "serviceRef": {"name": "nginx"},
    "healthCheck": {"type": "tcp", "intervalSeconds": 3, "timeoutSeconds": 1},
}
STATIC = {
    "vip": "169.254.11.3",
    "mode": "keepalived",
    "ports": [{"name": "http", "port": 80, "targetPort": 8080}],
    "backends": [{"address": "192.168.2.111"}, {"address": "192.168.2.222"}],
}


class FakeCheck:
    """`keepalived -t`: records each candidate it saw; refuses while `refuse` is set."""

    def __init__(self) -> None:
        self.calls: list[dict[str, str]] = []
        self.refuse = ""

    def __call__(self, binary: str, main_file: Path) -> Check:
        root = main_file.parent
        self.calls.append({str(p.relative_to(root)): p.read_text() for p in root.rglob("*.conf")})
        return Check(False, self.refuse) if self.refuse else Check(True, "")


class FakeSignaller:
    def __init__(self) -> None:
        self.sent: list[Path] = []
        self.alive: bool | None = True  # what `running` says: False once the test "kills" keepalived

    def reload(self, pidfile: Path) -> str:
        self.sent.append(pidfile)
        return "SIGHUP sent to keepalived 42"

    def running(self, pidfile: Path) -> bool | None:
        return self.alive


def endpoint(address: str, ready: bool = True) -> dict[str, Any]:
    return {"addresses": [address], "conditions": {"ready": ready}}


def live(directory: Path) -> dict[str, str]:
    return {str(p.relative_to(directory)): p.read_text() for p in directory.rglob("*.conf") if ".vsop-candidate" not in str(p)}


def node_entry(cluster: Cluster, name: str, node: str = "node-a") -> Any:
    return cluster.report(node).get(f"default/{name}")


class Setup:
    def __init__(self, tmp_path: Path):
        self.directory = tmp_path / "keepalived"
        self.check = FakeCheck()
        self.signaller = FakeSignaller()
        self.writer = KeepalivedWriter(
            KeepalivedConfig(directory=self.directory, pidfile=tmp_path / "keepalived.pid"), check=self.check, signaller=self.signaller
        )

    def conf(self, name: str) -> str:
        path = self.directory / "conf.d" / f"default_{name}.conf"
        return path.read_text() if path.exists() else ""


@contextlib.asynccontextmanager
async def run_keepalived_agent(cluster: Cluster, setup: Setup) -> AsyncIterator[tuple[Agent, Any, RecordingWriter]]:
    kernel, fake = fake_kernel()
    connection = Connection.for_url(cluster.url)
    writer = RecordingWriter(connection, "vsop-agent", host="node-a")
    options = AgentOptions(node_name="node-a", resync_seconds=3600.0, debounce_seconds=0.01, vip_policy="any")
    agent = Agent(options, kernel, writer, conntrack=FakeConntrack(), keepalived=setup.writer)
    connection.register_login(agent.registry)
    async with running(agent):
        yield agent, fake, writer


@pytest_asyncio.fixture
async def node_a(cluster: Cluster) -> Cluster:
    await cluster.node("node-a", addresses=("10.0.0.11",))
    return cluster


@pytest.fixture
def setup(tmp_path: Path) -> Setup:
    return Setup(tmp_path)


async def test_service_ref_renders_its_ready_endpoints_and_endpoint_changes_reload_once(node_a: Cluster, setup: Setup) -> None:
    cluster = node_a
    await cluster.vs("web", WEB)
    await cluster.endpoint_slice("nginx-abc", "nginx", [endpoint("10.1.0.1"), endpoint("10.1.0.2", ready=False)], PORTS)
    async with run_keepalived_agent(cluster, setup) as (agent, fake, _):
        await until(lambda: "real_server 10.1.0.1 8080" in setup.conf("web"), "the ready endpoint rendered, on the named port")
        assert "10.1.0.2" not in setup.conf("web")
        # The files are swapped in before the SIGHUP is sent (in the agent's worker thread).
        await until(lambda: setup.signaller.sent, "the SIGHUP after the swap")
        assert len(setup.check.calls) == 1 and len(setup.signaller.sent) == 1
        assert setup.signaller.sent == [setup.writer.config.pidfile]
        # vsop keeps the link, sets and chains; keepalived owns IPVS for the object.
        assert fake.state.bound_vips() == {"169.254.11.2"}
        assert "169.254.11.2,tcp:80" in fake.state.ipsets["VSOP-VIP-PORTS"].members
        assert HTTP not in fake.state.services and fake.state.real_servers == {}
        entry = await until(lambda: node_entry(cluster, "web"), "node-a's report")
        assert entry == {"programmed": True, "backends": {"total": 1, "healthy": 1}, "message": "", "observedGeneration": 1}

        await cluster.patch(SLICES, "default", "nginx-abc", {"endpoints": [endpoint("10.1.0.1"), endpoint("10.1.0.2")]})
        await until(lambda: "real_server 10.1.0.2 8080" in setup.conf("web"), "the endpoint that became ready")
        await until(lambda: len(setup.signaller.sent) == 2, "one SIGHUP for the change")
        await until(lambda: (node_entry(cluster, "web") or {}).get("backends") == {"total": 2, "healthy": 2}, "two backends reported")
        await resync(agent)
        await resync(agent)
        assert len(setup.check.calls) == 2 and len(setup.signaller.sent) == 2, "one check and one SIGHUP per change"

        await cluster.patch(SLICES, "default", "nginx-abc", {"endpoints": [endpoint("10.1.0.2")]})
        await until(lambda: "10.1.0.1" not in setup.conf("web"), "the endpoint that went away")
        assert "real_server 10.1.0.2 8080" in setup.conf("web")
        await until(lambda: len(setup.signaller.sent) == 3, "one SIGHUP for the removal")


async def test_nothing_changed_writes_nothing_and_signals_nothing(node_a: Cluster, setup: Setup) -> None:
    cluster = node_a
    await cluster.vs("static", STATIC)
    async with run_keepalived_agent(cluster, setup) as (agent, fake, _):
        await until(lambda: "real_server 192.168.2.222 8080" in setup.conf("static"), "the configuration")
        await until(lambda: node_entry(cluster, "static"), "the node status")
        before = live(setup.directory)
        stats = {path: (setup.directory / path).stat() for path in before}
        assert set(before) == {"keepalived.conf", "conf.d/default_static.conf"}
        assert len(setup.check.calls) == 1 and len(setup.signaller.sent) == 1

        await resync(agent)
        # An ipvs-mode object changes the kernel, not keepalived's configuration.
        await cluster.vs("other", {**STATIC, "mode": "ipvs", "vip": "169.254.11.4"})
        await until(lambda: ServiceKey("tcp", "169.254.11.4", 80) in fake.state.services, "the ipvs-mode object programmed")
        await resync(agent)
        assert live(setup.directory) == before
        for path, stat in stats.items():
            now = (setup.directory / path).stat()
            assert (now.st_ino, now.st_mtime_ns) == (stat.st_ino, stat.st_mtime_ns), f"{path} rewritten"
        assert len(setup.check.calls) == 1 and len(setup.signaller.sent) == 1
        assert node_entry(cluster, "static") == {"programmed": True, "backends": {"total": 2, "healthy": 2}, "message": "", "observedGeneration": 1}


async def test_a_rejected_candidate_leaves_the_files_and_is_reported(node_a: Cluster, setup: Setup) -> None:
    cluster = node_a
    await cluster.vs("static", STATIC)
    async with run_keepalived_agent(cluster, setup) as (agent, fake, writer):
        await until(lambda: (node_entry(cluster, "static") or {}).get("programmed"), "programmed")
        before = live(setup.directory)
        assert len(setup.signaller.sent) == 1

        setup.check.refuse = "conf.d/default_static.conf: unknown keyword 'bogus'"
        await cluster.patch(VS, "default", "static", {"spec": {"backends": [{"address": "192.168.2.111"}, {"address": "192.168.2.233"}]}})
        entry = await until(lambda: (e := node_entry(cluster, "static")) and not e["programmed"] and e, "the failure reported")
        assert entry["message"].startswith("KeepalivedError: check: keepalived -t rejected the new configuration; the old one stays: ")
        assert entry["message"].endswith("unknown keyword 'bogus'")
        assert entry["observedGeneration"] == 2
        assert live(setup.directory) == before, "the live files are untouched"
        assert len(setup.check.calls) == 2 and len(setup.signaller.sent) == 1, "checked, not signalled"
        assert [(reason, message.split(": ")[1]) for obj, _, reason, message in writer.posted if obj.startswith("default/static")] == [
            ("KeepalivedError", "check")
        ]
        assert agent.metrics.errors.labels("keepalived")._value.get() >= 1
        # The kernel side is still programmed: the link and the sets stay.
        assert fake.state.bound_vips() == {"169.254.11.3"}

        # The same candidate is not checked again on the next sync, and still reported.
        await resync(agent)
        assert len(setup.check.calls) == 2 and not node_entry(cluster, "static")["programmed"]

        # A valid change goes through, and the message is cleared.
        setup.check.refuse = ""
        await cluster.patch(VS, "default", "static", {"spec": {"backends": [{"address": "192.168.2.244"}]}})
        await until(lambda: (node_entry(cluster, "static") or {}).get("programmed"), "programmed again")
        assert node_entry(cluster, "static")["message"] == "" and node_entry(cluster, "static")["backends"] == {"total": 1, "healthy": 1}
        assert "real_server 192.168.2.244 8080" in setup.conf("static") and "192.168.2.111" not in setup.conf("static")
        assert len(setup.signaller.sent) == 2


async def test_an_object_keepalived_cannot_carry_is_reported_alone(node_a: Cluster, setup: Setup) -> None:
    cluster = node_a
    await cluster.vs("static", STATIC)
    await cluster.vs("sticky", {**STATIC, "vip": "169.254.11.5", "persistence": {"timeoutSeconds": 2_678_401}})
    async with run_keepalived_agent(cluster, setup) as (agent, fake, _):
        entry = await until(lambda: node_entry(cluster, "sticky"), "the refused object's status")
        assert not entry["programmed"] and entry["message"].startswith("KeepalivedUnsupported: spec.persistence.timeoutSeconds")
        await until(lambda: (node_entry(cluster, "static") or {}).get("programmed"), "the other object programmed")
        assert setup.conf("static") and not setup.conf("sticky")


async def test_without_keepalived_dir_the_agent_writes_no_keepalived_configuration(node_a: Cluster, tmp_path: Path) -> None:
    parser = agent_module.build_parser()
    assert agent_module.keepalived_writer(parser.parse_args(["--node-name", "a"])) is None
    with pytest.raises(ValueError, match="--keepalived-pidfile need --keepalived-dir"):
        agent_module.keepalived_writer(parser.parse_args(["--keepalived-pidfile", "/run/k.pid"]))
    writer = agent_module.keepalived_writer(parser.parse_args([
        "--keepalived-dir", str(tmp_path / "ka"), "--keepalived-pidfile", "/run/keepalived/keepalived.pid",
        "--keepalived-auth-file", "/etc/vsop/vrrp/password", "--keepalived-layout", "single",
    ]))
    assert writer is not None
    assert (writer.config.directory, str(writer.config.pidfile), str(writer.config.auth_file), writer.config.layout) == (
        tmp_path / "ka", "/run/keepalived/keepalived.pid", "/etc/vsop/vrrp/password", "single"
    )
    assert agent_module.agent_main(["--node-name", "a", "--keepalived-layout", "single"]) == 2


async def test_an_absent_vrrp_password_file_means_no_authentication(node_a: Cluster, tmp_path: Path) -> None:
    """The optional Secret vsop-vrrp-auth not created: keepalived's files are written all the same."""
    cluster = node_a
    setup = Setup(tmp_path)
    setup.writer.config.auth_file = tmp_path / "vrrp" / "password"  # as --keepalived-auth-file sets it
    await cluster.vs("static", STATIC)
    async with run_keepalived_agent(cluster, setup) as (agent, fake, _):
        entry = await until(lambda: node_entry(cluster, "static"), "the node status")
        assert entry["programmed"] is True and entry["message"] == ""
        assert "real_server 192.168.2.111 8080" in setup.conf("static") and len(setup.signaller.sent) == 1


async def test_an_invalid_object_keeps_its_section_while_the_others_are_updated(node_a: Cluster, setup: Setup) -> None:
    cluster = node_a
    await cluster.vs("static", STATIC)
    async with run_keepalived_agent(cluster, setup) as (agent, fake, _):
        await until(lambda: "real_server 192.168.2.222 8080" in setup.conf("static"), "the object rendered")
        section = setup.conf("static")
        # Its new generation is invalid: keepalived keeps serving the old one, as the kernel does.
        await cluster.patch(VS, "default", "static", {"spec": {"scheduler": "bogus"}})
        await until(lambda: (node_entry(cluster, "static") or {}).get("message", "").startswith("InvalidSpec"), "reported invalid")
        await cluster.vs("other", {**STATIC, "vip": "169.254.11.4"})
        await until(lambda: "virtual_server 169.254.11.4 80" in setup.conf("other"), "another object rendered meanwhile")
        assert setup.conf("static") == section
        # A newcomer on the invalid object's port loses there, and is not rendered either.
        await cluster.vs("thief", {**STATIC, "backends": [{"address": "192.168.2.9"}]})
        await until(lambda: (node_entry(cluster, "thief") or {}).get("message", "").startswith("Conflict"), "the newcomer refused")
        await resync(agent)
        assert setup.conf("thief") == "" and setup.conf("static") == section
