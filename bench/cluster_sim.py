"""Cluster-scale simulation: what one change costs the API server with N node agents (issue #15).

N node agents (the real `vsop.kube.agent.Agent`, each on its own in-memory fake kernel) and
the real controller run in this one process against kmock, the Kubernetes API emulator, with
M VirtualServices. Per N it prints the API requests by verb with their responses' bytes (from kmock's request
log) and the watch events delivered with their bytes, for: (a) one object created, (b) one object changed, (c) one
static backend failing its health check, (d) one node joining, (e) quiet minutes (steady
state, compressed clock); the size of one VirtualService object; health probes per backend
per interval; (f) how long a node that is not a designated checker of a static backend, and
the only node that cannot reach it, takes to take it out (weight 0): its fake kernel's IPVS
counters show that backend's new connections without a reply packet while the resync
periods go on (`trouble_out`).

What makes N=500 fit in one process on a small machine (and why the counts stay exact):
- One watch stream per resource for the whole process (`Farm`), fanned out in-process to
  every component's kopf handlers (taken from its `registry`: indexes, event handlers,
  startup), the way kopf calls them. A watch event is counted once per component whose
  selectors/filters take it: exactly what the API server would deliver to N separate
  watches. The components are driven only through `registry` and `reconcile_forever()`.
- Health checks go through a fake prober (`vsop.node.probes.check_tcp` replaced in this
  process): no packet is sent, probes are counted per backend, and a backend is "down"
  when the scenario says so, everywhere or from one node only (each component's loop runs
  with its name in `PROBING`, which the probe tasks it starts inherit). Their interval is 1 s, or N/100 s when longer
  (`--check-interval`); probes are counted per interval.
- Each watched body is parsed (and fingerprinted) once for all the components it is
  delivered to (`ParseOnce`): CPU only, the deliveries are counted as before.
- kmock scans its whole request log for every request it serves (quadratic over a run);
  the log is kept short for kmock and whole for the counts (`RequestArchive`), and while a
  request is served kmock's matching sees that request alone (the answer depends on it only).
- One thread for every agent's kernel work (`SharedSyncThread`) instead of one per agent.
- The agents and the controller run with `vip_policy="any"`: no VipPool is made, and under the
  default ("pools") every object would be refused everywhere and nothing counted.
- "Settled" means: no write and no watch event for a second (N/250 s when longer), no
  wake-up pending in any component and no turn running that a change woke (periodic
  resyncs of N agents do not count, or it never settles).
Progress goes to stderr; N = 1,000 takes about 6 minutes on a 2-core machine, 10 and 100 together 2.
- Compressed clock: a resync period (30 s in a cluster) lasts 2 s here, or N/50 s when
  that is longer (`--compress`); "ten quiet minutes" are 20 such periods of every agent.
  Health checks run at their own interval (1 s) against the fake prober.
- Setup (not measured) seeds each object's status with what the nodes would have reported,
  copied from the first agent's own report, instead of N x M real patches.
Requests made by the simulation itself (creating objects, its watch streams) are not
counted; a joining agent's initial lists are real requests (made on its behalf). Watch
reconnections are not simulated: kopf resumes a watch from its last resourceVersion
(bookmarks asked for) and lists again only after "410 Gone", as an informer does.

    .venv/bin/python bench/cluster_sim.py --nodes 10 100 1000 --objects 100
    make bench-cluster

Figures only, no assertions: docs/performance.md records them. Nothing leaves loopback.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import concurrent.futures
import contextvars
import dataclasses
import json
import logging
import resource
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

REPOSITORY = Path(__file__).resolve().parents[1]
if str(REPOSITORY / "operator") not in sys.path:
    sys.path.insert(0, str(REPOSITORY / "operator"))
if str(REPOSITORY) not in sys.path:
    sys.path.insert(0, str(REPOSITORY))

import aiohttp  # noqa: E402
import kmock  # noqa: E402
import kopf  # noqa: E402

import vsop.node.probes  # noqa: E402
import vsop.kube.objects  # noqa: E402
from tests.kube.conftest import NODES, SLICES, VS, Cluster  # noqa: E402
from vsop.adapters.kernel import fake_kernel  # noqa: E402
from vsop.core.state import RealServerKey, ServiceKey  # noqa: E402
from vsop.kube.agent import Agent, AgentOptions  # noqa: E402
from vsop.kube.apiserver import ApiServerAddresses  # noqa: E402
from vsop.kube.client import ApiWriter, Connection  # noqa: E402
from vsop.kube.controller import Controller, ControllerOptions  # noqa: E402

SIM_AGENT = "vsop-cluster-sim"  # user agent of the simulation's own requests (not counted)
ON_BEHALF = "vsop-cluster-sim-agent"  # a component's request made by the farm for it (counted)
QUIET_SECONDS = [1.0]  # settled after this long without a write or event (1 s, or N/250 s when longer)
REPORTS = "vsop.dev/v1alpha1/nodereports"
BYTES = "bytes "  # prefix of the counters of watch events' bytes delivered, by resource


# --- a fake prober ------------------------------------------------------------------------


PROBING: contextvars.ContextVar[str] = contextvars.ContextVar("probing_node", default="")  # the component a probe runs for


class FakeProber:
    """Replaces the TCP probe of `vsop.node.probes`: counts probes per backend, fails the `down` ones
    (and, from one node, the ones `down_from` names for it)."""

    def __init__(self) -> None:
        self.down: set[str] = set()
        self.down_from: dict[str, set[str]] = collections.defaultdict(set)  # node -> addresses it cannot reach
        self.probes: collections.Counter[tuple[str, int]] = collections.Counter()
        self._original: Any = None

    async def check_tcp(self, address: str, port: int, timeout: float) -> str | None:
        self.probes[(address, port)] += 1
        await asyncio.sleep(0)
        down = address in self.down or address in self.down_from.get(PROBING.get(), ())
        return "TCP connect failed: Connection refused (simulated)" if down else None

    def install(self) -> None:
        self._original = vsop.node.probes.check_tcp
        vsop.node.probes.check_tcp = self.check_tcp  # type: ignore[assignment]

    def uninstall(self) -> None:
        vsop.node.probes.check_tcp = self._original


class ParseOnce:
    """One parse (and fingerprint) of a watched body for all the components it is delivered to.

    Every agent parses every VirtualService it is handed; the farm hands the same body to
    N components, so N identical pydantic validations per event are the simulation's
    biggest cost and say nothing about the API server. Keyed by the body's identity.
    """

    def __init__(self) -> None:
        self.cache: dict[tuple[str, int], tuple[Any, Any]] = {}
        self._original: dict[str, Any] = {}

    def _wrap(self, name: str) -> Callable[[Any], Any]:
        original = self._original[name]

        def cached(body: Any) -> Any:
            key = (name, id(body))
            found = self.cache.get(key)
            if found is not None and found[0] is body:
                return found[1]
            if len(self.cache) > 20_000:
                self.cache.clear()
            result = original(body)
            self.cache[key] = (body, result)
            return result

        return cached

    def install(self) -> None:
        # parse_and_fingerprint: what the agents' VirtualService index calls (vsop.kube.source).
        for name in ("parse", "fingerprint", "parse_and_fingerprint"):
            if not hasattr(vsop.kube.objects, name):  # the design before has no parse_and_fingerprint
                continue
            self._original[name] = getattr(vsop.kube.objects, name)
            setattr(vsop.kube.objects, name, self._wrap(name))

    def uninstall(self) -> None:
        for name, original in self._original.items():
            setattr(vsop.kube.objects, name, original)
        self.cache.clear()


# --- kopf's role, shared by many components ---------------------------------------------------


def _resource_of(selector: Any) -> str:
    group, version, plural = selector.group or "", selector.version, selector.plural or selector.any_name
    return f"{group}/{version}/{plural}" if group else f"{version}/{plural}"


def _passes(handler: Any, body: Mapping[str, Any], kwargs: Mapping[str, Any]) -> bool:
    labels = (body.get("metadata") or {}).get("labels") or {}
    for key, want in (handler.labels or {}).items():
        if want is kopf.PRESENT:
            if key not in labels:
                return False
        elif want is kopf.ABSENT:
            if key in labels:
                return False
        elif callable(want):
            if not want(labels.get(key), **kwargs):
                return False
        elif labels.get(key) != want:
            return False
    return handler.when is None or bool(handler.when(**kwargs))


class Component:
    """One agent or controller as kopf would run it: its indexes, its handlers, its loop."""

    def __init__(self, name: str, obj: Agent | Controller):
        self.name = name
        self.obj = obj
        registry = obj.registry
        self.indexers = list(registry._indexing.get_all_handlers())
        self.watchers = list(registry._watching.get_all_handlers())
        self.startups = [h for h in registry._activities.get_all_handlers() if str(getattr(h.activity, "name", h.activity)).upper() == "STARTUP"]
        self.resources = {_resource_of(h.selector) for h in self.indexers + self.watchers}
        self.indexes: dict[str, dict[Any, list[Any]]] = {str(h.id): {} for h in self.indexers}
        self._contrib: dict[tuple[str, Any], dict[Any, Any]] = {}  # (index id, object key) -> {index key: value}
        self.task: asyncio.Task[None] | None = None
        self.changing = 0  # turns running that a change woke (not periodic ones), or the first
        self.turned = 0  # turns finished
        # The agent's Node watch has a field selector (metadata.name): the API server sends it
        # its own Node only, so the farm hands it no other (none would be taken or counted).
        self.only: dict[str, str] = {"v1/nodes": obj.node_name} if isinstance(obj, Agent) else {}
        for method in ("sync_once", "reconcile_once"):
            if hasattr(obj, method):
                setattr(obj, method, self._counted(getattr(obj, method)))

    def _counted(self, turn: Callable[..., Any]) -> Callable[..., Any]:
        async def counted(*args: Any, **kwargs: Any) -> Any:
            # The first turn is a full one too, but the setup must wait for it (the first report).
            woken = not kwargs.get("periodic", False) or not self.turned
            self.changing += woken
            try:
                return await turn(*args, **kwargs)
            finally:
                self.changing -= woken
                self.turned += 1

        return counted

    async def start(self) -> None:
        for handler in self.startups:
            await handler.fn(logger=logging.getLogger(self.name), retry=0, started=None, runtime=None, memo=None, **self.indexes)

    async def deliver(self, resource: str, event_type: str | None, body: Mapping[str, Any]) -> bool:
        """Index and handle one event; True when any of this component's handlers took it."""
        meta = body.get("metadata") or {}
        kwargs = {
            "body": body, "meta": meta, "spec": body.get("spec") or {}, "status": body.get("status") or {},
            "name": meta.get("name"), "namespace": meta.get("namespace"), "uid": meta.get("uid"),
            "labels": meta.get("labels") or {}, "annotations": meta.get("annotations") or {},
            "type": event_type, "event": {"type": event_type, "object": body},
            "logger": logging.getLogger(self.name), "patch": {}, "memo": None, "resource": None,
        }
        taken = False
        key = (meta.get("namespace"), meta.get("name"))
        for handler in self.indexers:
            if _resource_of(handler.selector) != resource:
                continue
            slot = (str(handler.id), key)
            old = self._contrib.pop(slot, {})
            index = self.indexes[str(handler.id)]
            for ikey, value in old.items():
                values = index.get(ikey, [])
                if value in values:
                    values.remove(value)
                if not values:
                    index.pop(ikey, None)
            if event_type != "DELETED" and _passes(handler, body, kwargs):
                taken = True
                new = await handler.fn(**kwargs) or {}
                for ikey, value in new.items():
                    index.setdefault(ikey, []).append(value)
                self._contrib[slot] = dict(new)
        for handler in self.watchers:
            if _resource_of(handler.selector) == resource and _passes(handler, body, kwargs):
                taken = True
                await handler.fn(**kwargs)
        return taken


