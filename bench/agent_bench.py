"""Benchmark of the node reconciler on a real kernel (run inside the VM, see docs/performance.md).

Prints, side by side in one run:
  - a new object's VIP answering a client (TCP connect + echo through IPVS), with the node
    already holding N = 100 and N = 10,000 services: the reconciler's change path (re-derive
    one object, plan its VIP, write), and the full level-based sync the agents used to run
    for every change (engine.sync of every object) at the same N;
  - a real server that dies (TCP check every 2 s, failure threshold 2) reaching weight 0
    at N = 10,000 programmed, ONE of them checked, by this bench's own check loop
    (HealthChecker and the reconciler), not the agent's: bench/agent_checks.py has every
    service checked through `vsop agent` itself;
  - the periodic no-op resync at N = 10,000 (warm, in this process) next to `ipvsadm -Sn` +
    `ipset save` + `iptables-save` run in the same namespace (cold processes, /etc over 9p:
    not like for like; --fair-resync is);
  - the cold first reconcile of N = 10,000 services x 2 real servers next to `ipvsadm -R`;
  - this process's peak RSS holding 10,000 services.
Figures only, no assertions: targets are judged by a person (docs/performance.md).
Everything happens in throwaway network namespaces made here; traffic stays inside them.

    vm/run --timeout 3000 --mem 4096 -- .venv/bin/python bench/agent_bench.py
    (--host-agent-only: the host agent's new-file figure alone; --resync: a new file during the periodic full resync;
     --cold-change: a new file during the agent's cold first sync, whole vs in parts, beside quiet time)

--fair-resync: the kernel read like for like, at N = 100 and 10,000 x 2 real servers, median of
--samples: vsop's read (read_observed, what the resync reads) in a fresh process against the
three dump tools, each a fresh process, with /etc as the VM has it (9p from the host) and again
in a private mount namespace with /etc/protocols, /etc/services and /etc/nsswitch.conf on a
tmpfs (ipset save opens /etc/protocols once per member; ipvsadm -Sn and iptables-save look
nothing up); vsop's warm read and no-op resync beside them.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import math
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

REPOSITORY = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPOSITORY / "operator"))

from vsop.node.loop import health_targets  # noqa: E402
from vsop.node.probes import HealthChecker  # noqa: E402
from vsop.core.desired import Node  # noqa: E402
from vsop.core.health import HealthTracker  # noqa: E402
from vsop.core.state import RealServerKey, ServiceKey  # noqa: E402
from vsop.adapters.conntrack import ConntrackTool  # noqa: E402
from vsop.node.whole import cleanup, sync  # noqa: E402
from vsop.host.agent import AgentConfig, HostAgent  # noqa: E402
from vsop.host.store import Store, file_name, render  # noqa: E402
from vsop.adapters.kernel import read_observed  # noqa: E402
from vsop.adapters.real import real_kernel  # noqa: E402
from vsop.api.model import VirtualService, parse_virtual_service  # noqa: E402
from vsop.node.reconciler import Reconciler  # noqa: E402

NODE = Node("bench")
BACKENDS = ("10.250.0.2", "10.250.0.3")
VICTIM = "10.250.0.4"  # a real server of one service alone (bench/agent_checks.py kills it)
CLIENT, CLIENT_GATEWAY = "10.251.0.2", "10.251.0.1"
_libc = ctypes.CDLL(None, use_errno=True)
T = TypeVar("T")


def vip(index: int) -> str:
    return f"169.254.{index // 250 + 1}.{index % 250 + 1}"


def service(index: int, checked: bool = False, backends: tuple[str, ...] = BACKENDS) -> VirtualService:
    spec = {
        "vip": vip(index),
        "ports": [{"port": 80, "targetPort": 8080}],
        "backends": [{"address": address} for address in backends],
    }
    if checked:
        spec["healthCheck"] = {"type": "tcp", "intervalSeconds": 2, "timeoutSeconds": 1, "failureThreshold": 2}
    return parse_virtual_service({
        "apiVersion": "vsop.dev/v1alpha1", "kind": "VirtualService",
        "metadata": {"name": f"s{index}", "namespace": "bench", "creationTimestamp": "2026-01-01T00:00:00Z"},
        "spec": spec,
    })


def sh(*argv: str, stdin: str | None = None) -> str:
    return subprocess.run(argv, input=stdin, capture_output=True, text=True, check=True).stdout


@contextmanager
def entered(name: str) -> Iterator[None]:
    """This thread in the named network namespace, and back."""
    with open("/proc/thread-self/ns/net") as home, open(f"/var/run/netns/{name}") as target:
        if _libc.setns(target.fileno(), 0x40000000) != 0:
            raise OSError(ctypes.get_errno(), "setns")
        try:
            yield
        finally:
            _libc.setns(home.fileno(), 0x40000000)


@contextmanager
def lab() -> Iterator[str]:
    """A node namespace (entered by this thread) with two local backends, and a client namespace behind a veth."""
    node, client = f"vsopbench{os.getpid()}", f"vsopclient{os.getpid()}"
    sh("ip", "netns", "add", node)
    sh("ip", "netns", "add", client)
    try:
        with entered(node):
            sh("ip", "link", "set", "lo", "up")
            sh("ip", "link", "add", "bench0", "type", "dummy")
            sh("ip", "addr", "add", "10.250.0.1/24", "dev", "bench0")
            for address in (*BACKENDS, VICTIM):
                sh("ip", "addr", "add", f"{address}/32", "dev", "bench0")
            sh("ip", "link", "set", "bench0", "up")
            sh("ip", "link", "add", "cli0", "type", "veth", "peer", "name", "cli1", "netns", client)
            sh("ip", "addr", "add", f"{CLIENT_GATEWAY}/24", "dev", "cli0")
            sh("ip", "link", "set", "cli0", "up")
            with entered(client):
                sh("ip", "link", "set", "lo", "up")
                sh("ip", "addr", "add", f"{CLIENT}/24", "dev", "cli1")
                sh("ip", "link", "set", "cli1", "up")
                sh("ip", "route", "add", "default", "via", CLIENT_GATEWAY)
            yield client
    finally:
        sh("ip", "netns", "del", client)
        sh("ip", "netns", "del", node)


class Echo:
    """A TCP echo server on address:8080 in this thread's namespace, that can be killed."""

    def __init__(self, address: str):
        self.server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.server.bind((address, 8080))
        self.server.listen(64)
        self.server.settimeout(0.2)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.server.accept()
            except (socket.timeout, OSError):
                continue
            with conn:
                conn.settimeout(2)
                try:
                    conn.sendall(conn.recv(64))
                except OSError:
                    pass

    def kill(self) -> None:
        self.stop.set()
        self.thread.join()
        self.server.close()  # connections are now refused


