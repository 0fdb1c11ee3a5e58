"""Cold IPVS programming: vsop's IPVSKernel against `ipvsadm -R` loading the same rules.

N services (TCP, rr) with 2 masquerading real servers each, on an empty IPVS table.
Prints figures, asserts nothing. It flushes the whole IPVS table (`ipvsadm -C`)
between runs, so it only runs inside the throwaway VM:

    vm/run -- .venv/bin/python bench/ipvs_cold.py [-n 1000 10000] [--batch 1 64 256] [--repeat 3] [--naive] [--traffic]

`--traffic` also times `IPVSKernel.traffic` over every service (the in-cluster agent's look at
the counters of the real servers it does not probe, once per resync period: one GET_DEST dump
per service) beside `ipvsadm -Ln --stats` listing the same counters.

Must not import: kopf, kubernetes, jinja2.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from typing import Callable

from vsop.adapters.ipvs import IPVSKernel
from vsop.core import ops
from vsop.core.state import RealServer, RealServerKey, ServiceKey, VirtualServer


def plan(n: int) -> tuple[list[ops.Op], str]:
    """The operations in the planner's order (services, then real servers), and the same rules as `ipvsadm -R` input."""
    services: list[ops.Op] = []
    real_servers: list[ops.Op] = []
    service_lines: list[str] = []
    real_lines: list[str] = []
    for i in range(n):
        vip = f"10.100.{i // 250}.{i % 250 + 1}"
        key = ServiceKey("tcp", vip, 80)
        services.append(ops.AddService(VirtualServer(key, "rr", 0)))
        service_lines.append(f"-A -t {vip}:80 -s rr")
        for j in (1, 2):
            rip = f"10.200.{i // 125}.{(i % 125) * 2 + j}"
            real_servers.append(ops.AddRealServer(RealServer(RealServerKey(key, rip, 8080), "masq", 1)))
            real_lines.append(f"-a -t {vip}:80 -r {rip}:8080 -m -w 1")
    return services + real_servers, "\n".join(service_lines + real_lines) + "\n"


def flush() -> None:
    subprocess.run(["ipvsadm", "-C"], check=True)


def timed(action: Callable[[], object]) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def best(samples: list[float]) -> str:
    return f"{min(samples):8.3f}s (median {statistics.median(samples):.3f}s)"


def naive_pyroute2(operations: list[ops.Op]) -> None:
    """One synchronous pyroute2 request per operation: the baseline vsop avoids."""
    from socket import IPPROTO_TCP

    from pyroute2 import IPVS, IPVSDest, IPVSService

    with IPVS() as ipvs:
        for op in operations:
            if isinstance(op, ops.AddService):
                k = op.service.key
                ipvs.service("add", service=IPVSService(addr=k.vip, port=k.port, protocol=IPPROTO_TCP, sched_name="rr"))
            elif isinstance(op, ops.AddRealServer):
                k = op.real_server.key
                svc = IPVSService(addr=k.service.vip, port=k.service.port, protocol=IPPROTO_TCP)
                ipvs.dest("add", service=svc, dest=IPVSDest(addr=k.address, port=k.port, fwd_method=0, weight=1))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, nargs="+", default=[1000], help="service counts (default 1000)")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 64, 256], help="IPVSKernel batch sizes")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--naive", action="store_true", help="also time one synchronous pyroute2 request per op")
    parser.add_argument("--traffic", action="store_true", help="also time traffic() over every service and ipvsadm -Ln --stats")
    args = parser.parse_args()
    if os.environ.get("VSOP_IN_VM") != "1":
        print("bench/ipvs_cold.py flushes the IPVS table: run it inside the VM (vm/run -- ...)", file=sys.stderr)
        return 2
    flush()
    startup = [timed(lambda: subprocess.run(["ipvsadm", "-R"], input="", text=True, check=True)) for _ in range(args.repeat)]
    print(f"ipvsadm -R with no rules (process start): {best(startup)}")
    for n in args.n:
        operations, rules = plan(n)
        print(f"\nN={n} services x 2 real servers = {len(operations)} operations")
        restore = []
        for _ in range(args.repeat):
            restore.append(timed(lambda: subprocess.run(["ipvsadm", "-R"], input=rules, text=True, check=True)))
            flush()
        print(f"  ipvsadm -R                 {best(restore)}")
        listing = []
        subprocess.run(["ipvsadm", "-R"], input=rules, text=True, check=True)
        for _ in range(args.repeat):
            listing.append(timed(lambda: subprocess.run(["ipvsadm", "-Sn"], stdout=subprocess.DEVNULL, check=True)))
        flush()
        print(f"  ipvsadm -Sn (list all)     {best(listing)}")
        if args.traffic:
            subprocess.run(["ipvsadm", "-R"], input=rules, text=True, check=True)
            stats = [timed(lambda: subprocess.run(["ipvsadm", "-Ln", "--stats"], stdout=subprocess.DEVNULL, check=True)) for _ in range(args.repeat)]
            flush()
            print(f"  ipvsadm -Ln --stats        {best(stats)}")
        for batch in args.batch:
            applied, reads, looks = [], [], []
            for _ in range(args.repeat):
                with IPVSKernel(batch=batch) as adapter:
                    adapter.probe()
                    applied.append(timed(lambda: adapter.apply(operations)))
                    reads.append(timed(adapter.read))
                    services, real_servers = adapter.read()
                    assert (len(services), len(real_servers)) == (n, 2 * n), "the table is not what was applied"
                    if args.traffic:
                        looks.append(timed(lambda: adapter.traffic(list(services))))
                        assert len(adapter.traffic(list(services))) == 2 * n, "traffic() missed real servers"
                flush()
            ratio = min(applied) / min(restore)
            print(f"  vsop apply batch={batch:<4}     {best(applied)}   {ratio:.2f}x ipvsadm -R")
            print(f"  vsop read() after it       {best(reads)}")
            if looks:
                print(f"  vsop traffic(every service) {best(looks)}")
        if args.naive:
            naive = timed(lambda: naive_pyroute2(operations))
            flush()
            print(f"  pyroute2 one request/op    {naive:8.3f}s   {naive / min(restore):.2f}x ipvsadm -R")
    return 0


if __name__ == "__main__":
    sys.exit(main())
