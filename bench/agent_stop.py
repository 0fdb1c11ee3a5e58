"""SIGTERM to exit of `vsop agent`, split in phases, against processes that only exit.

The agent follows a folder holding `a -> .` and `b -> ..` (the loop that once kept its poll
walking) and one object; after its first sync and a few polls it gets SIGTERM. From its log
(-v, klog timestamps) the time splits into: the signal handled on the event loop
(`stopping signal=SIGTERM`), the agent's own shutdown up to `agent stopped`, and the rest up
to the process's exit (asyncio's and the interpreter's teardown). Beside it, the same
measure for two processes that do nothing but exit on SIGTERM: a bare python, and a python
that imported what the agent imports, so the interpreter's own cost is seen apart from
vsop's. Prints figures, asserts nothing. It programs IPVS, so it runs in the throwaway VM:

    flock /tmp/vsop-vm.lock vm/run -- .venv/bin/python bench/agent_stop.py [--repeat 3]

Must not import: kopf, kubernetes.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

VSOP = str(Path(sys.executable).parent / "vsop")
OBJECT = """apiVersion: vsop.dev/v1alpha1
kind: VirtualService
metadata: {name: web, namespace: default}
spec:
  vip: 169.254.11.2
  ports: [{name: http, port: 80, targetPort: 8080}]
  scheduler: rr
  backends: [{address: 10.200.1.2}, {address: 10.200.2.2}]
"""
# What `vsop agent` imports before its first sync, for a process that only exits.
AGENT_IMPORTS = "import vsop.cli.main, vsop.cli.agents, vsop.host.agent, vsop.adapters.real, vsop.adapters.kernel, vsop.node.loop"
EXITS_ON_SIGTERM = ("import signal, sys\n{imports}\n"
                    "signal.signal(signal.SIGTERM, lambda *_: ({freeze}, sys.exit(0)))\n"
                    "print('ready', flush=True)\nsignal.pause()\n")


def stamp(line: str, year: int) -> float:
    """A klog line's wall-clock time: `I1205 10:33:54.123456 ...`."""
    when = datetime.datetime.strptime(f"{year}{line[1:21]}", "%Y%m%d %H:%M:%S.%f")
    return when.timestamp()


def wait_until(check, timeout: float) -> None:  # type: ignore[no-untyped-def]
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > timeout:
            raise SystemExit(f"timed out after {timeout}s")
        time.sleep(0.1)


def agent_once(work: Path) -> dict[str, float]:
    folder = work / "followed" / "services"
    folder.mkdir(parents=True)
    (folder / "a").symlink_to(".")
    (folder / "b").symlink_to("..")
    (folder / "web.yaml").write_text(OBJECT)
    status, log = work / "agent.json", work / "agent.log"
    env = {**os.environ, "VSOP_STORE": str(work / "store"), "VSOP_LOCK": str(work / "lock"), "VSOP_STATE_FILE": str(work / "state.json")}
    process = subprocess.Popen(
        [VSOP, "agent", "--from", str(folder), "--poll-seconds", "0.2", "--status-file", str(status), "--state-file", str(work / "state.json"), "-v"],
        stdout=subprocess.DEVNULL, stderr=open(log, "w"), env=env, start_new_session=True)

    def synced() -> bool:
        try:
            return bool(json.loads(status.read_text()).get("lastSync", {}).get("at"))
        except (OSError, ValueError):
            return False

    wait_until(synced, 300)
    time.sleep(3)  # a few polls of the looping folder, turns idle
    sent = time.time()
    process.send_signal(signal.SIGTERM)
    process.wait(120)
    exited = time.time()
    subprocess.run([VSOP, "cleanup"], env=env, check=False, capture_output=True)
    year = datetime.date.today().year
    marks = {"sent": sent}
    for line in log.read_text().splitlines():
        for key, text in (("handled", "stopping signal="), ("turns", "stopping: no turn running"), ("checks", "stopping: health checks stopped"),
                          ("loop", "stopping: turns and health checks ended"), ("stopped", "agent stopped;"),
                          ("closed", "stopping: event loop closed")):
            if text in line:
                marks[key] = stamp(line, year)
    marks["exited"] = exited
    order = [key for key in ("sent", "handled", "turns", "checks", "loop", "stopped", "closed", "exited") if key in marks]
    return {f"{a}->{b}": marks[b] - marks[a] for a, b in zip(order, order[1:])} | {"total": exited - sent}


def exits_once(imports: str, freeze: bool = False) -> float:
    code = EXITS_ON_SIGTERM.format(imports="import gc\n" + imports, freeze="gc.freeze()" if freeze else "None")
    process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None and process.stdout.readline().strip() == "ready"
    time.sleep(0.5)
    sent = time.monotonic()
    process.send_signal(signal.SIGTERM)
    process.wait(120)
    return time.monotonic() - sent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    runs = []
    for _ in range(args.repeat):
        with tempfile.TemporaryDirectory() as work:
            runs.append(agent_once(Path(work)))
        print("agent:", "  ".join(f"{k} {v:.3f}s" for k, v in runs[-1].items()), flush=True)
    for name in runs[0]:
        print(f"AGENT SIGTERM {name}: median {statistics.median(r.get(name, 0.0) for r in runs):.3f}s")
    for label, imports, freeze in (("bare python", "", False), ("python with the agent's imports", AGENT_IMPORTS, False),
                                   ("python with the agent's imports, gc.freeze() before its exit", AGENT_IMPORTS, True)):
        samples = [exits_once(imports, freeze) for _ in range(args.repeat)]
        print(f"EXIT ON SIGTERM, {label}: median {statistics.median(samples):.3f}s (min {min(samples):.3f}s, max {max(samples):.3f}s)", flush=True)


if __name__ == "__main__":
    main()
