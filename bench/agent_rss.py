"""The resident memory of the real host agent (`vsop agent`, its own process) holding N services.

Starts `vsop agent --from DIR` (the console script, as a host runs it) in a throwaway
network namespace (bench/agent_bench.py's lab) over a folder of N store files (N services
x 2 real servers), with its status file and writer lock in a temporary folder, and waits
until the status file says every object is programmed; then reads the agent's
/proc/PID/status: VmRSS (resident now; RssAnon is the process's own heap, RssFile the
mapped interpreter and libraries) and VmHWM (the peak, the cold first sync included).
Read again after the first periodic full resync (the agent's steady state). N = 100
and N = 10,000 side by side in one run. Figures only, no assertions (docs/performance.md
judges them against issue #10's goal of 150 MB at 10k).

    flock /tmp/vsop-vm.lock vm/run --timeout 3000 --mem 4096 -- .venv/bin/python bench/agent_rss.py
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))

from agent_bench import lab, store_folder  # noqa: E402
from vsop.node.whole import cleanup  # noqa: E402
from vsop.adapters.real import real_kernel  # noqa: E402

GOAL_MB = 150
FIELDS = ("VmRSS", "VmHWM", "RssAnon", "RssFile")


def memory(pid: int) -> dict[str, float]:
    """The process's memory figures from /proc/PID/status, in MB."""
    found: dict[str, float] = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            name, _, value = line.partition(":")
            if name in FIELDS:
                found[name] = int(value.split()[0]) / 1024  # kB
    return found


def last_sync(path: Path) -> dict[str, object] | None:
    """The agent's lastSync from its status file (None before the first write)."""
    try:
        return json.loads(path.read_text()).get("lastSync") or None
    except (OSError, ValueError):  # not written yet (it is replaced atomically, so never half-written)
        return None


def wait_for(agent: subprocess.Popen[bytes], what: str, limit: float, ready: Callable[[], bool]) -> float:
    started = time.perf_counter()
    while not ready():
        if agent.poll() is not None:
            raise SystemExit(f"the agent exited ({agent.returncode}) before {what}")
        if time.perf_counter() - started > limit:
            raise SystemExit(f"the agent did not reach {what} within {limit:g}s")
        time.sleep(0.5)
    return time.perf_counter() - started


def measure(count: int, resync_seconds: float, vsop: str) -> dict[str, float]:
    """One agent over `count` store files: its memory once all are programmed, and after a periodic resync."""
    folder = store_folder(count)
    work = Path(tempfile.mkdtemp(prefix="vsop-rss-"))
    status = work / "agent.json"
    argv = [vsop, "agent", "--from", str(folder), "--status-file", str(status), "--lock", str(work / "lock"),
            "--node-name", "bench", "--resync-seconds", str(resync_seconds)]
    with open(work / "agent.log", "wb") as log:
        # Started from this thread, which is in the lab's node namespace: so is the agent.
        agent = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    try:
        def programmed() -> bool:
            last = last_sync(status)
            return last is not None and "error" not in last and len(last.get("programmed", ())) == count  # type: ignore[arg-type]

        figures = {"start": wait_for(agent, f"{count} objects programmed", 2400, programmed)}
        figures.update({f"{name}_programmed": value for name, value in memory(agent.pid).items()})
        first = last_sync(status)
        assert first is not None

        def resynced() -> bool:
            last = last_sync(status)
            return last is not None and bool(last.get("full")) and last.get("at") != first.get("at")

        wait_for(agent, "a periodic resync", resync_seconds * 4 + 600, resynced)
        time.sleep(2)  # past the status write that follows it
        figures.update({f"{name}_resync": value for name, value in memory(agent.pid).items()})
    except BaseException:
        sys.stderr.write((work / "agent.log").read_text(errors="replace")[-4000:])
        raise
    finally:
        agent.send_signal(signal.SIGTERM)  # leaves the kernel serving; cleaned up below
        try:
            agent.wait(120)
        except subprocess.TimeoutExpired:
            agent.kill()
            agent.wait()
        shutil.rmtree(folder, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)
        cleanup(real_kernel())
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", type=int, default=100)
    parser.add_argument("--large", type=int, default=10000)
    parser.add_argument("--resync-seconds", type=float, default=30.0, help="the agent's --resync-seconds (default 30, as `vsop agent`)")
    parser.add_argument("--vsop", default=str(Path(sys.executable).parent / "vsop"), help="the vsop command (default: beside this python)")
    args = parser.parse_args()
    print(f"# vsop agent RSS, kernel {os.uname().release}, python {sys.version.split()[0]}, load {os.getloadavg()[0]:.1f}")
    with lab():
        results = {count: measure(count, args.resync_seconds, args.vsop) for count in (args.small, args.large)}
    print("\n## `vsop agent --from DIR` (its own process), N store files (N services x 2 real servers); MB from /proc/PID/status")
    print(f"{'N':>6} {'programmed in':>14} | {'VmRSS':>6} {'(anon':>6} {'file)':>6} {'VmHWM':>6} | after a resync: {'VmRSS':>6} {'(anon':>6} {'file)':>6} {'VmHWM':>6}")
    for count, r in results.items():
        print(f"{count:>6} {r['start']:>13.1f}s | {r['VmRSS_programmed']:>6.1f} {r['RssAnon_programmed']:>6.1f} {r['RssFile_programmed']:>6.1f} "
              f"{r['VmHWM_programmed']:>6.1f} | {'':>15} {r['VmRSS_resync']:>6.1f} {r['RssAnon_resync']:>6.1f} {r['RssFile_resync']:>6.1f} {r['VmHWM_resync']:>6.1f}")
    small, large = results[args.small], results[args.large]
    print(f"AGENT RSS N={args.large}: {large['VmRSS_resync']:.0f} MB (peak {large['VmHWM_resync']:.0f} MB), "
          f"N={args.small}: {small['VmRSS_resync']:.0f} MB (peak {small['VmHWM_resync']:.0f} MB); goal <= {GOAL_MB} MB at N={args.large}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
