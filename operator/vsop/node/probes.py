"""Active health checks of real servers: TCP connect and HTTP GET, run with asyncio.

Owns the probes and the loop that runs one per real server with bounded concurrency,
feeding results into the pure `HealthTracker` and calling back when a real server
goes in or out of service. Checks connect to the real server itself (not through the
VIP), as keepalived's TCP_CHECK and HTTP_GET do. Which real servers are probed is the node
loop's (vsop.node.loop.health_targets).

A target names its service (a `RealServerKey`), but what a probe does depends only on the
real server's address and port and on the check: the targets that share those three share
one probe (`Probe`), whose result is recorded for each of them. Ten thousand services over
the same two backends with the same check are two probes per interval, not twenty thousand
(keepalived runs one checker per real server of each virtual server). A target that joins a
probe already running gets its first result from that probe's next round.

What a backend can do to a check is bounded: an HTTP answer is read up to the end of
its headers within the timeout, each line at most `LINE_LIMIT` bytes and the headers at
most `HEADER_LIMIT`; an answer that hangs, trickles, is oversized or malformed is a failed
check with its reason, and nothing a probe raises ends its task. Probes run in at most
`slots_for(probes)` at once: enough for every probe to run on time even if each ran to
its timeout (the sum of timeout/interval, twice over), within [MIN_SLOTS, MAX_SLOTS].
Each probe starts at a random point of its first interval, so a thousand added at once
do not run in one burst; how late the probes start
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
from vsop.core.state import RealServerKey, hostport
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


# slots=True on the two below: a node of 10,000 checked services holds 20,000 targets.
@dataclass(frozen=True, slots=True)
class Target:
    """One real server of one service, checked as that service's spec says."""

    key: RealServerKey
    check: HealthCheck

    async def probe(self) -> str | None:
        address, port = self.key.address, self.key.port
        if self.check.type == "http":
            return await check_http(address, port, self.check.path, self.check.expect_status, self.check.timeout_seconds)
        return await check_tcp(address, port, self.check.timeout_seconds)


@dataclass(frozen=True, slots=True)
class Probe:
    """What a probe connects to and how: every target with these three shares its result."""

    address: str
    port: int
    check: HealthCheck

    @classmethod
    def of(cls, target: Target) -> "Probe":
        return cls(target.key.address, target.key.port, target.check)


