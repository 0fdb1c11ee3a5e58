"""Benchmark of the in-cluster agent on kmock (the API emulator) and the fake kernel, natively.

With N VirtualServices already programmed, creates one more object at a time, `changes`
times, and measures from the create call to the moment the fake kernel applied its IPVS
service (the AddService write, time-stamped inside the fake). Prints, side by side in one
run, the agent as it runs (a change plans only the changed object) and the same agent
made to do a full level-based sync on every change (read everything, desire and plan every
object: what the agent did before the node reconciler; until 2026-12 this row ran a resync,
which plans only drifted VIPs), with p50/p90/p99/max and ratios.
Also the RSS of this process (agent + emulator + fake kernel) at the end, and where the
time of a change goes: the emulator answering the create, kopf delivering the watch event
to the agent's handler, the wait for the loop's turn, the turn up to the kernel write, and
the rest of the turn (status entries, the NodeReport write).

kmock keeps every request it served and matches each new one against its reactions by
scanning that history (0.12 ms per past request: 120 ms per create after 1 000 of them),
which no API server does; the bench trims the history before each create so that the
figure is the agent's, and prints the emulator's answer time beside it.

    .venv/bin/python bench/kube_bench.py --objects 1000 --changes 100

Figures only, no assertions: targets are judged by a person (docs/performance.md). Nothing
leaves loopback.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any

REPOSITORY = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPOSITORY / "operator"))
sys.path.insert(0, str(REPOSITORY))

import kmock  # noqa: E402

from tests.kube.conftest import Cluster, Emulator, make_agent, register_resources, running  # noqa: E402
from vsop.core import ops  # noqa: E402


def spec(index: int) -> dict[str, Any]:
    return {
        "vip": f"169.254.{index // 250 + 1}.{index % 250 + 1}",
        "ports": [{"name": "http", "port": 80, "targetPort": 8080}],
        "backends": [{"address": "10.250.0.2"}, {"address": "10.250.0.3"}],
    }


# The first two from the create request (kopf may deliver the watch event before the
# emulator's answer reaches the client), each other one from the step before it.
STAGES = ("emulator answered", "handler noted it", "wait for the turn", "turn to kernel write", "rest of the turn")


def trim(emulator: Any) -> None:
    """Forget all but the last requests kmock served (see the module docstring); the last few may still be in flight."""
    history = getattr(emulator, "_requests", None)
    if isinstance(history, list):
        del history[:-16]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


async def run(objects: int, changes: int, debounce: float, full_every_change: bool) -> dict[str, Any]:
    async with Emulator() as emulator, kmock.Server(emulator):
        register_resources(emulator)
        cluster = Cluster(emulator)
        await cluster.node("node-a", addresses=("10.0.0.11",))
        for index in range(objects):
            trim(emulator)
            await cluster.vs(f"s{index}", spec(index))
        agent, fake, writer = make_agent(cluster, resync_seconds=3600.0, debounce_seconds=debounce)
        if full_every_change:
            # A whole plan per change: read everything, derive and plan every object (the
            # reconciler's recovery path, what the agent did before it). `full=True` alone is a
            # resync: a read, then a plan of the VIPs that drifted and the audit's slice only.
            reconciler = agent.reconciler
            original = reconciler.reconcile

            def whole(full: bool = False) -> Any:
                reconciler._force_full = True
                return original()

            reconciler.reconcile = whole  # type: ignore[method-assign]
        applied_at: dict[str, float] = {}
        apply = fake.apply

        def stamped(operations: Any) -> int:
            done = apply(operations)
            now = time.monotonic()
            for op in operations:
                if isinstance(op, ops.AddService):
                    applied_at.setdefault(op.service.key.vip, now)
            return done

        fake.apply = stamped  # type: ignore[method-assign]
        # Where a change's time goes: stamps of the handler noting it and of the turn handling it.
        watching: dict[str, Any] = {"name": None}
        noted: dict[str, float] = {}
        turns: dict[str, tuple[float, float]] = {}
        wake = agent.trigger.wake

        def noting(reason: str) -> None:
            name = watching["name"]
            if name is not None and f"/{name} " in reason:
                noted.setdefault(name, time.monotonic())
            wake(reason)

        agent.trigger.wake = noting  # type: ignore[method-assign]
        sync_once = agent.sync_once

        async def timed_turn(**kwargs: Any) -> Any:
            name, began = watching["name"], time.monotonic()
            result = await sync_once(**kwargs)
            if name is not None and name in noted and name not in turns:
                turns[name] = (began, time.monotonic())
            return result

        agent.sync_once = timed_turn  # type: ignore[method-assign]
        stages: dict[str, list[float]] = {stage: [] for stage in STAGES}
        latencies: list[float] = []
        after_stored: list[float] = []
        async with running(agent):
            started = time.monotonic()
            while len(applied_at) < objects:
                if time.monotonic() - started > 600:
                    raise SystemExit(f"only {len(applied_at)} of {objects} programmed after 600 s")
                await asyncio.sleep(0.05)
            first_sync = time.monotonic() - started
            while not writer.reports and time.monotonic() - started < 600:  # the first sync's report is out
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.5)
            for change in range(changes):
                index = objects + change
                vip, name = spec(index)["vip"], f"s{index}"
                trim(emulator)
                watching["name"] = name
                sent = time.monotonic()
                await cluster.vs(name, spec(index))
                stored = time.monotonic()  # the emulator answered the create: the object exists
                while vip not in applied_at or name not in turns:
                    if time.monotonic() - sent > 60:
                        raise SystemExit(f"{vip} not programmed after 60 s")
                    await asyncio.sleep(0.001)
                latencies.append(applied_at[vip] - sent)
                after_stored.append(max(0.0, applied_at[vip] - stored))
                began, ended = turns[name]
                for stage, seconds in zip(STAGES, (stored - sent, noted[name] - sent, began - noted[name],
                                                   applied_at[vip] - began, ended - applied_at[vip])):
                    stages[stage].append(seconds)
                await asyncio.sleep(0.05)  # one change at a time, as people make them
        return {
            "first": first_sync,
            "latencies": latencies,
            "after_stored": after_stored,
            "stages": stages,
            "reads": agent.reconciler.reads,
            "rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--objects", type=int, default=1000)
    parser.add_argument("--changes", type=int, default=100)
    parser.add_argument("--debounce", type=float, nargs="+", default=[0.1, 0.01], help="agent --debounce-seconds values to run")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    print(f"in-cluster agent on kmock, fake kernel: {args.objects} objects, then {args.changes} creations one at a time; "
          f"load {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs", flush=True)
    print("latency from the create request (and, after '/', from the emulator's answer: the object exists)")
    print(f"{'debounce':>9} {'mode':<28} {'p50 ms':>14} {'p90 ms':>14} {'p99 ms':>14} {'max ms':>14} {'full reads':>10} {'first sync s':>12}")
    for debounce in args.debounce:
        rows = {}
        for full in (False, True):
            result = asyncio.run(run(args.objects, args.changes, debounce, full))
            lat = [x * 1000 for x in result["latencies"]]
            own = [x * 1000 for x in result["after_stored"]]
            rows[full] = lat
            if not full:
                breakdown = result["stages"]
            mode = "full sync on every change" if full else "incremental (reconciler)"

            def pair(a: float, b: float) -> str:
                return f"{a:.0f} / {b:.0f}"

            print(
                f"{debounce:>9g} {mode:<28} {pair(statistics.median(lat), statistics.median(own)):>14} {pair(percentile(lat, 0.9), percentile(own, 0.9)):>14}"
                f" {pair(percentile(lat, 0.99), percentile(own, 0.99)):>14} {pair(max(lat), max(own)):>14} {result['reads']:>10} {result['first']:>12.2f}",
                flush=True,
            )
        ratio = percentile(rows[True], 0.99) / percentile(rows[False], 0.99)
        print(f"{'':>9} p99 full / incremental: {ratio:.1f}x")
        print(f"{'':>9} where the time of a change goes (incremental), ms, the first two from the request, then from the step before: p50 / p99")
        for stage, values in breakdown.items():
            ms = [v * 1000 for v in values]
            print(f"{'':>11}{stage:<26} {statistics.median(ms):8.1f} / {percentile(ms, 0.99):.1f}")
    print(f"max RSS of this process (emulator + agent + fake kernel): {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


if __name__ == "__main__":
    main()
