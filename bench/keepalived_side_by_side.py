"""vsop's host agent beside keepalived, on the same kernel, the same lab and the same services (run inside the VM).

For each N (--sizes, default 100 and 1,000): N virtual services, VIP:80 -> 2 real servers on
port 8080 (NAT, rr), every real server TCP-checked every 2 s (timeout 1 s, 2 failures take it
out, 1 success brings it back; --check-intervals: one pass of every N per interval), first
served by keepalived alone, then by `vsop agent --from DIR` alone, in bench/agent_bench.py's
lab (a node namespace with the backends on a dummy link,
a client namespace behind a veth). Service s0's second real server is 10.250.0.4 (alone: the
one killed); every other one is on 10.250.0.2 and 10.250.0.3. The backends are echo servers in
the node namespace that keep their connections open.

keepalived's configuration is vsop's own renderer's (vsop.keepalived.render, `mode:
keepalived`, layout confd: keepalived.conf with `include conf.d/*.conf`, one file per service,
TCP_CHECK with `inhibit_on_failure`), the file of s0 rendered and copied with its VIP replaced
for the others. keepalived runs with `--dont-fork` and its own pid files. keepalived does not
bind VIPs (with vsop's `mode: keepalived`, vsop binds them on vsop0); here one route, `local
169.254.0.0/16 dev lo`, makes every VIP local at no cost per VIP, and the sysctls vsop sets
(vsop.core.desired.family_sysctls, kernel_sysctls) are set by hand: keepalived's column has
no per-VIP address cost. vsop binds each VIP on vsop0, and keeps its ipset and iptables rules.

Per N and per side:
  cold     start (keepalived: `keepalived -t` on the configuration, then the daemon; vsop: the
           agent over N store files) until every VIP has answered a client (TCP connect and
           echo from the client namespace, swept in order, each retried until it answers;
           the sweep's own cost when everything answers is printed beside it);
  new      one new service (keepalived: its conf.d file written, then SIGHUP; vsop: its store
           file written) until its VIP answers, median of --new-samples;
  dead     a real server stops listening until it has weight 0 in the kernel (IPVS read over
           netlink every 50 ms; it then listens again and weight 1 is awaited), median of --samples;
  change   service s1's real server 10.250.0.3 rewritten from weight 1 to weight 3 (its file,
           then SIGHUP for keepalived) until the kernel has weight 3;
  resets   of --holds connections held open to s1's VIP and as many to s2's across that
           change, how many no longer echo afterwards;
  RSS      VmRSS summed over the daemon and all its descendant processes (keepalived: the
           parent and its checker child), after the steps above; PSS printed beside it (pages
           shared between keepalived's processes counted once);
  idle     CPU time of the same processes over --idle seconds (default 30, one periodic resync
           of vsop's) while nothing changes, right after the settle: the checks, the folder's
           polls, the periodic work, as a share of one CPU.
Ratios are vsop / keepalived: below 1, vsop is faster or smaller. Figures only, no assertions.

    flock /tmp/vsop-vm.lock vm/run --timeout 1500 --mem 4096 -- .venv/bin/python bench/keepalived_side_by_side.py
    (make bench-keepalived; --sizes 100 1000 10000 for the 10k column)
"""

from __future__ import annotations

import argparse
import datetime
import os
import re
import resource
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
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))

from agent_bench import BACKENDS, VICTIM, entered, lab, sh, store_folder, vip  # noqa: E402
from agent_checks import stop  # noqa: E402
from vsop.adapters.ipvs import IPVSKernel  # noqa: E402
from vsop.adapters.real import real_kernel  # noqa: E402
from vsop.api.model import VirtualService, parse_virtual_service  # noqa: E402
from vsop.core.desired import family_sysctls, kernel_sysctls  # noqa: E402
from vsop.core.state import RealServerKey, ServiceKey  # noqa: E402
from vsop.host.store import Store  # noqa: E402
from vsop.keepalived.render import render_keepalived, section_filename  # noqa: E402
from vsop.node.whole import cleanup  # noqa: E402