def answers(client: str, address: str, timeout: float = 0.5) -> bool:  # noqa: D103
    with entered(client):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect((address, 80))
        sock.sendall(b"ping")
        return sock.recv(64) == b"ping"
    except OSError:
        return False
    finally:
        sock.close()


def until_answers(client: str, address: str, limit: float = 120, timeout: float = 0.5) -> float:
    started = time.perf_counter()
    while not answers(client, address, timeout):
        if time.perf_counter() - started > limit:
            raise SystemExit(f"{address} did not answer within {limit:g}s")
    return time.perf_counter() - started


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def timed(*argv: str) -> float:
    started = time.perf_counter()
    subprocess.run(argv, capture_output=True, check=True)
    return time.perf_counter() - started


def ipvsadm_restore(count: int) -> float:
    lines = []
    for index in range(count):
        lines.append(f"-A -t {vip(index)}:80 -s rr")
        lines += [f"-a -t {vip(index)}:80 -r {address}:8080 -m -w 1" for address in BACKENDS]
    sh("ipvsadm", "-C")
    started = time.perf_counter()
    sh("ipvsadm", "-R", stdin="\n".join(lines) + "\n")
    seconds = time.perf_counter() - started
    sh("ipvsadm", "-C")
    return seconds


def change_figures(client: str, count: int) -> dict[str, float]:
    """At N=count: a new object through the reconciler's change path, and through a full sync."""
    kernel = real_kernel()
    reconciler = Reconciler(kernel, NODE)
    objects = [service(i) for i in range(count)]
    reconciler.set_objects(objects)
    started = time.perf_counter()
    first = reconciler.reconcile()
    cold = time.perf_counter() - started
    assert first.ok, first.error
    figures = {"cold": cold, "rss": rss_mb()}

    # As both agents do after their source changed: the new object alone to the reconciler.
    # Three new objects one after another; the median is printed.
    reconciles, answered = [], []
    for extra in range(count, count + 3):
        new = service(extra)
        started = time.perf_counter()
        reconciler.update_objects({new.ref: new})
        outcome = reconciler.reconcile()
        reconciles.append(time.perf_counter() - started)
        answered.append(reconciles[-1] + until_answers(client, new.spec.vip))
        assert not outcome.full and outcome.ok, outcome.error
        objects.append(new)
    figures["change_reconcile"] = sorted(reconciles)[1]
    figures["change_answers"] = sorted(answered)[1]
    figures["change_writes"] = outcome.writes

    newer = service(len(objects))
    started = time.perf_counter()
    full = sync(kernel, [*objects, newer], NODE)  # what every change cost before
    figures["full_sync"] = time.perf_counter() - started
    figures["full_answers"] = figures["full_sync"] + until_answers(client, newer.spec.vip)
    figures["full_read"], figures["full_plan"] = full.read_seconds, full.plan_seconds
    reconciler.set_objects([*objects, newer])
    # Written behind the reconciler's back (by the full sync above): its resync takes it in.
    assert reconciler.reconcile(full=True).writes == 0

    # The periodic resync with nothing changed, against the tools that dump the same tables.
    started = time.perf_counter()
    resync = reconciler.reconcile(full=True)
    figures["noop_resync"] = time.perf_counter() - started
    figures["noop_skipped"] = float(resync.skipped)
    figures["noop_writes"] = resync.writes
    figures["tools"] = timed("ipvsadm", "-Sn") + timed("ipset", "save") + timed("iptables-save")
    figures["rss_end"] = rss_mb()
    return figures


