"""Health probes against real loopback servers that misbehave, and the checker loop around them.

A server that accepts and never answers, one that trickles its headers, one whose status
line or headers are oversized, one whose answer is malformed: each is a failed check with
its reason, and none ends the checker's task for its target (before, a status line over
64 KiB raised ValueError out of the task and froze that backend's health for good). The
checker shares one probe among the targets on one (address, port) with one check, sizes its
probes-at-once from its probes, starts each probe at a jittered
point of its first interval, and reports how late probes start (its lag).
"""

from __future__ import annotations

import asyncio
from typing import Any, Awaitable, Callable

import pytest

from vsop.api.model import HealthCheck
from vsop.core.health import Health, HealthTracker
from vsop.core.state import RealServerKey, ServiceKey
from vsop.node.probes import HEADER_LIMIT, LINE_LIMIT, MAX_SLOTS, MIN_SLOTS, HealthChecker, Slots, Target, check_http, slots_for

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
SERVICE = ServiceKey("tcp", "169.254.11.2", 80)


async def serving(handler: Handler) -> tuple[asyncio.AbstractServer, int]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


def answering(*chunks: bytes, pause: float = 0.0, then_hang: bool = False) -> Handler:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        for chunk in chunks:
            writer.write(chunk)
            await writer.drain()
            if pause:
                await asyncio.sleep(pause)
        if then_hang:
            await asyncio.sleep(3600)
        writer.close()

    return handle


async def probe_once(handler: Handler, timeout: float = 1.0) -> str | None:
    server, port = await serving(handler)
    async with server:
        return await check_http("127.0.0.1", port, "/healthz", 200, timeout)


