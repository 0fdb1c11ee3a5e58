"""Bounded health checks of static backends: a few designated checker nodes per backend.

Owns who checks a static backend in a cluster and how the result reaches every node:
- `choose`: the checkers of one backend, by rendezvous (highest random weight) hashing
  of the backend over the candidate nodes (the nodes a VirtualService applies to whose
  agent has a NodeReport). Pure and deterministic: any process given the same backend
  and nodes computes the same checkers, and a node joining or leaving moves only the
  backends it wins or held (about K/N of them).
- `published_health` (controller): per static backend of a health-checked
  VirtualService, its checkers and the verdict summed up from what they wrote in their
  NodeReports (`checks` in the node's entry); the controller writes the list into the
  VirtualService's `status.backendHealth`, which every agent already watches. Its size is
  K names per backend, independent of the number of nodes.
- `Roles` (agent): from the published list, which health targets this node probes at the
  spec's interval (it is a checker, or nothing is published yet: every node checks for
  itself, the behaviour without a controller), which it watches through its own IPVS
  counters instead of probing (`watched`: the others' masquerade TCP and SCTP real servers),
  which it probes only every `SLOW_FACTOR` x interval (the others' direct-routing, tunnelled
  and UDP real servers: a node that cannot reach a backend still takes it out, more slowly),
  the backends published down (taken out here too), and the `checks` this node publishes as a
  checker. `RoleKeeper` keeps them per object, derived again for the objects whose health
  targets or published health changed (a turn costs what changed).
- `LocalProbes` (agent): which watched real servers this node probes after all. Once per resync
  period the agent reads their counters (IPVS per-destination stats: connections, packets each
  way); `trouble` says, from two looks, whether the data path shows a dead real server (new
  connections, not one reply packet). A masquerade real server's replies pass through this
  node, so a real server this node cannot reach shows exactly that once clients use it; one
  that carries no traffic here hurts no client here and is not probed. A real server in
  trouble is probed at the spec's interval (clients are failing now: it goes out within
  failureThreshold x interval of the look) until its own verdict is healthy and the last look
  showed no trouble. Direct routing and tunnelling send the replies around this node, and a
  UDP service may be one-way (new flows without replies prove nothing): those keep the slow
  probe. A real server that refuses (a RST, or an ICMP error the kernel relates to the connection)
  answers as far as the counters go: IPVS counts every packet of a connection coming back from
  the real server as a packet out (ip_vs_out_stats, handle_response_icmp for ICMP), and its
  per-destination counters hold connections, packets and bytes each way, no TCP flags and no
  outcome per connection. The one trace a refusal leaves, a single packet in per connection
  (the SYN, never its ACK), is lost in the sums: packets of the real server's longer-lived
  connections hide it, and a lone connection caught mid-handshake by a look shows it while
  healthy. So refusals are left to the designated checkers' probes, which see them as
  "Connection refused"; a refusal is nearly always the backend's own (nothing listens, the
  backlog is full) and so seen from every node alike. A refusal on one node's path only (a
  REJECT with tcp-reset for that node) goes unseen there.
  Probes per backend per interval: K, plus one per node whose data path shows trouble
  for it (masquerade TCP/SCTP), plus (N - K) / SLOW_FACTOR for the others. What a node probes
  this way is in its metrics (vsop_health_local_probes) and its NodeReport (`status.localProbes`,
  `probed_here`).
serviceRef endpoints are not covered: their readiness comes from the EndpointSlices, and
a health check on them stays a check every node runs.
No I/O of its own: must not import kopf, vsop.node.execute or vsop.adapters.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

from vsop.node.probes import Target
from vsop.core.health import HealthTracker
from vsop.core.state import RealServerKey, ServiceKey, Traffic
from vsop.api.model import VirtualService

CHECKERS = 3  # K: checker nodes per static backend
SLOW_FACTOR = 10  # a non-checker's own probe runs every SLOW_FACTOR x intervalSeconds
STATUS_FIELD = "backendHealth"  # in VirtualService status, written by the controller
ENTRY_FIELD = "checks"  # in a node's NodeReport entry: backend -> healthy, for the backends it checks


def backend_id(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def static_backends(vs: VirtualService) -> list[str]:
    """The `address:port` probed for each static backend of a health-checked VirtualService, sorted."""
    spec = vs.spec
    if spec.health_check.type == "none" or not spec.backends:
        return []
    found: set[str] = set()
    for port in spec.ports:
        default = port.target_port if isinstance(port.target_port, int) else port.port
        for backend in spec.backends:
            found.add(backend_id(backend.address, backend.port or default))
    return sorted(found)


def _score(backend: str, node: str) -> bytes:
    return hashlib.sha256(f"{backend}\x00{node}".encode()).digest()


def choose(backend: str, nodes: Iterable[str], k: int = CHECKERS) -> tuple[str, ...]:
    """The k nodes with the highest rendezvous score for this backend (all of them when fewer), best first."""
    return tuple(sorted(set(nodes), key=lambda node: _score(backend, node), reverse=True)[:k])


def _verdict(results: Mapping[str, bool]) -> bool:
    """Healthy unless a strict majority of the checkers that reported say down (one checker: its word)."""
    down = sum(1 for ok in results.values() if not ok)
    return not (down * 2 > len(results))


def published_health(vs: VirtualService, ref: str, candidates: Iterable[str],
                     reports: Mapping[str, Mapping[str, Any]], k: int = CHECKERS) -> list[dict[str, Any]]:
    """`status.backendHealth` of one VirtualService: per static backend, its checkers and their verdict.

    `candidates`: the nodes it applies to whose agent runs; `reports`: node -> entries of its NodeReport.
    A backend no checker has reported on yet is healthy (as a real server starts in service).
    """
    nodes = sorted(candidates)
    if not nodes:
        return []
    published = []
    for backend in static_backends(vs):
        checkers = choose(backend, nodes, k)
        results: dict[str, bool] = {}
        for node in checkers:
            entry = (reports.get(node) or {}).get(ref)
            checks = entry.get(ENTRY_FIELD) if isinstance(entry, Mapping) else None
            if isinstance(checks, Mapping) and isinstance(checks.get(backend), bool):
                results[node] = checks[backend]
        item: dict[str, Any] = {"backend": backend, "checkers": list(checkers), "healthy": _verdict(results)}
        down = sorted(node for node, ok in results.items() if not ok)
        if down:
            item["failingOn"] = down
        published.append(item)
    return published


@dataclass(frozen=True)
class Published:
    checkers: tuple[str, ...]
    healthy: bool


def parse_published(status: Any) -> dict[str, Published]:
    """backend -> what the controller published for it, from a VirtualService's status ({} when none)."""
    items = status.get(STATUS_FIELD) if isinstance(status, Mapping) else None
    found: dict[str, Published] = {}
    for item in items if isinstance(items, list) else ():
        if isinstance(item, Mapping) and isinstance(item.get("backend"), str):
            checkers = item.get("checkers") if isinstance(item.get("checkers"), list) else []
            found[item["backend"]] = Published(tuple(str(c) for c in checkers), item.get("healthy") is not False)
    return found