class Farm:
    """One watch per resource for the process, fanned out to every component; counts deliveries."""

    def __init__(self, cluster: Cluster):
        self.cluster = cluster
        self.components: list[Component] = []
        self.delivered: collections.Counter[str] = collections.Counter()
        self.streams: dict[str, asyncio.Task[None]] = {}
        self.objects: dict[str, dict[tuple[Any, Any], dict[str, Any]]] = collections.defaultdict(dict)
        self.session: aiohttp.ClientSession | None = None
        self.last_event = time.monotonic()

    def _url(self, resource: str) -> str:
        return self.cluster.url + Cluster._path(resource, None)

    async def _watch(self, resource: str, ready: asyncio.Event) -> None:
        assert self.session is not None
        # kmock replays what exists as ADDED first: that is the listing.
        existing = sum(1 for (res, _, _), obj in self.cluster.server.objects.items() if res == kmock.resource(resource) and not obj.deleted)
        seen = 0
        if existing == 0:
            ready.set()
        async with self.session.get(self._url(resource), params={"watch": "true"}, timeout=aiohttp.ClientTimeout(total=None)) as response:
            buffer = b""
            async for chunk in response.content.iter_any():
                buffer += chunk
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    if not line.strip():
                        continue
                    event = json.loads(line)
                    body = event["object"]
                    meta = body.get("metadata") or {}
                    key = (meta.get("namespace"), meta.get("name"))
                    listing = seen < existing
                    if event["type"] == "DELETED":
                        self.objects[resource].pop(key, None)
                    else:
                        self.objects[resource][key] = body
                    for component in self.components:
                        if resource in component.resources and component.only.get(resource, key[1]) == key[1]:
                            # kopf hands listed objects to event handlers with no event type.
                            if await component.deliver(resource, None if listing else event["type"], body) and not listing:
                                self.delivered[resource] += 1
                                self.delivered[BYTES + resource] += len(line) + 1
                    self.last_event = time.monotonic()
                    if listing:
                        seen += 1
                        if seen == existing:
                            ready.set()

    async def open(self, resources: Iterable[str]) -> None:
        self.session = aiohttp.ClientSession(headers={"User-Agent": SIM_AGENT})
        for resource in resources:
            ready = asyncio.Event()
            self.streams[resource] = asyncio.create_task(self._watch(resource, ready))
            await ready.wait()

    async def add(self, component: Component, *, list_on_behalf: bool = False) -> None:
        """Start a component: its indexes filled from what the streams hold, then its loop.

        `list_on_behalf`: make the initial LIST requests kopf would make for it (a joining
        node), so they are counted; the shared streams then carry it on.
        """
        if list_on_behalf:
            assert self.session is not None
            for resource in sorted(component.resources):
                async with self.session.get(self._url(resource), headers={"User-Agent": ON_BEHALF}) as response:
                    await response.read()
        await component.start()
        for resource in sorted(component.resources):
            for (_, name), body in list(self.objects[resource].items()):
                if component.only.get(resource, name) != name:
                    continue
                await component.deliver(resource, None, body)
        self.components.append(component)
        token = PROBING.set(component.name)
        try:  # the task copies PROBING as it is now: the probes it starts run as this component's
            component.task = asyncio.create_task(component.obj.reconcile_forever(), name=f"loop {component.name}")
        finally:
            PROBING.reset(token)

    async def close(self) -> None:
        for component in self.components:
            if component.task is not None:
                component.task.cancel()
        await asyncio.gather(*(c.task for c in self.components if c.task is not None), return_exceptions=True)
        for task in self.streams.values():
            task.cancel()
        await asyncio.gather(*self.streams.values(), return_exceptions=True)
        if self.session is not None:
            await self.session.close()

    def busy(self) -> bool:
        """A component has a wake-up pending or a turn a change woke running; periodic resyncs do not count."""
        for c in self.components:
            if c.changing:
                return True
            trigger = getattr(c.obj, "trigger", None)
            event = getattr(trigger, "_event", None)
            if event is not None and event.is_set():
                return True
        return False


