"""Kube tier: the agent and the controller against kmock's Kubernetes API emulator.

Every test here is marked `kube`. The emulator (kmock, by kopf's author) serves
discovery, lists, watches, merge patches and creations from memory; objects are
changed through its HTTP API so that watches see them, as a real API server's
clients would. It assigns no uid, creationTimestamp or generation, so `Cluster`
sets them like the API server does. The kernel is `vsop.adapters.kernel.fake_kernel()`:
tests assert the state the fakes end in. Nothing leaves loopback.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import gc
import itertools
import os
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Mapping

import attrs
import kmock
import kmock._internal.parsing as kmock_parsing
import pytest

from vsop.adapters.conntrack import FakeConntrack
from vsop.core.state import KernelState
from vsop.adapters.kernel import fake_kernel
from vsop.kube.agent import Agent, AgentOptions
from vsop.kube.apiserver import ApiServerAddresses
from vsop.kube.client import ApiWriter, Connection, ObjectRef
from vsop.kube.controller import Controller, ControllerOptions, load_balancers
from vsop.kube.loadbalancers import Options as LoadBalancerOptions
from vsop.kube.leader import Elector, KubeLeaseApi, Timing, identity
from vsop.kube.relist import Relister

HERE = Path(__file__).resolve().parent

VS = "vsop.dev/v1alpha1/virtualservices"
SLICES = "discovery.k8s.io/v1/endpointslices"
NODES = "v1/nodes"
EVENTS = "v1/events"
REPORTS = "vsop.dev/v1alpha1/nodereports"
POOLS = "vsop.dev/v1alpha1/vippools"
SPEAKERS = "vsop.dev/v1alpha1/bgpspeakers"
SERVICES = "v1/services"
LEASES = "coordination.k8s.io/v1/leases"
NAMESPACES = "v1/namespaces"

WAIT_SECONDS = 10.0  # an upper bound only: waits return as soon as the condition holds


def pytest_configure(config: pytest.Config) -> None:
    # kmock 0.8 loads its bundled discovery data with a deprecated importlib call.
    config.addinivalue_line("filterwarnings", "ignore:read_binary is deprecated:DeprecationWarning")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in Path(item.path).resolve().parents:
            item.add_marker(pytest.mark.kube)


# The tier's per-test bound (pytest-timeout, tests/run-tiers.sh) prints every thread's stack, but a
# test stuck in the kube tier waits in its event loop, whose thread stack is only `select`: the
# awaits that never end are in its tasks. Shortly before the bound (tests/run-tiers.sh) this prints the test's name and
# every task's stack, so one hang in a run of hundreds names its test and the await it sits in.
TASK_DUMP_SECONDS = float(os.environ.get("KUBE_TASK_DUMP_SECONDS", "0"))


def _dump_tasks(nodeid: str) -> None:
    out = sys.__stderr__
    assert out is not None
    print(f"\n=== {nodeid}: still running after {TASK_DUMP_SECONDS:.0f} s; its event loops' tasks:", file=out)
    loops = [o for o in gc.get_objects() if isinstance(o, asyncio.AbstractEventLoop) and o.is_running()]
    for loop in loops:
        for _ in range(3):  # the set of tasks can change while it is copied from this thread
            try:
                tasks = list(asyncio.all_tasks(loop))
                break
            except RuntimeError:
                continue
        else:
            tasks = []
        for task in tasks:
            print(f"--- {task!r}", file=out)
            task.print_stack(limit=12, file=out)
    out.flush()


@pytest.fixture(autouse=True)
def _tasks_dumped_before_the_bound(request: pytest.FixtureRequest) -> Any:
    if TASK_DUMP_SECONDS <= 0:
        yield
        return
    timer = threading.Timer(TASK_DUMP_SECONDS, _dump_tasks, (request.node.nodeid,))
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


async def until(condition: Callable[[], Any], what: str = "condition", timeout: float = WAIT_SECONDS) -> Any:
    """Poll until `condition()` is truthy; fail with `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


@attrs.frozen
class StaleResourceVersion(kmock.KubernetesError):
    """What the API server answers a write whose metadata.resourceVersion is not the object's."""

    status: int = 409
    reason: str = "Conflict"
    message: str = "the object has been modified; please apply your changes to the latest version and try again"


GAP: dict[str, Any] = {"type": "GAP"}  # on a change bus: the watches reading it end there
EXPIRED = {"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Expired", "code": 410,
                                      "message": "too old resource version"}}


class Emulator(kmock.KubernetesEmulator):
    """kmock's emulator with watches that miss nothing, and resourceVersions.

    kmock 0.8 serves a watch by copying the objects under its lock, releasing it,
    streaming the copies and only then subscribing to its change bus: an object created
    in between (a test writing right after a component started, under load) is in
    neither, and the watcher never hears of it. A real API server resumes the watch
    from the list's resourceVersion. Here the subscription is taken under the same
    lock as the copy (kmock publishes changes under that lock), so each change is in
    exactly one of them.

    kmock 0.8 keeps no resourceVersion: here every create and patch stamps a new one, and a
    patch carrying metadata.resourceVersion is refused (409 Conflict) unless it is the
    object's current one, the API server's optimistic concurrency (Lease writes and
    allocations rely on it). Writes are serialized so that check and write are one step.
    """

    _versions = itertools.count(100)
    _writes: asyncio.Lock | None = None
    _gaps: dict[Any, asyncio.Event] | None = None

    async def open_gap(self, *resources: str) -> None:
        """A watch gap: every open watch of these kinds ends (as a dropped connection does), and
        a new one is held, hearing nothing, until `close_gap`. What changes meanwhile reaches
        no watcher: the gap's marker goes on each kind's change bus under the emulator's lock, so
        a watch stops before any change made after this returns."""
        self._gaps = self._gaps or {}
        async with self._lock:
            for name in resources:
                resource = kmock.resource(name)
                self._gaps[resource] = asyncio.Event()
                await self._buses[resource].put(GAP)

    def close_gap(self, *resources: str) -> None:
        """End the gap with the API server's answer to a watch from a compacted resourceVersion:
        each held watch gets `410 Gone` (an ERROR event, as the watch cache sends it) and ends;
        the client must list again."""
        for name in resources:
            assert self._gaps is not None
            self._gaps.pop(kmock.resource(name)).set()

    async def _handle(self, request: Any) -> Any:
        if request.resource is None or request.action not in (kmock.action.CREATE, kmock.action.UPDATE) or not isinstance(request.data, dict):
            return await super()._handle(request)
        if self._writes is None:
            self._writes = asyncio.Lock()
        async with self._writes:
            meta = request.data.setdefault("metadata", {})
            if request.action == kmock.action.UPDATE and meta.get("resourceVersion") is not None:
                key = (request.resource, request.namespace, request.name)
                current = self._objects[key] if key in self._objects else None
                if current is not None and not current.deleted and (current.get("metadata") or {}).get("resourceVersion") != meta["resourceVersion"]:
                    return await self._render_error(StaleResourceVersion())
            meta["resourceVersion"] = str(next(self._versions))
            return await super()._handle(request)

    async def _serve_watch(self, request: Any) -> AsyncIterator[Any]:
        yield b""  # headers first: the client waits for them before anything streams
        assert request.resource is not None
        gap = (self._gaps or {}).get(request.resource)
        if gap is not None:
            await gap.wait()
            yield EXPIRED
            return
        bus = self._buses[request.resource]
        async with self._lock:
            marker = await bus.mark()
            events = self._replayed(request)
        try:
            for event in events:
                yield event
            async for event in bus.stream(since=marker):
                if event is GAP:
                    return  # the connection dropped
                meta = (event.get("object") or {}).get("metadata") or {}
                if _watched(request, (request.resource, meta.get("namespace"), meta.get("name"))):
                    yield event
        finally:
            await bus.unmark(marker)

    def _replayed(self, request: Any) -> list[dict[str, Any]]:
        """What a new watch hears first (under the lock): every object it watches, as ADDED."""
        return [{"type": "ADDED", "object": obj.raw} for key, obj in self._objects.items() if _watched(request, key) and not obj.deleted]


def _parse_path(path: str) -> Any:
    """kmock 0.8 reads `/api/v1/namespaces` as "namespace <missing>" and answers 500; the API
    server lists Namespaces there (and `/api/v1/namespaces/NAME` is that Namespace). The agent and
    the controller watch Namespaces (their labels decide VipPool namespaceSelectors)."""
    parts = path.strip("/").split("/")
    if parts[:2] == ["api", "v1"] and parts[2:3] == ["namespaces"] and len(parts) in (3, 4):
        return kmock_parsing.ParsedPath("", "v1", "namespaces", None, parts[3] if len(parts) == 4 else None, None)
    return _kmock_parse_path(path)


_kmock_parse_path = kmock_parsing.parse_path
kmock_parsing.parse_path = _parse_path


def _watched(request: Any, key: tuple[Any, str | None, str | None]) -> bool:
    resource, namespace, name = key
    return resource == request.resource and request.namespace in (None, namespace) and request.name in (None, name)


@pytest.fixture
def kmock_options(kmock_options: dict[str, Any]) -> dict[str, Any]:
    return {**kmock_options, "cls": Emulator}


class Cluster:
    """The emulated API server, with the bookkeeping the real one does (uid, creation time, generation)."""

    def __init__(self, server: kmock.KubernetesEmulator):
        self.server = server
        self.url = str(server.url).rstrip("/")
        self._clock = itertools.count(1)

    def _stamp(self) -> str:
        # One second apart, in creation order: "older" is well defined.
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(1_700_000_000 + next(self._clock)))

    @staticmethod
    def _path(resource: str, namespace: str | None, name: str | None = None, sub: str | None = None) -> str:
        group_version, plural = resource.rsplit("/", 1)
        root = f"/api/{group_version}" if "/" not in group_version else f"/apis/{group_version}"
        path = f"{root}/namespaces/{namespace}/{plural}" if namespace else f"{root}/{plural}"
        if name:
            path += f"/{name}"
        if sub:
            path += f"/{sub}"
        return path

    async def create(self, resource: str, body: Mapping[str, Any], created: str | None = None) -> dict[str, Any]:
        body = copy.deepcopy(dict(body))
        meta = body.setdefault("metadata", {})
        meta.setdefault("uid", str(uuid.uuid4()))
        meta.setdefault("creationTimestamp", created or self._stamp())
        meta.setdefault("generation", 1)
        meta.setdefault("resourceVersion", "1")
        async with self.server.post(self._path(resource, meta.get("namespace")), json=body) as response:
            assert response.status < 300, await response.text()
            return await response.json()

    async def patch(self, resource: str, namespace: str | None, name: str, patch: Mapping[str, Any], sub: str | None = None) -> dict[str, Any]:
        patch = copy.deepcopy(dict(patch))
        if "spec" in patch and sub is None:  # the API server bumps generation on spec changes
            current = self.get(resource, namespace, name)
            patch.setdefault("metadata", {})["generation"] = int(current["metadata"].get("generation", 1)) + 1
        async with self.server.patch(
            self._path(resource, namespace, name, sub), json=patch, headers={"Content-Type": "application/merge-patch+json"}
        ) as response:
            assert response.status < 300, await response.text()
            return await response.json()

    async def delete(self, resource: str, namespace: str | None, name: str) -> None:
        async with self.server.delete(self._path(resource, namespace, name)) as response:
            assert response.status < 300, await response.text()

    def get(self, resource: str, namespace: str | None, name: str) -> dict[str, Any]:
        return _plain(self.server.objects[resource, namespace, name])

    def status(self, namespace: str, name: str) -> dict[str, Any]:
        return self.get(VS, namespace, name).get("status") or {}

    def report(self, node: str) -> dict[str, Any]:
        """`status.virtualServices` of a node's NodeReport ({} when it has none)."""
        key = (kmock.resource(REPORTS), None, node)
        if key not in self.server.objects or self.server.objects[key].deleted:
            return {}
        return (self.get(REPORTS, None, node).get("status") or {}).get("virtualServices") or {}

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        found = [_plain(obj) for (res, _, _), obj in self.server.objects.items() if res == kmock.resource(EVENTS) and not obj.deleted]
        return [e for e in found if name is None or e["involvedObject"]["name"] == name]

    def requests(self, method: str | None = None) -> list[Any]:
        return [r for r in list(self.server) if method is None or r.method == method.upper()]

    # -- shorthands --

    async def node(self, name: str, labels: Mapping[str, str] | None = None, addresses: tuple[str, ...] = (), ready: bool = True) -> None:
        await self.create(NODES, {
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, **(labels or {})}},
            "status": {
                "addresses": [{"type": "InternalIP", "address": a} for a in addresses] + [{"type": "Hostname", "address": name}],
                "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
            },
        })

    async def vs(self, name: str, spec: Mapping[str, Any], namespace: str = "default", created: str | None = None) -> dict[str, Any]:
        return await self.create(VS, {"apiVersion": "vsop.dev/v1alpha1", "kind": "VirtualService",
                                      "metadata": {"name": name, "namespace": namespace}, "spec": dict(spec)}, created=created)

    async def endpoint_slice(self, name: str, service: str, endpoints: list[dict[str, Any]], ports: list[dict[str, Any]],
                             namespace: str = "default", address_type: str = "IPv4") -> None:
        await self.create(SLICES, {
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": name, "namespace": namespace, "labels": {"kubernetes.io/service-name": service}},
            "addressType": address_type, "endpoints": endpoints, "ports": ports,
        })


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def register_resources(emulator: kmock.KubernetesEmulator) -> None:
    """The built-in kinds and vsop's two: VirtualServices and NodeReports."""
    emulator.resources.load_bundled()
    emulator.resources[VS] = kmock.ResourceInfo(
        kind="VirtualService", singular="virtualservice", namespaced=True, shortnames={"vsop"},
        verbs={"get", "list", "watch", "create", "update", "patch", "delete"}, subresources={"status"},
    )
    emulator.resources[POOLS] = kmock.ResourceInfo(
        kind="VipPool", singular="vippool", namespaced=False, shortnames={"vsoppool"},
        verbs={"get", "list", "watch", "create", "update", "patch", "delete"}, subresources={"status"},
    )
    emulator.resources[SPEAKERS] = kmock.ResourceInfo(
        kind="BGPSpeaker", singular="bgpspeaker", namespaced=False, shortnames={"vsopbgp"},
        verbs={"get", "list", "watch", "create", "update", "patch", "delete"},
    )
    emulator.resources[REPORTS] = kmock.ResourceInfo(
        kind="NodeReport", singular="nodereport", namespaced=False, shortnames={"vsopnr"},
        verbs={"get", "list", "watch", "create", "update", "patch", "delete"},
    )


@pytest.fixture
def cluster(kmock: kmock.KubernetesEmulator) -> Cluster:
    register_resources(kmock)
    return Cluster(kmock)


class RecordingWriter(ApiWriter):
    """The real writer, remembering every patch and Event it sent."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.patches: list[tuple[str, dict[str, Any]]] = []
        self.posted: list[tuple[str, str, str, str]] = []
        self.reports: list[tuple[str, dict[str, Any]]] = []  # (node, merge patch) of NodeReports

    async def patch_status(self, ref: ObjectRef, status: Mapping[str, Any]) -> bool:
        self.patches.append((str(ref), copy.deepcopy(dict(status))))
        return await super().patch_status(ref, status)

    async def post_event(self, ref: ObjectRef, type: str, reason: str, message: str) -> None:
        self.posted.append((str(ref), type, reason, message))
        await super().post_event(ref, type, reason, message)

    async def patch_node_report(self, node: str, body: Mapping[str, Any]) -> None:
        self.reports.append((node, copy.deepcopy(dict(body))))
        await super().patch_node_report(node, body)


def make_agent(cluster: Cluster, node: str = "node-a", state: KernelState | None = None, **options: Any) -> tuple[Agent, Any, RecordingWriter]:
    """An agent on a fake kernel, as main() would build it; (agent, fake kernel, writer)."""
    kernel, fake = fake_kernel(state)
    connection = Connection.for_url(cluster.url)
    writer = RecordingWriter(connection, "vsop-agent", host=node)
    options.setdefault("resync_seconds", 3600.0)  # tests wake the loop themselves
    options.setdefault("debounce_seconds", 0.01)
    options.setdefault("vip_policy", "any")  # tests of other features make no VipPools; tests/kube/test_claims.py use "pools"
    # Tests of other features delete a winner and watch the next one take over at once; tests/kube/test_claims.py hold claims.
    options.setdefault("claim_grace_seconds", 0.0)
    apiserver = options.pop("apiserver", None) or ApiServerAddresses.for_connection(connection)  # as main() does
    agent = Agent(AgentOptions(node_name=node, **options), kernel, writer, conntrack=FakeConntrack(), apiserver=apiserver)
    connection.register_login(agent.registry)
    return agent, fake, writer


def make_controller(cluster: Cluster, elect: bool = False, lb: LoadBalancerOptions | None = LoadBalancerOptions(),
                    **options: Any) -> tuple[Controller, RecordingWriter]:
    """A controller as main() builds it; with `elect`, holding the Lease and relisting as deployed."""
    connection = Connection.for_url(cluster.url)
    writer = RecordingWriter(connection, "vsop-controller", host="controller-0")
    options.setdefault("resync_seconds", 3600.0)
    options.setdefault("debounce_seconds", 0.01)
    options.setdefault("vip_policy", "any")  # as make_agent
    options.setdefault("claim_grace_seconds", 0.0)  # as make_agent
    elector = Elector(KubeLeaseApi(connection), identity("controller-0"), Timing(15, 10, 0.05)) if elect else None
    controller = Controller(ControllerOptions(**options), writer, elector=elector,
                            relist=Relister(connection, options.get("namespaces", ())) if elect else None,
                            load_balancers=load_balancers(connection, lb) if lb is not None else None)
    connection.register_login(controller.registry)
    return controller, writer


@contextlib.asynccontextmanager
async def running(*components: Agent | Controller) -> AsyncIterator[None]:
    """Run the components (each with its own kopf) and stop them all at once, as separate processes would."""
    stop = asyncio.Event()
    tasks = [asyncio.create_task(component.run(stop)) for component in components]
    try:
        yield
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), timeout=15)


@contextlib.asynccontextmanager
async def run_agent(cluster: Cluster, node: str = "node-a", state: KernelState | None = None, **options: Any) -> AsyncIterator[tuple[Agent, Any, RecordingWriter]]:
    agent, fake, writer = make_agent(cluster, node, state, **options)
    async with running(agent):
        yield agent, fake, writer


@contextlib.asynccontextmanager
async def run_controller(cluster: Cluster, elect: bool = False, **options: Any) -> AsyncIterator[tuple[Controller, RecordingWriter]]:
    controller, writer = make_controller(cluster, elect, **options)
    async with running(controller):
        yield controller, writer


async def resync(component: Agent | Controller) -> None:
    """Wake the loop and wait for a full turn that started after now (a running turn does not count)."""
    target = component.turns + (2 if component.busy else 1)
    component.trigger.wake("test")
    await until(lambda: component.turns >= target, "a full reconcile turn")