Forwarding = Callable[[str], "str | None"]  # owner ("namespace/name") -> its spec.forwarding; None: not known


def watchable(target: Target, forwarding: str | None) -> bool:
    """Whether this node's own counters can tell that `target` is dead: a masquerade real server's
    replies pass through this node, and a TCP or SCTP connection always has one (the SYN-ACK, the
    INIT-ACK). Direct routing and tunnelling send replies around this node; UDP may be one-way."""
    return forwarding == "masq" and target.key.service.protocol != "udp"


@dataclass
class Roles:
    """What this node does about each health target, given what the controller published."""

    targets: set[Target]  # the targets to run, each at the interval it is to be probed at
    checking: dict[RealServerKey, tuple[str, str]]  # key -> (owner, backend): this node is a designated checker
    published_down: frozenset[RealServerKey]  # keys this node is not a checker of, published down
    # Keys this node is not a checker of, whose data path its own counters show (`watchable`): not in
    # `targets`; LocalProbes runs them, at the spec's interval, while those counters show trouble.
    watched: dict[RealServerKey, Target] = field(default_factory=dict)

    def entry_checks(self, healthy: Mapping[RealServerKey, bool]) -> dict[str, dict[str, bool]]:
        """owner -> {backend: healthy} this node publishes as a checker (only backends it has a result for)."""
        out: dict[str, dict[str, bool]] = {}
        for key, (owner, backend) in self.checking.items():
            if key in healthy:
                checks = out.setdefault(owner, {})
                checks[backend] = checks.get(backend, True) and healthy[key]
        return out


