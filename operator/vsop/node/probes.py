"""Active health checks of real servers: TCP connect and HTTP GET, run with asyncio.

Owns the probes and the loop that runs one per real server with bounded concurrency,
feeding results into the pure `HealthTracker` and calling back when a real server
goes in or out of service. Checks connect to the real server itself (not through the
VIP), as keepalived's TCP_CHECK and HTTP_GET do.
Must not import: kopf, kubernetes, pyroute2.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping

from vsop.core.draining import Draining
from vsop.core.health import HealthTracker, Thresholds
from vsop.core.state import RealServerKey
from vsop.api.model import HealthCheck, VirtualService

log = logging.getLogger("vsop.health")


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
    """None when GET path answers with the expected status within the timeout, else why not."""
    host = f"[{address}]" if ":" in address else address

    async def get() -> str | None:
        reader, writer = await asyncio.open_connection(address, port)
        try:
            request = f"GET {path} HTTP/1.0\r\nHost: {host}:{port}\r\nUser-Agent: vsop-health\r\nConnection: close\r\n\r\n"
            writer.write(request.encode("ascii"))
            await writer.drain()
            status_line = (await reader.readline()).decode("latin-1").strip()
        finally:
            writer.close()
        parts = status_line.split()
        if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
            return f"not an HTTP answer: {status_line[:60]!r}"
        if int(parts[1]) != expect:
            return f"HTTP status {parts[1]}, expected {expect}"
        return None

    try:
        return await asyncio.wait_for(get(), timeout)
    except asyncio.TimeoutError:
        return f"no HTTP answer within {timeout:g}s"
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


class HealthChecker:
    """One asyncio task per real server; `update` starts and stops them to match the targets."""

    def __init__(self, tracker: HealthTracker, on_change: Callable[[], None], concurrency: int = 64):
        self.tracker = tracker
        self.on_change = on_change
        self.limit = asyncio.Semaphore(concurrency)
        self.tasks: dict[Target, asyncio.Task[None]] = {}

    def update(self, targets: set[Target]) -> None:
        for target in list(self.tasks):
            if target not in targets:
                self.tasks.pop(target).cancel()
        for target in targets:
            if target not in self.tasks:
                self.tasks[target] = asyncio.get_running_loop().create_task(self._run(target), name=f"health {target.key}")
        self.tracker.forget_except(target.key for target in targets)

    async def _run(self, target: Target) -> None:
        thresholds = Thresholds(target.check.failure_threshold, target.check.success_threshold)
        while True:
            async with self.limit:
                error = await target.probe()
            first = target.key not in self.tracker.states
            if self.tracker.record(target.key, error is None, thresholds, error or ""):
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
            await asyncio.sleep(target.check.interval_seconds)

    async def stop(self) -> None:
        for task in self.tasks.values():
            task.cancel()
        await asyncio.gather(*self.tasks.values(), return_exceptions=True)
        self.tasks.clear()


def health_targets(services: Iterable[VirtualService], configured: Mapping[RealServerKey, str], draining: Draining) -> set[Target]:
    """Every configured real server of a VirtualService with a health check, in service or not
    (so a failed one can come back), except those draining away."""
    checks = {vs.ref: vs.spec.health_check for vs in services if vs.spec.health_check.type != "none"}
    return {Target(key, checks[owner]) for key, owner in configured.items() if owner in checks and key not in draining.since}
