"""Active health checks of real servers: TCP connect and HTTP GET, run with asyncio.

Owns the probes and the loop that runs one per real server with bounded concurrency,
feeding results into the pure `HealthTracker` and calling back when a real server
goes in or out of service. Checks connect to the real server itself (not through the
VIP), as keepalived's TCP_CHECK and HTTP_GET do. Which real servers are probed is the node
loop's (vsop.node.loop.health_targets).

What a backend can do to a check is bounded: an HTTP answer is read up to the end of
its headers within the timeout, each line at most `LINE_LIMIT` bytes and the headers at
most `HEADER_LIMIT`; an answer that hangs, trickles, is oversized or malformed is a failed
check with its reason, and nothing a probe raises ends its target's task. Probes run in
at most `slots_for(targets)` at once: enough for every target to be probed on time even
if each probe ran to its timeout (the sum of timeout/interval, twice over), within
[MIN_SLOTS, MAX_SLOTS]. Each target starts at a random point of its first interval, so a
thousand targets added at once do not probe in one burst; how late the probes start
against their schedule is `lag()` (vsop_health_probe_lag_seconds): above zero for long,
the checks are slower than their intervals say.
Must not import: kopf, kubernetes, pyroute2.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import math
import random
import re
import time
from dataclasses import dataclass
from typing import Callable, Iterable

from vsop.core.health import HealthTracker, Thresholds
from vsop.core.state import RealServerKey
from vsop.api.model import HealthCheck

log = logging.getLogger("vsop.health")

LINE_LIMIT = 8192  # bytes of one line of an HTTP answer (the status line, a header)
HEADER_LIMIT = 65536  # bytes of an HTTP answer's status line and headers together
MIN_SLOTS, MAX_SLOTS = 16, 1024  # probes at once: each holds a socket until it ends
STATUS_LINE = re.compile(r"HTTP/\d(?:\.\d)? ([0-9]{3})(?: .*)?")


async def check_tcp(address: str, port: int, timeout: float) -> str | None:
    """None when a TCP connection opens within the timeout, else why not."""
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(address, port), timeout)
    except asyncio.TimeoutError:
        return f"no TCP connection within {timeout:g}s"
    except OSError as exc:
        return f"TCP connect failed: {exc.strerror or exc}"
    writer.close()
    try:
        await writer.wait_closed()
    except OSError:
        pass
    return None


async def check_http(address: str, port: int, path: str, expect: int, timeout: float) -> str | None:
    """None when GET path answers with the expected status, its headers complete, within the timeout; else why not."""
    host = f"[{address}]" if ":" in address else address

    async def get() -> str | None:
        reader, writer = await asyncio.open_connection(address, port, limit=LINE_LIMIT)
        try:
            request = f"GET {path} HTTP/1.0\r\nHost: {host}:{port}\r\nUser-Agent: vsop-health\r\nConnection: close\r\n\r\n"
            writer.write(request.encode("ascii"))
            await writer.drain()
            raw = await reader.readline()
            status_line = raw.decode("latin-1").strip()
            match = STATUS_LINE.fullmatch(status_line)
            if match is None:
                return f"not an HTTP answer: {status_line[:60]!r}"
            size = len(raw)
            while True:  # the headers, to their end: an answer that stops half-way is no answer
                line = await reader.readline()
                size += len(line)
                if size > HEADER_LIMIT:
                    return f"HTTP headers over {HEADER_LIMIT} bytes"
                if line in (b"\r\n", b"\n"):
                    break
                if not line.endswith(b"\n"):
                    return "HTTP answer ended inside its headers"
        finally:
            writer.close()
        if int(match.group(1)) != expect:
            return f"HTTP status {match.group(1)}, expected {expect}"
        return None

    try:
        return await asyncio.wait_for(get(), timeout)
    except asyncio.TimeoutError:
        return f"no complete HTTP answer within {timeout:g}s"
    except ValueError:  # StreamReader.readline past its limit
        return f"HTTP answer line over {LINE_LIMIT} bytes"
    except OSError as exc:
        return f"HTTP check failed: {exc.strerror or exc}"


@dataclass(frozen=True)
class Target:
    key: RealServerKey
    check: HealthCheck

    async def probe(self) -> str | None:
        address, port = self.key.address, self.key.port
        if self.check.type == "http":
            return await check_http(address, port, self.check.path, self.check.expect_status, self.check.timeout_seconds)
        return await check_tcp(address, port, self.check.timeout_seconds)


def slots_for(targets: Iterable["Target"]) -> int:
    """Probes allowed at once: twice what keeps every target on time if every probe ran to its timeout."""
    busy = sum(min(t.check.timeout_seconds, t.check.interval_seconds) / t.check.interval_seconds for t in targets)
    return max(MIN_SLOTS, min(MAX_SLOTS, math.ceil(2 * busy)))


class Slots:
    """A semaphore whose size can change while probes wait for it, first come first served.

    A freed slot is handed to the oldest waiter at once (counted as used before it resumes), so
    a probe arriving meanwhile cannot take it and send the woken one to the back of the queue.
    A waiter that is cancelled stays in the queue, done, and is skipped when its turn comes:
    removing it costs the whole queue, which at 20,000 targets was most of the checker's time
    (every probe paid it). One handed a slot just before its cancel gives the slot on.
    """

    def __init__(self, limit: int):
        self.limit = limit
        self.used = 0
        self._waiting: collections.deque[asyncio.Future[None]] = collections.deque()

    def resize(self, limit: int) -> None:
        self.limit = limit
        self._wake()

    async def __aenter__(self) -> None:
        if self.used < self.limit:  # no one waits while a slot is free: _wake hands them out
            self.used += 1
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiting.append(waiter)
        try:
            await waiter  # its slot is counted by _wake
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():  # handed a slot, then cancelled before resuming
                self.used -= 1
                self._wake()
            raise

    async def __aexit__(self, *exc: object) -> None:
        self.used -= 1
        self._wake()

    def _wake(self) -> None:
        while self.used < self.limit and self._waiting:
            waiter = self._waiting.popleft()
            if not waiter.done():  # not cancelled
                waiter.set_result(None)
                self.used += 1


class HealthChecker:
    """One asyncio task per real server; `update` starts and stops them to match the targets.

    `concurrency` fixes the number of probes at once; None sizes it from the targets (`slots_for`).
    `jitter()` gives the fraction of its interval a new target waits before its first probe.
    """

    def __init__(
        self,
        tracker: HealthTracker,
        on_change: Callable[[], None],
        concurrency: int | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        jitter: Callable[[], float] = random.random,
    ):
        self.tracker = tracker
        self.on_change = on_change
        self.concurrency = concurrency
        self.limit = Slots(concurrency or MIN_SLOTS)
        self.clock = clock
        self.jitter = jitter
        self.tasks: dict[Target, asyncio.Task[None]] = {}
        self.lags: dict[Target, float] = {}  # how late the last probe of each target started
        self.failures = 0  # probes that raised (counted as failed checks)

    def update(self, targets: set[Target]) -> None:
        for target in list(self.tasks):
            if target not in targets:
                self.tasks.pop(target).cancel()
                self.lags.pop(target, None)
        for target in targets:
            if target not in self.tasks:
                self.tasks[target] = asyncio.get_running_loop().create_task(self._run(target), name=f"health {target.key}")
        if self.concurrency is None:
            self.limit.resize(slots_for(targets))
        self.tracker.forget_except(target.key for target in targets)

    def lag(self) -> float:
        """The latest start, against its schedule, among the last probe of each target (seconds)."""
        return max(self.lags.values(), default=0.0)

    async def _probe(self, target: Target) -> str:
        try:
            return await target.probe() or ""
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a check that raises is a failed check; its task goes on
            self.failures += 1
            log.warning("health check raised; counted as failed service=%r real_server=%s error=%r",
                        str(target.key.service), str(target.key), f"{type(exc).__name__}: {exc}")
            return f"health check failed: {type(exc).__name__}: {str(exc)[:200]}"

    async def _run(self, target: Target) -> None:
        thresholds = Thresholds(target.check.failure_threshold, target.check.success_threshold)
        interval = target.check.interval_seconds
        # A real server already out of service (remembered from before a restart) is probed at
        # once, so it comes back as soon as it answers; the others start at a random point.
        due = self.clock() + (0.0 if not self.tracker.is_healthy(target.key) else self.jitter() * interval)
        me = asyncio.current_task()
        while self.tasks.get(target) is me:  # a task whose cancel was swallowed ends here (see stop)
            await asyncio.sleep(max(0.0, due - self.clock()))
            async with self.limit:
                started = self.clock()
                self.lags[target] = max(0.0, started - due)
                error = await self._probe(target)
            first = target.key not in self.tracker.states
            if self.tracker.record(target.key, not error, thresholds, error):
                healthy = self.tracker.is_healthy(target.key)
                log.info(
                    "real server %s service=%r real_server=%s reason=%r",
                    "back in service" if healthy else "taken out of service",
                    str(target.key.service), str(target.key), error or "checks pass",
                )
                self.on_change()
            elif first:
                # A first result changes no weight, but a designated checker publishes it (vsop.kube.checkers).
                self.on_change()
            due = started + interval

    async def stop(self) -> None:
        """Cancel every task and wait for them. On Python 3.11, asyncio.wait_for returns the inner
        result when a cancel meets its completion (the cancel is lost): such a task is cancelled
        again until it ends, and no longer being in `tasks` ends its loop."""
        pending = set(self.tasks.values())
        self.tasks.clear()
        while pending:
            for task in pending:
                task.cancel()
            _, pending = await asyncio.wait(pending, timeout=0.5)
        self.lags.clear()