PORT = 8080
KEEPALIVED = shutil.which("keepalived") or "/usr/sbin/keepalived"
CHECK = {"type": "tcp", "intervalSeconds": 2, "timeoutSeconds": 1, "failureThreshold": 2}  # intervalSeconds: --check-intervals
DEAD = RealServerKey(ServiceKey("tcp", vip(0), 80), VICTIM, PORT)
CHANGED = RealServerKey(ServiceKey("tcp", vip(1), 80), BACKENDS[1], PORT)
NEVER = float("inf")


def virtual_service(index: int, mode: str, backends: tuple[str, ...] = BACKENDS, weights: tuple[int, ...] = (1, 1)) -> VirtualService:
    return parse_virtual_service({
        "apiVersion": "vsop.dev/v1alpha1", "kind": "VirtualService",
        "metadata": {"name": f"s{index}", "namespace": "bench", "creationTimestamp": "2026-01-01T00:00:00Z"},
        "spec": {"vip": vip(index), "mode": mode, "ports": [{"port": 80, "targetPort": PORT}],
                 "backends": [{"address": a, "weight": w} for a, w in zip(backends, weights)], "healthCheck": CHECK},
    })


def special(index: int, mode: str) -> VirtualService:
    """s0 (its second real server the one killed) and s1 (the one changed later) as they start."""
    return virtual_service(index, mode, backends=(BACKENDS[0], VICTIM) if index == 0 else BACKENDS)


def changed(mode: str) -> VirtualService:
    return virtual_service(1, mode, weights=(1, 3))


# ---------------------------------------------------------------------------------------
# The lab's backends and client.


class Echo:
    """A TCP echo server on address:PORT in this thread's namespace: keeps its connections open, can stop listening."""

    def __init__(self, address: str):
        self.server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.server.bind((address, PORT))
        self.server.listen(4096)  # keepalived's checks connect 1,000 times a second at N = 1,000
        self.server.setblocking(False)
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.server, selectors.EVENT_READ)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True, name=f"echo {address}")
        self.thread.start()

    def _serve(self) -> None:
        while not self.stop.is_set():
            for key, _ in self.selector.select(0.2):
                sock: socket.socket = key.fileobj  # type: ignore[assignment]
                if sock is self.server:
                    while True:  # the whole accept queue
                        try:
                            conn, _ = self.server.accept()
                        except OSError:
                            break
                        conn.setblocking(False)
                        if self._over(conn):  # a check's connection is closed already: never registered
                            conn.close()
                        else:
                            self.selector.register(conn, selectors.EVENT_READ)
                    continue
                if self._over(sock):
                    self.selector.unregister(sock)
                    sock.close()

    @staticmethod
    def _over(sock: socket.socket) -> bool:
        """Echo what arrived; True when the connection is over (to close), False when it waits for more."""
        try:
            data = sock.recv(64)
            if data:
                sock.sendall(data)
                return False
        except BlockingIOError:
            return False
        except OSError:
            pass
        return True

    def kill(self) -> None:
        """Stop listening (connects are then refused); the open connections stay as they are."""
        self.stop.set()
        self.thread.join()
        self.selector.unregister(self.server)
        self.server.close()


def connect(client: str, address: str, timeout: float) -> socket.socket | None:
    """A connection from the client namespace to address:80 that echoed once, or None."""
    with entered(client):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect((address, 80))
        if echoes(sock):
            return sock
    except OSError:
        pass
    sock.close()
    return None


def echoes(sock: socket.socket) -> bool:
    try:
        sock.sendall(b"ping")
        return sock.recv(64) == b"ping"
    except OSError:
        return False


_LOG_TIME = re.compile(r"^[IWEF](\d{4}) (\d\d:\d\d:\d\d\.\d{6}) ")