# --- the scenarios ----------------------------------------------------------------------------


CHECK_INTERVAL = [1]  # intervalSeconds of the checked objects (set per N by simulate)


def spec(index: int, checked: bool) -> dict[str, Any]:
    body: dict[str, Any] = {
        "vip": f"169.254.{index // 250 + 1}.{index % 250 + 1}",
        "ports": [{"name": "http", "port": 80, "targetPort": 8080}],
        "backends": [{"address": f"10.250.{index // 250}.{2 * (index % 125) + 2}"}, {"address": f"10.250.{index // 250}.{2 * (index % 125) + 3}"}],
    }
    if checked:
        body["healthCheck"] = {"type": "tcp", "intervalSeconds": CHECK_INTERVAL[0], "timeoutSeconds": 1, "failureThreshold": 1, "successThreshold": 1}
    return body


class RequestArchive(list):  # type: ignore[type-arg]
    """kmock's log of the requests it served, kept short for kmock and whole for the counts.

    kmock matches each incoming request against its reactions by scanning its whole
    request log through its filtering DSL (`request in view`), once per reaction: every
    request costs time proportional to all the requests before it, quadratic over a run
    of hundreds of thousands of requests and most of the simulation's time at N = 100.
    This list replaces the emulator's own (the root view's `_requests`): kmock appends a
    request and matches it in the same step, before any await, so only the newest few
    need to stay visible to it; the older ones move to `archived`, where the counts read
    them. `len()` counts both, as kmock numbers requests by it.
    """

    KEEP = 8
    SERVING: contextvars.ContextVar[Any] = contextvars.ContextVar("serving")  # the request this task serves

    def __init__(self, cluster: Cluster):
        super().__init__()
        self.archived: list[Any] = []
        self.installed = isinstance(getattr(cluster.server, "_requests", None), list)
        if self.installed:
            self.extend(cluster.server._requests)
            cluster.server._requests = self

    def append(self, request: Any) -> None:
        super().append(request)
        if list.__len__(self) > 2 * self.KEEP:
            cut = list.__len__(self) - self.KEEP
            self.archived.extend(list.__getitem__(self, slice(0, cut)))
            list.__delitem__(self, slice(0, cut))

    def __len__(self) -> int:
        return len(self.archived) + list.__len__(self)

    def __iter__(self) -> Any:
        """Inside the serving of a request, that request alone: kmock iterates its log only to
        ask whether the request it serves is seen through each reaction's filters (`request in
        view`, by identity), once per reaction for every request; the answer depends on that
        request alone, and the scan of even a few older ones through kmock's filtering DSL was
        a third of the run's time at N = 200. Elsewhere, the short log."""
        serving = self.SERVING.get(None)
        if serving is not None:
            return iter((serving,))
        return list.__iter__(self)

    def since(self, start: int) -> list[Any]:
        live = list(list.__iter__(self))
        if start >= len(self.archived):
            return live[start - len(self.archived):]
        return self.archived[start:] + live