@dataclass(frozen=True)
class _Role:
    run: Target | None  # the target as this node probes it (slowed down when it is not a checker); None: watched
    checking: tuple[str, str] | None  # (owner, backend) when this node is a designated checker
    down: bool  # published down, and this node is not a checker
    watched: Target | None = None  # not a checker, and its counters show its data path: probed only on trouble


def _unknown(owner: str) -> str | None:
    return None


def _role(node: str, target: Target, owner: str, published: Mapping[str, Mapping[str, Published]],
          forwarding: Forwarding = _unknown) -> _Role:
    backend = backend_id(target.key.address, target.key.port)
    found = (published.get(owner) or {}).get(backend)
    if found is None or not found.checkers:
        return _Role(target, None, False)  # nothing published (no controller yet, or a serviceRef endpoint): check it here
    if node in found.checkers:
        return _Role(target, (owner, backend), False)
    if watchable(target, forwarding(owner)):
        return _Role(None, None, not found.healthy, target)
    slow = target.check.model_copy(update={"interval_seconds": target.check.interval_seconds * SLOW_FACTOR})
    return _Role(Target(target.key, slow), None, not found.healthy)


def roles(node: str, targets: Iterable[Target], owners: Mapping[RealServerKey, str],
          published: Mapping[str, Mapping[str, Published]], forwarding: Forwarding = _unknown) -> Roles:
    """Split this node's health targets: checker (full rate), others (watched, or slow; applying the published verdict).

    `owners`: real server -> "namespace/name" of its VirtualService; `published`: owner -> backend -> Published;
    `forwarding`: owner -> its spec.forwarding (unknown: every other target slow, as without counters).
    Costs every target: `RoleKeeper` keeps the same per object and costs what changed.
    """
    return _collect((target, _role(node, target, owners.get(target.key, ""), published, forwarding)) for target in targets)


def _collect(derived: Iterable[tuple[Target, _Role]]) -> Roles:
    """The node's Roles from each target's role."""
    run: set[Target] = set()
    checking: dict[RealServerKey, tuple[str, str]] = {}
    down: set[RealServerKey] = set()
    watched: dict[RealServerKey, Target] = {}
    for target, role in derived:
        if role.run is not None:
            run.add(role.run)
        if role.watched is not None:
            watched[target.key] = role.watched
        if role.checking is not None:
            checking[target.key] = role.checking
        if role.down:
            down.add(target.key)
    return Roles(run, checking, frozenset(down), watched)


