"""SIGKILL of the host agent at random points of a 1,000-service sync, under requests to 10 served VIPs.

The agent runs as the real console script (tests/vm/lab.py's AgentProcess) following a folder,
against the lab of tests/vm/lab.py. Ten objects (ten VIPs, each one TCP service over the lab's
two backends) are served first, and a client in its own namespace requests them round robin
for the whole test: every 20 ms while an agent writes to the kernel (from its `writing to the
kernel` line to its kill or its sync's end), every 250 ms while none does (the VM's one CPU is
shared with the agents; at the dense pace throughout, each start took about three times as
long). Then 1,000 more objects, one file each (one VIP, one TCP service and two real servers
each), are written into the folder:

1. An agent started over the 1,010 objects programs the 1,000 in one cold sync: its length and
   that of its writes are measured (from its `writing to the kernel` log line, -v, to its
   `synced` line), and the kernel it leaves is the reference. The 1,000 files are removed, the
   agent deletes their objects, and it is stopped (SIGTERM; the ten stay served).
2. The 1,000 files back, the kill points are drawn over the first nine tenths of the measured
   writes (random.Random(seed); the seed is printed, VSOP_CRASH_SEED replays it with the same
   VSOP_CRASH_POINTS): four by default, one in each quarter, so that they spread over the
   writes' stages (VIP set members, addresses, IPVS services, real servers, accepted ports);
   VSOP_CRASH_POINTS=N draws N, one in each N-th (10 is the issue's full run). Each agent
   started reads the kernel, plans what is still missing (in the same order) and is SIGKILLed
   when its writes reach the next point, counting as written the time the agents killed before
   it spent writing, or earlier once the kernel holds all but 300 services' real servers (an
   agent over what others left can outpace the uninterrupted sync: a part already there is
   skipped); past that mark the remaining kills are not made (less than a part left can be
   written before a kill lands, and the last agent would have nothing to do). The agent alone
   is killed, as the OOM killer does: the set members it was writing over netlink stop at the
   last message the kernel took, an `ipset restore` it started (sets are made through the
   command) runs to its end, and the next agent writes what is missing (which is why the
   last tenth is left out: a point there can fall after the sync's end, where a kill proves
   nothing). So the kills land ever deeper in the writes of the one sync the agents take turns
   at; what the kernel held at each kill is printed.
3. An agent started after the last kill converges: it still had something to write, the kernel
   equals the reference (the uninterrupted sync), its next full resync writes nothing, no
   agent's sync failed, and not one request to the ten VIPs failed throughout.

The figures (the sync's length, the kill points and what the kernel held at each, the
restarted agent's convergence) are printed as `[measured]` lines and kept in
.cache/measurements.txt; nothing is asserted about their size but generous deadlines.

Every agent started over 1,010 objects takes about 15-20 s under software emulation before its
first write (imports, reading the folder, planning; docs/performance.md "The host agent's
start"), so the kills are few by default: with four, the test starts seven agents (the ten
served, the reference, four killed, the last); VSOP_CRASH_POINTS=10 (vm/run carries VSOP_*
into the VM) starts thirteen.
"""

from __future__ import annotations

import os
import random
import re
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import pytest

REPOSITORY = Path(__file__).resolve().parents[2]
if str(REPOSITORY) not in sys.path:
    sys.path.insert(0, str(REPOSITORY))

from tests.vm.conftest import Netns, http_get, run  # noqa: E402
from tests.vm.lab import BACKENDS, AgentProcess, clean_node, lab, wait_for  # noqa: E402,F401

pytestmark = [pytest.mark.vm, pytest.mark.usefixtures("clean_node")]

SERVED = [f"10.231.0.{i}" for i in range(1, 11)]  # the ten VIPs under requests
BULK = 1000
POINTS_ENV, KILLS = "VSOP_CRASH_POINTS", 4
SEED_ENV = "VSOP_CRASH_SEED"
SYNC_TIMEOUT = 300  # generous: a deadline, not a figure
DENSE, SPARSE = 0.02, 0.25  # seconds between requests while an agent writes, while none does (the docstring says why)
DEPTH = 0.9  # the points fall in the first nine tenths of the writes (the docstring says why)
# An agent is killed at its point or once the kernel holds all but 300 services' real servers,
# whichever comes first, and no agent is started to be killed past that: more than a part (256
# VIPs) is then left, which nothing a killed agent started can finish on its own, so the
# agent after the last kill always has something to write.
ALMOST_DONE = 2 * (len(SERVED) + BULK - 300)