ARCHIVE: list[RequestArchive] = []  # the current run's
RESPONSE_BYTES: dict[int, int] = {}  # request id -> bytes of its response body (the current run's)


class MeasuredEmulator(kmock.KubernetesEmulator):  # type: ignore[misc]
    """kmock, noting the bytes of each response body it serves (a watch stream's: what it wrote)."""

    async def _handle(self, request: Any) -> Any:
        RequestArchive.SERVING.set(request)  # this task's (aiohttp serves each request in its own)
        response = await super()._handle(request)
        size = getattr(response, "body_length", 0) or 0
        if not size and isinstance(response, aiohttp.web.Response) and response.body is not None:
            size = len(response.body) if isinstance(response.body, (bytes, bytearray)) else (response.content_length or 0)
        RESPONSE_BYTES[request.id] = size
        return response


def request_log(cluster: Cluster) -> RequestArchive:
    return ARCHIVE[-1]


class Counts:
    """API requests by verb (components only) and watch events delivered, between two marks."""

    def __init__(self, cluster: Cluster, farm: Farm):
        self.cluster, self.farm = cluster, farm

    def mark(self) -> tuple[int, collections.Counter[str]]:
        return len(request_log(self.cluster)), collections.Counter(self.farm.delivered)

    def since(self, mark: tuple[int, collections.Counter[str]]) -> dict[str, Any]:
        archive = request_log(self.cluster)
        requests = archive.since(mark[0])
        verbs: collections.Counter[str] = collections.Counter()
        sizes: collections.Counter[str] = collections.Counter()
        for request in requests:
            agent = request.headers.get("User-Agent", "")
            if agent.startswith(SIM_AGENT) and agent != ON_BEHALF or agent.startswith("kmock/"):
                continue
            method = str(request.method).split(".")[-1].upper()
            verb = {"POST": "create", "PATCH": "patch", "PUT": "update", "DELETE": "delete"}.get(method) or str(request.action).split(".")[-1].lower()
            what = (request.resource.plural if request.resource is not None else "?") + ("/" + request.subresource if request.subresource else "")
            verbs[f"{verb} {what}"] += 1
            sizes[f"{verb} {what}"] += RESPONSE_BYTES.get(request.id, 0)
        delivered = collections.Counter(self.farm.delivered)
        delivered.subtract(mark[1])
        watch_bytes = sum(v for k, v in delivered.items() if k.startswith(BYTES))
        delivered = collections.Counter({k: v for k, v in delivered.items() if not k.startswith(BYTES)})
        return {"requests": dict(sorted(verbs.items())), "response_bytes": dict(sorted(sizes.items())),
                "reads": sum(n for k, n in verbs.items() if k.split()[0] not in ("create", "update", "patch", "delete")),
                "read_bytes": sum(n for k, n in sizes.items() if k.split()[0] not in ("create", "update", "patch", "delete")),
                "writes": sum(n for k, n in verbs.items() if k.split()[0] in ("create", "update", "patch", "delete")),
                "watch_events": sum(delivered.values()), "watch_bytes": watch_bytes, "watch_by_resource": {k: v for k, v in sorted(delivered.items()) if v}}