CASES = {
    "a complete 200": (answering(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"), None),
    "a 500": (answering(b"HTTP/1.0 500 Oops\r\n\r\n"), "HTTP status 500, expected 200"),
    "accepts, then hangs": (answering(then_hang=True), "no complete HTTP answer within 0.5s"),
    "status line, then headers slower than the timeout": (
        answering(b"HTTP/1.0 200 OK\r\n", b"X-Slow: 1\r\n", b"X-Slow: 2\r\n", b"\r\n", pause=0.3),
        "no complete HTTP answer within 0.5s",
    ),
    "a status line over the line limit": (answering(b"HTTP/1.0 200 " + b"x" * (LINE_LIMIT + 10) + b"\r\n\r\n"), f"HTTP answer line over {LINE_LIMIT} bytes"),
    "a status line over 64 KiB": (answering(b"HTTP/1.0 200 " + b"x" * 70000 + b"\r\n\r\n"), f"HTTP answer line over {LINE_LIMIT} bytes"),
    "headers over the header limit": (
        answering(b"HTTP/1.0 200 OK\r\n" + b"X-Big: " + b"y" * 4000 + b"\r\n" * 1, *([b"X-Big: " + b"y" * 4000 + b"\r\n"] * 20), b"\r\n"),
        f"HTTP headers over {HEADER_LIMIT} bytes",
    ),
    "not HTTP": (answering(b"SSH-2.0-OpenSSH_9.2\r\n"), "not an HTTP answer: 'SSH-2.0-OpenSSH_9.2'"),
    "a status code of non-ASCII digits": (answering("HTTP/1.0 ²00 OK\r\n\r\n".encode("latin-1")), "not an HTTP answer: 'HTTP/1.0 ²00 OK'"),
    "closed inside its headers": (answering(b"HTTP/1.0 200 OK\r\nX-Half"), "HTTP answer ended inside its headers"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_an_http_answer_is_judged_whole_and_bounded(case: str) -> None:
    handler, expected = CASES[case]
    assert asyncio.run(probe_once(handler, timeout=0.5 if "within" in str(expected) else 5.0)) == expected


def check(interval: int = 1, timeout: int = 1, kind: str = "http") -> HealthCheck:
    return HealthCheck(type=kind, path="/healthz", interval_seconds=interval, timeout_seconds=timeout, failure_threshold=1, success_threshold=1)


def test_probes_at_once_are_sized_from_the_targets_and_their_intervals() -> None:
    def targets(count: int, interval: int, timeout: int) -> list[Target]:
        return [Target(RealServerKey(SERVICE, f"10.0.{i // 250}.{i % 250}", 80), check(interval, timeout)) for i in range(count)]

    assert slots_for([]) == MIN_SLOTS
    assert slots_for(targets(100, 3, 2)) == 134  # 100 x 2/3 busy if every probe ran to its timeout, twice over
    assert slots_for(targets(100, 10, 1)) == 20
    assert slots_for(targets(5000, 1, 1)) == MAX_SLOTS


def test_a_freed_slot_goes_to_the_oldest_waiter_and_a_cancelled_waiter_is_passed_over() -> None:
    """First come, first served: a slot freed while others wait is handed to the oldest one, not
    taken by a probe arriving before it resumes; a cancelled waiter, left in the queue, is skipped;
    one cancelled after it was handed a slot gives that slot on."""
    order: list[str] = []

    async def scenario() -> int:
        slots = Slots(1)

        async def hold(name: str, release: asyncio.Event) -> None:
            async with slots:
                order.append(name)
                await release.wait()

        go = asyncio.Event()
        await slots.__aenter__()  # held here, released below without a pause in between
        order.append("first")
        cancelled = asyncio.create_task(hold("cancelled", go))
        handed = asyncio.create_task(hold("handed then cancelled", go))
        second = asyncio.create_task(hold("second", go))
        await asyncio.sleep(0)
        cancelled.cancel()
        await asyncio.sleep(0)
        await slots.__aexit__(None, None, None)  # the cancelled waiter is skipped, the next one handed the slot
        handed.cancel()  # before it resumed: the slot goes on to "second"
        late = asyncio.create_task(hold("late", go))  # arrives after: waits behind "second"
        await asyncio.sleep(0)
        go.set()
        await asyncio.gather(second, late)
        for task in (cancelled, handed):
            with pytest.raises(asyncio.CancelledError):
                await task
        return slots.used

    assert asyncio.run(scenario()) == 0
    assert order == ["first", "second", "late"]


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_probe_that_raises_is_a_failed_check_and_its_target_keeps_being_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []

    async def flaky(self: Target) -> str | None:
        calls.append(1)
        if len(calls) == 1:
            raise ValueError("Separator is found, but chunk is longer than limit")
        return None

    monkeypatch.setattr(Target, "probe", flaky)

    async def scenario() -> list[tuple[bool, str]]:
        tracker = HealthTracker()
        key = RealServerKey(SERVICE, "10.0.0.1", 80)
        changes: list[tuple[bool, str]] = []
        checker = HealthChecker(tracker, lambda: changes.append((tracker.is_healthy(key), tracker.states[key].last_error)), jitter=lambda: 0.0)
        checker.update({Target(key, check(interval=1))})
        while len(changes) < 2:
            await asyncio.sleep(0.01)
        await checker.stop()
        return changes

    changes = asyncio.run(scenario())
    # out on the raising probe, back in on the next one, a second later: the task lived on
    assert changes[0] == (False, "health check failed: ValueError: Separator is found, but chunk is longer than limit")
    assert changes[1][0] is True and len(calls) == 2


def test_starts_are_jittered_and_the_lag_is_how_late_probes_start() -> None:
    """One slot, two targets whose probes each hold it for 0.2 s: the second waits for the first."""

    async def scenario() -> tuple[list[float], float, float]:
        started: list[float] = []
        loop = asyncio.get_running_loop()

        async def slow(self: Target) -> str | None:
            started.append(loop.time())
            await asyncio.sleep(0.2)
            return None

        jitters = iter([0.5, 0.5])
        checker = HealthChecker(HealthTracker(), lambda: None, concurrency=1, clock=loop.time, jitter=lambda: next(jitters))
        original = Target.probe
        Target.probe = slow  # type: ignore[method-assign]
        try:
            begun = loop.time()
            keys = [RealServerKey(SERVICE, f"10.0.0.{i}", 80) for i in (1, 2)]
            checker.update({Target(key, check(interval=1, timeout=1)) for key in keys})
            while len(started) < 2:
                await asyncio.sleep(0.01)
            lag = checker.lag()
            await checker.stop()
        finally:
            Target.probe = original  # type: ignore[method-assign]
        return [t - begun for t in started], lag, checker.lag()

    started, lag, after_stop = asyncio.run(scenario())
    assert started[0] >= 0.5  # half of a 1 s interval: not at once
    assert started[1] - started[0] >= 0.2  # the one slot was held by the first probe
    assert lag >= 0.2 - 0.01 and after_stop == 0.0


def test_the_lag_gauge_reads_the_checker() -> None:
    from prometheus_client import generate_latest

    from vsop.node.metrics import NodeMetrics

    metrics = NodeMetrics()
    checker = HealthChecker(HealthTracker(), lambda: None)
    metrics.watch_health(checker)
    checker.lags[Target(RealServerKey(SERVICE, "10.0.0.1", 80), check())] = 2.5
    assert "vsop_health_probe_lag_seconds 2.5" in generate_latest(metrics.registry).decode()


def test_stop_ends_a_task_whose_cancel_a_probe_swallowed(monkeypatch: pytest.MonkeyPatch) -> None:
    """Python 3.11's asyncio.wait_for returns the inner result when a cancel meets its completion:
    the probe's task goes on as if never cancelled. stop() must still end it (the host agent
    waited on it forever after SIGTERM)."""
    swallowed: list[int] = []

    async def swallowing(self: Target) -> str | None:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            swallowed.append(1)  # the cancel is lost, as wait_for loses it
        return None

    monkeypatch.setattr(Target, "probe", swallowing)

    async def scenario() -> bool:
        checker = HealthChecker(HealthTracker(), lambda: None, jitter=lambda: 0.0)
        checker.update({Target(RealServerKey(SERVICE, "10.0.0.1", 80), check(interval=1))})
        await asyncio.sleep(0.05)  # the probe is under way
        await asyncio.wait_for(checker.stop(), 30)
        return not checker.tasks

    assert asyncio.run(scenario()) and swallowed


def test_a_real_server_already_out_of_service_is_probed_at_once() -> None:
    """Out of service before the checker started (recalled after a restart): no jitter, it may be back."""
    from vsop.core.health import Health

    async def scenario() -> dict[str, float]:
        started: dict[str, float] = {}
        loop = asyncio.get_running_loop()

        async def record(self: Target) -> str | None:
            started.setdefault(self.key.address, loop.time())
            return None

        tracker = HealthTracker()
        down, up = RealServerKey(SERVICE, "10.0.0.1", 80), RealServerKey(SERVICE, "10.0.0.2", 80)
        tracker.restore(down, Health(healthy=False, failures=3))
        checker = HealthChecker(tracker, lambda: None, clock=loop.time, jitter=lambda: 0.9)
        original = Target.probe
        Target.probe = record  # type: ignore[method-assign]
        try:
            begun = loop.time()
            checker.update({Target(down, check(interval=1, timeout=1)), Target(up, check(interval=1, timeout=1))})
            while len(started) < 2:
                await asyncio.sleep(0.01)
            await checker.stop()
        finally:
            Target.probe = original  # type: ignore[method-assign]
        return {address: at - begun for address, at in started.items()}

    started = asyncio.run(scenario())
    assert started["10.0.0.1"] < 0.2 and started["10.0.0.2"] >= 0.9


def test_services_sharing_a_real_server_and_a_check_share_one_probe() -> None:
    """A thousand services on one (address, port) with one check: one probe per interval (not a
    thousand) whose result every one of them gets, and one callback per verdict flip. A different
    check (another path) or another port is its own probe; a target that leaves stops sharing."""

    async def scenario() -> tuple[list[str], list[bool], int, list[str], list[str]]:
        loop = asyncio.get_running_loop()
        probed: list[str] = []
        answer = {"error": "TCP connect failed: refused"}

        async def fake(self: Target) -> str | None:
            probed.append(f"{self.key.address}:{self.key.port}{self.check.path}")
            return answer["error"]

        services = [ServiceKey("tcp", "169.254.11.2", 1000 + i) for i in range(1000)]
        shared = [Target(RealServerKey(service, "10.0.0.1", 80), check(interval=1)) for service in services]
        other_path = Target(RealServerKey(ServiceKey("tcp", "169.254.11.3", 80), "10.0.0.1", 80), check(interval=1).model_copy(update={"path": "/other"}))
        other_port = Target(RealServerKey(ServiceKey("tcp", "169.254.11.4", 80), "10.0.0.1", 81), check(interval=1))
        tracker = HealthTracker()
        changes: list[int] = []
        checker = HealthChecker(tracker, lambda: changes.append(1), clock=loop.time, jitter=lambda: 0.0)
        original = Target.probe
        Target.probe = fake  # type: ignore[method-assign]
        try:
            checker.update(set(shared) | {other_path, other_port})
            while len(probed) < 3:
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.05)  # the last probe's result recorded
            first_round = sorted(probed)
            out = [tracker.is_healthy(t.key) for t in shared]
            flips = len(changes)
            probed.clear()
            answer["error"] = None
            checker.update(set(shared[:10]))  # 990 services and the other two probes go
            while not probed:
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.05)
            second_round = list(probed)
            back = [key for key in tracker.states if tracker.is_healthy(key)]
            await checker.stop()
        finally:
            Target.probe = original  # type: ignore[method-assign]
        return first_round, out, flips, second_round, sorted(str(key) for key in back)

    first_round, out, flips, second_round, back = asyncio.run(scenario())
    assert first_round == ["10.0.0.1:80/healthz", "10.0.0.1:80/other", "10.0.0.1:81/healthz"]
    assert out == [False] * 1000  # every service sharing the probe took its failure (threshold 1)
    assert flips == 3  # one callback per probe whose verdict flipped, not one per service
    assert second_round == ["10.0.0.1:80/healthz"]
    assert len(back) == 10  # the ten that stayed got the passing result; the others were forgotten


def test_probes_at_once_count_shared_probes_once() -> None:
    targets = {Target(RealServerKey(ServiceKey("tcp", "169.254.11.2", 1000 + i), "10.0.0.1", 80), check(3, 2)) for i in range(5000)}

    async def scenario() -> int:
        checker = HealthChecker(HealthTracker(), lambda: None, jitter=lambda: 0.99)
        checker.update(targets)
        limit = checker.limit.limit
        await checker.stop()
        return limit

    assert asyncio.run(scenario()) == MIN_SLOTS  # one probe, not 5,000 (which would be MAX_SLOTS)


class CountingTracker(HealthTracker):
    def __init__(self) -> None:
        super().__init__()
        self.records = 0

    def record(self, key: RealServerKey, ok: bool, thresholds: Any, error: str = "") -> bool:
        self.records += 1
        return super().record(key, ok, thresholds, error)


def counted_rounds(watched: RealServerKey, script: Callable[..., Awaitable[None]]) -> list[tuple[int, bool]]:
    """`script(checker, tracker, after_rounds, answer)` run against probes that answer `answer["error"]`;
    what each `await after_rounds(n)` saw once n more rounds ran: (records so far, `watched` in service)."""

    async def scenario() -> list[tuple[int, bool]]:
        loop = asyncio.get_running_loop()
        rounds = [0]
        answer: dict[str, str | None] = {"error": None}

        async def fake(self: Target) -> str | None:
            rounds[0] += 1
            return answer["error"]

        tracker = CountingTracker()
        checker = HealthChecker(tracker, lambda: None, clock=loop.time, jitter=lambda: 0.0)
        seen: list[tuple[int, bool]] = []

        async def after_rounds(count: int) -> None:
            target = rounds[0] + count
            while rounds[0] < target:
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.05)
            seen.append((tracker.records, tracker.is_healthy(watched)))

        original = Target.probe
        Target.probe = fake  # type: ignore[method-assign]
        try:
            await script(checker, tracker, after_rounds, answer)
            await checker.stop()
        finally:
            Target.probe = original  # type: ignore[method-assign]
        return seen

    return asyncio.run(scenario())


def test_a_steady_probe_records_nothing_until_its_result_or_members_change() -> None:
    """A passing probe whose every member is in service changes no verdict by passing again: its
    result is not recorded member by member (a backend shared by 10,000 services cost 10,000
    records per interval). Newcomers get their first result, recorded for them alone (a new
    service's real server on such a backend cost 10,000 records), a failure is recorded for each
    member, and a member taken out is brought back by passes as before."""
    shared = [Target(RealServerKey(ServiceKey("tcp", "169.254.11.2", 1000 + i), "10.0.0.1", 80), check(interval=1)) for i in range(100)]

    async def script(checker: HealthChecker, tracker: HealthTracker, after_rounds: Any, answer: dict[str, str | None]) -> None:
        checker.change(shared[:50], ())
        await after_rounds(1)  # first results: 50 records
        await after_rounds(2)  # steady: none
        checker.change(shared[50:], ())
        await after_rounds(1)  # 50 (the newcomers' first results)
        assert all(target.key in tracker.states for target in shared)
        answer["error"] = "TCP connect failed: refused"
        await after_rounds(1)  # 100 failures: out (threshold 1)
        answer["error"] = None
        await after_rounds(1)  # 100 passes: back
        await after_rounds(1)  # steady again

    assert counted_rounds(shared[0].key, script) == [(50, True), (50, True), (100, True), (200, False), (300, True), (300, True)]


def test_a_newcomer_out_of_service_joining_a_steady_probe_comes_back_and_then_all_are_recorded_again() -> None:
    """A newcomer recalled out of service (a restart's verdict) joins a steady probe: passes are
    recorded for it until it is back (successThreshold 2: one pass leaves it out, and the probe
    is no longer steady, so the next pass is recorded for every member), then steady again."""
    slow = check(interval=1).model_copy(update={"success_threshold": 2})
    members = [Target(RealServerKey(ServiceKey("tcp", "169.254.11.2", 1000 + i), "10.0.0.1", 80), slow) for i in range(20)]

    async def script(checker: HealthChecker, tracker: HealthTracker, after_rounds: Any, answer: dict[str, str | None]) -> None:
        checker.change(members[:-1], ())
        await after_rounds(2)  # 19 first results, then steady
        tracker.restore(members[-1].key, Health(healthy=False, failures=3))  # recalled out of service
        checker.change(members[-1:], ())
        await after_rounds(1)  # its first pass, alone: still out
        await after_rounds(1)  # every member: it is back
        await after_rounds(1)  # steady

    assert counted_rounds(members[-1].key, script) == [(19, True), (20, False), (40, True), (40, True)]


def test_change_follows_what_update_follows() -> None:
    """Targets added and removed by `change` leave the checker as `update` with the result does."""
    keys = [RealServerKey(ServiceKey("tcp", "169.254.11.2", 1000 + i), f"10.0.0.{i % 3}", 80) for i in range(30)]
    targets = [Target(key, check(interval=1)) for key in keys]

    async def scenario() -> tuple[Any, Any, Any]:
        by_change = HealthChecker(HealthTracker(), lambda: None, jitter=lambda: 0.99)
        by_update = HealthChecker(HealthTracker(), lambda: None, jitter=lambda: 0.99)
        by_change.change(targets[:20], ())
        by_change.change(targets[20:], targets[:5] + targets[:1])  # removed twice: once counts
        by_change.change((), [t for t in targets if t.key.address == "10.0.0.1"])  # a whole probe goes
        by_update.update({t for t in targets[5:] if t.key.address != "10.0.0.1"})
        shapes = [({p: set(m) for p, m in c.members.items()}, set(c.tasks), c.given()) for c in (by_change, by_update)]
        await by_change.stop()
        await by_update.stop()
        return shapes[0], shapes[1], len(shapes[0][1])

    left, right, probes = asyncio.run(scenario())
    assert left == right and probes == 2


def test_a_real_server_whose_check_changes_keeps_its_verdict() -> None:
    """The same real server under another check (the in-cluster agent's slowed probe when this node
    stops or starts being a designated checker, vsop.kube.checkers) keeps its verdict, by `change`
    and by `update`: forgotten, a dead one came back in service until the new check failed
    failureThreshold times. One no longer checked at all is forgotten."""
    from vsop.core.health import Thresholds

    key = RealServerKey(SERVICE, "10.0.0.1", 80)
    fast, slow = Target(key, check(interval=1)), Target(key, check(interval=10))

    async def scenario() -> list[bool | None]:
        tracker = HealthTracker()
        checker = HealthChecker(tracker, lambda: None, jitter=lambda: 0.99)
        seen: list[bool | None] = []
        checker.update({fast})
        tracker.record(key, False, Thresholds(1, 1), "refused")
        checker.change([slow], [fast])
        seen.append(tracker.states[key].healthy if key in tracker.states else None)
        checker.update({fast})
        seen.append(tracker.states[key].healthy if key in tracker.states else None)
        checker.change([], [fast])
        seen.append(tracker.states[key].healthy if key in tracker.states else None)
        await checker.stop()
        return seen

    assert asyncio.run(scenario()) == [False, False, None]
