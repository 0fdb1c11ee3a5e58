"""Where the host agent's memory goes, natively: live bytes by area once synced and after a resync, tcp checks on.

The real host agent (`HostAgent.run`, vsop.host.agent: the folder's poll task, the node loop's
turns, the health checker, the status file and the state file) over N store files (N services x
2 real servers with a tcp check every 2 s, bench/agent_bench.py's store_folder(N, checked=True),
the files `vsop agent` reads in bench/keepalived_side_by_side.py), on the fake kernel
(vsop.adapters.kernel.fake_kernel) instead of netlink. Natively the backends (10.250.0.2 and
.3) do not exist: the tcp probe is replaced by one that passes at once, as the VM's echo
servers answer. Two points are measured: after the first complete sync (the cold sync's last
part, every real server's first check recorded, the status file written after them), and after
one periodic full resync (the loop's clock moved on by the period, so the real schedule runs it:
every health target derived again, the followers given them whole; --resyncs K: after the K-th).
The adapters' parse of the kernel that a real resync holds (docs/performance.md "Memory") is the
fake's here and not measured.

Each N runs in a fresh interpreter with tracemalloc started after the imports and the folder's
creation. Live bytes are grouped by area from each block's allocation traceback: the innermost
vsop frame (core/state.py's key helpers skipped, so a key is counted where it was made), its
file mapped to an area. Anything allocated under the fake kernel (vsop/adapters/fake.py on the
stack) is the fake's own state, printed apart: a real agent holds none of it. "other" is what no
vsop frame allocated (the interpreter, asyncio, caches of the standard library). The biggest
allocation sites of each area follow the table.

The same runs again without tracemalloc give the process's memory (/proc/self/status; glibc
tuned as `run_agent` does, vsop.node.heap): VmRSS before the agent is made (the interpreter,
the imports, the bench's own), at the same steady point, and VmHWM (the peak). What VmRSS grew
by beyond the live bytes is memory freed but not given back (the cold sync's parts, the first
checks' transient sets and texts), plus the fake kernel. Figures only, no assertions.

    .venv/bin/python bench/agent_memory.py [--sizes 100 10000] [--unchecked] [--traced-only | --untraced-only] [--resyncs K] [--why FILE:LINE]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

REPOSITORY = Path(__file__).resolve().parents[1]
MB = 1024 * 1024
RESYNC_SECONDS = 3600.0  # none falls due during the cold sync; the bench then moves the loop's clock on
PHASES = ("first sync", "after a resync")  # the second: after the last of --resyncs

# Innermost vsop file -> area (first match of a prefix, in this order).
AREAS = (
    ("host/status_file.py", "status file (pre-serialized entries)"),
    ("node/remember.py", "state file (verdicts kept across restarts)"),
    ("core/remembered.py", "state file (verdicts kept across restarts)"),
    ("node/probes.py", "health: checker (probes, members)"),
    ("core/health.py", "health: verdicts (tracker)"),
    ("node/loop.py", "health: targets (node loop)"),
    ("node/cache.py", "kernel cache"),
    ("core/memory.py", "kernel cache"),
    ("host/folder.py", "objects as parsed + folder state"),
    ("host/store.py", "objects as parsed + folder state"),
    ("api/", "objects as parsed + folder state"),
    ("node/", "reconciler: fragments, indexes"),
    ("core/", "reconciler: fragments, indexes"),
    ("host/agent.py", "agent (last sync, refusals)"),
)
SKIPPED = ("core/state.py",)  # helpers: a key is counted where it was made
FAKE = "adapters/fake.py"
FAKE_AREA = "fake kernel's own state (not in a real agent)"
OTHER = "other (no vsop frame: interpreter, asyncio)"


def area_of(frames: list[str]) -> tuple[str, str]:
    """(area, the innermost vsop frame) of an allocation traceback given innermost first as 'path:line'."""
    if any(FAKE in frame for frame in frames):
        return FAKE_AREA, next((frame for frame in frames if FAKE in frame), "")
    for frame in frames:
        at = frame.find("/vsop/")
        if at < 0 or "/site-packages/" in frame:
            continue
        inside = frame[at + len("/vsop/"):]
        if inside.startswith(SKIPPED):
            continue
        for prefix, area in AREAS:
            if inside.startswith(prefix):
                return area, inside
        return f"other vsop ({inside.split(':')[0]})", inside
    return OTHER, frames[0] if frames else "?"


def proc_status() -> dict[str, int]:
    """This process's VmRSS, VmHWM and RssAnon, in bytes."""
    found = {}
    with open("/proc/self/status") as status:
        for line in status:
            name, _, value = line.partition(":")
            if name in ("VmRSS", "VmHWM", "RssAnon"):
                found[name] = int(value.split()[0]) * 1024
    return found