def kill_count() -> int:
    value = os.environ.get(POINTS_ENV) or str(KILLS)
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"{POINTS_ENV}={value!r}: the number of kills, a whole number of at least 1")
    return int(value)


def kill_points(rng: random.Random, count: int, span: float) -> list[float]:
    """One point in each count-th of the writes, so that a few kills still reach every stage of them."""
    return [(number + rng.random()) * span * DEPTH / count for number in range(count)]


def bulk_vip(index: int) -> str:
    return f"10.232.{index // 250}.{index % 250 + 1}"


def write_object(folder: Path, name: str, vip: str) -> None:
    """One VirtualService per file, as `vsop apply` stores them (written directly: yaml.dump x 1,000 is slow here)."""
    backends = "".join(f"  - address: {address}\n" for address in BACKENDS.values())
    (folder / f"{name}.yaml").write_text(
        "apiVersion: vsop.dev/v1alpha1\nkind: VirtualService\n"
        f"metadata:\n  name: {name}\n  namespace: default\n"
        f"spec:\n  vip: {vip}\n  scheduler: rr\n  ports:\n  - name: http\n    port: 80\n    targetPort: 8080\n"
        f"  backends:\n{backends}"
    )


def record(capsys: pytest.CaptureFixture[str], text: str) -> None:
    with capsys.disabled():
        print(f"\n[measured] {text}", flush=True)
    with open(REPOSITORY / ".cache" / "measurements.txt", "a") as out:
        out.write(f"test_crash_points: {text}\n")


def kernel() -> dict[str, list[str]]:
    """What vsop programs, as the tools print it; sorted where the order is the kernel's hashing,
    packet counters and ipset's random hash seeds (initval) left out."""
    return {
        "ipvs": sorted(run("ipvsadm", "-Sn").stdout.splitlines()),
        "ipset": sorted(re.sub(r" initval 0x[0-9a-f]+", "", line) for line in run("ipset", "save").stdout.splitlines()),
        "iptables": [re.sub(r"\[\d+:\d+\]", "", line) for line in run("iptables-save").stdout.splitlines() if not line.startswith("#")],
        "addresses": sorted(line.split()[3] for line in run("ip", "-o", "addr", "show", "dev", "vsop0").stdout.splitlines()),
    }


def differences(got: dict[str, list[str]], want: dict[str, list[str]]) -> dict[str, dict[str, list[str]]]:
    out = {}
    for part in want:
        extra, missing = sorted(set(got[part]) - set(want[part])), sorted(set(want[part]) - set(got[part]))
        if extra or missing or got[part] != want[part]:
            out[part] = {"extra": extra[:20], "missing": missing[:20]}
    return out


def ipvs_services() -> int:
    """IPVS services in the kernel (/proc/net/ip_vs: reading it spawns nothing; it lists them all only
    while no other namespace has IPVS services, vsop.adapters.ipvs._all_real_servers says why)."""
    return sum(line.startswith(("TCP", "UDP")) for line in Path("/proc/net/ip_vs").read_text().splitlines())


def real_servers_in_kernel() -> int:
    """IPVS real servers in the kernel (/proc/net/ip_vs: reading it spawns nothing)."""
    return sum(line.lstrip().startswith("->") for line in Path("/proc/net/ip_vs").read_text().splitlines()) - 1  # the header has one


def progress() -> str:
    """What the kernel holds of the 1,010 now: addresses, IPVS services and real servers, accepted ports."""
    lines = Path("/proc/net/ip_vs").read_text().splitlines()
    services = sum(line.startswith(("TCP", "UDP")) for line in lines)
    real_servers = sum(line.lstrip().startswith("->") for line in lines) - 1  # the header has one
    addresses = len(run("ip", "-o", "addr", "show", "dev", "vsop0", check=False).stdout.splitlines())
    header = run("ipset", "list", "-t", "VSOP-VIP-PORTS", check=False).stdout
    accepted = re.search(r"Number of entries: (\d+)", header)
    return (f"{addresses} addresses, {services} services, {real_servers} real servers, "
            f"{accepted.group(1) if accepted else '?'} ports accepted")