async def settle(cluster: Cluster, farm: Farm, minimum: float = 0.0, timeout: float = 3600.0) -> None:
    """Until nothing happened for QUIET_SECONDS: no write, no watch event, no turn running."""
    start = time.monotonic()
    await asyncio.sleep(minimum)
    last_count = -1
    quiet_since = time.monotonic()
    seen, count = 0, 0
    while time.monotonic() - start < timeout:
        # Writes only: every agent also re-reads the API server's endpoints each resync period.
        archive = request_log(cluster)
        count += sum(1 for r in archive.since(seen) if str(r.method).split(".")[-1].upper() != "GET")
        seen = len(archive)
        if count != last_count or farm.busy() or time.monotonic() - farm.last_event < QUIET_SECONDS[0] / 2:
            last_count, quiet_since = count, time.monotonic()
        elif time.monotonic() - quiet_since >= QUIET_SECONDS[0]:
            return
        await asyncio.sleep(0.1)
    raise TimeoutError("the simulated cluster did not settle")


async def simulate(nodes: int, objects: int, checked: int, resync: float, quiet_resyncs: int, log: Callable[[str], None],
                   interval: int = 1) -> dict[str, Any]:
    CHECK_INTERVAL[0] = interval
    QUIET_SECONDS[0] = max(1.0, nodes / 250.0)
    # Every agent's kernel syncs and API writes run in worker threads: enough of them for N agents.
    asyncio.get_running_loop().set_default_executor(concurrent.futures.ThreadPoolExecutor(max_workers=64))
    prober = FakeProber()
    prober.install()
    once = ParseOnce()
    once.install()
    SYNC_THREAD.append(SharedSyncThread(max_workers=1, thread_name_prefix="vsop-sync"))
    try:
        RESPONSE_BYTES.clear()
        async with MeasuredEmulator() as emulator, kmock.Server(emulator):
            emulator.resources.load_bundled()
            emulator.resources[VS] = kmock.ResourceInfo(
                kind="VirtualService", singular="virtualservice", namespaced=True, shortnames={"vsop"},
                verbs={"get", "list", "watch", "create", "update", "patch", "delete"}, subresources={"status"},
            )
            # Served in both designs (the one before it has nobody using it).
            emulator.resources[REPORTS] = kmock.ResourceInfo(
                kind="NodeReport", singular="nodereport", namespaced=False, shortnames={"vsopnr"},
                verbs={"get", "list", "watch", "create", "update", "patch", "delete"},
            )
            cluster = Cluster(emulator)
            ARCHIVE.append(RequestArchive(cluster))
            assert ARCHIVE[-1].installed, "kmock keeps its request log elsewhere: the counts would be wrong"
            return await _simulate(cluster, prober, nodes, objects, checked, resync, quiet_resyncs, log)
    finally:
        prober.uninstall()
        once.uninstall()
        SYNC_THREAD.pop().close()


def _node_name(index: int) -> str:
    return f"node-{index:04d}"


class SimClock:
    """The agents' loops' clock: real time, plus the resync periods the simulation moves it on by.

    Every agent's loop runs its periodic full resync when this clock says a period has passed
    (`resync_all`), not on its own: N agents' resyncs in the setup and the scenarios (a) to
    (d), which write nothing, were most of the simulation's time at N = 100. The steady state
    drives them, one period after another. Everything else (debounce, health-check intervals,
    the API server's endpoints re-read by an agent that lists them) keeps real time.
    """

    PERIOD = 1e6  # the loops' own resync period: reached only when the simulation moves the clock

    def __init__(self) -> None:
        self.shift = 0.0

    def __call__(self) -> float:
        return time.monotonic() + self.shift


CLOCK = SimClock()


def any_vip(options: type) -> dict[str, Any]:
    """`vip_policy="any"` where the design has VIP policies (dc8d954 on): the simulation makes no
    VipPool, and under the in-cluster default ("pools") every object would be refused on every
    node, programmed nowhere and reported by nobody (its counts would be nothing but the
    controller's). The design before (e7216d4) admits every VIP, as "any" does."""
    return {"vip_policy": "any"} if "vip_policy" in {f.name for f in dataclasses.fields(options)} else {}


class SharedSyncThread(concurrent.futures.ThreadPoolExecutor):
    """One thread for every agent's kernel work, in the order asked (each agent's loop would
    start its own: N threads, whose starts cost the event loop 0.1 s each under load at
    N = 200). A loop runs its kernel work one call at a time, in order: one shared FIFO thread
    keeps that for each. The loops shut their executor down when they stop; this one is shut
    down by the simulation, after all of them."""

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        pass

    def close(self) -> None:
        super().shutdown(wait=True)


SYNC_THREAD: list[SharedSyncThread] = []  # the current run's


FAKE_KERNELS: dict[str, Any] = {}  # node -> its agent's fake kernel (vsop.adapters.fake.FakeKernel), the current run's


def _agent(connection: Connection, name: str, resync: float) -> Agent:
    kernel, fake = fake_kernel()
    FAKE_KERNELS[name] = fake
    writer = ApiWriter(connection, "vsop-agent", host=name)
    agent = Agent(AgentOptions(node_name=name, resync_seconds=resync, debounce_seconds=0.05, **any_vip(AgentOptions)), kernel, writer,
                  apiserver=ApiServerAddresses.for_connection(connection))
    agent.loop.clock, agent.loop.resync_seconds = CLOCK, SimClock.PERIOD
    if hasattr(agent.loop, "_executor") and SYNC_THREAD:
        agent.loop._executor = SYNC_THREAD[-1]
    return agent


