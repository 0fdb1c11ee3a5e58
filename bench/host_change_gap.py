"""The host agent's gap between taking a changed store file and the turn that programs it, natively.

`vsop agent --from DIR`'s loop (HostAgent.run) on the in-memory fake kernel, over N store files
(--sizes, default 100 and 10,000), every service VIP:80 -> 10.250.0.2/3:8080 with a tcp check
every 2 s (timeout 1 s), as bench/keepalived_side_by_side.py serves them in the VM. The checks
really connect: the two backends are TCP listeners on 127.0.0.2 and 127.0.0.3 in a child process
(the model refuses loopback real servers, so the probes' connect is pointed there; traffic stays on
loopback). The agent runs as `vsop agent` does: 1 s polls, sweeps every 5 s, 0.1 s debounce,
status file every second at most, a state file (--no-state-file: none).

Per N, --samples times: a new store file written, then the time from the folder source's `file
loaded` to the end of the turn that programs it (its `synced` log line), and from the write to
that line; then --samples times the same for a rewritten file (weight 1 -> 3 of one real server).
For each sample, what ran in that gap, summed per name: spans of the agent's own steps (the turn,
its parts, status writes, the folder's looks, the checker's records; on the event loop or in
threads) and the event loop's callbacks that took longer than --slow-ms.
--profile: cProfile of the event loop's thread and the turns' thread over the samples at the
largest N, top functions by cumulative CPU time of that thread (time.thread_time: on the wall
clock, a wait for the GIL held by another thread was charged to whatever function was running,
and small functions called often looked costly). Figures only, no assertions.

    .venv/bin/python bench/host_change_gap.py
    .venv/bin/python bench/host_change_gap.py --sizes 10000 --samples 5 --profile
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import cProfile
import functools
import io
import logging
import pstats
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

REPOSITORY = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPOSITORY / "operator"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from agent_bench import BACKENDS, service, store_folder  # noqa: E402
from vsop.adapters.conntrack import FakeConntrack  # noqa: E402
from vsop.adapters.kernel import fake_kernel  # noqa: E402
from vsop.api.model import parse_virtual_service  # noqa: E402
from vsop.core.desired import Node  # noqa: E402
from vsop.host import agent as agent_module  # noqa: E402
from vsop.host.agent import AgentConfig, HostAgent  # noqa: E402
from vsop.host.store import Store  # noqa: E402
from vsop.node import probes as probes_module  # noqa: E402

PORT = 8080
LOOP_THREADS: list[int] = []  # the agent's event loop thread (its callbacks are timed)
LOOPBACK = {BACKENDS[0]: "127.0.0.2", BACKENDS[1]: "127.0.0.3"}
SERVERS = """
import asyncio, sys
async def main():
    async def held(reader, writer):
        await reader.read()
        writer.close()
    servers = [await asyncio.start_server(held, host, int(sys.argv[1])) for host in sys.argv[2:]]
    print("ready", flush=True)
    await asyncio.Event().wait()