def slots_for(targets: Iterable["Target | Probe"]) -> int:
    """Probes allowed at once: twice what keeps every probe on time if every probe ran to its timeout."""
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
    """One asyncio task per `Probe`; `update` starts and stops them to match the targets.

    `concurrency` fixes the number of probes at once; None sizes it from the probes (`slots_for`).
    `jitter()` gives the fraction of its interval a new probe waits before its first run.
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
        self.tasks: dict[Probe, asyncio.Task[None]] = {}
        # The targets each probe's result is recorded for: every target given (update, change) once.
        # No set of them all beside it: at 20,000 targets such a set is 2 MB (bench/agent_memory.py).
        self.members: dict[Probe, dict[Target, None]] = {}
        self.checks: dict[RealServerKey, int] = {}  # real server -> its targets among `given`
        # Probes whose last result passed with every member in service: another pass changes no
        # verdict, so it is not recorded member by member (a backend shared by 10,000 services
        # would cost 10,000 records per interval on the event loop, for nothing visible).
        self.steady: set[Probe] = set()
        # Members that joined a steady probe since its last result: a pass is recorded for them
        # alone (their first result), not for the 10,000 already in service beside them.
        self.newcomers: dict[Probe, set[Target]] = {}
        self.lags: dict[Probe, float] = {}  # how late the last run of each probe started
        self.failures = 0  # probes that raised (counted as failed checks)

    def given(self) -> set[Target]:
        """Every target probed (what update and change were given); costs them all."""
        return {target for members in self.members.values() for target in members}

    def update(self, targets: set[Target]) -> None:
        """Probe exactly `targets` (and forget the state of every other real server)."""
        given = self.given()
        self.change(targets - given, given - targets)
        self.tracker.forget_except(target.key for target in targets)

    def change(self, added: Iterable[Target], removed: Iterable[Target]) -> None:
        """Probe `added` too and `removed` no more: costs what changed, not every target."""
        gone: list[RealServerKey] = []
        joined = False
        for target in removed:
            probe = Probe.of(target)
            members = self.members.get(probe)
            if members is None or members.pop(target, False) is False:
                continue
            self._count(target.key, -1)
            gone.append(target.key)
            self.newcomers.get(probe, set()).discard(target)
            if not members:
                del self.members[probe]
                self.steady.discard(probe)
                self.newcomers.pop(probe, None)
                self.tasks.pop(probe).cancel()
                self.lags.pop(probe, None)
        for target in added:
            probe = Probe.of(target)
            members = self.members.setdefault(probe, {})
            if target in members:
                continue
            members[target] = None
            self._count(target.key, 1)
            joined = True
            if probe in self.steady:
                self.newcomers.setdefault(probe, set()).add(target)  # its first result is recorded, alone
            if probe not in self.tasks:
                self.tasks[probe] = asyncio.get_running_loop().create_task(self._run(probe), name=f"health {hostport(probe.address, probe.port)}")
        if self.concurrency is None and (joined or gone):  # sized over every probe: only when they changed
            self.limit.resize(slots_for(self.members))
        # A real server still checked under another target keeps its verdict: its check changed
        # (the in-cluster agent's slowed probe when this node stops or starts being a designated
        # checker, vsop.kube.checkers), and forgetting would put a dead one back in service until
        # the new check fails failureThreshold times.
        self.tracker.forget(key for key in gone if key not in self.checks)

    def _count(self, key: RealServerKey, by: int) -> None:
        count = self.checks.get(key, 0) + by
        if count:
            self.checks[key] = count
        else:
            del self.checks[key]

    def lag(self) -> float:
        """The latest start, against its schedule, among the last run of each probe (seconds)."""
        return max(self.lags.values(), default=0.0)

    async def _probe(self, target: Target, sharing: int) -> str:
        try:
            return await target.probe() or ""
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a check that raises is a failed check; its task goes on
            self.failures += 1
            log.warning("health check raised; counted as failed service=%r real_server=%s services=%d error=%r",
                        str(target.key.service), str(target.key), sharing, f"{type(exc).__name__}: {exc}")
            return f"health check failed: {type(exc).__name__}: {str(exc)[:200]}"

    def _record(self, probe: Probe, error: str) -> None:
        """The probe's result for each of its targets (a pass of a steady probe: for its newcomers
        only); the callback once if any verdict (or first result) came."""
        recorded: Iterable[Target] = self.members.get(probe, ())
        newcomers = self.newcomers.pop(probe, None)
        if not error and probe in self.steady:
            if not newcomers:
                return
            recorded = newcomers  # the others are in service, and a pass leaves them so
        thresholds = Thresholds(probe.check.failure_threshold, probe.check.success_threshold)
        flipped: list[RealServerKey] = []
        first = False
        states = self.tracker.states
        for target in recorded:
            first = first or target.key not in states
            if self.tracker.record(target.key, not error, thresholds, error):
                flipped.append(target.key)
        if not error and all(states[target.key].healthy for target in recorded):
            self.steady.add(probe)
        else:
            self.steady.discard(probe)
        if flipped:
            healthy = self.tracker.is_healthy(flipped[0])
            log.info(
                "real server %s service=%r real_server=%s services=%d reason=%r",
                "back in service" if healthy else "taken out of service",
                str(flipped[0].service), str(flipped[0]), len(flipped), error or "checks pass",
            )
            self.on_change()
        elif first:
            # A first result changes no weight, but a designated checker publishes it (vsop.kube.checkers).
            self.on_change()

    async def _run(self, probe: Probe) -> None:
        interval = probe.check.interval_seconds
        # A real server already out of service (remembered from before a restart) is probed at
        # once, so it comes back as soon as it answers; the others start at a random point.
        down = any(not self.tracker.is_healthy(t.key) for t in self.members.get(probe, ()))
        due = self.clock() + (0.0 if down else self.jitter() * interval)
        me = asyncio.current_task()
        while self.tasks.get(probe) is me:  # a task whose cancel was swallowed ends here (see stop)
            await asyncio.sleep(max(0.0, due - self.clock()))
            targets = self.members.get(probe)
            if not targets:
                break
            async with self.limit:
                started = self.clock()
                self.lags[probe] = max(0.0, started - due)
                error = await self._probe(next(iter(targets)), len(targets))
            self._record(probe, error)
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
        self.members.clear()
        self.checks.clear()
        self.steady.clear()
        self.newcomers.clear()
        self.lags.clear()