def classify(snapshot: Any, top: int, why: str | None) -> tuple[dict[str, int], dict[str, list[tuple[str, int]]]]:
    """Live bytes by area, and each area's biggest allocation sites."""
    areas: dict[str, int] = {}
    sites: dict[str, dict[str, int]] = {}
    for stat in snapshot.statistics("traceback"):
        frames_in = [f"{frame.filename}:{frame.lineno}" for frame in reversed(stat.traceback)]  # innermost first
        area, frame = area_of(frames_in)
        areas[area] = areas.get(area, 0) + stat.size
        site = frame.split("/vsop/")[-1] if "/vsop/" in frame else frame.rsplit("/", 2)[-1]
        if area != OTHER and not frames_in[0].endswith(frame):  # where the block itself was made, if not in vsop's frame
            site += " <- " + frames_in[0].rsplit("/", 1)[-1]
        by_site = sites.setdefault(area, {})
        by_site[site] = by_site.get(site, 0) + stat.size
        if why is not None and why in site and stat.size >= 4096:
            print(f"{stat.size} bytes in {stat.count} blocks at {site}:", *stat.traceback.format(), sep="\n    ", file=sys.stderr)
    return areas, {area: sorted(found.items(), key=lambda item: -item[1])[:top] for area, found in sites.items()}