def store_folder(count: int, checked: bool = False) -> Path:
    """A new temporary folder holding the store files of service(0, checked) .. service(count - 1, checked)."""
    folder = Path(tempfile.mkdtemp(prefix="vsop-bench-store-"))
    template = render(service(0, checked))  # the store's own rendering, renamed per object (rendering 10k is slow here)
    assert template.count('"name": "s0"') == 1 and template.count(f'"{vip(0)}"') == 1
    for index in range(count):
        text = template.replace('"name": "s0"', f'"name": "s{index}"').replace(f'"{vip(0)}"', f'"{vip(index)}"')
        (folder / file_name(f"bench/s{index}")).write_text(text)
    return folder


@contextmanager
def running_agent(node: str, config: AgentConfig, count: int, prepare: Callable[[HostAgent], None] | None = None,
                  ready: Callable[[HostAgent], bool] | None = None) -> Iterator[tuple[HostAgent, float]]:
    """`vsop agent`'s loop (HostAgent.run) in a thread, its netlink sockets and tools in the node's
    namespace, once it has programmed `count` files (or once `ready(agent)`); stopped on exit.
    `prepare` may wrap the agent's methods before it runs. Yields the agent and the seconds it
    took to program them."""
    holder: dict[str, Any] = {}

    def run() -> None:
        with entered(node):
            agent = HostAgent(real_kernel(), config, ConntrackTool())
            if prepare is not None:
                prepare(agent)
            holder["agent"] = agent

            async def main() -> None:
                stop = asyncio.Event()
                holder["stop"] = (stop, asyncio.get_running_loop())
                await agent.run(stop)

            asyncio.run(main())

    thread = threading.Thread(target=run, daemon=True, name="vsop-agent")
    started = time.perf_counter()
    thread.start()
    while True:
        agent = holder.get("agent")
        if isinstance(agent, HostAgent) and (ready(agent) if ready is not None else agent.syncs and len(agent.reconciler.objects) == count):
            break
        if time.perf_counter() - started > 1500 or not thread.is_alive():
            raise SystemExit(f"the host agent did not program {count} files")
        time.sleep(0.5)
    try:
        yield agent, time.perf_counter() - started
    finally:
        stop, loop = holder["stop"]
        loop.call_soon_threadsafe(stop.set)
        thread.join(120)


def host_agent_figures(node: str, client: str, count: int, samples: int = 3) -> dict[str, float]:
    """The host agent itself (vsop agent) following a store of `count` files, 1 s polls (a file is
    taken once stable over two), 0.1 s debounce: a new store file written, until its VIP answers."""
    folder = store_folder(count)
    config = AgentConfig(folder, NODE, status_file=folder.parent / f"{folder.name}.json", lock=None, sweep_seconds=5.0)  # as `vsop agent`
    with running_agent(node, config, count) as (agent, took):
        figures = {"agent_start": took}
        time.sleep(2.5)  # past the first status write and a quiet poll or two
        answered = []
        for extra in range(count, count + samples):
            new = service(extra)
            # Written just after a poll: the worst phase (the next poll sees it, the one after takes
            # it), so the figure is the pipeline's cost, not a random wait for the poll.
            polled = agent.polled_at
            while agent.polled_at == polled:
                time.sleep(0.002)
            started = time.perf_counter()
            Store(folder).write([new])
            answered.append(until_answers(client, new.spec.vip, limit=300, timeout=0.05))
            time.sleep(0.5)
    answered.sort()
    figures["agent_new_vip"] = statistics.median(answered)
    figures["agent_new_vip_min"], figures["agent_new_vip_max"] = answered[0], answered[-1]
    shutil.rmtree(folder, ignore_errors=True)
    return figures