class RoleKeeper:
    """`roles` kept per object and derived again only for the objects whose health targets or
    published health changed: a health flip at 10k checked objects must not cost every target.

    Fed the node loop's targets per object (vsop.node.loop.NodeLoop.targets_by_ref: each target's
    owner is the object it is kept under, as `owners` says of it) and the published health per
    object. A real server passing from one object to another in one turn is the same target on both
    sides yet may change role (the owners' published health differ): both objects are derived again
    and the run targets differenced over all of them at once. A real server has one target (one
    owner, one check), so each key has one role. `take_changes`: the run targets added and removed
    since the checker last took them (None: follow `roles.targets` whole)."""

    def __init__(self, node: str, forwarding: Forwarding = _unknown):
        self.node = node
        self.forwarding = forwarding  # owner -> its spec.forwarding, as it is now (the source's)
        self.roles = Roles(set(), {}, frozenset())
        self._by_ref: dict[str, dict[Target, _Role]] = {}
        self._down: set[RealServerKey] = set()
        self._changes: tuple[set[Target], set[Target]] | None = None

    def rebuild(self, targets_by_ref: Mapping[str, Iterable[Target]], published: Mapping[str, Mapping[str, Published]]) -> Roles:
        """Every object's roles from scratch (the targets rebuilt, or at the first look)."""
        self._by_ref = {}
        for ref, targets in targets_by_ref.items():
            derived = {target: _role(self.node, target, ref, published, self.forwarding) for target in targets}
            if derived:
                self._by_ref[ref] = derived
        self.roles = _collect(pair for derived in self._by_ref.values() for pair in derived.items())
        self._down = set(self.roles.published_down)
        self._changes = None
        return self.roles

    def follow(self, refs: Iterable[str] | None, targets_by_ref: Mapping[str, Iterable[Target]],
               published: Mapping[str, Mapping[str, Published]]) -> Roles:
        """Derive again the roles of these objects' targets (`refs`: those whose targets or published
        health changed; None: every object, `rebuild`); costs their targets."""
        if refs is None:
            return self.rebuild(targets_by_ref, published)
        before: set[Target] = set()
        after: set[Target] = set()
        olds: list[dict[Target, _Role]] = []
        news: list[dict[Target, _Role]] = []
        for ref in refs:
            old = self._by_ref.pop(ref, None)
            if old:
                olds.append(old)
                before.update(role.run for role in old.values() if role.run is not None)
            new = {target: _role(self.node, target, ref, published, self.forwarding) for target in targets_by_ref.get(ref, ())}
            if new:
                self._by_ref[ref] = new
                news.append(new)
                after.update(role.run for role in new.values() if role.run is not None)
        # All the old roles out, then all the new in: a key that passed between two of these objects
        # keeps the role its new owner gives it, whichever came first.
        checking, down, watched = self.roles.checking, self._down, self.roles.watched
        was_down: dict[RealServerKey, bool] = {}  # the keys whose membership of `down` was touched: before
        for old in olds:
            for target in old:
                checking.pop(target.key, None)
                watched.pop(target.key, None)
                if target.key in down:
                    was_down.setdefault(target.key, True)
                    down.discard(target.key)
        for new in news:
            for target, role in new.items():
                if role.checking is not None:
                    checking[target.key] = role.checking
                if role.watched is not None:
                    watched[target.key] = role.watched
                if role.down:
                    was_down.setdefault(target.key, target.key in down)
                    down.add(target.key)
        if any((key in down) != was for key, was in was_down.items()):
            self.roles.published_down = frozenset(down)
        added, removed = after - before, before - after
        self.roles.targets -= removed
        self.roles.targets |= added
        if self._changes is not None:
            self._changes[0].difference_update(removed)
            self._changes[0].update(added)
            self._changes[1].difference_update(added)
            self._changes[1].update(removed)
        return self.roles

    def take_changes(self) -> tuple[set[Target], set[Target]] | None:
        """The run targets added and removed since the last call; None: follow `roles.targets` whole."""
        changes, self._changes = self._changes, (set(), set())
        return changes


