"""Benchmark of the in-cluster agent's health roles and checker per turn, natively on the fake kernel.

N VirtualServices (default 100 and 10,000), each health-checked (TCP) on two static backends,
10.250.0.2 and 10.250.0.3 port 8080: 2 x N health targets. The controller has published
`status.backendHealth` for every object (vsop.kube.checkers: per backend, 3 checkers chosen
among 20 nodes; this node, node-00, is a designated checker of some, the rest it probes slowly).
The node's turn (vsop.node.loop.NodeLoop on the fake kernel) runs as the in-cluster agent runs
it, with what the agent does around it for the health roles (vsop.kube.agent: the roles before
the turn, for its out-of-service set, and after it; the checker following the roles' targets),
two ways side by side in one run:

- `whole`: what each turn cost before the roles were kept per object: `checkers.roles` over every
  target before and after the turn, and `HealthChecker.update` with every role target twice (in
  the turn, and again by the loop after it);
- `kept`: `checkers.RoleKeeper` following the loop's per-object target changes
  (`NodeLoop.take_ref_changes`) and the objects whose published health was taken, the checker
  following the keeper's changes (what vsop.kube.agent does now).

Two kinds of turn, each the median of `--repeat` (alternating down and up): a local health flip
(one real server's check fails: its weight is edited, no target changes) and a published flip
(the controller publishes one object's backend down: that object's roles are derived again).
Printed per kind: the roles-and-checker part of the turn both ways, and the node turn itself
(reconcile on the fake kernel, health targets), the same both ways. The NodeReport write, kopf
and the API server are not in it (bench/kube_bench.py measures a change end to end on kmock).

    .venv/bin/python bench/kube_roles.py
    .venv/bin/python bench/kube_roles.py --objects 100 10000 --repeat 7

Figures only, no assertions; both ways are checked to give the same roles (docs/performance.md).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

REPOSITORY = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPOSITORY / "operator"))

from vsop.adapters.kernel import fake_kernel  # noqa: E402
from vsop.api.model import HealthCheck, VirtualService  # noqa: E402
from vsop.core.desired import Node  # noqa: E402
from vsop.core.health import HealthTracker, Thresholds  # noqa: E402
from vsop.core.state import RealServerKey, ServiceKey  # noqa: E402
from vsop.kube import checkers  # noqa: E402
from vsop.node.loop import Feed, NodeLoop  # noqa: E402
from vsop.node.probes import HealthChecker  # noqa: E402
from vsop.node.reconciler import Reconciler  # noqa: E402
from reconciler_bench import service as unchecked  # noqa: E402

ME = "node-00"
NODES = [f"node-{i:02d}" for i in range(20)]
BACKENDS = ("10.250.0.2", "10.250.0.3")  # reconciler_bench's


CHECK = HealthCheck.model_validate({"type": "tcp", "intervalSeconds": 2, "timeoutSeconds": 1, "failureThreshold": 1})


def service(index: int) -> VirtualService:
    """bench/reconciler_bench.py's object (two backends on port 8080), health-checked."""
    vs = unchecked(index)
    return vs.model_copy(update={"spec": vs.spec.model_copy(update={"health_check": CHECK})})


def publish(vs: VirtualService, down: set[str] = frozenset()) -> dict[str, checkers.Published]:  # type: ignore[assignment]
    """What the controller publishes for it: per backend, its checkers among NODES and the verdict."""
    return {backend: checkers.Published(checkers.choose(f"{vs.ref}|{backend}", NODES), backend not in down)
            for backend in checkers.static_backends(vs)}