asyncio.run(main())
"""


# --- what ran: spans and slow callbacks --------------------------------------------------------


class Spans:
    """(name, thread, start, end) of wrapped functions; slow event loop callbacks as spans too."""

    def __init__(self) -> None:
        self.spans: list[tuple[str, str, float, float]] = []
        self.lock = threading.Lock()

    def add(self, name: str, start: float, end: float) -> None:
        with self.lock:
            self.spans.append((name, threading.current_thread().name, start, end))

    def wrap(self, owner: Any, attribute: str, name: str | None = None) -> None:
        original = getattr(owner, attribute)
        label = name or f"{getattr(owner, '__name__', type(owner).__name__)}.{attribute}"
        spans = self

        if asyncio.iscoroutinefunction(original):
            @functools.wraps(original)
            async def timed_async(*args: Any, **kwargs: Any) -> Any:
                start = time.monotonic()
                try:
                    return await original(*args, **kwargs)
                finally:
                    spans.add(label, start, time.monotonic())
            setattr(owner, attribute, timed_async)
        else:
            @functools.wraps(original)
            def timed(*args: Any, **kwargs: Any) -> Any:
                start = time.monotonic()
                try:
                    return original(*args, **kwargs)
                finally:
                    spans.add(label, start, time.monotonic())
            setattr(owner, attribute, timed)

    def within(self, start: float, end: float) -> dict[tuple[str, str], tuple[int, float]]:
        """Per (thread, name): how many spans overlap [start, end] and their seconds inside it."""
        totals: dict[tuple[str, str], list[float]] = collections.defaultdict(lambda: [0, 0.0])
        with self.lock:
            spans = list(self.spans)
        for name, thread, begin, finish in spans:
            inside = min(finish, end) - max(begin, start)
            if inside > 0 or (begin >= start and finish <= end):
                entry = totals[(thread, name)]
                entry[0] += 1
                entry[1] += max(0.0, inside)
        return {key: (int(count), seconds) for key, (count, seconds) in totals.items()}


def watch_callbacks(spans: Spans, loop_thread: list[int], slow: float) -> None:
    """Every event loop callback in the agent's thread longer than `slow` seconds, named by its task."""
    original = asyncio.events.Handle._run

    def _run(self: asyncio.Handle) -> None:
        if threading.get_ident() not in loop_thread:
            return original(self)
        start = time.monotonic()
        try:
            return original(self)
        finally:
            end = time.monotonic()
            if end - start >= slow:
                callback = getattr(self, "_callback", None)
                owner = getattr(callback, "__self__", None)
                if isinstance(owner, asyncio.Task):
                    coro = owner.get_coro()
                    name = f"loop callback: task {owner.get_name()!r} ({getattr(coro, '__qualname__', '?')})"
                else:
                    name = f"loop callback: {getattr(callback, '__qualname__', repr(callback))}"
                spans.add(name, start, end)

    asyncio.events.Handle._run = _run  # type: ignore[method-assign]


def instrument(spans: Spans) -> None:
    from vsop.host.status_file import StatusDocument
    from vsop.node.loop import NodeLoop
    from vsop.node.probes import HealthChecker
    from vsop.node.reconciler import Reconciler
    from vsop.node.remember import RememberFile

    for owner, attribute in [
        (HostAgent, "sync_once"), (HostAgent, "_take"), (HostAgent, "_judge"), (HostAgent, "write_status"),
        (HostAgent, "poll"), (HostAgent, "_recheck"), (HostAgent, "_settle_due"), (HostAgent, "flush"),
        (NodeLoop, "feed"), (NodeLoop, "_follow_targets"), (NodeLoop, "_follow_probes"),
        (Reconciler, "reconcile"), (RememberFile, "save"),
        (StatusDocument, "update_health"), (StatusDocument, "update_verdicts"), (StatusDocument, "update_files"), (StatusDocument, "render"),
        (HealthChecker, "_record"), (HealthChecker, "change"), (HealthChecker, "update"),
    ]:
        spans.wrap(owner, attribute, f"{owner.__name__}.{attribute}")


# --- the agent --------------------------------------------------------------------------------


