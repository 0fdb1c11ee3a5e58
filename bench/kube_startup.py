"""Benchmark of the in-cluster agent's start on kmock and the fake kernel: where the time to the first sync goes.

With N VirtualServices in the emulator, starts an agent and times, from its start, the
phases up to its first complete sync: kopf listing every kind and calling the index
handlers, the first raw event handler call (the listing gate), the last object's event
handler call, the first turn (reconcile on the fake kernel, then the rest: entries,
NodeReport, Events), every object programmed in the fake kernel, and the NodeReport
holding every object's entry. Counts the turns, the NodeReport writes and Events of
that start. Two starts per N: `cold` (empty kernel, no NodeReport: a new node) and
`restart` (the kernel and the NodeReport the cold start left: a restarted agent).

Prints this process's VmRSS / VmHWM (emulator, agents and fake kernels together) and,
with `--agent-rss`, a third, cold start of the agent in its own process (a fresh
interpreter running only the agent and its fake kernel against this emulator): its VmRSS
and VmHWM once every object is programmed, the figure to hold against the DaemonSet's
memory limit (the fake kernel's copy of the state and the bench's imports are in it, so it
is an upper bound). kmock takes request bodies up to 3 MiB as kube-apiserver does (its
HTTP server's own limit, 1 MiB, refuses a NodeReport of 10,000 entries).

Optionally (`--profile`) the main thread's CPU time of a start by package, so that
kmock's own cost (it deep-copies a whole NodeReport per patch, serves lists and watches
from Python) and kopf's are told from vsop's; the kernel reconcile runs in a worker
thread and is timed on its own.

kmock's request history is trimmed before each create as bench/kube_bench.py does
(its helpers are imported), and again while the agent starts. kmock also starts every
watch by sending every object as ADDED, so after its listing kopf got each object twice
(10,000 events for 5,000 objects, each through the index and event handlers); an API
server resumes a watch from the listing's resourceVersion, and so does this bench's
emulator (nothing changes in it while an agent starts).

    .venv/bin/python bench/kube_startup.py --objects 500 5000
    .venv/bin/python bench/kube_startup.py --objects 5000 10000 --agent-rss

Figures only, no assertions: targets are judged by a person (docs/performance.md).
Nothing leaves loopback.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import logging
import os
import pstats
import sys
import time
from collections import defaultdict
from pathlib import Path
from types import SimpleNamespace
from typing import Any

REPOSITORY = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPOSITORY / "bench"))

from kube_bench import spec, trim  # noqa: E402  (puts the repository and operator/ on sys.path)

import kmock  # noqa: E402

from tests.kube.conftest import Cluster, Emulator, make_agent, register_resources, running  # noqa: E402
from vsop.core import ops  # noqa: E402

PHASES = (
    ("listing gate (first event handler)", "gate"),
    ("last event handler call", "last_event"),
    ("first turn began", "turn_began"),
    ("first turn's reconcile done", "reconciled"),
    ("first turn ended", "turn_ended"),
    ("every object programmed", "programmed"),
    ("NodeReport complete", "reported"),
)


# kube-apiserver takes request bodies up to 3 MiB; kmock's HTTP server (aiohttp's default)
# refuses more than 1 MiB, which a NodeReport of 10,000 entries (about 106 bytes each) is.
API_SERVER_BODY_LIMIT = 3 * 1024 * 1024


class ResumingEmulator(Emulator):
    """The tests' emulator, whose watches resume from a listing (resourceVersion given) instead of replaying every object,
    and which takes request bodies as large as an API server does."""

    async def __call__(self, raw_request: Any) -> Any:
        return await super().__call__(raw_request.clone(client_max_size=API_SERVER_BODY_LIMIT))

    def _replayed(self, request: Any) -> list[dict[str, Any]]:
        if (getattr(request, "params", None) or {}).get("resourceVersion"):
            return []  # resumed from the listing: only what changes from now on
        return super()._replayed(request)


async def _trimming(emulator: Any, stop: asyncio.Event) -> None:
    while not stop.is_set():
        trim(emulator)
        await asyncio.sleep(0.2)


async def start(cluster: Cluster, emulator: Any, objects: int, state: Any, profile: cProfile.Profile | None, debounce: float) -> dict[str, Any]:
    """One agent start; its phases (seconds from the start), counts, and the kernel state it leaves."""
    agent, fake, writer = make_agent(cluster, state=state, resync_seconds=3600.0, debounce_seconds=debounce)
    marks: dict[str, float] = {}
    counts: dict[str, int] = defaultdict(int)
    programmed: set[str] = {op_vip for op_vip in (key.vip for key in fake.state.services)}
    apply = fake.apply

    def stamped(operations: Any) -> int:
        done = apply(operations)
        for op in operations:
            if isinstance(op, ops.AddService):
                programmed.add(op.service.key.vip)
        return done

    fake.apply = stamped  # type: ignore[method-assign]
    done = agent.gate.done

    def gate_done() -> None:  # every event handler of the agent calls it first
        marks.setdefault("gate", time.monotonic())
        marks["last_event"] = time.monotonic()
        counts["handled"] += 1
        done()

    agent.gate.done = gate_done  # type: ignore[method-assign]
    sync_once = agent.sync_once
    turn_seconds: list[float] = []

    async def timed_turn(**kwargs: Any) -> Any:
        began = time.monotonic()
        result = await sync_once(**kwargs)
        if result.outcome is not None:
            counts["turns"] += 1
            marks.setdefault("turn_began", began)
            marks.setdefault("turn_ended", time.monotonic())
            turn_seconds.append(time.monotonic() - began)
        return result

    agent.sync_once = timed_turn  # type: ignore[method-assign]
    reconcile = agent.reconciler.reconcile

    def timed_reconcile(**kwargs: Any) -> Any:
        result = reconcile(**kwargs)
        marks.setdefault("reconciled", time.monotonic())
        return result

    agent.reconciler.reconcile = timed_reconcile  # type: ignore[method-assign]
    reports_before, events_before = len(writer.reports), len(writer.posted)
    stop = asyncio.Event()
    trimmer = asyncio.create_task(_trimming(emulator, stop))
    vips = {spec(index)["vip"] for index in range(objects)}
    if profile is not None:
        profile.enable()
    began = time.monotonic()
    try:
        async with running(agent):
            while True:
                now = time.monotonic()
                if "programmed" not in marks and vips <= programmed:
                    marks["programmed"] = now
                if "reported" not in marks and len(cluster.report("node-a")) >= objects:
                    marks["reported"] = now
                settled = counts["turns"] >= 1 and counts["handled"] >= objects and not agent.busy and not agent.trigger.event.is_set()
                if "programmed" in marks and "reported" in marks and settled:
                    break
                if now - began > 900:
                    raise SystemExit(f"no complete first sync after 900 s: {len(programmed & vips)} programmed, marks {sorted(marks)}")
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.3)  # whatever the last turn woke
    finally:
        if profile is not None:
            profile.disable()
        stop.set()
        await trimmer
    return {
        "marks": {name: marks[name] - began for name in marks},
        "turns": counts["turns"],
        "handled": counts["handled"],
        "first_turn": turn_seconds[0] if turn_seconds else 0.0,
        "reports": len(writer.reports) - reports_before,
        "events": len(writer.posted) - events_before,
        "reads": agent.reconciler.reads,
        "state": fake.state,
    }


def memory() -> dict[str, float]:
    """This process's VmRSS and VmHWM (the peak), MB, from /proc/self/status."""
    with open("/proc/self/status") as status:
        return {name: int(value.split()[0]) / 1024 for name, _, value in (line.partition(":") for line in status) if name in ("VmRSS", "VmHWM")}


