"""Leader election over a coordination.k8s.io/v1 Lease, as client-go's leaderelection does it.

Owns the election of the one controller that writes: the Lease `vsop-system/vsop-controller`
(client-go's defaults: a lease of 15 s, renewed within 10 s, tried every 2 s), whose holder
is this process's identity (pod name + random suffix, so a restarted container is another
candidate). Every write of the Lease is a merge patch carrying the resourceVersion it was
read at, so of two candidates racing for an expired lease the API server lets one through
and refuses the other (409). Expiry is judged on this process's own clock, from when the
record was last seen to change (never from the holder's renewTime: clocks differ). A
leader that has not renewed within the renew deadline stops leading (`lost` is set: the
controller exits); on SIGTERM the leader releases the Lease (empty holder), so the standby
takes over at its next try instead of after the lease duration. `LeaderWriter` refuses
every write while this process does not lead.
Must not import vsop.node.execute, vsop.adapters or vsop.adapters.real.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import logging
import os
import secrets
import socket
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Protocol

import kubernetes.client

from vsop.kube.client import ApiError, Connection, ObjectRef, Writer
from vsop.kube.runtime import kv

log = logging.getLogger("vsop.kube.leader")

LEASE_NAMESPACE = "vsop-system"
LEASE_NAME = "vsop-controller"
RELEASE_READS = 3  # a release refused (409) reads again; one renewal of this process may still land (Elector.release)


@dataclass(frozen=True)
class Timing:
    lease_seconds: float = 15.0
    renew_deadline_seconds: float = 10.0
    retry_seconds: float = 2.0

    def problem(self) -> str | None:
        if not (self.lease_seconds > self.renew_deadline_seconds > self.retry_seconds > 0):
            return "the lease duration must exceed the renew deadline, which must exceed the retry period (> 0)"
        return None


def identity(pod_name: str | None = None) -> str:
    """The pod's name (or the host's) and a random suffix: a restarted container is another candidate."""
    return f"{pod_name or os.environ.get('POD_NAME') or socket.gethostname()}_{secrets.token_hex(4)}"


def micro_time(now: datetime.datetime | None = None) -> str:
    """Kubernetes' MicroTime: RFC 3339 with microseconds."""
    return (now or datetime.datetime.now(datetime.timezone.utc)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaseApi(Protocol):
    async def get(self, namespace: str, name: str) -> Mapping[str, Any] | None: ...

    async def create(self, namespace: str, body: Mapping[str, Any]) -> Mapping[str, Any]:
        """Raises ApiError(409) when it exists already."""
        ...

    async def patch(self, namespace: str, name: str, body: Mapping[str, Any]) -> Mapping[str, Any]:
        """A merge patch; its metadata.resourceVersion is a precondition (ApiError(409) when stale)."""
        ...


class KubeLeaseApi:
    """`LeaseApi` over the official client; blocking calls run in a worker thread."""

    def __init__(self, connection: Connection):
        self.connection = connection

    def _call(self, verb: str, namespace: str, name: str | None, body: Any = None) -> tuple[int, Any]:
        api = kubernetes.client.CoordinationV1Api(self.connection.api)
        try:
            if verb == "get":
                response = api.read_namespaced_lease(name, namespace, _preload_content=False)
            elif verb == "create":
                response = api.create_namespaced_lease(namespace, body, _preload_content=False)
            else:
                response = api.patch_namespaced_lease(name, namespace, body, _content_type="application/merge-patch+json",
                                                      _preload_content=False)
            return int(response.status), json.loads(response.data or b"null")
        except kubernetes.client.exceptions.ApiException as exc:
            return int(exc.status or 0), str(exc.body or exc.reason)

    async def get(self, namespace: str, name: str) -> Mapping[str, Any] | None:
        code, found = await asyncio.to_thread(self._call, "get", namespace, name)
        if code == 404:
            return None
        if not 200 <= code < 300:
            raise ApiError(code, str(found)[:500])
        return found if isinstance(found, Mapping) else None

    async def create(self, namespace: str, body: Mapping[str, Any]) -> Mapping[str, Any]:
        code, found = await asyncio.to_thread(self._call, "create", namespace, None, dict(body))
        if not 200 <= code < 300:
            raise ApiError(code, str(found)[:500])
        return found if isinstance(found, Mapping) else {}

    async def patch(self, namespace: str, name: str, body: Mapping[str, Any]) -> Mapping[str, Any]:
        code, found = await asyncio.to_thread(self._call, "patch", namespace, name, dict(body))
        if not 200 <= code < 300:
            raise ApiError(code, str(found)[:500])
        return found if isinstance(found, Mapping) else {}


class Elector:
    """One candidate. `leading` is true only between a successful acquire and the renew deadline."""

    def __init__(self, api: LeaseApi, identity: str, timing: Timing = Timing(), *, namespace: str = LEASE_NAMESPACE,
                 name: str = LEASE_NAME, clock: Callable[[], float] = time.monotonic,
                 on_change: Callable[[bool], None] | None = None):
        self.api = api
        self.identity = identity
        self.timing = timing
        self.namespace = namespace
        self.name = name
        self.clock = clock
        self.on_change = on_change
        self.leading = False
        self.terms = 0  # leaderships gained: a new term means relist before the first write
        self.attempts = 0  # tries made (tests wait on it)
        self.lost = asyncio.Event()  # set when a leadership ends without a release: the process must exit
        self._renewed = -float("inf")  # clock() of the last successful acquire or renew
        self._observed: tuple[Any, ...] | None = None  # the holder's record as last seen
        self._observed_at = -float("inf")  # clock() when that record was first seen

    def _set(self, leading: bool) -> None:
        if leading != self.leading:
            self.leading = leading
            if leading:
                self.terms += 1
            log.info(kv("Became the leader" if leading else "No longer the leader", lease=f"{self.namespace}/{self.name}",
                        identity=self.identity))
            if self.on_change is not None:
                self.on_change(leading)

    def _record(self, holder: str, acquired: str, transitions: int) -> dict[str, Any]:
        return {
            "holderIdentity": holder,
            "leaseDurationSeconds": max(1, int(round(self.timing.lease_seconds))),
            "acquireTime": acquired,
            "renewTime": micro_time(),
            "leaseTransitions": transitions,
        }

    async def try_acquire_or_renew(self) -> bool:
        """One try, client-go's tryAcquireOrRenew: True when this candidate holds the lease afterwards."""
        self.attempts += 1
        now = self.clock()
        found = await self.api.get(self.namespace, self.name)
        if found is None:
            body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                    "metadata": {"name": self.name, "namespace": self.namespace},
                    "spec": self._record(self.identity, micro_time(), 0)}
            try:
                await self.api.create(self.namespace, body)
            except ApiError as exc:
                if exc.status == 409:
                    return False  # another candidate created it first
                raise
            self._renewed = now
            return True
        spec = found.get("spec") or {}
        holder = spec.get("holderIdentity") or ""
        record = (holder, spec.get("renewTime"), spec.get("acquireTime"), spec.get("leaseTransitions"), spec.get("leaseDurationSeconds"))
        if record != self._observed:
            self._observed, self._observed_at = record, now
        duration = float(spec.get("leaseDurationSeconds") or self.timing.lease_seconds)
        if holder and holder != self.identity and now < self._observed_at + duration:
            return False  # held by another, and not expired by this process's clock
        mine = holder == self.identity
        patch = {
            # The precondition: the API server refuses this patch if the Lease changed since it was read.
            "metadata": {"resourceVersion": (found.get("metadata") or {}).get("resourceVersion")},
            "spec": self._record(self.identity, spec.get("acquireTime") if mine and spec.get("acquireTime") else micro_time(),
                                 int(spec.get("leaseTransitions") or 0) + (0 if mine else 1)),
        }
        try:
            await self.api.patch(self.namespace, self.name, patch)
        except ApiError as exc:
            if exc.status == 409:
                return False  # someone else wrote it in between
            raise
        self._renewed = now
        return True

    async def step(self) -> None:
        """One round: try; lead, keep leading, or (past the renew deadline) stop leading."""
        try:
            held = await self.try_acquire_or_renew()
        except (ApiError, OSError) as exc:
            log.warning(kv("Lease request failed", lease=f"{self.namespace}/{self.name}", error=str(exc)))
            held = False
        if held:
            self._set(True)
        elif self.leading and self._observed is not None and self._observed[0] not in ("", self.identity):
            log.error(kv("Another candidate holds the lease; stopping", lease=f"{self.namespace}/{self.name}", holder=self._observed[0]))
            self._set(False)
            self.lost.set()
        elif self.leading and self.clock() - self._renewed > self.timing.renew_deadline_seconds:
            log.error(kv("Could not renew the lease within the renew deadline; stopping", lease=f"{self.namespace}/{self.name}",
                         deadline=self.timing.renew_deadline_seconds))
            self._set(False)
            self.lost.set()
        # Otherwise a failed renewal within the deadline: still the leader until the deadline passes.

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set() and not self.lost.is_set():
            await self.step()
            if self.lost.is_set():
                return
            try:
                async with asyncio.timeout(self.timing.retry_seconds):
                    await stop.wait()
            except TimeoutError:
                pass

    async def release(self) -> None:
        """On shutdown: hand the lease back (empty holder, 1 s), so the standby need not wait it out.

        A 409 means the Lease changed between the read and the write. Either this process's own
        renewal landed then (the election is cancelled mid-request on stop, and a request
        asyncio.to_thread started runs on in its thread: it lands when it lands), or another
        candidate took the Lease. So read again: still the holder, release with the new
        resourceVersion; another holder, nothing is this process's to release. The election is
        stopped, so at most one renewal of this process is still on its way: a second read sees it."""
        if not self.leading:
            return
        self._set(False)
        lease = f"{self.namespace}/{self.name}"
        try:
            for _ in range(RELEASE_READS):
                found = await self.api.get(self.namespace, self.name)
                spec = (found or {}).get("spec") or {}
                if found is None or spec.get("holderIdentity") != self.identity:
                    return  # not (or no longer) this process's
                try:
                    await self.api.patch(self.namespace, self.name, {
                        "metadata": {"resourceVersion": (found.get("metadata") or {}).get("resourceVersion")},
                        "spec": {"holderIdentity": "", "leaseDurationSeconds": 1, "renewTime": micro_time()},
                    })
                except ApiError as exc:
                    if exc.status == 409:
                        continue  # changed since the read: read again
                    raise
                log.info(kv("Released the lease", lease=lease, identity=self.identity))
                return
            log.warning(kv("Releasing the lease failed; the standby takes over when it expires", lease=lease,
                           error=f"the Lease changed under each of {RELEASE_READS} reads"))
        except (ApiError, OSError) as exc:
            log.warning(kv("Releasing the lease failed; the standby takes over when it expires", lease=lease, error=str(exc)))


