"""Health of real servers: thresholds of consecutive results, and what being out does to a weight.

Owns the state machine keepalived users expect: a real server starts in service;
`failureThreshold` consecutive failed checks take it out, `successThreshold`
consecutive good ones bring it back. The checks themselves (TCP connect, HTTP GET)
are run by the agents (vsop.node.probes); this module only counts their results.
Owns too the rule that turns "out of service" into a weight (`apply_health`), which
vsop.core.desired applies to every real server it derives.
The agents record results on their event loop while their turns read the tracker in a thread
of their own: a reader in that thread goes through `snapshot`, `noted` or `out_of_service`,
never iterates `states` itself.
Pure: must not import asyncio, socket, subprocess or anything outside the core.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Iterable, Mapping

from vsop.core.state import RealServer, RealServerKey, ServiceKey


@dataclass(slots=True)  # one per checked real server: 20,000 at 10,000 services of two
class Health:
    healthy: bool = True
    successes: int = 0  # consecutive
    failures: int = 0  # consecutive
    last_error: str = ""


@dataclass(frozen=True)
class Thresholds:
    failure: int = 2
    success: int = 1


class HealthTracker:
    """The health of each checked real server, and the few that matter after a restart.

    `states` is read-only to callers: results come in through `record`, remembered verdicts
    through `restore`, and those two keep `noted` (the real servers out of service or counting
    failures) in step. A turn reads `out_of_service` and `noted` at every change: derived from
    all 20,000 states of 10k checked services, they cost 8 and 7 ms of each turn natively, the
    larger part of a new file's turn at 10k against 100.
    """

    __slots__ = ("_states", "_noted", "changed", "track_changes")

    def __init__(self, states: dict[RealServerKey, Health] | None = None, track_changes: bool = False) -> None:
        self._states: dict[RealServerKey, Health] = {} if states is None else states
        self._noted: dict[RealServerKey, Health] = {key: state for key, state in self._states.items() if _noteworthy(state)}
        # Real servers whose reported health (healthy, failures, last error) changed since
        # take_changed: a status report re-renders only these. Kept only with track_changes (a
        # tracker nobody takes them from would keep every real server ever checked).
        self.changed: set[RealServerKey] = set()
        self.track_changes = track_changes

    @property
    def states(self) -> Mapping[RealServerKey, Health]:
        """Every checked real server's health, read-only (`record` and `restore` change it)."""
        return MappingProxyType(self._states)

    def record(self, key: RealServerKey, ok: bool, thresholds: Thresholds, error: str = "") -> bool:
        """Count one check result; True when the real server changed between in and out of service."""
        state = self._states.setdefault(key, Health())
        before = (state.healthy, state.failures, state.last_error)
        flipped = self._count(state, ok, thresholds, error)
        if (state.healthy, state.failures, state.last_error) != before:
            self._note(key, state)
            if self.track_changes:
                self.changed.add(key)
        return flipped

    def restore(self, key: RealServerKey, state: Health) -> None:
        """What the previous agent knew of a real server, unless this one has counted results already."""
        if key in self._states:
            return
        self._states[key] = state
        self._note(key, state)
        if self.track_changes:
            self.changed.add(key)

    def _note(self, key: RealServerKey, state: Health) -> None:
        if _noteworthy(state):
            self._noted[key] = state
        else:
            self._noted.pop(key, None)

    @staticmethod
    def _count(state: Health, ok: bool, thresholds: Thresholds, error: str) -> bool:
        if ok:
            state.successes += 1
            state.failures = 0
            state.last_error = ""
            if not state.healthy and state.successes >= thresholds.success:
                state.healthy = True
                return True
        else:
            state.failures += 1
            state.successes = 0
            state.last_error = error
            if state.healthy and state.failures >= thresholds.failure:
                state.healthy = False
                return True
        return False

    def forget_except(self, keys: Iterable[RealServerKey]) -> None:
        """Drop the state of real servers that are no longer checked."""
        keep = set(keys)
        self.forget([key for key in self._states if key not in keep])

    def forget(self, keys: Iterable[RealServerKey]) -> None:
        """Drop the state of these real servers (no longer checked)."""
        for key in keys:
            if self._states.pop(key, None) is not None:
                self._noted.pop(key, None)
                if self.track_changes:
                    self.changed.add(key)

    def take_changed(self) -> set[RealServerKey]:
        """The real servers whose reported health changed since the last call."""
        changed, self.changed = self.changed, set()
        return changed

    def snapshot(self) -> dict[RealServerKey, Health]:
        """`states` as they are now, for a reader in another thread than the one recording. Copied
        by one C call (dict.copy) that the recording thread cannot interleave with, so it cannot
        add or drop a real server halfway: iterating `states` itself from the agents' turn thread
        raised "dictionary changed size during iteration" when a probe's first result for a new
        real server came meanwhile, and the turn was retried seconds later. The Health values are
        shared: one may be read halfway through a record, and the next read sees it whole."""
        return self._states.copy()

    def noted(self) -> dict[RealServerKey, Health]:
        """The real servers out of service or counting failures: what a restart must not forget
        (the others start in service anyway). A copy, as `snapshot`, for the turns' thread."""
        return self._noted.copy()

    def out_of_service(self) -> frozenset[RealServerKey]:
        return frozenset(key for key, state in self.noted().items() if not state.healthy)

    def is_healthy(self, key: RealServerKey) -> bool:
        state = self._states.get(key)
        return state is None or state.healthy


def _noteworthy(state: Health) -> bool:
    return not state.healthy or state.failures > 0


def apply_health(
    real_servers: dict[RealServerKey, RealServer], out: frozenset[RealServerKey]
) -> tuple[dict[RealServerKey, RealServer], list[ServiceKey]]:
    """Real servers after health took some out, and the services whose every real server fails.

    A TCP or SCTP real server taken out keeps its entry at weight 0 (its connections finish);
    a UDP one is removed. When every serving real server of a service is out, all of them
    stay as they are: there is nothing better to send traffic to.
    """
    if not out:
        return real_servers, []
    by_service: dict[ServiceKey, list[RealServer]] = {}
    for rs in real_servers.values():
        by_service.setdefault(rs.key.service, []).append(rs)
    result = dict(real_servers)
    all_failing: list[ServiceKey] = []
    for service, servers in sorted(by_service.items(), key=lambda item: (item[0].protocol, item[0].vip, item[0].port)):
        serving = [rs for rs in servers if rs.weight > 0]
        if serving and all(rs.key in out for rs in serving):
            all_failing.append(service)
            continue  # all of them failing: keep them, there is nothing better to send traffic to
        for rs in serving:
            if rs.key not in out:
                continue
            if rs.key.service.protocol == "udp":
                # UDP has no connection to finish: a quiescent real server would keep every
                # client on a fixed source port stuck on it until the entry times out.
                del result[rs.key]
            else:
                result[rs.key] = RealServer(rs.key, rs.forwarding, 0)
    return result, all_failing