def log_time(line: str) -> float | None:
    """The wall-clock time of a vsop log line (vsop.node.logs: `I1207 22:51:30.123456 ...`, local time)."""
    found = _LOG_TIME.match(line)
    if found is None:
        return None
    return datetime.datetime.strptime(f"{time.localtime().tm_year}{found[1]} {found[2]}", "%Y%m%d %H:%M:%S.%f").timestamp()


def until_answers(client: str, address: str, started: float, limit: float) -> float:
    """Seconds since `started` until address:80 answers (NEVER past the limit)."""
    while True:
        sock = connect(client, address, 0.2)
        if sock is not None:
            sock.close()
            return time.perf_counter() - started
        if time.perf_counter() - started > limit:
            return NEVER
        time.sleep(0.02)  # the emulated VM has two cores: leave them to the daemon under test


def all_answer(client: str, count: int, started: float, limit: float, progress: list[float] | None = None) -> float:
    """Seconds since `started` until every VIP has answered once, swept in order; `progress`
    gets the seconds at which each tenth of them had answered."""
    for index in range(count):
        if until_answers(client, vip(index), started, limit) == NEVER:
            return NEVER
        if progress is not None and (index + 1) * 10 // count > len(progress):
            progress.append(time.perf_counter() - started)
    return time.perf_counter() - started


def until_weight(ipvs: IPVSKernel, key: RealServerKey, weight: int, limit: float) -> float:
    """Seconds until the real server has this weight in the kernel (absent counts as 0), NEVER past the limit."""
    started = time.perf_counter()
    while True:
        found = ipvs.read_real_servers([key.service]).get(key)
        if (found.weight if found is not None else 0) == weight:
            return time.perf_counter() - started
        if time.perf_counter() - started > limit:
            return NEVER
        time.sleep(0.05)


