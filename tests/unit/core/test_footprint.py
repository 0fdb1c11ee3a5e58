"""What the agents keep per object stays small and shared (the host agent's RSS at 10,000 services,
bench/agent_rss.py), without changing what any of it means."""

from __future__ import annotations

import os
import platform
from pathlib import Path

from tests.conftest import make_vs
from vsop.core.desired import Node
from vsop.core.desired import Problem, desired_state, shared_state
from vsop.core.fragments import assemble, fragment, grace_of, refused
from vsop.core.state import Names, RealServer, RealServerKey, ServiceKey, VirtualServer
from vsop.host.folder import FolderSource
from vsop.node import heap
from vsop.host.store import Store


def test_parsed_objects_share_their_fields_sets_and_copies_do_not_touch_them() -> None:
    a, b = make_vs("a", drain={"timeoutSeconds": 5}), make_vs("b", drain={"timeoutSeconds": 7})
    assert a.spec.backends[0].__pydantic_fields_set__ is b.spec.backends[1].__pydantic_fields_set__
    assert a.spec.model_fields_set == {"vip", "ports", "backends", "drain"}
    copied = a.spec.model_copy(update={"scheduler": "wrr"})
    assert copied.model_fields_set == {"vip", "ports", "backends", "drain", "scheduler"}
    assert a.spec.model_fields_set == b.spec.model_fields_set == {"vip", "ports", "backends", "drain"}
    assert a.spec.model_dump(exclude_unset=True, by_alias=True)["drain"] == {"timeoutSeconds": 5}


def test_an_objects_ref_is_one_string() -> None:
    assert make_vs("web").ref is make_vs("web").ref == "default/web"


def test_kernel_state_records_have_no_per_instance_dict() -> None:
    key = ServiceKey("tcp", "169.254.11.2", 80)
    rs_key = RealServerKey(key, "192.168.2.111", 8080)
    for record in (key, VirtualServer(key), rs_key, RealServer(rs_key)):
        assert not hasattr(record, "__dict__"), type(record).__name__


def test_a_fragment_keeps_one_drain_timeout_and_grace_is_per_service_as_before() -> None:
    vs = make_vs(ports=[{"port": 80}, {"port": 443}], drain={"timeoutSeconds": 12})
    piece = fragment(vs, Node("n"))
    assert piece.grace == {ServiceKey("tcp", "169.254.11.2", 80): 12.0, ServiceKey("tcp", "169.254.11.2", 443): 12.0}
    lost = refused(make_vs("other"), Problem("default/other", "Conflict", "lost"))
    assert grace_of([piece, lost]) == piece.grace and lost.grace == {}
    assert fragment(make_vs("x"), Node("n")).delegated is piece.delegated == frozenset()


def test_a_fragments_mappings_are_its_objects_desired_state() -> None:
    vs = make_vs(ports=[{"port": 80}, {"port": 53, "protocol": "UDP"}])
    node = Node("n")
    piece, desired = fragment(vs, node), desired_state([vs], node)
    state = desired.state
    assert piece.services == state.services and piece.real_servers == state.real_servers
    assert piece.members == {name: dict(ipset.members) for name, ipset in state.ipsets.items() if ipset.members}
    assert set(piece.addresses) == state.addresses and piece.configured == desired.configured
    assert assemble(shared_state(Names(), {4: 1}, arp=False, bound=True, kernel_version=None), [piece]) == state


def test_the_folder_keeps_a_stat_key_per_file_and_shares_what_a_file_declares(tmp_path: Path) -> None:
    Store(tmp_path).write([make_vs("web"), make_vs("api", vip="169.254.11.3")])
    source = FolderSource(tmp_path, settle_seconds=0)
    source.poll()
    for path, state in source.files.items():
        st = os.stat(path)
        assert state.stat_key == (st.st_ino, st.st_size, st.st_mtime_ns)
        assert not hasattr(state, "__dict__")
        assert source._claimed[path] is state.names  # the same frozenset, not a copy per path
    assert sorted(vs.ref for vs in source.services()) == ["default/api", "default/web"]


def test_the_heap_is_tuned_and_trimmed_through_glibc_where_there_is_one() -> None:
    glibc = platform.libc_ver()[0] == "glibc"
    if glibc:
        assert heap._malloc_trim() is not None
    assert heap.tune() is glibc
    assert heap.trim() in (True, False)