def resync_figures(node: str, client: str, count: int, samples: int = 3, resync_seconds: float = 12.0, aside: bool = True) -> dict[str, float]:
    """The host agent following a store of `count` files, as host_agent_figures: a new store file
    written just after a poll (quiet time), and one written just after the periodic resync started
    (the store changed since the last one, as it does in use), until its VIP answers. The resync
    starts with its kernel read: with `aside` (the agent's way since vsop.node.aside) that read runs
    in a thread of its own while changes are served, without it the read is the resync turn's own
    (the way before, for the side-by-side figure). The resync's turn and read are timed too. A quiet
    sample is written just after a poll that follows a resync's end (no read runs beside it)."""
    folder = store_folder(count)
    config = AgentConfig(folder, NODE, status_file=folder.parent / f"{folder.name}.json", lock=None, sweep_seconds=5.0,
                         resync_seconds=resync_seconds)
    starts: list[float] = []  # when each resync started: its read aside, or its full reconcile
    fulls: list[tuple[float, float, float]] = []  # (started, seconds, reading the kernel) of each full reconcile
    statuses: list[tuple[float, float]] = []  # (started, ended) of each status file write

    def prepare(agent: HostAgent) -> None:
        reconciler = agent.reconciler
        if not aside:
            reconciler.kernel.reader = None  # the resync reads under the lock, in its turn
        reconcile, read_aside = reconciler.reconcile, reconciler.read_aside

        def traced(*, full: bool = False):  # type: ignore[no-untyped-def]
            started = time.perf_counter()
            if full:
                if not aside:
                    starts.append(started)
                fulls.append((started, -1.0, 0.0))
            outcome = reconcile(full=full)
            if full:
                fulls[-1] = (started, time.perf_counter() - started, outcome.read_seconds + outcome.aside_seconds)
            return outcome

        def read_traced(*args):  # type: ignore[no-untyped-def]
            starts.append(time.perf_counter())
            return read_aside(*args)

        reconciler.reconcile = traced  # type: ignore[method-assign]
        reconciler.read_aside = read_traced  # type: ignore[method-assign]
        write_status = agent.write_status

        def timed_status(*args: Any) -> None:  # the run loop hands it the health changes it took
            started = time.perf_counter()
            write_status(*args)
            statuses.append((started, time.perf_counter()))

        agent.write_status = timed_status  # type: ignore[method-assign]

    with running_agent(node, config, count, prepare) as (agent, took):
        started = time.perf_counter()
        time.sleep(2.5)
        quiet, during, turns, reads, behind = [], [], [], [], []
        extra = count
        for _ in range(samples):
            ended = len([f for f in fulls if f[1] >= 0])  # quiet: after a resync's end, no read beside it
            while len([f for f in fulls if f[1] >= 0]) == ended:
                time.sleep(0.01)
            polled = agent.polled_at
            while agent.polled_at == polled:
                time.sleep(0.002)
            new = service(extra)
            extra += 1
            started = time.perf_counter()
            Store(folder).write([new])
            quiet.append(until_answers(client, new.spec.vip, limit=300, timeout=0.05))
            time.sleep(0.5)
        for _ in range(samples):
            # A change since the last resync (the previous sample's file), then the next one starts.
            known = len(starts)
            while len(starts) == known:
                if time.perf_counter() - started > 3000:
                    raise SystemExit("no resync started")
                time.sleep(0.002)
            began = starts[known]
            time.sleep(0.05)  # just after it started
            new = service(extra)
            extra += 1
            written = time.perf_counter()
            Store(folder).write([new])
            during.append(until_answers(client, new.spec.vip, limit=300, timeout=0.05))
            answered = written + during[-1]
            # Status file writes that ran between the write and the answer (one sync thread: a change waits for them).
            behind.append(sum(min(end, answered) - max(begin, written) for begin, end in statuses if end > written and begin < answered))
            # The resync's full reconcile: the first one starting at or after its start, once done.
            while not any(at >= began and seconds >= 0 for at, seconds, _ in fulls):
                time.sleep(0.01)
            at, seconds, read = next((at, seconds, read) for at, seconds, read in fulls if at >= began and seconds >= 0)
            turns.append(at + seconds - began)
            reads.append(read)
    shutil.rmtree(folder, ignore_errors=True)
    worst = behind[during.index(max(during))]
    quiet.sort(), during.sort(), turns.sort(), reads.sort()
    middle = samples // 2
    p90 = min(samples - 1, math.ceil(0.9 * samples) - 1)
    return {"quiet": quiet[middle], "quiet_max": quiet[-1], "during": during[middle], "during_min": during[0], "during_max": during[-1],
            "during_p90": during[p90], "resync_turn": turns[middle], "resync_turn_max": turns[-1], "resync_read": reads[middle],
            "status_in_slowest": worst}