def measure(count: int, checked: bool, traced: bool, frames: int, top: int, why: str | None = None, resyncs: int = 1) -> dict[str, Any]:
    """In the child: one agent over `count` store files, once synced and checked and again after a
    periodic resync: its live bytes by area (`traced`), or its process's memory without tracemalloc."""
    import asyncio
    import gc
    import tempfile
    import time
    import tracemalloc

    sys.path.insert(0, str(REPOSITORY / "bench"))
    from agent_bench import store_folder

    from vsop.adapters.conntrack import FakeConntrack
    from vsop.adapters.kernel import fake_kernel
    from vsop.core.desired import Node
    from vsop.host.agent import AgentConfig, HostAgent
    from vsop.node import heap, probes

    async def answered(address: str, port: int, timeout: float) -> str | None:
        await asyncio.sleep(0)
        return None

    probes.check_tcp = answered  # Target.probe looks it up at each call
    heap.tune()  # as run_agent does
    folder = store_folder(count, checked=checked)
    work = Path(tempfile.mkdtemp(prefix="vsop-memory-"))
    kernel, fake = fake_kernel()
    config = AgentConfig(folder, Node("bench"), resync_seconds=RESYNC_SECONDS, status_file=work / "agent.json",
                         state_file=work / "state.json", lock=work / "lock")
    gc.collect()
    base = proc_status()
    if traced:
        tracemalloc.start(frames)
    agent = HostAgent(kernel, config, FakeConntrack())
    ahead = [0.0]  # the loop's clock moved on by this much: its periodic resync falls due at once
    agent.loop.clock = lambda: time.monotonic() + ahead[0]
    started = time.perf_counter()
    phases: dict[str, dict[str, Any]] = {}

    def waiting(since: float) -> str | None:
        """What the agent has yet to do before every object is programmed by a complete sync that ended
        after `since` (a full one, when since > 0), every target's first check is recorded, and the
        status file is written after the last of them (it takes the tracker's changes)."""
        reconciler, loop, last = agent.reconciler, agent.loop, agent.last
        if not agent.syncs or reconciler.cold or reconciler.replanning or len(reconciler.programmed) != count or loop.busy:
            return f"a sync: syncs={agent.syncs} cold={reconciler.cold} programmed={len(reconciler.programmed)}"
        if since and not (last.get("full") and last.get("at", 0) > since):
            return "the resync"
        if len(agent.tracker.states) != len(agent.targets) or (checked and not agent.targets):
            return f"first checks: targets={len(agent.targets)} verdicts={len(agent.tracker.states)}"
        if agent.status_due is None and not agent.tracker.changed and agent.status_written > 0:
            return None
        return "the status file"

    async def steady(phase: str, since: float, running: asyncio.Task[None]) -> None:
        told = time.monotonic()
        while (left := waiting(since)) is not None:
            if running.done():
                running.result()
                raise SystemExit("the agent stopped before its first complete sync")
            if time.monotonic() - told > 30:
                print(f"N={count}: waiting for {left}", file=sys.stderr, flush=True)
                told = time.monotonic()
            await asyncio.sleep(0.2)
        figures: dict[str, Any] = {"seconds": time.perf_counter() - started}
        with agent.source_guard:  # not while the poll task walks the folder (its listing is not kept)
            gc.collect()
            snapshot = tracemalloc.take_snapshot() if traced else None
            figures["process"] = proc_status()
        if snapshot is not None:
            figures["areas"], figures["sites"] = classify(snapshot, top, why)
            figures["peak"] = tracemalloc.get_traced_memory()[1]
            figures["tracemalloc"] = tracemalloc.get_tracemalloc_memory()
            del snapshot
        figures["counts"] = {
            "objects": len(agent.reconciler.objects),
            "targets": len(agent.targets),
            "verdicts": len(agent.tracker.states),
            "probes": len(agent.loop.checker.members) if agent.loop.checker is not None else 0,
            "health entries": len(agent.status_doc.health),
            "status file bytes": (work / "agent.json").stat().st_size,
        }
        phases[phase] = figures

    async def main() -> None:
        stop = asyncio.Event()
        running = asyncio.get_running_loop().create_task(agent.run(stop))
        await steady("first sync", 0.0, running)
        for _ in range(resyncs):
            since = time.time()
            ahead[0] += RESYNC_SECONDS
            agent.loop.trigger.wake("bench: the periodic resync")
            await steady("after a resync", since, running)
        stop.set()
        await running

    asyncio.run(main())
    tracemalloc.stop()
    with agent.source_guard:  # a walk of the folder still running in its thread ends first
        shutil.rmtree(folder, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)
    return {"base": base, "phases": phases}


def child(count: int, checked: bool, traced: bool, args: argparse.Namespace) -> dict[str, Any]:
    environment = {**os.environ, "PYTHONPATH": str(REPOSITORY / "operator")}
    argv = [sys.executable, __file__, "--child", str(count), "--frames", str(args.frames), "--top", str(args.top), "--resyncs", str(args.resyncs)]
    if args.why is not None:
        argv += ["--why", args.why]
    if not checked:
        argv.append("--unchecked-child")
    if not traced:
        argv.append("--untraced-child")
    done = subprocess.run(argv, stdout=subprocess.PIPE, text=True, env=environment)  # its progress on stderr
    if done.returncode != 0:
        raise SystemExit(f"the run at N={count} failed ({done.returncode})")
    return json.loads(done.stdout.splitlines()[-1])


