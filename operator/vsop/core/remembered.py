"""What an agent must remember across a restart: health verdicts and draining clocks, as plain data.

Owns the encoding of a node's health states (`core.health.Health`, counters included) and
draining start times into JSON-ready records and back. A real server that checks had taken
out must start out after a restart (keepalived's `alpha`): without this, every rollout, OOM
kill or crash sends traffic to dead backends for failureThreshold x interval. Draining
clocks are kept in wall-clock seconds, since the monotonic clock restarts with the process.
Decoding is forgiving: a malformed record is skipped and counted, never fatal.
Pure: must not import time, os, json or anything outside the core.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from vsop.core.health import Health
from vsop.core.state import RealServerKey, ServiceKey

FORMAT = 1
PROTOCOLS = ("tcp", "udp", "sctp")


@dataclass
class Remembered:
    health: dict[RealServerKey, Health] = field(default_factory=dict)
    draining_since: dict[RealServerKey, float] = field(default_factory=dict)  # wall-clock seconds
    skipped: int = 0  # records that could not be read


def _key_record(key: RealServerKey) -> dict[str, Any]:
    return {"protocol": key.service.protocol, "vip": key.service.vip, "port": key.service.port, "address": key.address, "targetPort": key.port}


def encode(health: Mapping[RealServerKey, Health], draining_since: Mapping[RealServerKey, float]) -> dict[str, Any]:
    """The document to keep; sorted, so an unchanged node encodes to the same text. Real servers in
    service with no failure counted are left out: a restart starts them so anyway (`Health()`), and
    a node of 20,000 passing checks keeps a file of what is wrong, not of everything."""
    checks = []
    kept = [(key, state) for key, state in health.items() if not state.healthy or state.failures]
    for key, state in sorted(kept, key=lambda item: _sort_key(item[0])):
        record = _key_record(key)
        record.update(healthy=state.healthy, failures=state.failures, successes=state.successes, lastError=state.last_error)
        checks.append(record)
    draining = []
    for key, since in sorted(draining_since.items(), key=lambda item: _sort_key(item[0])):
        record = _key_record(key)
        record["since"] = since
        draining.append(record)
    return {"format": FORMAT, "health": checks, "draining": draining}


def _sort_key(key: RealServerKey) -> tuple[str, str, int, str, int]:
    return (key.service.protocol, key.service.vip, key.service.port, key.address, key.port)


def _key(record: Mapping[str, Any]) -> RealServerKey:
    protocol, vip, port, address, target = (record[name] for name in ("protocol", "vip", "port", "address", "targetPort"))
    if protocol not in PROTOCOLS or not isinstance(vip, str) or not isinstance(address, str):
        raise ValueError("bad key")
    if not all(isinstance(n, int) and not isinstance(n, bool) and 0 < n < 65536 for n in (port, target)):
        raise ValueError("bad port")
    return RealServerKey(ServiceKey(protocol, vip, port), address, target)


def _count(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError("bad counter")
    return value


def decode(document: Any) -> Remembered:
    """What a kept document says; anything unreadable is skipped (and counted)."""
    result = Remembered()
    if not isinstance(document, Mapping) or document.get("format") != FORMAT:
        result.skipped = 1 if document is not None else 0
        return result
    for record in _records(document.get("health")):
        try:
            healthy = record["healthy"]
            if not isinstance(healthy, bool):
                raise ValueError("bad verdict")
            error = record.get("lastError", "")
            state = Health(healthy, _count(record["successes"]), _count(record["failures"]), error if isinstance(error, str) else "")
            result.health[_key(record)] = state
        except (KeyError, TypeError, ValueError):
            result.skipped += 1
    for record in _records(document.get("draining")):
        try:
            since = record["since"]
            if not isinstance(since, (int, float)) or isinstance(since, bool):
                raise ValueError("bad time")
            result.draining_since[_key(record)] = float(since)
        except (KeyError, TypeError, ValueError):
            result.skipped += 1
    return result


def _records(value: Any) -> Iterable[Mapping[str, Any]]:
    if isinstance(value, list):
        return [item if isinstance(item, Mapping) else {} for item in value]
    return []


def draining_on_this_clock(wall_since: Mapping[RealServerKey, float], wall_now: float, monotonic_now: float) -> dict[RealServerKey, float]:
    """Draining start times moved onto this process's monotonic clock (a start in the future is now)."""
    return {key: monotonic_now - max(0.0, wall_now - since) for key, since in wall_since.items()}


def draining_on_the_wall(monotonic_since: Mapping[RealServerKey, float], wall_now: float, monotonic_now: float) -> dict[RealServerKey, float]:
    return {key: wall_now - max(0.0, monotonic_now - since) for key, since in monotonic_since.items()}