def add_checks(entries: dict[tuple[str, str], dict[str, Any] | None], node_roles: Roles, tracker: HealthTracker) -> None:
    """Put this node's checker results into its report entries (in place); only programmed objects have an entry."""
    healthy = {key: tracker.is_healthy(key) for key in node_roles.checking if key in tracker.states}
    for owner, checks in node_roles.entry_checks(healthy).items():
        namespace, _, name = owner.partition("/")
        entry = entries.get((namespace, name))
        if entry is not None:
            entry[ENTRY_FIELD] = dict(sorted(checks.items()))


# --- the data path instead of a probe: non-checkers' masquerade real servers ------------------


def trouble(before: Traffic | None, now: Traffic | None) -> bool:
    """Whether a masquerade real server's counters, between two looks, show a dead data path: new
    connections were scheduled to it and not one packet came back. False without two looks; a real
    server removed and added again counts from zero, which reads as fewer connections: no trouble.
    A refusal (RST) is a packet back: no trouble (the checkers find it; see the module's docstring)."""
    if before is None or now is None:
        return False
    return now.connections > before.connections and now.out_packets == before.out_packets


class LocalProbes:
    """Which of the watched real servers (`Roles.watched`) this node probes itself, from what its own
    IPVS counters show (`trouble`) and its own verdicts.

    `services`: what to read (once per resync period: the services of the watched real servers);
    `look`: what was read; `follow`: the targets to probe as of now, as changes (costs the real servers
    in trouble or probed, not every watched one). A watched real server is probed at the spec's
    interval from the look that shows trouble until a look shows none and its own verdict is healthy:
    taken out here, it gets no new connection and its counters go quiet, but its probe goes on until
    it answers again (then it is back in service here, and forgetting its verdict changes nothing)."""

    def __init__(self) -> None:
        self.last: dict[RealServerKey, Traffic] = {}  # each watched real server's counters at the last look
        self.troubled: set[RealServerKey] = set()  # those whose last two looks show trouble
        self.running: dict[RealServerKey, Target] = {}  # what this node probes of them now

    @staticmethod
    def services(watched: Mapping[RealServerKey, Target]) -> list[ServiceKey]:
        return sorted({key.service for key in watched})

    def look(self, traffic: Mapping[RealServerKey, Traffic], watched: Mapping[RealServerKey, Target]) -> set[RealServerKey]:
        """Take one read of the watched real servers' counters; returns the real servers newly in trouble."""
        last = self.last
        troubled = {key for key in watched if trouble(last.get(key), traffic.get(key))}
        self.last = {key: traffic[key] for key in watched if key in traffic}
        new = troubled - self.troubled
        self.troubled = troubled
        return new

    def follow(self, watched: Mapping[RealServerKey, Target], healthy: Callable[[RealServerKey], bool],
               down: Iterable[RealServerKey] = ()) -> tuple[set[Target], set[Target]]:
        """(added, removed): the probes to start and stop so that this node probes, of the watched real
        servers, those in trouble and those its own probe found down (until they answer again).
        `down`: more real servers this node holds out of service by its own verdict (the ones recalled
        from before a restart): probed too when watched, or nothing would bring them back here."""
        want: dict[RealServerKey, Target] = {}
        for key in self.troubled | self.running.keys() | set(down):
            target = watched.get(key)
            if target is not None and (key in self.troubled or not healthy(key)):
                want[key] = target
        added = {target for key, target in want.items() if self.running.get(key) != target}
        removed = {target for key, target in self.running.items() if want.get(key) != target}
        self.running = want
        return added, removed

    def probed_here(self, targets_by_ref: Mapping[str, Iterable[Target]]) -> list[tuple[str, str]]:
        """(owner, backend) of each real server probed here (`running`), for the node's report; costs
        every target (`targets_by_ref`: owner -> its targets, vsop.node.loop.NodeLoop's), so the agent
        asks again only when `running` changed."""
        running = self.running
        if not running:
            return []
        return sorted((ref, backend_id(target.key.address, target.key.port))
                      for ref, targets in targets_by_ref.items() for target in targets if target.key in running)
