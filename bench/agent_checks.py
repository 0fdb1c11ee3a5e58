"""A real server dies behind the real host agent, every service health-checked (run inside the VM).

Starts `vsop agent --from DIR --metrics-port PORT` (the console script, its own process, as
bench/agent_rss.py does) in bench/agent_bench.py's lab over N store files, every one of them
with a TCP check (every 2 s, timeout 1 s, failure threshold 2, success threshold 1): service s0
on real servers 10.250.0.2 and 10.250.0.4, every other one on 10.250.0.2 and 10.250.0.3, all
port 8080. What the agent checks: one target per real server of each checked service
(vsop.node.loop.health_targets; a target is a RealServerKey, which names its service), 2 x N
targets; the targets on one (address, port) with the same check share one probe
(vsop.node.probes.Probe), so the checker runs 3 probes per interval whatever N (before they
were merged, 2 x N probes). The backends are three listening sockets
in the node namespace that accept and close at once, counting what they accept: the probes
that really arrived.

Once every object is programmed (the agent's status file says so) and the checks ran for a
while, 10.250.0.4 stops listening (a connect is then refused) and the seconds until s0's real
server 10.250.0.4:8080 has weight 0 in the kernel are timed (IPVS read over netlink every
50 ms); it then listens again, and the seconds until weight 1 are timed too. Beside them:
vsop_health_probe_lag_seconds scraped from the agent's /metrics (how late probes start against
their schedule), the listen queue overflows of the node namespace (a probe lost there would be
a backend's fault, not the agent's), and the real servers other than the killed one at weight 0
at the end (checks failing that should not). N = 100 and N = 10,000 in one run: under
emulation the ratio is the meaningful figure. Figures only, no assertions.

    flock /tmp/vsop-vm.lock vm/run --timeout 1500 --mem 4096 -- .venv/bin/python bench/agent_checks.py
"""

from __future__ import annotations

import argparse
import os
import selectors
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))

from agent_bench import BACKENDS, VICTIM, lab, service, store_folder, vip  # noqa: E402
from agent_rss import last_sync, wait_for  # noqa: E402
from vsop.adapters.ipvs import IPVSKernel  # noqa: E402
from vsop.adapters.real import real_kernel  # noqa: E402
from vsop.core.state import RealServerKey, ServiceKey  # noqa: E402
from vsop.host.store import Store  # noqa: E402
from vsop.node.whole import cleanup  # noqa: E402

PORT = 8080
METRICS_PORT = 9711
INTERVAL = 2.0  # the checks' intervalSeconds (agent_bench.service)
DEAD = RealServerKey(ServiceKey("tcp", vip(0), 80), VICTIM, PORT)


class Listener:
    """A TCP socket on address:PORT in this thread's namespace that accepts and closes at once, counting."""

    def __init__(self, address: str):
        self.server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.server.bind((address, PORT))
        self.server.listen(4096)
        self.server.setblocking(False)
        self.accepted = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True, name=f"listener {address}")
        self.thread.start()

    def _serve(self) -> None:
        with selectors.DefaultSelector() as selector:
            selector.register(self.server, selectors.EVENT_READ)
            while not self.stop.is_set():
                if not selector.select(0.2):
                    continue
                while True:  # the whole accept queue
                    try:
                        conn, _ = self.server.accept()
                    except (BlockingIOError, OSError):
                        break
                    conn.close()
                    self.accepted += 1

    def kill(self) -> None:
        self.stop.set()
        self.thread.join()
        self.server.close()  # connects are now refused


def listen_overflows() -> int:
    """TcpExt ListenOverflows + ListenDrops of this thread's network namespace."""
    with open("/proc/thread-self/net/netstat") as netstat:
        lines = [line.split() for line in netstat if line.startswith("TcpExt:")]
    fields = dict(zip(lines[0][1:], map(int, lines[1][1:])))
    return fields["ListenOverflows"] + fields["ListenDrops"]