def process_rows(runs: list[tuple[int, bool]], untraced: dict[tuple[int, bool], Any], largest: int) -> None:
    """The process's memory per run and phase, in MB."""
    width = 26
    print(f"{'':<{width}} " + " ".join(f"{'N=' + str(count) + ('' if checked else ' unchecked'):>15}" for count, checked in runs for _ in PHASES))
    print(f"{'process (MB)':<{width}} " + " ".join(f"{phase:>15}" for _ in runs for phase in PHASES))
    for name, value in (
        ("VmRSS before the agent", lambda r, phase: r["base"]["VmRSS"]),
        ("VmRSS", lambda r, phase: r["phases"][phase]["process"]["VmRSS"]),
        ("  grown by", lambda r, phase: r["phases"][phase]["process"]["VmRSS"] - r["base"]["VmRSS"]),
        ("VmHWM (peak so far)", lambda r, phase: r["phases"][phase]["process"]["VmHWM"]),
    ):
        print(f"{name:<{width}} " + " ".join(f"{value(untraced[run], phase) / MB:>15.2f}" for run in runs for phase in PHASES))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 10000])
    parser.add_argument("--unchecked", action="store_true", help="also the largest size without health checks")
    parser.add_argument("--traced-only", action="store_true", help="no runs without tracemalloc (no process figures)")
    parser.add_argument("--untraced-only", action="store_true", help="only the runs without tracemalloc (the process figures)")
    parser.add_argument("--resyncs", type=int, default=1, help="periodic resyncs before the second point (default 1)")
    parser.add_argument("--frames", type=int, default=40, help="frames kept per allocation (default 40)")
    parser.add_argument("--top", type=int, default=6, help="allocation sites printed per area (default 6)")
    parser.add_argument("--why", metavar="SITE", help="print the whole allocation tracebacks of the sites that contain SITE (file:line)")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--unchecked-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--untraced-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(measure(args.child, not args.unchecked_child, not args.untraced_child, args.frames, args.top, args.why, args.resyncs)))
        return 0
    runs = [(count, True) for count in args.sizes] + ([(max(args.sizes), False)] if args.unchecked else [])
    traced = {} if args.untraced_only else {run: child(*run, True, args) for run in runs}
    untraced = {} if args.traced_only else {run: child(*run, False, args) for run in runs}
    if not traced:
        print(f"# host agent process memory, without tracemalloc, python {sys.version.split()[0]}, load {os.getloadavg()[0]:.1f}")
        process_rows(runs, untraced, max(args.sizes))
        return 0
    names = {run: f"N={run[0]}{'' if run[1] else ' unchecked'}" for run in runs}
    columns = [(run, phase) for run in runs for phase in PHASES]
    print(f"# host agent memory by area (tracemalloc, live bytes), python {sys.version.split()[0]}, load {os.getloadavg()[0]:.1f}")
    for run in runs:
        for phase in PHASES:
            r = traced[run]["phases"][phase]
            print(f"# {names[run]}, {phase}: {r['seconds']:.1f}s from the start (traced); " + ", ".join(f"{name} {value}" for name, value in r["counts"].items()))
    areas = sorted({area for r in traced.values() for phase in r["phases"].values() for area in phase["areas"]},
                   key=lambda area: (area == FAKE_AREA, -max(traced[run]["phases"][phase]["areas"].get(area, 0) for run, phase in columns)))
    largest = max(args.sizes)
    width = max(len(area) for area in areas) + 2
    print(f"\n{'':<{width}} " + " ".join(f"{names[run]:>15}" for run, _ in columns[::2] for _ in (0, 1)))
    print(f"{'area (live MB)':<{width}} " + " ".join(f"{phase:>15}" for _, phase in columns)
          + f" {'B/object, N=' + str(largest) + ' resynced':>24}")

    def row(name: str, value: Any, per: bool = True) -> None:
        values = [value(run, phase) for run, phase in columns]
        print(f"{name:<{width}} " + " ".join(f"{v / MB:>15.2f}" for v in values)
              + (f" {value((largest, True), PHASES[-1]) / largest:>24.0f}" if per else ""))

    def live(area: str) -> Any:
        return lambda run, phase: traced[run]["phases"][phase]["areas"].get(area, 0)

    for area in areas:
        if area == FAKE_AREA:
            row("TOTAL live (fake kernel left out)",
                lambda run, phase: sum(v for name, v in traced[run]["phases"][phase]["areas"].items() if name != FAKE_AREA))
            print()
        row(area, live(area))
    row("peak traced so far (fake kernel in)", lambda run, phase: traced[run]["phases"][phase]["peak"])
    if untraced:
        print()
        process_rows(runs, untraced, largest)
    for phase in PHASES:
        print(f"\n## the biggest allocation sites per area at N={largest}, {phase} (innermost vsop frame <- the block's own)")
        big = traced[(largest, True)]["phases"][phase]
        for area in areas:
            if not big["areas"].get(area):
                continue
            print(f"{area}: {big['areas'][area] / MB:.2f} MB")
            for site, size in big["sites"].get(area, []):
                print(f"    {size / MB:8.2f} MB  {site}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