def cold_change_figures(node: str, client: str, count: int, parts: bool, delay: float = 1.0) -> dict[str, float]:
    """The host agent started on a store of `count` files and an empty kernel: one new store file
    written `delay` seconds after its first sync began (the cold sync), until its VIP answers; the
    cold sync's total (its first reconcile's start until its last part ended: every file's VIP
    programmed); then one file written in quiet time (just after a poll), until its VIP answers.
    `parts`: the first sync in parts (the agent's way since vsop.node.reconciler's _cold_start),
    else the whole node in one reconcile (cold_chunk 0, the way before)."""
    folder = store_folder(count)
    config = AgentConfig(folder, NODE, status_file=folder.parent / f"{folder.name}.json", lock=None, sweep_seconds=5.0)  # as `vsop agent`
    began = threading.Event()
    marks: dict[str, float] = {}
    turns: list[float] = []
    writing: list[float] = []  # each turn's kernel writes (Outcome.execute_seconds)

    def prepare(agent: HostAgent) -> None:
        reconciler = agent.reconciler
        if not parts:
            reconciler.resyncing.cold_chunk = 0
        reconcile = reconciler.reconcile

        def traced(*, full: bool = False):  # type: ignore[no-untyped-def]
            started = time.perf_counter()
            marks.setdefault("began", started)
            began.set()
            outcome = reconcile(full=full)
            turns.append(time.perf_counter() - started)
            writing.append(outcome.execute_seconds)
            if "cold_done" not in marks and outcome.ok and not reconciler.replanning:
                marks["cold_done"] = time.perf_counter()
                marks["cold_turns"] = len(turns)
            return outcome

        reconciler.reconcile = traced  # type: ignore[method-assign]

    answered: dict[str, float] = {}
    new = service(count)

    def write_during() -> None:
        began.wait()
        time.sleep(delay)
        written = time.perf_counter()
        marks["written"] = written
        Store(folder).write([new])
        answered["during"] = until_answers(client, new.spec.vip, limit=1500, timeout=0.05)
        marks["answered"] = written + answered["during"]

    writer = threading.Thread(target=write_during, daemon=True, name="bench-cold-writer")
    writer.start()
    with running_agent(node, config, count, prepare, ready=lambda agent: "cold_done" in marks and "answered" in marks) as (agent, took):
        writer.join()
        time.sleep(2.5)  # past the cold sync's status write and a quiet poll or two
        polled = agent.polled_at
        while agent.polled_at == polled:
            time.sleep(0.002)
        quiet = service(count + 1)
        Store(folder).write([quiet])
        answered["quiet"] = until_answers(client, quiet.spec.vip, limit=300, timeout=0.05)
    shutil.rmtree(folder, ignore_errors=True)
    return {"during": answered["during"], "quiet": answered["quiet"], "cold": marks["cold_done"] - marks["began"],
            "answered_before_cold_done": float(marks["answered"] < marks["cold_done"]), "turns": marks["cold_turns"],
            "longest_turn": max(turns[:int(marks["cold_turns"])]),
            "in_turns": sum(turns[:int(marks["cold_turns"])]), "writing": sum(writing[:int(marks["cold_turns"])])}


def print_cold_change(client: str, count: int, samples: int, delay: float) -> int:
    figures: dict[bool, list[dict[str, float]]] = {False: [], True: []}
    for _ in range(samples):
        for parts in (False, True):  # alternated: the machine's drift falls on both alike
            figures[parts].append(cold_change_figures(f"vsopbench{os.getpid()}", client, count, parts, delay))
            cleanup(real_kernel())

    def median(parts: bool, key: str) -> float:
        return statistics.median(r[key] for r in figures[parts])

    print(f"\n## the host agent started on {count} store files, empty kernel: a new file written {delay:g} s after its first sync")
    print(f"## began, until its VIP answers (during), beside one written in quiet time after it (quiet); the cold sync from its first")
    print(f"## reconcile's start until every file's VIP is programmed; median of {samples} [min, max], whole and in parts alternated")
    print(f"## (in turns: the cold sync's reconciles added up, the rest of it is the agent between them; writing: their kernel writes)")
    print(f"{'first sync':>12} {'during':>26} {'quiet':>8} {'cold sync':>26} {'turns':>6} {'longest':>8} {'in turns':>9} {'writing':>8} {'answered first':>15}")
    for parts in (False, True):
        runs = figures[parts]
        during, cold = sorted(r["during"] for r in runs), sorted(r["cold"] for r in runs)
        print(f"{'in parts' if parts else 'whole':>12} {median(parts, 'during'):>7.3f}s [{during[0]:.3f}, {during[-1]:.3f}s] {median(parts, 'quiet'):>7.3f}s "
              f"{median(parts, 'cold'):>7.2f}s [{cold[0]:.2f}, {cold[-1]:.2f}s] {median(parts, 'turns'):>6.0f} {median(parts, 'longest_turn'):>7.2f}s "
              f"{median(parts, 'in_turns'):>8.2f}s {median(parts, 'writing'):>7.2f}s "
              f"{sum(r['answered_before_cold_done'] for r in runs):>8.0f} of {len(runs)}")
    print(f"DURING-COLD / QUIET at N={count}, in parts (goal <= 2.0): median {median(True, 'during') / median(True, 'quiet'):.2f}x, "
          f"max {max(r['during'] for r in figures[True]) / median(True, 'quiet'):.2f}x (whole: {median(False, 'during') / median(False, 'quiet'):.2f}x)")
    print(f"COLD SYNC IN PARTS / WHOLE at N={count} (goal <= 1.1): {median(True, 'cold') / median(False, 'cold'):.2f}x")
    return 0


