"""Two controllers, one Lease: only the holder writes; a killed holder is replaced once the lease runs out,
a stopped one hands over at once; a write with a stale resourceVersion is refused; past the renew deadline
a leader stops. Expiry runs on a clock the test moves (the candidates' own clock, as client-go's)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from typing import Any, AsyncIterator

import pytest

from tests.kube.conftest import LEASES, Cluster, RecordingWriter, until
from tests.kube.test_agent import WEB
from vsop.kube.client import ApiError, Connection
from vsop.kube.controller import Controller, ControllerOptions, LeaseLost
from vsop.kube.leader import Elector, KubeLeaseApi, Timing
from vsop.kube.relist import Relister

pytestmark = pytest.mark.asyncio

TIMING = Timing(lease_seconds=15, renew_deadline_seconds=10, retry_seconds=0.02)  # client-go's 15/10; tries often (real time)
WRITES = ("PATCH", "POST", "PUT", "DELETE")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FlakyLeases(KubeLeaseApi):
    """The real Lease client, which a test can cut off from the API server."""

    broken = False

    async def get(self, namespace: str, name: str) -> Any:
        if self.broken:
            raise OSError("connection refused")
        return await super().get(namespace, name)


class LateRenewal(FlakyLeases):
    """The real Lease client, whose renewal a test holds on its way to the API server once `hold` is set.

    A stopped controller cancels its election mid-request, but a request asyncio.to_thread
    already started runs on in its thread and lands when it lands. Here the held renewal
    lands right after the next read (the release's), before the release writes."""

    hold = False

    def __init__(self, connection: Connection):
        super().__init__(connection)
        self.held = threading.Event()  # a renewal waits at the gate
        self.gate = threading.Event()
        self.landed = threading.Event()

    async def get(self, namespace: str, name: str) -> Any:
        found = await super().get(namespace, name)
        if self.held.is_set() and not self.gate.is_set():
            self.gate.set()
            await asyncio.to_thread(self.landed.wait)
        return found

    async def patch(self, namespace: str, name: str, body: Any) -> Any:
        if not (self.hold and body["spec"].get("holderIdentity")) or self.held.is_set():
            return await super().patch(namespace, name, body)

        def late() -> tuple[int, Any]:
            self.held.set()
            self.gate.wait()
            try:
                return self._call("patch", namespace, name, dict(body))
            finally:
                self.landed.set()

        code, found = await asyncio.to_thread(late)
        if not 200 <= code < 300:
            raise ApiError(code, str(found)[:500])
        return found


class Candidate:
    def __init__(self, cluster: Cluster, name: str, clock: Clock, leases: type[FlakyLeases] = FlakyLeases):
        self.name = name
        connection = Connection.for_url(cluster.url)
        connection.api.user_agent = f"vsop-test/{name}"  # tells its requests apart in the emulator's log
        self.writer = RecordingWriter(connection, "vsop-controller", host=name)
        self.leases = leases(connection)
        self.elector = Elector(self.leases, name, TIMING, clock=clock)
        relister = Relister(connection)
        self.relists = 0

        async def relist() -> Any:
            self.relists += 1
            self.writes_before_relist = len(self.writer.patches) + len(self.writer.posted)
            return await relister()

        self.controller = Controller(ControllerOptions(resync_seconds=3600, debounce_seconds=0.01, vip_policy="any"), self.writer,
                                     elector=self.elector, relist=relist)
        connection.register_login(self.controller.registry)
        self.stop = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.create_task(self.controller.run(self.stop))

    async def halt(self) -> None:
        self.stop.set()
        assert self.task is not None
        await asyncio.wait_for(self.task, timeout=15)

    async def kill(self) -> None:
        """As SIGKILL would: no release."""
        async def no_release() -> None:
            return None
        self.elector.release = no_release  # type: ignore[method-assign]
        await self.halt()

    async def tries(self, count: int) -> None:
        target = self.elector.attempts + count
        await until(lambda: self.elector.attempts >= target, f"{count} tries of {self.name}")


def writes(cluster: Cluster, name: str) -> list[str]:
    """The writes `name` sent, from the emulator's request log (Lease writes aside)."""
    return [f"{r.method} {r.url.path}" for r in cluster.requests()
            if r.method in WRITES and r.headers.get("User-Agent") == f"vsop-test/{name}" and "/leases" not in r.url.path]


def holder(cluster: Cluster) -> str:
    return (cluster.get(LEASES, "vsop-system", "vsop-controller").get("spec") or {}).get("holderIdentity") or ""


@contextlib.asynccontextmanager
async def two(cluster: Cluster) -> AsyncIterator[tuple[Candidate, Candidate, Clock]]:
    clock = Clock()
    a, b = Candidate(cluster, "ctl-a", clock), Candidate(cluster, "ctl-b", clock)
    a.start()
    await until(lambda: a.elector.leading, "ctl-a leads")  # a first, so which one leads is known
    b.start()
    try:
        yield a, b, clock
    finally:
        for c in (a, b):
            if c.task is not None and not c.task.done():
                await c.halt()


def ready(cluster: Cluster, name: str) -> bool:
    return any(c["type"] == "Ready" for c in cluster.status("default", name).get("conditions") or ())


async def test_only_the_holder_writes(cluster: Cluster) -> None:
    await cluster.node("node-a")
    await cluster.vs("web", WEB)
    await cluster.vs("clash", WEB, namespace="team-b")  # a Conflict: an Event too
    async with two(cluster) as (a, b, clock):
        await until(lambda: ready(cluster, "web") and cluster.events("clash"), "the leader's status and Event")
        await b.tries(5)
        await until(lambda: b.controller.turns >= 1, "the standby's loop turns")
        await cluster.vs("later", {**WEB, "vip": "169.254.11.9"})
        await until(lambda: ready(cluster, "later"), "the leader writes the new object's status")
        await b.tries(3)
        assert holder(cluster) == "ctl-a"
        assert writes(cluster, "ctl-a") and writes(cluster, "ctl-b") == []
        assert b.writer.patches == [] and b.writer.posted == []
        assert (a.controller.metrics.leader._value.get(), b.controller.metrics.leader._value.get()) == (1, 0)
        assert b.controller.probes.readiness()[0] and b.controller.probes.ready_reason == "standby", "a standby is ready (a rollout waits on it)"
        assert a.relists == 1 and a.writes_before_relist == 0, "the leader relisted before its first write"


async def test_a_killed_holder_is_replaced_within_the_lease_duration(cluster: Cluster) -> None:
    await cluster.node("node-a")
    await cluster.vs("web", WEB)
    async with two(cluster) as (a, b, clock):
        await until(lambda: ready(cluster, "web"), "the leader's status")
        await b.tries(3)  # b has seen a's lease
        await a.kill()
        await b.tries(2)  # b sees the last record a wrote: its lease runs from now, on b's clock
        await cluster.vs("later", {**WEB, "vip": "169.254.11.9"})
        clock.now += TIMING.lease_seconds - 0.5
        await b.tries(5)
        assert not b.elector.leading and holder(cluster) == "ctl-a" and writes(cluster, "ctl-b") == []
        clock.now += 1.0  # past the lease duration
        await until(lambda: b.elector.leading, "ctl-b takes the expired lease")
        await until(lambda: ready(cluster, "later"), "ctl-b writes")
        assert holder(cluster) == "ctl-b" and writes(cluster, "ctl-b")
        lease = cluster.get(LEASES, "vsop-system", "vsop-controller")["spec"]
        assert lease["leaseTransitions"] == 1 and lease["leaseDurationSeconds"] == 15
        assert b.relists == 1 and b.writes_before_relist == 0


async def test_a_stopped_holder_releases_and_the_standby_takes_over_at_once(cluster: Cluster) -> None:
    await cluster.node("node-a")
    async with two(cluster) as (a, b, clock):
        await b.tries(2)
        await a.halt()  # SIGTERM: released
        assert holder(cluster) in ("", "ctl-b")
        await until(lambda: b.elector.leading, "ctl-b leads without the clock moving")
        await cluster.vs("web", WEB)
        await until(lambda: ready(cluster, "web"), "ctl-b writes")


async def test_a_renewal_landing_during_the_release_does_not_keep_the_lease(cluster: Cluster) -> None:
    """Stopped while a renewal is on its way, the controller still hands the lease over: the
    renewal lands between the release's read and its write, whose resourceVersion is then
    stale (409); the release reads again and releases."""
    await cluster.node("node-a")
    clock = Clock()
    a = Candidate(cluster, "ctl-a", clock, leases=LateRenewal)
    a.start()
    await until(lambda: a.elector.leading, "ctl-a leads")
    assert isinstance(a.leases, LateRenewal)
    a.leases.hold = True
    await until(a.leases.held.is_set, "a renewal of ctl-a on its way")
    await a.halt()  # SIGTERM while the renewal is in flight
    assert a.leases.landed.is_set(), "the renewal landed before the release wrote"
    assert holder(cluster) == "", "released"
    lease = cluster.get(LEASES, "vsop-system", "vsop-controller")["spec"]
    assert lease["leaseDurationSeconds"] == 1


async def test_a_lease_taken_over_during_the_release_is_left_to_its_holder(cluster: Cluster,
                                                                          caplog: pytest.LogCaptureFixture) -> None:
    """Another candidate writes the Lease between the release's read and its write: the release
    is refused (409), reads again, finds another holder and leaves the Lease to it (nothing of
    this process's to release, and no failure to report)."""
    clock = Clock()
    a = Candidate(cluster, "ctl-a", clock)
    await a.elector.step()
    assert a.elector.leading
    read = a.leases.get

    async def read_then_taken_over(namespace: str, name: str) -> Any:
        found = await read(namespace, name)
        if holder(cluster) == "ctl-a":
            await cluster.patch(LEASES, namespace, name, {"spec": {"holderIdentity": "ctl-b", "leaseTransitions": 1}})
        return found

    a.leases.get = read_then_taken_over  # type: ignore[method-assign]
    with caplog.at_level(logging.INFO, logger="vsop.kube.leader"):
        await a.elector.release()
    assert holder(cluster) == "ctl-b" and not a.elector.leading
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []


async def test_a_write_with_a_stale_resource_version_is_refused(cluster: Cluster) -> None:
    clock = Clock()
    a, b = Candidate(cluster, "ctl-a", clock), Candidate(cluster, "ctl-b", clock)
    assert await a.elector.try_acquire_or_renew()
    read = await b.leases.get("vsop-system", "vsop-controller")  # b reads...
    clock.now += 20  # ...the lease has expired for everyone...
    assert await a.elector.try_acquire_or_renew()  # ...a renews first...
    stale = {"metadata": {"resourceVersion": read["metadata"]["resourceVersion"]}, "spec": {"holderIdentity": "ctl-b"}}
    with pytest.raises(ApiError) as refused:  # ...and b's write, made from its read, is refused
        await b.leases.patch("vsop-system", "vsop-controller", stale)
    assert refused.value.status == 409
    assert holder(cluster) == "ctl-a"
    # The elector itself: it reads the renewed lease, which has not expired on its clock.
    assert not await b.elector.try_acquire_or_renew() and holder(cluster) == "ctl-a"


async def test_past_the_renew_deadline_the_leader_stops(cluster: Cluster) -> None:
    await cluster.node("node-a")
    clock = Clock()
    a = Candidate(cluster, "ctl-a", clock)
    a.start()
    await until(lambda: a.elector.leading, "ctl-a leads")
    a.leases.broken = True
    clock.now += TIMING.renew_deadline_seconds - 1
    await a.tries(3)
    assert a.elector.leading, "within the renew deadline it still leads"
    clock.now += 2
    assert a.task is not None
    with pytest.raises(LeaseLost):
        await asyncio.wait_for(a.task, timeout=15)
    assert not a.elector.leading and a.controller.metrics.leader._value.get() == 0