def test_the_host_agent_tunes_the_heap_before_it_reads_anything(tmp_path: Path, monkeypatch) -> None:
    from vsop.adapters.conntrack import FakeConntrack
    from vsop.adapters.kernel import fake_kernel
    from vsop.host.agent import AgentConfig, HostAgent, run_agent

    calls: list[str] = []
    monkeypatch.setattr(heap, "tune", lambda: calls.append("tune") or True)

    async def run(self, stop) -> None:  # type: ignore[no-untyped-def]
        calls.append("run")

    monkeypatch.setattr(HostAgent, "run", run)
    init = HostAgent.__init__

    def created(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        calls.append("agent")
        init(self, *args, **kwargs)

    monkeypatch.setattr(HostAgent, "__init__", created)
    made: list[HostAgent] = []
    monkeypatch.setattr(HostAgent, "run", lambda self, stop: made.append(self) or run(self, stop))
    assert run_agent(fake_kernel()[0], AgentConfig(tmp_path, Node("n"), status_file=None), FakeConntrack()) == 0
    assert calls == ["tune", "agent", "run"]
    assert made[0].freeze_heap  # the process's own agent freezes what it holds after its first looks


def test_freezing_keeps_what_is_held_out_of_the_collectors_passes_and_frees_it_still() -> None:
    """heap.freeze moves what is tracked into the permanent generation: a full collection no longer
    walks it (the first sync's gen2 passes at 10,000 objects), yet an object whose last reference
    goes is still freed at once."""
    import gc
    import weakref

    class Held:
        pass

    held = Held()
    gone = weakref.ref(held)
    try:
        assert heap.freeze() == gc.get_freeze_count() > 0
        del held
        assert gone() is None  # reference counting, not the collector, frees it
    finally:
        gc.unfreeze()
    assert gc.get_freeze_count() == 0


def test_the_host_agent_freezes_once_the_folder_is_read_and_only_when_it_is_the_process(tmp_path: Path, monkeypatch) -> None:
    """run_agent's agent freezes what it holds after the first looks at the folder and before the first
    sync; an agent run any other way (tests, benches in one process) does not."""
    import asyncio

    from vsop.adapters.conntrack import FakeConntrack
    from vsop.adapters.kernel import fake_kernel
    from vsop.host.agent import AgentConfig, HostAgent

    (tmp_path / "web.yaml").write_text(
        "apiVersion: vsop.dev/v1alpha1\nkind: VirtualService\nmetadata: {name: web, namespace: default}\n"
        "spec: {vip: 169.254.11.2, ports: [{port: 80}], backends: [{address: 192.168.2.222}]}\n"
    )
    for freezing in (True, False):
        agent = HostAgent(fake_kernel()[0], AgentConfig(tmp_path, Node("n"), status_file=None, poll_seconds=0.01), FakeConntrack())
        agent.freeze_heap = freezing
        seen: list[tuple[int, int]] = []
        monkeypatch.setattr(heap, "freeze", lambda agent=agent: seen.append((len(agent.source.services()), agent.loop.turns)) or 0)

        async def scenario(agent: HostAgent = agent) -> None:
            stop = asyncio.Event()
            task = asyncio.create_task(agent.run(stop))
            for _ in range(200):
                await asyncio.sleep(0.01)
                if agent.loop.turns:
                    break
            stop.set()
            await asyncio.wait_for(task, 5)

        asyncio.run(scenario())
        assert agent.loop.turns >= 1
        assert seen[:1] == ([(1, 0)] if freezing else []), (freezing, seen)


def test_the_host_agent_freezes_after_each_part_of_its_first_sync_and_then_no_more(tmp_path: Path, monkeypatch) -> None:
    """keep_first_sync (after each turn): with freeze_heap, a freeze per turn while the first sync has
    parts left and after its last; none after it, nor without freeze_heap."""
    from vsop.adapters.conntrack import FakeConntrack
    from vsop.adapters.kernel import fake_kernel
    from vsop.host.agent import AgentConfig, HostAgent

    for index in range(5):
        (tmp_path / f"s{index}.yaml").write_text(
            f"apiVersion: vsop.dev/v1alpha1\nkind: VirtualService\nmetadata: {{name: s{index}, namespace: default}}\n"
            f"spec: {{vip: 169.254.11.{index + 2}, ports: [{{port: 80}}], backends: [{{address: 192.168.2.222}}]}}\n"
        )
    for freezing in (True, False):
        agent = HostAgent(fake_kernel()[0], AgentConfig(tmp_path, Node("n"), status_file=None, poll_seconds=0.0), FakeConntrack())
        agent.reconciler.resyncing.cold_chunk = 2  # five VIPs: the first sync in three parts
        agent.freeze_heap = freezing
        frozen: list[bool] = []
        monkeypatch.setattr(heap, "freeze", lambda agent=agent: frozen.append(agent.reconciler.cold) or 0)
        agent.poll()
        full = True
        for _ in range(5):  # three parts, then two turns after
            agent.keep_first_sync(agent.sync_once(full=full, status=False) is not None)
            full = False
        assert frozen == ([True, True, False] if freezing else []), (freezing, frozen)
        assert len(agent.reconciler.programmed) == 5


def test_the_host_agent_loads_neither_pyroute2_nor_jinja2() -> None:
    """Each runs its package's whole __init__ (pyroute2: about 190 modules, 10 MB of RSS; jinja2 2 MB):
    the adapters speak netlink themselves, keepalived templates load when a configuration is rendered."""
    import subprocess
    import sys

    code = (
        "import sys, vsop.cli.main, vsop.host.agent, vsop.keepalived.writer; from vsop.adapters.real import real_kernel; real_kernel(); "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'pyroute2', 'jinja2'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]", out


def test_the_reconcilers_indexes_keep_a_lone_ref_as_itself_and_sets_only_where_shared() -> None:
    from vsop.adapters.kernel import fake_kernel
    from vsop.node.reconciler import Reconciler

    reconciler = Reconciler(fake_kernel()[0], Node("n"))
    web, api, other = make_vs("web"), make_vs("api", ports=[{"port": 443}]), make_vs("other", vip="169.254.11.9")
    reconciler.update_objects({"default/web": web, "default/api": api, "default/other": other})
    assert reconciler.reconcile().ok
    assert reconciler.declared.by_vip == {"169.254.11.2": {"default/web", "default/api"}, "169.254.11.9": "default/other"}
    assert reconciler.declared.claimants[("169.254.11.9", 80, "TCP")] == "default/other"
    reconciler.update_objects({"default/api": None})
    assert reconciler.reconcile().ok
    assert reconciler.declared.by_vip == {"169.254.11.2": "default/web", "169.254.11.9": "default/other"}
    assert reconciler.programmed == {"default/web", "default/other"}


def test_equal_ports_and_backends_are_one_instance_and_keep_which_fields_were_given() -> None:
    a, b = make_vs("a"), make_vs("b", vip="169.254.11.3")
    assert a.spec.backends is b.spec.backends and a.spec.ports is b.spec.ports
    given = make_vs("c", backends=[{"address": "192.168.2.111", "weight": 1}, {"address": "192.168.2.222"}])
    assert given.spec.backends == a.spec.backends  # equal values ...
    assert given.spec.backends[0] is not a.spec.backends[0]  # ... but weight was written here: its own instance
    assert given.spec.backends[0].model_fields_set == {"address", "weight"} and a.spec.backends[0].model_fields_set == {"address"}
    assert given.spec.backends[1] is a.spec.backends[1]
    other = make_vs("d", backends=[{"address": "192.168.2.99"}])
    assert other.spec.backends[0].address == "192.168.2.99" and other.spec.ports is a.spec.ports


def test_equal_health_checks_are_one_instance_and_keep_which_fields_were_given() -> None:
    a, b = make_vs("a", healthCheck={"type": "tcp"}), make_vs("b", vip="169.254.11.3", healthCheck={"type": "tcp"})
    assert a.spec.health_check is b.spec.health_check
    given = make_vs("c", healthCheck={"type": "tcp", "intervalSeconds": 3})
    assert given.spec.health_check == a.spec.health_check and given.spec.health_check is not a.spec.health_check
    assert given.spec.model_dump(exclude_unset=True, by_alias=True)["healthCheck"] == {"type": "tcp", "intervalSeconds": 3}
    assert a.spec.model_dump(exclude_unset=True, by_alias=True)["healthCheck"] == {"type": "tcp"}
    other = make_vs("d", healthCheck={"type": "http", "path": "/ready"})
    assert other.spec.health_check.path == "/ready" and make_vs("e").spec.health_check.type == "none"