class Log:
    """The agents' shared log, read from where the last look stopped (it grows to megabytes with -v)."""

    def __init__(self, path: Path):
        self.path = path
        self.offset = path.stat().st_size if path.exists() else 0
        self.lines: list[str] = []

    def read(self) -> list[str]:
        if not self.path.exists():
            return []
        with open(self.path, "rb") as handle:
            handle.seek(self.offset)
            chunk = handle.read()
        end = chunk.rfind(b"\n") + 1
        self.offset += end
        new = [line for line in chunk[:end].decode(errors="replace").splitlines() if "pyroute2" not in line]
        self.lines += new
        return new

    def wait(self, text: str, timeout: float) -> tuple[str, float]:
        """The first new line holding `text` and when it was seen (monotonic)."""
        deadline = time.monotonic() + timeout
        while True:
            for line in self.read():
                if text in line:
                    return line, time.monotonic()
            if time.monotonic() > deadline:
                raise AssertionError(f"no log line with {text!r} after {timeout}s; the last lines:\n" + "\n".join(self.lines[-30:]))
            time.sleep(0.05)


def planned_operations(line: str) -> int:
    found = re.search(r"operations=(\d+)", line)
    assert found, line
    return int(found.group(1))


def synced_seconds(line: str) -> float:
    found = re.search(r" seconds=([0-9.]+)", line)
    assert found, line
    return float(found.group(1))


@dataclass
class Requests:
    """Requests to the ten VIPs, round robin, from the client's namespace, until stopped; `interval`
    seconds apart (DENSE or SPARSE, set by the test)."""

    client: Netns
    interval: float = SPARSE
    answered: int = 0
    failures: list[str] = field(default_factory=list)
    done: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        turn = 0
        while not self.done.is_set():
            vip = SERVED[turn % len(SERVED)]
            turn += 1
            try:
                answer = http_get(vip, netns=self.client, timeout=3).strip()
                if answer not in BACKENDS:
                    raise OSError(f"answered {answer!r}")
                self.answered += 1
            except OSError as exc:
                self.failures.append(f"{time.strftime('%H:%M:%S')} {vip}: {exc!r}")
            time.sleep(self.interval)


@pytest.fixture
def requests(lab) -> Iterator[Requests]:
    load = Requests(lab["client"])
    worker = threading.Thread(target=load.run, daemon=True)
    yield load  # started by the test once the ten are served
    load.done.set()
    if worker.is_alive():
        worker.join(10)


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[AgentProcess]:
    folder = tmp_path / "services"
    folder.mkdir()
    running = AgentProcess(tmp_path, "--from", str(folder), resync_seconds=5)
    running.directory = folder  # type: ignore[attr-defined]
    yield running
    running.stop()
    if running.log.exists():
        sys.stderr.write("\n".join(line for line in running.log.read_text().splitlines() if "pyroute2" not in line)[-4000:])


def converged(agent: AgentProcess) -> dict:
    """The status once a sync succeeded (a failed one has lastSync.error)."""
    last = agent.status().get("lastSync", {})
    return last if "writes" in last else {}