def probe_lag() -> float:
    """vsop_health_probe_lag_seconds from the agent's /metrics (NaN when it does not answer within 30 s)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{METRICS_PORT}/metrics", timeout=30) as answer:
            for line in answer.read().decode().splitlines():
                if line.startswith("vsop_health_probe_lag_seconds "):
                    return float(line.split()[1])
    except OSError:
        pass
    return float("nan")


def until_weight(ipvs: IPVSKernel, weight: int, limit: float) -> float:
    """Seconds until the killed real server has this weight in the kernel (inf past the limit)."""
    started = time.perf_counter()
    while True:
        found = ipvs.read_real_servers([DEAD.service]).get(DEAD)
        if found is not None and found.weight == weight:
            return time.perf_counter() - started
        if time.perf_counter() - started > limit:
            return float("inf")
        time.sleep(0.05)


def start_agent(folder: Path, work: Path, count: int, vsop: str) -> tuple[subprocess.Popen[bytes], float]:
    """`vsop agent --from folder` in this thread's namespace, once it has programmed `count` objects."""
    status = work / "agent.json"
    argv = [vsop, "agent", "--from", str(folder), "--status-file", str(status), "--lock", str(work / "lock"),
            "--node-name", "bench", "--metrics-port", str(METRICS_PORT)]
    with open(work / "agent.log", "wb") as log:
        agent = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)

    def programmed() -> bool:
        last = last_sync(status)
        return last is not None and "error" not in last and len(last.get("programmed", ())) == count  # type: ignore[arg-type]

    return agent, wait_for(agent, f"{count} objects programmed", 1200, programmed)


def deaths(ipvs: IPVSKernel, listeners: dict[str, Listener], samples: int, limit: float, budget: float) -> dict[str, list[float]]:
    """Kill the victim's listener, time weight 0; listen again, time weight 1; `samples` times (fewer past `budget` s)."""
    found: dict[str, list[float]] = {"dead": [], "back": [], "lag_dead": []}
    started = time.perf_counter()
    for _ in range(samples):
        listeners[VICTIM].kill()
        found["dead"].append(until_weight(ipvs, 0, limit))
        found["lag_dead"].append(probe_lag())
        listeners[VICTIM] = Listener(VICTIM)
        found["back"].append(until_weight(ipvs, 1, limit))
        print(f"#   killed: weight 0 after {seconds(found['dead'][-1]).strip()} (lag then {found['lag_dead'][-1]:.2f}s), "
              f"back to 1 after {seconds(found['back'][-1]).strip()}", flush=True)
        if time.perf_counter() - started > budget or found["dead"][-1] == float("inf"):
            break
    return found


def measure(count: int, args: argparse.Namespace, samples: int) -> dict[str, float]:
    """One agent over `count` checked store files: probes arriving, probe lag, a real server's death to weight 0."""
    folder = store_folder(count, checked=True)
    Store(folder).write([service(0, checked=True, backends=(BACKENDS[0], VICTIM))])
    work = Path(tempfile.mkdtemp(prefix="vsop-checks-"))
    listeners = {address: Listener(address) for address in (*BACKENDS, VICTIM)}
    ipvs = IPVSKernel()
    overflows = listen_overflows()
    agent, took = start_agent(folder, work, count, args.vsop)
    try:
        figures: dict[str, float] = {"start": took, "targets": 2 * count}
        time.sleep(args.settle)  # every target past its first (randomly placed) probe, the schedule steady
        before, window = sum(s.accepted for s in listeners.values()), time.perf_counter()
        time.sleep(args.window)
        arrived = sum(s.accepted for s in listeners.values()) - before
        figures["per_interval"] = arrived / (time.perf_counter() - window) * INTERVAL
        figures["lag_before"] = probe_lag()
        print(f"# N={count}: programmed in {took:.1f}s; {figures['per_interval']:.0f} probes arrived per {INTERVAL:g} s interval "
              f"({2 * count} targets); probe lag {figures['lag_before']:.2f}s", flush=True)
        found = deaths(ipvs, listeners, samples, args.limit, args.budget)
        figures.update(dead=statistics.median(found["dead"]), dead_min=min(found["dead"]), dead_max=max(found["dead"]),
                       back=statistics.median(found["back"]), lag_dead=max(found["lag_dead"]), samples=len(found["dead"]))
        _, real_servers = ipvs.read()
        figures["wrong"] = sum(1 for key, rs in real_servers.items() if rs.weight == 0 and key != DEAD)
        figures["overflows"] = listen_overflows() - overflows
    except BaseException:
        sys.stderr.write((work / "agent.log").read_text(errors="replace")[-4000:])
        raise
    finally:
        stop(agent)
        for listener in listeners.values():
            listener.kill()
        shutil.rmtree(folder, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)
        cleanup(real_kernel())
    return figures