class Agent:
    """The health-roles part of vsop.kube.agent.Agent.sync_once around one turn, `whole` or `kept`."""

    def __init__(self, loop: NodeLoop, published: dict[str, dict[str, checkers.Published]], kept: bool):
        self.loop, self.published, self.kept = loop, published, kept
        self.keeper = checkers.RoleKeeper(ME)
        self.roles = checkers.Roles(set(), {}, frozenset())
        self.checker = HealthChecker(loop.tracker, lambda: None)
        self.followed = False
        self.spent = 0.0  # seconds in the roles and the checker
        self.fake: Any = None  # the fake kernel's state holder

    def _roles(self, taken: set[str]) -> checkers.Roles:
        if not self.kept:
            return checkers.roles(ME, self.loop.targets, self.loop.reconciler.configured, self.published)
        refs = self.loop.take_ref_changes("roles")
        if refs is not None:
            refs |= taken
        self.roles = self.keeper.follow(refs, self.loop.targets_by_ref, self.published)
        return self.roles

    def _follow_checker(self) -> None:
        if not self.kept:
            self.checker.update(self.roles.targets)
            return
        changes = self.keeper.take_changes()
        if changes is None or not self.followed:
            self.followed = True
            self.checker.update(self.roles.targets)
        else:
            self.checker.change(*changes)

    def turn(self, full: bool, changed: dict[str, VirtualService | None], taken: set[str]) -> float:
        """One turn; returns the node turn's own seconds (the roles' go to `spent`)."""
        started = time.perf_counter()
        down = self._roles(taken).published_down
        self.spent += time.perf_counter() - started
        started = time.perf_counter()
        turn = self.loop.turn(full, lambda others: Feed(changed=changed, out_of_service=down))
        own = time.perf_counter() - started
        assert turn.ok, turn.outcome
        started = time.perf_counter()
        self.roles = self._roles(set())
        self._follow_checker()  # in the turn (sync_once)
        if self.kept:
            self.checker.change(set(), set())  # the loop's follow after it: nothing left
        else:
            self.checker.update(self.roles.targets)  # the loop's follow after it, whole again
        self.spent += time.perf_counter() - started
        return own


async def measure(count: int, repeat: int) -> dict[str, Any]:
    objects = [service(i) for i in range(count)]
    published = {vs.ref: publish(vs) for vs in objects}
    agents = {}
    for kept in (False, True):
        kernel, fake = fake_kernel()
        loop = NodeLoop(Reconciler(kernel, Node(ME)), HealthTracker())
        agent = Agent(loop, dict(published), kept)
        agent.fake = fake
        agent.turn(True, {vs.ref: vs for vs in objects}, set(vs.ref for vs in objects))
        agents[kept] = agent
    backend = checkers.backend_id(BACKENDS[0], 8080)
    # One this node is not a checker of: published down, it is taken out here too.
    first = next(vs for vs in objects if ME not in published[vs.ref][backend].checkers)
    dead = RealServerKey(ServiceKey("tcp", first.spec.vip, 80), BACKENDS[0], 8080)
    results: dict[str, Any] = {"targets": len(agents[True].loop.targets)}

    def flips(name: str, step: Callable[[Agent, int], dict[str, VirtualService | None]]) -> None:
        for kept, agent in agents.items():
            spent, own = [], []
            for number in range(repeat):
                changed = step(agent, number)
                agent.spent = 0.0
                own.append(agent.turn(False, changed, set(changed)))
                spent.append(agent.spent)
            results[name, kept] = (statistics.median(spent), statistics.median(own))
        whole, kept_roles = agents[False].roles, agents[True].roles
        assert (dead in whole.published_down) == (name == "published" and repeat % 2 == 1)
        weight = 0 if repeat % 2 == 1 else 1
        assert all(agent.fake.state.real_servers[dead].weight == weight for agent in agents.values())
        assert (whole.targets, whole.checking, whole.published_down) == (kept_roles.targets, kept_roles.checking, kept_roles.published_down)
        assert agents[False].checker.given() == agents[True].checker.given()

    def local(agent: Agent, number: int) -> dict[str, VirtualService | None]:
        agent.loop.tracker.record(dead, number % 2 == 1, Thresholds(1, 1), "" if number % 2 else "refused")
        return {}

    def remote(agent: Agent, number: int) -> dict[str, VirtualService | None]:
        agent.published[first.ref] = publish(first, {backend} if number % 2 == 0 else set())
        return {first.ref: first}  # the VirtualService's status changed: the source hands it over again

    flips("local", local)
    for agent in agents.values():  # back in service before the published flips
        agent.loop.tracker.record(dead, True, Thresholds(1, 1))
        agent.turn(False, {}, set())
        assert agent.fake.state.real_servers[dead].weight == 1
    flips("published", remote)
    for agent in agents.values():
        await agent.checker.stop()
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--objects", type=int, nargs="+", default=[100, 10000])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    print(f"# in-cluster agent's health roles per turn on the fake kernel, python {sys.version.split()[0]}, "
          f"load {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs, median of {args.repeat}")
    print(f"{'N':>6} {'targets':>8} {'turn':>10} {'roles+checker: whole':>21} {'kept':>10} {'node turn':>10}")
    for count in args.objects:
        results = asyncio.run(measure(count, args.repeat))
        for kind in ("local", "published"):
            whole, kept = results[kind, False], results[kind, True]
            print(f"{count:>6} {results['targets']:>8} {kind + ' flip':>16} {whole[0] * 1000:>15.2f} ms {kept[0] * 1000:>7.3f} ms "
                  f"{kept[1] * 1000:>7.2f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