def dead_backend(count: int) -> float:
    """With count services programmed, one of them TCP-checked: kill a real server; seconds to weight 0."""
    kernel = real_kernel()
    reconciler = Reconciler(kernel, NODE)
    objects = [service(i, checked=(i == 0)) for i in range(count)]
    reconciler.set_objects(objects)
    assert reconciler.reconcile().ok
    dead = RealServerKey(ServiceKey("tcp", vip(0), 80), BACKENDS[1], 8080)

    async def run() -> float:
        tracker = HealthTracker()
        wake = asyncio.Event()
        checker = HealthChecker(tracker, wake.set)
        checker.update(health_targets({vs.ref: vs for vs in objects if vs.spec.health_check.type != "none"}, reconciler))
        await asyncio.sleep(2.5)  # a few good checks first
        echo_servers[1].kill()
        killed = time.perf_counter()
        try:
            while True:
                await wake.wait()
                wake.clear()
                reconciler.set_out_of_service(tracker.out_of_service())
                outcome = await asyncio.to_thread(reconciler.reconcile)
                assert outcome.ok and not outcome.full, outcome.error
                weight = kernel.ipvs.read_real_servers([dead.service])[dead].weight
                if weight == 0:
                    return time.perf_counter() - killed
        finally:
            await checker.stop()

    return asyncio.run(run())


# The files the dump tools look names up in: `ipset save` calls getprotobynumber per member
# (an open and read of /etc/protocols each, after nsswitch.conf); ipvsadm -Sn and iptables-save
# look nothing up (strace -e openat, natively).
LOOKED_UP = ("/etc/protocols", "/etc/services", "/etc/nsswitch.conf")
CLONE_NEWNS, MS_BIND, MS_REC, MS_PRIVATE = 0x00020000, 4096, 0x4000, 1 << 18
# A fresh process reading the kernel state once, as the resync does (read_observed), and nothing else.
READ_ONCE = f"""import sys
sys.path.insert(0, {str(REPOSITORY / "operator")!r})
from vsop.adapters.real import read_host
from vsop.core.state import Names
state = read_host(Names())
print(len(state.services), len(state.real_servers))
"""


def _mount(source: str | None, target: str, kind: str | None, flags: int) -> None:
    def text(value: str | None) -> bytes | None:
        return None if value is None else value.encode()

    if _libc.mount(text(source), text(target), text(kind), ctypes.c_ulong(flags), None) != 0:
        raise OSError(ctypes.get_errno(), f"mount {target}")


def with_etc_on_tmpfs(node: str, work: Callable[[], T]) -> T:
    """work() in a thread of its own, in the node's namespace and a private mount namespace where
    LOOKED_UP are copies on a tmpfs (not 9p, as the VM's /etc is): the processes it starts inherit both."""
    found: dict[str, Any] = {}
    scratch = tempfile.mkdtemp(prefix="vsop-bench-etc-")

    def run() -> None:
        try:
            if _libc.unshare(CLONE_NEWNS) != 0:
                raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNS)")
            _mount(None, "/", None, MS_REC | MS_PRIVATE)  # nothing mounted here shows outside
            _mount("tmpfs", scratch, "tmpfs", 0)
            for path in LOOKED_UP:
                copy = os.path.join(scratch, os.path.basename(path))
                shutil.copyfile(path, copy)
                _mount(copy, path, None, MS_BIND)
            with entered(node):
                found["value"] = work()
        except BaseException as exc:  # noqa: BLE001 - raised again in the caller's thread
            found["error"] = exc

    thread = threading.Thread(target=run, name="etc on tmpfs")
    thread.start()
    thread.join()
    os.rmdir(scratch)
    if "error" in found:
        raise found["error"]
    return found["value"]


def read_costs(reconciler: Reconciler, count: int, repeat: int) -> dict[str, float]:
    """Medians of `repeat`: each dump tool cold, vsop's read in a fresh process, vsop's read and no-op
    resync in this (warm) process. In the calling thread's namespaces: its processes inherit them."""
    def cold_read() -> float:
        started = time.perf_counter()
        out = subprocess.run([sys.executable, "-c", READ_ONCE], capture_output=True, text=True, check=True).stdout
        seconds = time.perf_counter() - started
        assert out.split() == [str(count), str(2 * count)], out  # it read this namespace's kernel
        return seconds

    def warm_read() -> float:
        started = time.perf_counter()
        read_observed(reconciler.kernel, reconciler.names)
        return time.perf_counter() - started

    def resync() -> float:
        started = time.perf_counter()
        outcome = reconciler.reconcile(full=True)
        assert outcome.ok and outcome.writes == 0, outcome.error
        return time.perf_counter() - started

    costs: dict[str, Callable[[], float]] = {
        "ipvsadm": lambda: timed("ipvsadm", "-Sn"), "ipset": lambda: timed("ipset", "save"),
        "iptables": lambda: timed("iptables-save"), "cold_read": cold_read, "warm_read": warm_read, "resync": resync,
    }
    figures = {}
    for name, cost in costs.items():
        taken = [cost() for _ in range(repeat)]
        figures[name] = statistics.median(taken)
        print(f"#   N={count} {name}: {' '.join(f'{t:.3f}s' for t in taken)}", flush=True)  # as it goes: a run cut short keeps them
    figures["tools"] = figures["ipvsadm"] + figures["ipset"] + figures["iptables"]
    return figures