def stop(agent: subprocess.Popen[bytes]) -> None:
    agent.send_signal(signal.SIGTERM)
    try:
        agent.wait(120)
    except subprocess.TimeoutExpired:
        agent.kill()
        agent.wait()


def seconds(value: float) -> str:
    return "  never" if value == float("inf") else f"{value:6.2f}s"  # never: not within --limit


def report(results: dict[int, dict[str, float]], args: argparse.Namespace) -> None:
    show: Callable[[float], str] = seconds
    print("\n## `vsop agent --from DIR` (its own process), N services each TCP-checked every 2 s (timeout 1 s, threshold 2),")
    print("## a real server of one of them killed (its port refuses): seconds until weight 0 in the kernel, and back to 1")
    print("## (targets: real servers the agent's checker checks, 2 per service, those on one address:port with one check sharing")
    print("##  a probe; arrived: probes the backends accepted per interval;")
    print("##  lag: vsop_health_probe_lag_seconds before the kill / at weight 0; wrong: other real servers at weight 0 at the end;")
    print(f"##  never: not within --limit {args.limit:g} s)")
    print(f"{'N':>6} {'start':>7} {'targets':>8} {'arrived':>8} {'lag':>15} {'dead (median)':>14} {'[min-max]':>17} {'back':>8} {'n':>2} "
          f"{'wrong':>6} {'overflows':>9}")
    for count, r in results.items():
        print(f"{count:>6} {r['start']:>6.1f}s {r['targets']:>8.0f} {r['per_interval']:>8.0f} {r['lag_before']:>6.2f}s/{r['lag_dead']:>6.2f}s "
              f"{show(r['dead']):>14} [{show(r['dead_min'])}-{show(r['dead_max'])}] {show(r['back']):>8} {r['samples']:>2.0f} "
              f"{r['wrong']:>6.0f} {r['overflows']:>9.0f}")
    small, large = results[args.small], results[args.large]
    print(f"DEAD-BACKEND ALL-CHECKED RATIO N={args.large} / N={args.small}: {large['dead'] / small['dead']:.2f}x "
          f"({seconds(large['dead']).strip()} vs {seconds(small['dead']).strip()}; goal: interval x threshold + 1 s = 5 s at N={args.large})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", type=int, default=100)
    parser.add_argument("--large", type=int, default=10000)
    parser.add_argument("--samples", type=int, default=3, help="deaths timed at the small N (median printed)")
    parser.add_argument("--large-samples", type=int, default=2, help="deaths timed at the large N")
    parser.add_argument("--settle", type=float, default=10.0, help="seconds the checks run before probes are counted")
    parser.add_argument("--window", type=float, default=10.0, help="seconds over which arriving probes are counted")
    parser.add_argument("--limit", type=float, default=300.0, help="seconds to wait for a weight change before giving up")
    parser.add_argument("--budget", type=float, default=240.0, help="no further death timed after this many seconds of them")
    parser.add_argument("--vsop", default=str(Path(sys.executable).parent / "vsop"), help="the vsop command (default: beside this python)")
    args = parser.parse_args()
    print(f"# host agent health checks, kernel {os.uname().release}, python {sys.version.split()[0]}, load {os.getloadavg()[0]:.1f}")
    results: dict[int, dict[str, float]] = {}
    with lab():
        for count, samples in ((args.small, args.samples), (args.large, args.large_samples)):
            results[count] = measure(count, args, samples)
            print(f"# N={count}: {', '.join(f'{name} {value:.2f}' for name, value in results[count].items())}", flush=True)
    report(results, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