def test_sigkill_at_points_of_a_1000_service_sync_fails_no_request_and_ends_as_the_uninterrupted_sync(
    lab, agent, requests, capsys
) -> None:
    folder: Path = agent.directory  # type: ignore[attr-defined]
    kills = kill_count()
    for index, vip in enumerate(SERVED):
        write_object(folder, f"served-{index}", vip)
    agent.start()
    wait_for("the ten served", lambda: all(http_get(vip, netns=lab["client"], timeout=3).strip() in BACKENDS for vip in SERVED), 60)
    threading.Thread(target=requests.run, daemon=True).start()
    wait_for("requests flowing", lambda: requests.answered >= 10, 30, 0.05)
    agent.stop()

    # 1. One uninterrupted cold sync of the 1,000: its length, and the kernel it leaves.
    for index in range(BULK):
        write_object(folder, f"bulk-{index:04d}", bulk_vip(index))
    log = Log(agent.log)
    spawned = time.monotonic()
    agent.spawn()
    _, started = log.wait("agent started", SYNC_TIMEOUT)
    line, writing = log.wait("writing to the kernel", SYNC_TIMEOUT)
    requests.interval = DENSE
    planned = planned_operations(line)  # its first part's (the first sync is planned 256 VIPs per turn)
    line, done = log.wait("first sync complete", SYNC_TIMEOUT)
    sync_seconds, write_seconds = synced_seconds(line), done - writing
    record(capsys, f"cold sync of {BULK} services (2 real servers each) beside 10 served: {sync_seconds:.2f}s, "
                   f"its writes {write_seconds:.2f}s (agent start to `agent started` {started - spawned:.2f}s, "
                   f"then {writing - started:.2f}s to its first write)")
    wait_for("the status file", lambda: converged(agent), 30)
    reference = kernel()
    assert len(reference["ipvs"]) == 3 * (BULK + len(SERVED)), reference["ipvs"][:5]  # -A and two -a each
    for index in range(BULK):
        (folder / f"bulk-{index:04d}.yaml").unlink()
    wait_for("the 1,000 deleted", lambda: ipvs_services() == len(SERVED), SYNC_TIMEOUT, 0.2)
    agent.stop()
    requests.interval = SPARSE

    # 2. Kills at increasing depths of the writes of the one sync of the 1,000 the agents take turns
    # at: each agent reads the kernel, plans what is still missing, in the same order, and is
    # killed that far into its writes past where the previous one was killed (the time each
    # killed agent spent writing, summed: where the sync stands at the uninterrupted sync's pace).
    seed = int(os.environ.get(SEED_ENV) or random.SystemRandom().randrange(2**32))
    points = kill_points(random.Random(seed), kills, write_seconds)
    record(capsys, f"seed {seed} ({SEED_ENV}={seed} {POINTS_ENV}={kills} replays it); kill points into the sync's writes: "
                   + ", ".join(f"{point:.2f}s" for point in points))
    for index in range(BULK):
        write_object(folder, f"bulk-{index:04d}", bulk_vip(index))
    written = 0.0  # seconds of the sync's writes the killed agents did
    for number, point in enumerate(points, 1):
        if real_servers_in_kernel() >= ALMOST_DONE:
            # Less than a part left may be written before a kill lands.
            record(capsys, f"kill {number} and after: not made, the kernel held {progress()} (the agent after them has the rest to write)")
            break
        log = Log(agent.log)
        process = agent.spawn()
        line, writing = log.wait("writing to the kernel", SYNC_TIMEOUT)
        requests.interval = DENSE
        left = planned_operations(line)  # what the earlier agents did not write
        # At the point, or earlier when the sync is about to end: an agent started over what the
        # others left can write faster than the uninterrupted sync's pace (a part whose VIPs are all
        # there is skipped), and a kill after the sync's end would leave the last agent nothing to do.
        deadline = writing + point - written
        while time.monotonic() < deadline and real_servers_in_kernel() < ALMOST_DONE:
            time.sleep(0.05)
        os.kill(process.pid, signal.SIGKILL)
        killed_at = time.monotonic() - writing
        written += killed_at
        process.wait(60)
        agent.process = None
        requests.interval = SPARSE
        finished = [line for line in log.read() if "first sync complete" in line]
        record(capsys, f"kill {number} {killed_at:.2f}s into its writes ({left} of {planned} operations left; "
                       f"point {point:.2f}s of {write_seconds:.2f}s): the kernel held {progress()}"
                       f"{'; its sync had finished' if finished else ''}")

    # 3. The agent after the last kill: converged, equal to the uninterrupted sync, then nothing to write.
    log = Log(agent.log)
    spawned = time.monotonic()
    agent.spawn()
    log.wait("writing to the kernel", SYNC_TIMEOUT)
    requests.interval = DENSE
    log.wait("first sync complete", SYNC_TIMEOUT)  # its last part (the status file says each part's sync)
    wait_for("the restarted agent's first successful sync", lambda: converged(agent), SYNC_TIMEOUT, 0.2)
    first = converged(agent)
    record(capsys, f"restart after the last kill: converged {time.monotonic() - spawned:.2f}s after start "
                   f"(its sync {first['seconds']:.2f}s, {first['writes']} writes: {first['operations']})")
    # Its status says the last part's sync only: whether it wrote anything is in the log, a line per part that wrote.
    assert any("synced objects=" in line for line in log.lines), "the last kill came after the sync had finished: it proved nothing"
    got = kernel()
    assert got == reference, differences(got, reference)
    agent.wait_resyncs(1, timeout=SYNC_TIMEOUT)
    assert converged(agent)["writes"] == 0, converged(agent)
    answered = requests.answered
    wait_for("requests after the restart", lambda: requests.answered >= answered + 20, 30, 0.05)
    requests.done.set()

    lines = log.lines + log.read()
    everything = agent.log.read_text().splitlines()
    bad = [line for line in everything if "pyroute2" not in line and re.search(r"failed|refused|Traceback|skipped", line)]
    record(capsys, f"requests to the 10 served VIPs: {requests.answered} answered, {len(requests.failures)} failed")
    assert bad == [], bad[:20]
    assert requests.failures == [], requests.failures[:20]
    assert lines  # the last agent logged