async def child_agent(url: str, objects: int, debounce: float) -> None:
    """The agent alone in this process (no emulator): a cold start against `url`; prints its memory once every object is programmed."""
    agent, fake, _ = make_agent(SimpleNamespace(url=url), resync_seconds=3600.0, debounce_seconds=debounce)  # type: ignore[arg-type]
    vips = {spec(index)["vip"] for index in range(objects)}
    async with running(agent):
        while not (vips <= {key.vip for key in fake.state.services} and agent.turns >= 1 and not agent.busy):
            await asyncio.sleep(0.1)
        await asyncio.sleep(1.0)  # whatever the last turn woke
        print(json.dumps(memory()), flush=True)


async def agent_memory(emulator: Any, objects: int, debounce: float) -> dict[str, float]:
    """A cold start of the agent in its own process against this emulator: its memory once programmed."""
    stop = asyncio.Event()
    trimmer = asyncio.create_task(_trimming(emulator, stop))
    try:
        child = await asyncio.create_subprocess_exec(sys.executable, __file__, "--child", str(emulator.url), str(objects), str(debounce),
                                                     stdout=asyncio.subprocess.PIPE)
        out, _ = await child.communicate()
    finally:
        stop.set()
        await trimmer
    if child.returncode != 0:
        raise SystemExit(f"the agent's own process exited {child.returncode}")
    return dict(json.loads(out.decode().strip().splitlines()[-1]))