async def resync_all(farm: "Farm", resync: float) -> None:
    """One resync period of every agent: the clock moves on by a period, each loop is woken and
    runs its full resync; returns once all have, and no sooner than `resync` seconds."""
    started = time.monotonic()
    agents = [c for c in farm.components if isinstance(c.obj, Agent)]
    turns = {c.name: c.obj.loop.turns for c in agents}
    CLOCK.shift += SimClock.PERIOD
    for component in agents:
        component.obj.trigger.wake("resync period (simulated clock)")
    while any(c.obj.loop.turns <= turns[c.name] or c.obj.loop.busy for c in agents):
        await asyncio.sleep(0.05)
    await asyncio.sleep(max(0.0, resync - (time.monotonic() - started)))


async def _simulate(cluster: Cluster, prober: FakeProber, nodes: int, objects: int, checked: int, resync: float,
                    quiet_resyncs: int, log: Callable[[str], None]) -> dict[str, Any]:
    t0 = time.monotonic()
    for index in range(nodes + 1):  # the last one joins later
        if index < nodes:
            await cluster.node(_node_name(index), addresses=(f"10.0.{index // 250}.{index % 250 + 1}",))
    for index in range(objects):
        await cluster.vs(f"s{index:03d}", spec(index, index < checked))
    connection = Connection.for_url(cluster.url)
    farm = Farm(cluster)
    controller = Controller(ControllerOptions(resync_seconds=resync, debounce_seconds=0.05, **any_vip(ControllerOptions)), ApiWriter(connection, "vsop-controller", host="controller-0"))
    components = [Component("controller", controller)]
    agents = [Component(_node_name(i), _agent(connection, _node_name(i), resync)) for i in range(nodes)]
    await farm.open(sorted(set().union(*(c.resources for c in components + agents[:1]))))
    # The first agent reports alone; its report on each object is copied for every node (setup only).
    await farm.add(agents[0])
    await settle(cluster, farm)
    seeded = 0
    for index in range(objects):
        status = cluster.status("default", f"s{index:03d}")
        mine = (status.get("nodes") or {}).get(agents[0].name)
        if mine is not None:
            await cluster.patch(VS, "default", f"s{index:03d}", {"status": {"nodes": {a.name: mine for a in agents}}}, sub="status")
            seeded += 1
    for component in agents[1:]:
        await farm.add(component)
    await farm.add(components[0])
    await settle(cluster, farm)
    log(f"  N={nodes}: setup {time.monotonic() - t0:.0f}s (status seeded on {seeded} object(s))")
    counts = Counts(cluster, farm)
    result: dict[str, Any] = {"nodes": nodes, "objects": objects}

    size = len(json.dumps(cluster.get(VS, "default", "s000"), separators=(",", ":")))
    result["object_bytes"] = size

    # (e) steady state: quiet_resyncs periods of the compressed clock, probes counted too.
    mark = counts.mark()
    probes_before = collections.Counter(prober.probes)
    started = time.monotonic()
    for _ in range(quiet_resyncs):
        await resync_all(farm, resync)
    await settle(cluster, farm)
    elapsed = time.monotonic() - started
    steady = counts.since(mark)
    steady["minutes"] = quiet_resyncs * 30.0 / 60.0  # what the periods stand for at the default resync period
    result["steady"] = steady
    backend = ("10.250.0.2", 8080)
    probes = prober.probes[backend] - probes_before[backend]
    result["probes_per_backend_per_interval"] = round(probes / elapsed * CHECK_INTERVAL[0], 1)
    result["check_interval"] = CHECK_INTERVAL[0]
    log(f"  N={nodes}: (e) steady state measured over {elapsed:.0f}s")

    # (a) one object created
    mark = counts.mark()
    await cluster.vs("new", spec(objects + 1, False))
    await settle(cluster, farm, minimum=0.2)
    result["created"] = counts.since(mark)
    log(f"  N={nodes}: created measured at {time.monotonic() - t0:.0f}s")

    # (b) one object changed (its port's targetPort)
    mark = counts.mark()
    changed = spec(1, 1 < checked)
    changed["ports"][0]["targetPort"] = 8081
    await cluster.patch(VS, "default", "s001", {"spec": changed})
    await settle(cluster, farm, minimum=0.2)
    result["changed"] = counts.since(mark)
    log(f"  N={nodes}: changed measured at {time.monotonic() - t0:.0f}s")

    # (c) one static backend fails its health check (on every node that checks it)
    mark = counts.mark()
    prober.down.add(backend[0])
    await settle(cluster, farm, minimum=3.0 * CHECK_INTERVAL[0])
    result["health_flip"] = counts.since(mark)
    log(f"  N={nodes}: health_flip measured at {time.monotonic() - t0:.0f}s")

    # (d) one node joins: its Node object, then its agent (initial lists made for it)
    mark = counts.mark()
    name = _node_name(nodes)
    await cluster.node(name, addresses=(f"10.0.{nodes // 250}.{nodes % 250 + 1}",))
    await farm.add(Component(name, _agent(connection, name, resync)), list_on_behalf=True)
    await settle(cluster, farm, minimum=0.5)
    result["node_joined"] = counts.since(mark)
    log(f"  N={nodes}: node_joined measured at {time.monotonic() - t0:.0f}s")

    # (f) a static backend that only one node, not one of its checkers, cannot reach
    mark = counts.mark()
    found = await trouble_out(farm, prober, resync, log)
    if found is not None:
        # Until the writes it caused are done (its probe passing again included): the controller is
        # never stopped in the middle of a reconcile it was woken for.
        await settle(cluster, farm, minimum=2.0 * CHECK_INTERVAL[0])
        result["trouble_out"] = {**found, "api": counts.since(mark)}
        log(f"  N={nodes}: trouble_out measured at {time.monotonic() - t0:.0f}s")

    await farm.close()
    FAKE_KERNELS.clear()
    result["rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
    return result


TROUBLED = (2, 3, 4)  # (f): the objects whose first backend one node cannot reach, in turn: checked, untouched by (a) to (d)


async def trouble_out(farm: Farm, prober: FakeProber, resync: float, log: Callable[[str], None]) -> dict[str, Any] | None:
    """(f) once per object of TROUBLED (its first backend, another node each time as rendezvous
    hashing has it): the median and each sample of `trouble_sample`; None in a design whose agents
    probe every backend themselves (no `local_probes`: nothing to measure)."""
    samples = []
    for index in TROUBLED:
        found = await trouble_sample(farm, prober, resync, index, log)
        if found is None:
            return None
        samples.append(found)
    ordered = sorted(samples, key=lambda sample: sample["seconds"])
    middle = ordered[len(ordered) // 2]
    return {**middle, "samples": [sample["seconds"] for sample in samples]}


async def trouble_sample(farm: Farm, prober: FakeProber, resync: float, index: int, log: Callable[[str], None]) -> dict[str, Any] | None:
    """Seconds from a static backend (object `index`'s first) becoming unreachable from one node (not
    one of its checkers) until that node's kernel has weight 0 for it.

    Clients keep opening connections through that node (one every 0.1 s while its weight is above
    0); its fake kernel counts them, with reply packets until the backend becomes unreachable, with
    none after. The resync periods go on for every agent (each ends in a look at the counters); the
    backend becomes unreachable half a period after one ended, so the look after it still sees
    replies from before, and the next one sees none: the typical case, 1.5 periods before trouble
    is seen. Then the local probe (interval CHECK_INTERVAL, failureThreshold 1) fails and a turn
    writes weight 0. Every other node and the checkers still reach it."""
    body = spec(index, True)
    address = body["backends"][0]["address"]
    key = RealServerKey(ServiceKey("tcp", body["vip"], 80), address, 8080)
    agents = [c.obj for c in farm.components if isinstance(c.obj, Agent)]
    outsider = next((a for a in agents if hasattr(a, "local_probes") and key in a.roles.watched), None)
    if outsider is None:
        return None
    fake = FAKE_KERNELS[outsider.node_name]
    unreachable = asyncio.Event()
    looks: list[float] = []  # when each resync period (and so each look) of every agent ended

    def weight() -> int:
        found = fake.state.real_servers.get(key)
        return found.weight if found is not None else -1

    async def clients() -> None:
        while True:
            if weight() > 0:
                fake.send(key, connections=1, in_packets=3, out_packets=0 if unreachable.is_set() else 2)
            await asyncio.sleep(0.1)

    async def periods() -> None:
        while True:
            await resync_all(farm, resync)
            looks.append(time.monotonic())

    tasks = [asyncio.create_task(clients()), asyncio.create_task(periods())]
    try:
        while len(looks) < 2:  # two looks with replies: the baseline is a working backend
            await asyncio.sleep(0.05)
        await asyncio.sleep(max(0.0, looks[-1] + resync / 2 - time.monotonic()))
        prober.down_from[outsider.node_name].add(address)
        unreachable.set()
        started, seen = time.monotonic(), None
        while weight() != 0:
            if seen is None and key in outsider.local_probes.troubled:
                seen = time.monotonic()
            if time.monotonic() - started > 60 * resync:
                raise TimeoutError(f"{outsider.node_name} did not take {key} out within 60 resync periods")
            await asyncio.sleep(0.02)
        done = time.monotonic()
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        prober.down_from[outsider.node_name].discard(address)
    seen = seen if seen is not None else done
    others = [a for a in agents if a is not outsider and FAKE_KERNELS[a.node_name].state.real_servers.get(key) is not None]
    log(f"  (f) {outsider.node_name} took {key} out after {done - started:.1f}s")
    return {"seconds": round(done - started, 2), "seen_after": round(seen - started, 2), "resync": resync,
            "interval": CHECK_INTERVAL[0], "failure_threshold": 1,
            "periods": round((seen - started) / resync, 2), "probe_seconds": round(done - seen, 2),
            "still_in_elsewhere": sum(1 for a in others if FAKE_KERNELS[a.node_name].state.real_servers[key].weight > 0),
            "elsewhere": len(others)}


# --- printing -----------------------------------------------------------------------------------

SCENARIOS = (("created", "(a) one object created"), ("changed", "(b) one object changed"),
             ("health_flip", "(c) one backend fails its check"), ("node_joined", "(d) one node joins"),
             ("steady", "(e) quiet minutes (steady state)"))


def _verbs(figures: Mapping[str, Any]) -> str:
    """Each verb's request count, and its responses' bytes where measured."""
    sizes = figures.get("response_bytes") or {}
    return ", ".join(f"{k} {v}" + (f" ({sizes[k]:,} B)" if k in sizes else "") for k, v in figures["requests"].items()) or "none"


COLUMNS = (("writes", "writes"), ("watch_events", "watch events"), ("watch_bytes", "watch bytes"), ("reads", "reads"),
           ("read_bytes", "read bytes"))


def table(columns: Mapping[str, list[dict[str, Any]]]) -> str:
    """Per N, each scenario's writes, watch events, reads and their bytes, one group of columns per design."""
    labels = list(columns)
    lines = []
    ns = sorted({r["nodes"] for results in columns.values() for r in results})
    width = sum(max(12, len(title) + 2) for _, title in COLUMNS)
    for n in ns:
        rows = {label: next((r for r in columns[label] if r["nodes"] == n), None) for label in labels}
        lines.append(f"N = {n} nodes, M = {next(r for r in rows.values() if r)['objects']} VirtualServices")
        lines.append(f"  {'':34}" + "".join(f"{label + ':':<{width}}" for label in labels))
        lines.append(f"  {'':34}" + "".join(f"{title:>{max(12, len(title) + 2)}}" for label in labels for _, title in COLUMNS))
        for key, title in SCENARIOS:
            cells = ""
            for label in labels:
                r = rows[label]
                for field, name in COLUMNS:
                    value = r[key].get(field, "-") if r else "-"
                    cells += f"{value:>{max(12, len(name) + 2)}}"
            lines.append(f"  {title:34}{cells}")
        for key, title in (("object_bytes", "bytes of one VirtualService"), ("probes_per_backend_per_interval", "probes per backend per interval")):
            lines.append(f"  {title:34}" + "".join(f"{(rows[label] or {}).get(key, '-'):>{width}}" for label in labels))
        outs = {label: (rows[label] or {}).get("trouble_out") for label in labels}
        lines.append(f"  {'(f) out on the one node (median s)':34}" + "".join(f"{(outs[label] or {}).get('seconds', '-'):>{width}}" for label in labels))
        for label, out in outs.items():
            if out:
                lines.append(f"    {label}: a backend only one non-checker node cannot reach: weight 0 there {out['seconds']} s after, median of "
                             f"{'/'.join(str(x) for x in out['samples'])} s "
                             f"(in the median, trouble seen after {out['seen_after']} s = {out['periods']} resync periods of {out['resync']:g} s, "
                             f"then {out['probe_seconds']} s to weight 0 with its probe every {out['interval']} s, failureThreshold "
                             f"{out['failure_threshold']}); still in service on {out['still_in_elsewhere']} of the other {out['elsewhere']} nodes; "
                             f"the {len(out['samples'])} samples, their probes passing again after and the writes that followed: "
                             f"{_verbs(out['api'])}; watch events {out['api']['watch_by_resource'] or 0}")
        for label in labels:
            r = rows[label]
            if r:
                lines.append(f"  {label} requests by verb (count, response bytes):")
                for key, title in SCENARIOS:
                    extra = f" ({r[key]['minutes']:g} min compressed)" if key == "steady" else ""
                    lines.append(f"    {title}{extra}: {_verbs(r[key])}; watch events {r[key]['watch_by_resource'] or 0}")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, nargs="+", default=[10, 100])
    parser.add_argument("--objects", type=int, default=100)
    parser.add_argument("--checked", type=int, default=10, help="how many of the objects have a TCP health check")
    parser.add_argument("--check-interval", type=int, default=None,
                        help="their intervalSeconds (default: 1, or N/100 when longer, so that N nodes' probes fit in the machine; "
                             "probes are counted per interval, so the figure does not depend on it)")
    parser.add_argument("--resync-seconds", type=float, default=30.0)
    parser.add_argument("--compress", type=float, default=None,
                        help="clock compression: a resync period lasts resync-seconds/compress (default: 2 s, or N/50 s when longer, "
                             "so that N agents' resyncs fit in the machine)")
    parser.add_argument("--quiet-resyncs", type=int, default=None,
                        help="resync periods of steady state (default: 20 x 30 s = 10 minutes up to N = 100, 4 beyond)")
    parser.add_argument("--label", default="now", help="column name of these figures")
    parser.add_argument("--json", default=None, metavar="FILE", help="also write the figures here")
    parser.add_argument("--compare", default=None, metavar="FILE", help="figures of another design (--json output) printed side by side")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    results = []
    for n in args.nodes:
        started = time.monotonic()
        resync = args.resync_seconds / args.compress if args.compress else max(2.0, n / 50.0)
        interval = args.check_interval or max(1, n // 100)
        quiet = args.quiet_resyncs or (20 if n <= 100 else 4)
        results.append(asyncio.run(simulate(n, args.objects, args.checked, resync, quiet, lambda s: print(s, file=sys.stderr, flush=True),
                                            interval=interval)))
        results[-1]["seconds"] = round(time.monotonic() - started)
        print(f"  N={n}: done in {results[-1]['seconds']}s, peak RSS {results[-1]['rss_mb']} MB", file=sys.stderr, flush=True)
        if args.json:  # after each N: a long run interrupted keeps what it measured
            Path(args.json).write_text(json.dumps({"label": args.label, "results": results}, indent=1))
    columns: dict[str, list[dict[str, Any]]] = {}
    if args.compare and Path(args.compare).exists():
        other = json.loads(Path(args.compare).read_text())
        columns[other["label"]] = other["results"]
    columns[args.label] = results
    print(table(columns))
    return 0


if __name__ == "__main__":
    sys.exit(main())