class NotLeading(ApiError):
    def __init__(self) -> None:
        super().__init__(0, "not the leader: this controller writes nothing")


class LeaderWriter:
    """A `Writer` that refuses every write while `elector` does not lead: a standby never writes."""

    def __init__(self, writer: Writer, elector: Elector):
        self.writer = writer
        self.elector = elector

    def _check(self) -> None:
        if not self.elector.leading:
            raise NotLeading()

    async def patch_status(self, ref: ObjectRef, status: Mapping[str, Any]) -> bool:
        self._check()
        return await self.writer.patch_status(ref, status)

    async def post_event(self, ref: ObjectRef, type: str, reason: str, message: str) -> None:
        self._check()
        await self.writer.post_event(ref, type, reason, message)

    async def read_node_report(self, node: str) -> Mapping[str, Any] | None:
        return await self.writer.read_node_report(node)

    async def patch_node_report(self, node: str, body: Mapping[str, Any]) -> None:
        self._check()
        await self.writer.patch_node_report(node, body)

    async def delete_node_report(self, node: str) -> None:
        self._check()
        await self.writer.delete_node_report(node)

    async def patch_pool_status(self, pool: str, status: Mapping[str, Any]) -> bool:
        self._check()
        return await self.writer.patch_pool_status(pool, status)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.writer, name)