def fair_resync_figures(node: str, count: int, repeat: int) -> dict[str, dict[str, float]]:
    """At N=count programmed: read_costs as the VM has /etc (9p), and with LOOKED_UP on a tmpfs."""
    reconciler = Reconciler(real_kernel(), NODE)
    reconciler.set_objects([service(i) for i in range(count)])
    assert reconciler.reconcile().ok
    assert reconciler.reconcile(full=True).writes == 0
    print(f"# N={count}, /etc over 9p", flush=True)
    as_is = read_costs(reconciler, count, repeat)
    print(f"# N={count}, /etc/protocols, /etc/services, /etc/nsswitch.conf on a tmpfs", flush=True)
    return {"as_is": as_is, "tmpfs": with_etc_on_tmpfs(node, lambda: read_costs(reconciler, count, repeat))}


def print_fair_resync(small: int, large: int, repeat: int) -> int:
    node = f"vsopbench{os.getpid()}"
    results = {}
    for count in (large, small):  # the large first: it is the figure
        results[count] = fair_resync_figures(node, count, repeat)
        cleanup(real_kernel())
    rows = (("ipvsadm -Sn", "ipvsadm"), ("ipset save", "ipset"), ("iptables-save", "iptables"), ("the three tools", "tools"),
            ("vsop's read, a fresh process", "cold_read"), ("vsop's read, in process (warm)", "warm_read"),
            ("vsop's no-op resync, in process", "resync"))
    print(f"\n## reading the kernel state once, N services x 2 real servers, median of {repeat}; /etc as the VM has it")
    print("## (9p from the host) and with /etc/protocols, /etc/services, /etc/nsswitch.conf on a tmpfs (ipset save")
    print("## opens /etc/protocols once per member; ipvsadm -Sn and iptables-save look nothing up)")
    print(f"{'':32}" + "".join(f"{f'N={count} 9p':>12}{'tmpfs':>9}" for count in results))
    for label, key in rows:
        print(f"{label:32}" + "".join(f"{r['as_is'][key]:>11.3f}s{r['tmpfs'][key]:>8.3f}s" for r in results.values()))
    for count, r in results.items():
        tmpfs, as_is = r["tmpfs"], r["as_is"]
        print(f"FAIR RESYNC RATIO N={count}: vsop's read in a fresh process / the three tools, /etc on tmpfs: "
              f"{tmpfs['cold_read'] / tmpfs['tools']:.2f}x (9p: {as_is['cold_read'] / as_is['tools']:.2f}x); "
              f"warm no-op resync / the tools on tmpfs: {tmpfs['resync'] / tmpfs['tools']:.2f}x (9p: {as_is['resync'] / as_is['tools']:.2f}x)")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", type=int, default=100)
    parser.add_argument("--large", type=int, default=10000)
    parser.add_argument("--host-agent-only", action="store_true", help="only the host agent's new-file figure")
    parser.add_argument("--resync", action="store_true", help="only the host agent's new file written during its periodic full resync")
    parser.add_argument("--samples", type=int, default=3, help="new files per N for the host agent's figure (median printed)")
    parser.add_argument("--aside-only", action="store_true", help="with --resync: only the read made aside, at --large (the agent's way)")
    parser.add_argument("--cold-change", action="store_true",
                        help="only a new file written during the host agent's cold first sync at --large, whole vs in parts (--samples agent starts each)")
    parser.add_argument("--cold-delay", type=float, default=1.0, help="seconds after the cold sync began that --cold-change writes its file")
    parser.add_argument("--fair-resync", action="store_true",
                        help="only the kernel read like for like: vsop's read in a fresh process and the dump tools, /etc on 9p and on tmpfs")
    args = parser.parse_args()
    print(f"# node reconciler benchmark, kernel {os.uname().release}, python {sys.version.split()[0]}, load {os.getloadavg()[0]:.1f}")
    global echo_servers
    with lab() as client:
        if args.fair_resync:
            return print_fair_resync(args.small, args.large, args.samples)
        echo_servers = [Echo(address) for address in BACKENDS]
        if args.resync:
            return print_resync(client, args.small, args.large, args.samples, args.aside_only)
        if args.cold_change:
            return print_cold_change(client, args.large, args.samples, args.cold_delay)
        results: dict[int, dict[str, float]] = {args.small: {}, args.large: {}}
        for count in () if args.host_agent_only else (args.small, args.large):
            results[count] = change_figures(client, count)
            cleanup(real_kernel())
        for count in (args.small, args.large):
            results[count].update(host_agent_figures(f"vsopbench{os.getpid()}", client, count, args.samples))
            cleanup(real_kernel())
        small, large = results[args.small], results[args.large]
        print("\n## the host agent (vsop agent) following a store folder: a new file written, until its VIP answers")
        print("## (written just after a poll; 1 s polls, a changed file taken at a second look 1 s after the first, 0.1 s debounce: >= 2.1 s at any N)")
        print(f"{'N':>6} {'median':>8} {'min':>7} {'max':>7} {'agent start':>12}")
        for count, r in results.items():
            print(f"{count:>6} {r['agent_new_vip']:>7.3f}s {r['agent_new_vip_min']:>6.3f}s {r['agent_new_vip_max']:>6.3f}s {r['agent_start']:>11.1f}s")
        print(f"HOST-AGENT NEW-FILE RATIO N={args.large} / N={args.small} (goal <= 1.2): {large['agent_new_vip'] / small['agent_new_vip']:.2f}x (median of {args.samples}; "
              f"min/min {large['agent_new_vip_min'] / small['agent_new_vip_min']:.2f}x, max/max {large['agent_new_vip_max'] / small['agent_new_vip_max']:.2f}x)")
        if args.host_agent_only:
            return 0
        print("\n## a new object's VIP answers a client (change applied + first TCP echo through the VIP)")
        print(f"{'N':>6} {'reconciler':>11} {'(reconcile)':>12} {'writes':>7} {'full sync':>10} {'(read)':>8} {'(plan)':>8}")
        for count, r in results.items():
            print(f"{count:>6} {r['change_answers']:>10.3f}s {r['change_reconcile']:>11.3f}s {r['change_writes']:>7.0f} "
                  f"{r['full_answers']:>9.3f}s {r['full_read']:>7.2f}s {r['full_plan']:>7.2f}s")
        print(f"NEW-VIP RATIO N={args.large} / N={args.small} (goal <= 1.2): reconciler {large['change_answers'] / small['change_answers']:.2f}x "
              f"(reconcile alone {large['change_reconcile'] / small['change_reconcile']:.2f}x), "
              f"full sync {large['full_answers'] / small['full_answers']:.2f}x")

        print(f"\n## periodic no-op resync at N={args.large + 4}")
        print(f"resync {large['noop_resync']:.3f}s (skipped planning: {bool(large['noop_skipped'])}, writes {large['noop_writes']:.0f}); "
              f"ipvsadm -Sn + ipset save + iptables-save {large['tools']:.3f}s")
        print(f"NO-OP RESYNC RATIO vs the dump tools (goal <= 1.0): {large['noop_resync'] / large['tools']:.2f}x")

        print(f"\n## cold first reconcile: N={args.large} services x 2 real servers")
        reference = ipvsadm_restore(args.large)
        print(f"reconciler {large['cold']:.3f}s; ipvsadm -R {reference:.3f}s")
        print(f"COLD RATIO vs ipvsadm -R (goal <= 2.0): {large['cold'] / reference:.2f}x")

        print(f"\n## peak RSS of this process holding N={args.large} services: {large['rss_end']:.0f} MB "
              f"(after the cold reconcile {large['rss']:.0f} MB)")

        print(f"\n## a real server dies (TCP check every 2 s, threshold 2): seconds to weight 0 at N={args.large}")
        seconds = dead_backend(args.large)
        print(f"{seconds:.2f}s (goal: interval x threshold + 1 s = 5 s)")
        cleanup(real_kernel())
    return 0