def tree_of(pid: int) -> set[int]:
    """pid and all its descendants."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    parents[int(entry)] = int(stat.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
    tree, grown = {pid}, True
    while grown:
        more = {child for child, parent in parents.items() if parent in tree} - tree
        tree |= more
        grown = bool(more)
    return tree


def cpu_seconds(pid: int) -> float:
    """User and system CPU time, summed over pid and all its descendants (live ones)."""
    ticks = 0
    for member in tree_of(pid):
        try:
            with open(f"/proc/{member}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ticks += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of proc(5))
    return ticks / os.sysconf("SC_CLK_TCK")


def memory(pid: int) -> tuple[float, float]:
    """VmRSS and PSS in MB, summed over pid and all its descendants."""
    rss = pss = 0.0
    for member in tree_of(pid):
        try:
            with open(f"/proc/{member}/status") as status:
                rss += sum(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))
            with open(f"/proc/{member}/smaps_rollup") as rollup:
                pss += sum(int(line.split()[1]) for line in rollup if line.startswith("Pss:"))
        except OSError:
            continue
    return rss / 1024, pss / 1024


# ---------------------------------------------------------------------------------------
# The two sides: each starts over N services, adds one, changes one, and stops.


class Keepalived:
    name = "keepalived"

    def __init__(self, count: int):
        self.work = Path(tempfile.mkdtemp(prefix="vsop-ka-bench-"))
        self.config = self.work / "keepalived.conf"
        self.confd = self.work / "conf.d"
        self.confd.mkdir()
        template = render_keepalived([virtual_service(2, "keepalived")])  # s2's file, copied per service
        assert not template.problems, template.problems
        self.config.write_text(template.files["keepalived.conf"])
        body = template.files[f"conf.d/{section_filename('bench', 's2')}"]
        assert body.count("bench/s2:") == 1 and body.count("169.254.") == body.count(vip(2) + " ") + body.count(vip(2) + "\n")
        for index in range(2, count):
            text = body.replace("bench/s2:", f"bench/s{index}:").replace(vip(2), vip(index))
            (self.confd / section_filename("bench", f"s{index}")).write_text(text)
        for index in (0, 1):
            self.write(special(index, "keepalived"))
        self.process: subprocess.Popen[bytes] | None = None
        self.check_seconds = 0.0

    def write(self, vs: VirtualService) -> None:
        rendered = render_keepalived([vs])
        assert not rendered.problems, rendered.problems
        name = section_filename(vs.metadata.namespace, vs.metadata.name)
        (self.confd / name).write_text(rendered.files[f"conf.d/{name}"])

    def start(self) -> None:
        started = time.perf_counter()
        check = subprocess.run([KEEPALIVED, "-t", "-f", str(self.config)], capture_output=True, text=True)
        self.check_seconds = time.perf_counter() - started
        if check.returncode != 0:
            raise SystemExit(f"keepalived -t refused the configuration ({check.returncode}): {check.stderr[-2000:]}")
        argv = [KEEPALIVED, "--dont-fork", "--log-console", "--log-detail", "-f", str(self.config),
                "-p", str(self.work / "keepalived.pid"), "-r", str(self.work / "vrrp.pid"), "-c", str(self.work / "checkers.pid")]
        with open(self.work / "keepalived.log", "wb") as log:
            # Started from this thread, which is in the lab's node namespace: so is keepalived.
            self.process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)

    def apply(self, vs: VirtualService) -> None:
        """A rewritten or new conf.d file, then SIGHUP: keepalived reloads its whole configuration."""
        self.write(vs)
        assert self.process is not None
        self.process.send_signal(signal.SIGHUP)

    def stop(self) -> None:
        if self.process is not None:
            stop(self.process)
        subprocess.run(["ipvsadm", "-C"], check=False)  # keepalived removes its services on exit; in case it did not

    def log(self) -> str:
        return (self.work / "keepalived.log").read_text(errors="replace")

    def remove(self) -> None:
        shutil.rmtree(self.work, ignore_errors=True)


class Vsop:
    name = "vsop"

    def __init__(self, count: int, vsop: str):
        self.command = vsop
        self.folder = store_folder(count, checked=True)  # every service's file with the tcp check
        Store(self.folder).write([special(0, "ipvs"), special(1, "ipvs")])
        self.work = Path(tempfile.mkdtemp(prefix="vsop-agent-bench-"))
        self.process: subprocess.Popen[bytes] | None = None
        self.check_seconds = 0.0

    def start(self) -> None:
        argv = [self.command, "agent", "--from", str(self.folder), "--status-file", str(self.work / "agent.json"),
                "--lock", str(self.work / "lock"), "--node-name", "bench"]
        with open(self.work / "agent.log", "wb") as log:
            self.process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)

    def apply(self, vs: VirtualService) -> None:
        """A rewritten or new store file: the agent polls the folder every second and takes a file once stable over two."""
        Store(self.folder).write([vs])

    def phases(self, ref: str, written: float) -> tuple[float, float] | None:
        """Seconds from a store file written (`written`, wall clock) to the agent's `file loaded` line
        for it (the folder's polls) and to the end of the turn after that (its `synced` line), from
        the agent's timed log; None when the log does not show both."""
        name = Store(self.folder).path_for(ref).name
        deadline = time.monotonic() + 5  # the VIP may answer before the turn's line is written
        while True:
            loaded = None
            for line in self.log().splitlines():
                at = log_time(line)
                if at is None or at < written:
                    continue
                if loaded is None:
                    if "file loaded" in line and name in line:
                        loaded = at
                elif "] synced objects=" in line:
                    return loaded - written, at - written
            if time.monotonic() > deadline:
                return None
            time.sleep(0.1)

    def stop(self) -> None:
        if self.process is not None:
            stop(self.process)
        cleanup(real_kernel())  # the agent leaves the kernel serving when it stops

    def log(self) -> str:
        return (self.work / "agent.log").read_text(errors="replace")

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
        shutil.rmtree(self.work, ignore_errors=True)


# ---------------------------------------------------------------------------------------
# The measurements.


def measure(side: Keepalived | Vsop, count: int, client: str, echo: dict[str, Echo], args: argparse.Namespace) -> dict[str, float]:
    ipvs = IPVSKernel()
    figures: dict[str, float] = {}
    say: Callable[[str], None] = lambda text: print(f"#   {side.name} N={count}: {text}", flush=True)  # noqa: E731
    started = time.perf_counter()
    side.start()
    tenths: list[float] = []
    figures["cold"] = all_answer(client, count, started, args.limit, tenths)
    figures["check"] = side.check_seconds
    sweep = time.perf_counter()
    all_answer(client, count, sweep, args.limit)
    figures["sweep"] = time.perf_counter() - sweep
    check = f"keepalived -t: {figures['check']:.2f}s; " if isinstance(side, Keepalived) else ""
    say(f"every VIP answered {figures['cold']:.2f}s after the start ({check}a sweep when all answer: {figures['sweep']:.2f}s)")
    say("each tenth of the VIPs, in the sweep's order, answered by " + " ".join(f"{at:.1f}" for at in tenths) + " s")
    if figures["cold"] == NEVER:
        raise SystemExit(f"{side.name}: not every VIP answered within {args.limit:g}s")
    time.sleep(args.settle)  # the checks past their first round
    assert side.process is not None
    before, at = cpu_seconds(side.process.pid), time.perf_counter()
    time.sleep(args.idle)  # nothing changes: the checks, the polls, the periodic work
    figures["idle"] = 100 * (cpu_seconds(side.process.pid) - before) / (time.perf_counter() - at)
    say(f"CPU while nothing changes, {args.idle:g} s: {figures['idle']:.1f}% of one CPU")

    news, splits = [], []
    for extra in range(count, count + args.new_samples):
        started, written = time.perf_counter(), time.time()
        side.apply(virtual_service(extra, "keepalived" if side.name == "keepalived" else "ipvs"))
        news.append(until_answers(client, vip(extra), started, args.limit))
        split = side.phases(f"bench/s{extra}", written) if isinstance(side, Vsop) else None
        if split is not None:
            splits.append((split[0], split[1] - split[0], news[-1] - split[1]))
        took = "" if split is None else f" (file loaded after {split[0]:.2f}s, its turn done after {split[1]:.2f}s)"
        say(f"new service s{extra} answered after {news[-1]:.2f}s{took}")
        time.sleep(1.0)
    figures["new"] = statistics.median(news)
    if splits:
        loaded, turn, answer = (statistics.median(split[i] for split in splits) for i in range(3))
        say(f"new service, medians of {len(splits)}: file loaded after {loaded:.2f}s (the folder's polls), "
            f"its turn done {turn:.2f}s after that, the VIP answering {answer:.2f}s after the turn")

    held = [sock for sock in (connect(client, vip(index), 2.0) for index in (1, 2) for _ in range(args.holds)) if sock is not None]
    figures["held"] = len(held)
    started = time.perf_counter()
    side.apply(changed("keepalived" if side.name == "keepalived" else "ipvs"))
    figures["change"] = until_weight(ipvs, CHANGED, 3, args.limit)
    time.sleep(1.0)  # whatever the change does to connections has happened
    figures["resets"] = sum(1 for sock in held if not echoes(sock))
    for sock in held:
        sock.close()
    say(f"s1's weight 3 in the kernel after {figures['change']:.2f}s; {figures['resets']:.0f} of {len(held)} held connections lost")

    deaths = []
    for _ in range(args.samples):
        echo[VICTIM].kill()
        deaths.append(until_weight(ipvs, DEAD, 0, args.limit))
        echo[VICTIM] = Echo(VICTIM)
        back = until_weight(ipvs, DEAD, 1, args.limit)
        say(f"killed: weight 0 after {deaths[-1]:.2f}s, back to 1 after {back:.2f}s")
    figures["dead"] = statistics.median(deaths)

    assert side.process is not None
    figures["rss"], figures["pss"] = memory(side.process.pid)
    _, real_servers = ipvs.read()
    figures["wrong"] = sum(1 for key, rs in real_servers.items() if rs.weight == 0)  # every one listens now
    say(f"RSS {figures['rss']:.1f} MB (PSS {figures['pss']:.1f} MB); real servers at weight 0 at the end: {figures['wrong']:.0f}")
    return figures


def keepalived_kernel(local: bool) -> None:
    """What vsop would own around keepalived in `mode: keepalived`, done by hand: the VIPs local, vsop's sysctls."""
    sh("ip", "route", "add" if local else "del", "local", "169.254.0.0/16", "dev", "lo", "table", "local")
    if local:
        release = tuple(int(part) for part in os.uname().release.split(".")[:2])
        IPVSKernel().read()  # asking for the IPVS netlink family loads ip_vs, whose sysctls follow
        for name, value in {**family_sysctls(4), **kernel_sysctls(release)}.items():  # type: ignore[arg-type]
            done = subprocess.run(["sysctl", "-qw", f"{name}={value}"], capture_output=True, text=True)
            if done.returncode != 0:
                print(f"# keepalived's side: {name}={value} not set: {done.stderr.strip()}", flush=True)


def run(count: int, client: str, echo: dict[str, Echo], args: argparse.Namespace) -> dict[str, dict[str, float]]:
    results: dict[str, dict[str, float]] = {}
    makers = {"keepalived": lambda: Keepalived(count), "vsop": lambda: Vsop(count, args.vsop)}
    for name in args.sides:
        side = makers[name]()
        if isinstance(side, Keepalived):
            keepalived_kernel(True)
        try:
            results[side.name] = measure(side, count, client, echo, args)
        except BaseException:
            sys.stderr.write(side.log()[-4000:])
            raise
        finally:
            side.stop()
            if isinstance(side, Keepalived):
                keepalived_kernel(False)
            if args.logs is not None:
                args.logs.mkdir(parents=True, exist_ok=True)
                every = "" if CHECK["intervalSeconds"] == 2 else f"-every{CHECK['intervalSeconds']}s"
                (args.logs / f"{side.name}-{count}{every}.log").write_text(side.log())
            side.remove()
    return results


ROWS: tuple[tuple[str, str, str], ...] = (
    ("cold", "start until every VIP answers", "s"),
    ("new", "one new service until its VIP answers", "s"),
    ("dead", "a real server dies until weight 0", "s"),
    ("change", "one changed weight until the kernel has it", "s"),
    ("resets", "held connections lost by that change", "n"),
    ("rss", "RSS, all processes", "MB"),
    ("idle", "CPU while nothing changes (% of one)", "%"),
)


def show(value: float, unit: str) -> str:
    if value == NEVER:
        return "never"
    if unit == "s":
        return f"{value:.2f} s"
    if unit == "MB":
        return f"{value:.1f} MB"
    if unit == "%":
        return f"{value:.1f} %"
    return f"{value:.0f}"


def report(results: dict[int, dict[str, dict[str, float]]], args: argparse.Namespace, interval: int) -> None:
    print("\n## keepalived (vsop's rendered confd configuration, TCP_CHECK) beside `vsop agent --from DIR` (store files, tcp checks),")
    print(f"## N services x 2 real servers, checks every {interval} s (timeout 1 s, 2 failures); ratio = vsop / keepalived (below 1: vsop ahead)")
    print(f"{'N':>6}  {'figure':<44} {'keepalived':>11} {'vsop':>11} {'ratio':>7}")
    missing = {key: NEVER for key, _, _ in ROWS} | {"check": 0.0, "sweep": NEVER, "pss": 0.0, "held": 0.0, "wrong": 0.0}
    for count, sides in results.items():
        ka, vs = sides.get("keepalived", missing), sides.get("vsop", missing)  # a side not run prints "never"
        for key, label, unit in ROWS:
            ratio = f"{vs[key] / ka[key]:.2f}x" if ka[key] not in (0, NEVER) and vs[key] != NEVER else "-"
            print(f"{count:>6}  {label:<44} {show(ka[key], unit):>11} {show(vs[key], unit):>11} {ratio:>7}")
        print(f"#       keepalived -t: {ka['check']:.2f} s (in its cold figure); a sweep of every VIP when all answer: "
              f"{ka['sweep']:.2f} s / {vs['sweep']:.2f} s (in both cold figures); PSS {ka['pss']:.1f} / {vs['pss']:.1f} MB; "
              f"held connections {ka['held']:.0f} / {vs['held']:.0f}; real servers wrongly at weight 0 at the end "
              f"{ka['wrong']:.0f} / {vs['wrong']:.0f}; new: median of {args.new_samples}, dead: median of {args.samples}"
              + ("" if len(sides) == 2 else f"; only {', '.join(sides)} ran"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 1000], help="numbers of services (default 100 1000)")
    parser.add_argument("--samples", type=int, default=2, help="real server deaths timed per side and N (median printed)")
    parser.add_argument("--new-samples", type=int, default=3, help="new services timed per side and N (median printed)")
    parser.add_argument("--holds", type=int, default=4, help="connections held open to each of s1's and s2's VIPs across the change")
    parser.add_argument("--settle", type=float, default=6.0, help="seconds the checks run after the cold start before the next step")
    parser.add_argument("--idle", type=float, default=30.0,
                        help="seconds over which the daemon's CPU is measured while nothing changes, after the settle (default 30: one resync period)")
    parser.add_argument("--limit", type=float, default=900.0, help="seconds to wait for any one step before giving up")
    parser.add_argument("--vsop", default=str(Path(sys.executable).parent / "vsop"), help="the vsop command (default: beside this python)")
    parser.add_argument("--sides", nargs="+", choices=("keepalived", "vsop"), default=["keepalived", "vsop"],
                        help="which to run (default both; with one, the table has no ratio)")
    parser.add_argument("--logs", type=Path, help="keep each side's log here as SIDE-N.log (the agent's lines are timed)")
    parser.add_argument("--check-intervals", type=int, nargs="+", default=[2], metavar="SECONDS",
                        help="the checks' interval, one pass of every size per interval (default 2): at N = 10,000 and 2 s "
                             "the checks connect 10,000 times a second; 20 s there is the rate of N = 1,000 at 2 s")
    args = parser.parse_args()
    version = subprocess.run([KEEPALIVED, "--version"], capture_output=True, text=True)
    print(f"# vsop beside keepalived, kernel {os.uname().release}, {(version.stderr or version.stdout).splitlines()[0]}, "
          f"python {sys.version.split()[0]}, load {os.getloadavg()[0]:.1f}", flush=True)
    # keepalived's checks arrive at the echo servers 1,000 times a second at N = 1,000 and 10,000 at
    # 10,000: more connections at once than the VM's hard limit of 4,096 descriptors when the servers
    # fall behind (the first 10,000 run died of EMFILE in its sweep). As root, up to fs.nr_open.
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = max(hard, int(Path("/proc/sys/fs/nr_open").read_text())) if os.geteuid() == 0 else hard
    resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, wanted))
    passes: dict[int, dict[int, dict[str, dict[str, float]]]] = {}
    with lab() as client:
        echo = {address: Echo(address) for address in (*BACKENDS, VICTIM)}
        try:
            for interval in args.check_intervals:
                CHECK["intervalSeconds"] = interval
                results = passes.setdefault(interval, {})
                for count in args.sizes:
                    results[count] = run(count, client, echo, args)
        finally:
            for server in echo.values():
                server.kill()
    for interval, results in passes.items():
        report(results, args, interval)
    return 0


if __name__ == "__main__":
    sys.exit(main())