async def run(objects: int, profile: bool, debounce: float, own_process: bool = False) -> dict[str, Any]:
    async with ResumingEmulator() as emulator, kmock.Server(emulator):
        register_resources(emulator)
        cluster = Cluster(emulator)
        await cluster.node("node-a", addresses=("10.0.0.11",))
        loaded = time.monotonic()
        for index in range(objects):
            trim(emulator)
            await cluster.vs(f"s{index}", spec(index))
        loaded = time.monotonic() - loaded
        profiles = {"cold": cProfile.Profile() if profile else None, "restart": cProfile.Profile() if profile else None}
        cold = await start(cluster, emulator, objects, None, profiles["cold"], debounce)
        restart = await start(cluster, emulator, objects, cold["state"], profiles["restart"], debounce)
        own = await agent_memory(emulator, objects, debounce) if own_process else {}
        return {"loaded": loaded, "cold": cold, "restart": restart, "profiles": profiles, "memory": memory(), "own": own}


def by_package(profile: cProfile.Profile) -> dict[str, float]:
    """Main-thread CPU seconds (own time of each function) summed by where the function lives."""
    totals: dict[str, float] = defaultdict(float)
    for (filename, _, _), (_, _, tottime, _, _) in pstats.Stats(profile).stats.items():  # type: ignore[attr-defined]
        path = filename.replace("\\", "/")
        for package in ("kmock", "kopf", "aiohttp", "vsop", "pydantic", "asyncio", "json", "copy"):
            if f"/{package}/" in path or path.endswith(f"/{package}.py"):
                totals[package] += tottime
                break
        else:
            totals["other"] += tottime
    return dict(totals)


def top(profile: cProfile.Profile, package: str, count: int) -> list[tuple[float, float, int, str]]:
    rows = []
    for (filename, line, function), (_, calls, tottime, cumtime, _) in pstats.Stats(profile).stats.items():  # type: ignore[attr-defined]
        if f"/{package}/" in filename:
            rows.append((tottime, cumtime, calls, f"{filename.split(f'/{package}/', 1)[1]}:{line} {function}"))
    return sorted(rows, reverse=True)[:count]