def print_resync(client: str, small: int, large: int, samples: int, aside_only: bool = False) -> int:
    figures: dict[tuple[int, bool], dict[str, float]] = {}
    for count in (large,) if aside_only else (small, large):
        for aside in (True,) if aside_only else (False, True):
            figures[count, aside] = resync_figures(f"vsopbench{os.getpid()}", client, count, samples, aside=aside)
            cleanup(real_kernel())
    print(f"\n## the host agent: a new store file until its VIP answers, written in quiet time (just after a poll) and just")
    print(f"## after the periodic resync started (a change since the last one); median of {samples} [p90, max]. The resync's read")
    print("## under the lock, in its turn (before vsop.node.aside), and made aside while changes are served (now), in one run.")
    print("## (resync: from its start until its full reconcile ended; read: its kernel read; status: seconds of status")
    print("##  file writes between the slowest sample's write and its answer)")
    print(f"{'N':>6} {'read':>6} {'quiet':>8} {'during resync':>26} {'resync':>8} {'(read)':>8} {'status':>7}")
    for (count, aside), r in figures.items():
        print(f"{count:>6} {'aside' if aside else 'lock':>6} {r['quiet']:>7.3f}s {r['during']:>7.3f}s [{r['during_p90']:.3f}, {r['during_max']:.3f}s] "
              f"{r['resync_turn']:>7.3f}s {r['resync_read']:>7.3f}s {r['status_in_slowest']:>6.2f}s")
    for aside in (True,) if aside_only else (False, True):
        r = figures[large, aside]
        versus = "" if aside_only else f"; N={large} / N={small} during resync: {r['during'] / figures[small, aside]['during']:.2f}x"
        print(f"DURING-RESYNC / QUIET at N={large}, read {'aside' if aside else 'under the lock'} (goal <= 1.2): median {r['during'] / r['quiet']:.2f}x, "
              f"p90 {r['during_p90'] / r['quiet']:.2f}x{versus}")
    return 0


echo_servers: list[Echo] = []

if __name__ == "__main__":
    sys.exit(main())