class Events(logging.Handler):
    """The agent's log lines that matter here, with their monotonic time."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[tuple[float, str]] = []
        self.changed = threading.Condition()

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message.startswith(("file loaded", "synced")):
            with self.changed:
                self.lines.append((time.monotonic(), message))
                self.changed.notify_all()

    def wait_for(self, after: int, predicate: Callable[[str], bool], timeout: float = 120.0) -> tuple[int, float, str]:
        deadline = time.monotonic() + timeout
        with self.changed:
            while True:
                for index in range(after, len(self.lines)):
                    at, message = self.lines[index]
                    if predicate(message):
                        return index, at, message
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise SystemExit(f"no log line as awaited within {timeout:g}s; last: {self.lines[-3:]}")
                self.changed.wait(remaining)


def backends() -> tuple[subprocess.Popen[str], int]:
    with socket.socket() as probe:  # a free port on both addresses (not checked for the second: loopback)
        probe.bind(("127.0.0.2", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen([sys.executable, "-c", SERVERS, str(port), *LOOPBACK.values()], stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    process.stdout.readline()
    return process, port


def point_probes_at_loopback(port: int) -> None:
    original = probes_module.check_tcp

    async def check_tcp(address: str, to: int, timeout: float) -> str | None:
        return await original(LOOPBACK.get(address, address), port if to == PORT else to, timeout)

    probes_module.check_tcp = check_tcp  # type: ignore[assignment]


def changed_weight(index: int) -> Any:
    vs = service(index, checked=True)
    document = vs.model_dump(by_alias=True, exclude_defaults=True, exclude_none=True, mode="json", exclude={"status"})
    document["apiVersion"], document["kind"] = vs.api_version, vs.kind
    document["spec"]["backends"][1]["weight"] = 3
    return parse_virtual_service(document)


def measure(count: int, samples: int, state_file: bool, profile: bool, spans: Spans) -> dict[str, Any]:
    folder = store_folder(count, checked=True)
    work = Path(tempfile.mkdtemp(prefix="vsop-gap-"))
    config = AgentConfig(folder, Node("bench"), status_file=work / "agent.json", state_file=work / "state.json" if state_file else None,
                         lock=None, sweep_seconds=5.0)  # as `vsop agent`: poll 1 s, debounce 0.1 s, status every 1 s
    events = Events()
    for name in ("vsop.host.folder", "vsop.agent"):
        logging.getLogger(name).addHandler(events)
        logging.getLogger(name).setLevel(logging.INFO)
    kernel, _ = fake_kernel()
    agent = HostAgent(kernel, config, FakeConntrack())
    holder: dict[str, Any] = {}
    profiles = [cProfile.Profile(time.thread_time), cProfile.Profile(time.thread_time)] if profile else []

    def run() -> None:
        LOOP_THREADS.append(threading.get_ident())

        async def main() -> None:
            holder["stop"] = stop = asyncio.Event()
            holder["loop"] = asyncio.get_running_loop()
            await agent.run(stop)

        asyncio.run(main())

    thread = threading.Thread(target=run, daemon=True, name="agent loop")
    started = time.monotonic()
    thread.start()
    events.wait_for(0, lambda m: m.startswith("synced") and f"objects={count} " in m, timeout=900)
    while agent.reconciler.cold or agent.reconciler.replanning:
        time.sleep(0.2)
    cold = time.monotonic() - started
    time.sleep(6.0)  # past the first checks' results and a sweep
    figures: dict[str, Any] = {"cold": cold, "new": [], "rewrite": []}
    steady = time.monotonic()
    if profile:
        profiles[0].enable()  # this thread's: nothing; enabled in the loop's and the sync thread's below
        profiles[0].disable()
        holder["loop"].call_soon_threadsafe(profiles[0].enable)
        agent.loop._executor.submit(profiles[1].enable).result()  # type: ignore[union-attr]
    for kind in ("new", "rewrite"):
        for sample in range(samples):
            time.sleep(random.uniform(2.0, 4.0))
            mark = len(events.lines)
            index = count + sample if kind == "new" else 2 + sample
            vs = service(index, checked=True) if kind == "new" else changed_weight(index)
            written = time.monotonic()
            Store(folder).write([vs])
            name = f"bench_s{index}.yaml"
            at, loaded_at, _ = events.wait_for(mark, lambda m: m.startswith("file loaded") and name in m)
            _, synced_at, line = events.wait_for(at, lambda m: m.startswith("synced") and (kind == "rewrite" or f"objects={count + sample + 1} " in m))
            turn = float(line.split("seconds=")[1].split()[0])
            figures[kind].append({"loaded": loaded_at - written, "gap": synced_at - loaded_at, "turn": turn,
                                  "spans": spans.within(loaded_at, synced_at), "from_write": synced_at - written})
    if profile:
        holder["loop"].call_soon_threadsafe(profiles[0].disable)
        agent.loop._executor.submit(profiles[1].disable).result()  # type: ignore[union-attr]
        time.sleep(0.2)
        figures["profiles"] = profiles
    figures["longest"] = longest(spans, steady, time.monotonic())
    holder["loop"].call_soon_threadsafe(holder["stop"].set)
    thread.join(60)
    time.sleep(2.0)  # a walk of the folder still running is abandoned at stop: let it end before the folder goes
    for name in ("vsop.host.folder", "vsop.agent"):
        logging.getLogger(name).removeHandler(events)
    shutil.rmtree(folder, ignore_errors=True)
    shutil.rmtree(work, ignore_errors=True)
    return figures


def longest(spans: Spans, start: float, end: float, count: int = 16) -> list[tuple[float, str, str, int]]:
    """The longest spans over the samples (seconds, thread, name, how many such spans of at least 10 ms)."""
    with spans.lock:
        inside = [(finish - begin, thread, name) for name, thread, begin, finish in spans.spans if begin >= start and finish <= end]
    counts = collections.Counter((thread, name) for seconds, thread, name in inside if seconds >= 0.01)
    best: dict[tuple[str, str], float] = {}
    for seconds, thread, name in inside:
        best[(thread, name)] = max(seconds, best.get((thread, name), 0.0))
    ranked = sorted(best.items(), key=lambda item: -item[1])[:count]
    return [(seconds, thread, name, counts[(thread, name)]) for (thread, name), seconds in ranked]


def report(count: int, figures: dict[str, Any], top: int) -> None:
    print(f"\n## N = {count}: cold sync {figures['cold']:.1f} s")
    for kind in ("new", "rewrite"):
        rows = figures[kind]
        if not rows:
            continue
        gaps = [row["gap"] for row in rows]
        print(f"{kind:8} file loaded -> synced: median {statistics.median(gaps):.3f} s (samples {', '.join(f'{g:.3f}' for g in gaps)});"
              f" write -> synced median {statistics.median(row['from_write'] for row in rows):.3f} s;"
              f" its reconcile median {statistics.median(row['turn'] for row in rows):.3f} s")
        for number, row in enumerate(rows, 1):
            print(f"  sample {number}: gap {row['gap']:.3f} s (write -> loaded {row['loaded']:.3f} s)")
            ordered = sorted(row["spans"].items(), key=lambda item: -item[1][1])[:top]
            for (thread, name), (spans, seconds) in ordered:
                if seconds >= 0.001:
                    print(f"    {seconds:7.3f} s  x{spans:<4} [{thread}] {name}")
    print("longest spans over the samples (periodic resyncs included), and how many took 10 ms or more:")
    for seconds, thread, name, many in figures["longest"]:
        print(f"    {seconds:7.3f} s  x{many:<4} [{thread}] {name}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 10_000])
    parser.add_argument("--samples", type=int, default=3)
    parser.add_argument("--no-state-file", action="store_true")
    parser.add_argument("--slow-ms", type=float, default=5.0, help="event loop callbacks at least this long are listed (default 5)")
    parser.add_argument("--top", type=int, default=12)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    for handler in logging.getLogger().handlers:
        handler.setLevel(logging.WARNING)  # the agent's INFO lines go to Events only
    process, port = backends()
    point_probes_at_loopback(port)
    spans = Spans()
    instrument(spans)
    watch_callbacks(spans, LOOP_THREADS, args.slow_ms / 1000)
    try:
        for count in args.sizes:
            profile = args.profile and count == max(args.sizes)
            figures = measure(count, args.samples, not args.no_state_file, profile, spans)
            report(count, figures, args.top)
            if profile:
                for label, profiler in zip(("event loop thread", "turns' thread"), figures["profiles"]):
                    out = io.StringIO()
                    pstats.Stats(profiler, stream=out).sort_stats("cumulative").print_stats(25)
                    print(f"\n### cProfile, {label}, over the samples at N = {count}\n{out.getvalue()}")
    finally:
        process.kill()


if __name__ == "__main__":
    main()