def print_memory(results: dict[int, dict[str, Any]], own_process: bool) -> None:
    def mb(figures: dict[str, float]) -> str:
        return f"{figures['VmRSS']:.0f} / {figures['VmHWM']:.0f}" if figures else "-"

    print("VmRSS / VmHWM, MB: this bench's process (emulator, both agents, fake kernels): "
          + ", ".join(f"N={n} {mb(r['memory'])}" for n, r in results.items()))
    if own_process:
        print("VmRSS / VmHWM, MB: the agent in its own process, a cold start (its fake kernel's state included): "
              + ", ".join(f"N={n} {mb(r['own'])}" for n, r in results.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--objects", type=int, nargs="+", default=[500, 5000])
    parser.add_argument("--debounce", type=float, default=0.1, help="the agent's --debounce-seconds (default 0.1, its default)")
    parser.add_argument("--kopf-unpatched", action="store_true", help="leave kopf's index readiness as kopf does it (vsop.kube.toggles not installed): the figure before")
    parser.add_argument("--profile", action="store_true", help="also the main thread's CPU time by package (slows everything down)")
    parser.add_argument("--top", type=int, default=0, metavar="K", help="with --profile: the K functions with most own time of vsop, kopf and kmock")
    parser.add_argument("--agent-rss", action="store_true", help="also a cold start of the agent in its own process (no emulator in it): its VmRSS and VmHWM")
    parser.add_argument("--child", nargs=3, metavar=("URL", "N", "DEBOUNCE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    if args.child:
        asyncio.run(child_agent(args.child[0], int(args.child[1]), float(args.child[2])))
        return
    if args.kopf_unpatched:
        from vsop.kube import toggles

        toggles.install = lambda: False  # type: ignore[assignment]
    print(f"in-cluster agent start on kmock, fake kernel, debounce {args.debounce:g}"
          f"{', kopf index readiness unpatched' if args.kopf_unpatched else ''}; load {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs", flush=True)
    results = {}
    for objects in args.objects:
        results[objects] = asyncio.run(run(objects, args.profile, args.debounce, args.agent_rss))
        print(f"  N={objects}: created in kmock in {results[objects]['loaded']:.1f} s; load {os.getloadavg()[0]:.1f}", flush=True)
    columns = [(n, kind) for n in args.objects for kind in ("cold", "restart")]
    print(f"{'seconds from the agent start':<40}" + "".join(f"{f'N={n} {kind}':>16}" for n, kind in columns))
    for label, mark in PHASES:
        cells = []
        for n, kind in columns:
            value = results[n][kind]["marks"].get(mark)
            cells.append(f"{value:16.2f}" if value is not None else f"{'-':>16}")
        print(f"{label:<40}" + "".join(cells))
    for label, key, fmt in (("first turn, seconds", "first_turn", "{:16.2f}"), ("event handler calls", "handled", "{:16d}"), ("turns to steady", "turns", "{:16d}"),
                            ("NodeReport writes", "reports", "{:16d}"), ("Events posted", "events", "{:16d}"),
                            ("full kernel reads", "reads", "{:16d}")):
        print(f"{label:<40}" + "".join(fmt.format(results[n][kind][key]) for n, kind in columns))
    print_memory(results, args.agent_rss)
    if len(args.objects) >= 2:
        small, big = args.objects[0], args.objects[-1]
        for kind in ("cold", "restart"):
            # The first sync is complete when its turn ended, the report holds every entry (a restart's already does)
            # and every VIP is programmed (the first sync is planned in parts: its first turn is only the first part).
            a, b = (max(results[n][kind]["marks"].get(mark, 0.0) for mark in ("turn_ended", "reported", "programmed")) for n in (small, big))
            if a and b:
                print(f"{kind}: first sync complete at N={big} / N={small}: {b:.2f} / {a:.2f} s = {b / a:.1f}x for {big / small:g}x the objects")
    if args.profile:
        print("main-thread CPU seconds by package (own time), per start:")
        packages = sorted({p for n, kind in columns for p in by_package(results[n]["profiles"][kind])})
        print(f"{'':<40}" + "".join(f"{f'N={n} {kind}':>16}" for n, kind in columns))
        for package in packages:
            print(f"{package:<40}" + "".join(f"{by_package(results[n]['profiles'][kind]).get(package, 0.0):16.2f}" for n, kind in columns))
        if args.top:
            n = args.objects[-1]
            for package in ("vsop", "kopf", "kmock"):
                print(f"top {package} functions, N={n} cold: own s, cumulative s, calls")
                for tottime, cumtime, calls, where in top(results[n]["profiles"]["cold"], package, args.top):
                    print(f"  {tottime:8.2f} {cumtime:8.2f} {calls:9d}  {where}")


if __name__ == "__main__":
    main()
