"""Benchmark of whole vsop syncs on a real kernel (run inside the VM: `make bench`).

Prints, side by side in one run:
  - cold programming of N services x 2 real servers through vsop versus `ipvsadm -R`
    loading the same IPVS rules (N = 1k and 10k), with the IPVS share of vsop's time;
  - adding one service with 5 real servers at N=100 versus N=10k (time, netlink messages);
  - a no-op sync at 10k services (time, writes);
  - the iptables rule count at N=1 and N=10k.
Figures only, no assertions: targets are judged by a person (docs/performance.md).
Everything happens in a throwaway network namespace made here.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

REPOSITORY = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPOSITORY / "operator"))

from vsop.core.desired import Node  # noqa: E402
from vsop.adapters.kernel import Kernel  # noqa: E402
from vsop.node.whole import cleanup, sync  # noqa: E402
from vsop.adapters.real import real_kernel  # noqa: E402
from vsop.api.model import VirtualService, parse_virtual_service  # noqa: E402

BACKENDS = ("10.250.0.2", "10.250.0.3", "10.250.0.4", "10.250.0.5", "10.250.0.6")
NODE = Node("bench")


def vip(index: int) -> str:
    return f"169.254.{index // 250 + 1}.{index % 250 + 1}"


def service(index: int, backends: int = 2) -> VirtualService:
    return parse_virtual_service(
        {
            "apiVersion": "vsop.dev/v1alpha1",
            "kind": "VirtualService",
            "metadata": {"name": f"s{index}", "namespace": "bench", "creationTimestamp": f"2026-01-01T00:00:{index % 60:02d}Z"},
            "spec": {
                "vip": vip(index),
                "ports": [{"port": 80, "targetPort": 8080}],
                "backends": [{"address": address} for address in BACKENDS[:backends]],
            },
        }
    )


def sh(*argv: str, stdin: str | None = None) -> str:
    return subprocess.run(argv, input=stdin, capture_output=True, text=True, check=True).stdout


@contextmanager
def throwaway_netns() -> Iterator[None]:
    """Enter a fresh network namespace (IPVS, sets and rules are per namespace) with the backends routable."""
    from pyroute2 import netns

    name = f"vsopbench{os.getpid()}"
    sh("ip", "netns", "add", name)
    netns.pushns(name)  # this thread and every process it starts now live there
    try:
        sh("ip", "link", "set", "lo", "up")
        sh("ip", "link", "add", "bench0", "type", "dummy")
        sh("ip", "addr", "add", "10.250.0.1/24", "dev", "bench0")
        sh("ip", "link", "set", "bench0", "up")
        yield
    finally:
        netns.popns()
        sh("ip", "netns", "del", name)


class Counting:
    """Wraps the IPVS adapter: time spent in it and operations (netlink messages) sent."""

    def __init__(self, kernel: Kernel):
        self.inner = kernel.ipvs
        self.seconds = 0.0
        self.messages = 0
        kernel.ipvs = self  # type: ignore[assignment]

    def __getattr__(self, name: str):
        return getattr(self.inner, name)

    @property
    def handles(self):
        return self.inner.handles

    def apply(self, operations):
        started = time.perf_counter()
        try:
            return self.inner.apply(operations)
        finally:
            self.seconds += time.perf_counter() - started
            self.messages += len(operations)

    def reset(self) -> None:
        self.seconds, self.messages = 0.0, 0


def ipvsadm_rules(count: int) -> str:
    lines = []
    for index in range(count):
        lines.append(f"-A -t {vip(index)}:80 -s rr")
        for address in BACKENDS[:2]:
            lines.append(f"-a -t {vip(index)}:80 -r {address}:8080 -m -w 1")
    return "\n".join(lines) + "\n"


def timed_ipvsadm_restore(count: int) -> float:
    rules = ipvsadm_rules(count)
    sh("ipvsadm", "-C")
    started = time.perf_counter()
    sh("ipvsadm", "-R", stdin=rules)
    seconds = time.perf_counter() - started
    sh("ipvsadm", "-C")
    return seconds


def rule_count() -> int:
    return sum(1 for line in sh("iptables-save").splitlines() if line.startswith("-A") and "VSOP" in line)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1000,10000", help="N for the cold comparison")
    parser.add_argument("--small", type=int, default=100)
    parser.add_argument("--large", type=int, default=10000)
    args = parser.parse_args()
    sizes = [int(n) for n in args.sizes.split(",")]

    print(f"# vsop sync benchmark, kernel {os.uname().release}, python {sys.version.split()[0]}")
    with throwaway_netns():
        kernel = real_kernel()
        counting = Counting(kernel)

        print("\n## cold programming: N services x 2 real servers")
        print(f"{'N':>6} {'ipvsadm -R':>11} {'vsop sync':>10} {'vsop IPVS':>10} {'IPVS/ipvsadm':>13} {'msgs':>7}")
        for count in sizes:
            reference = timed_ipvsadm_restore(count)
            services = [service(i) for i in range(count)]
            counting.reset()
            started = time.perf_counter()
            result = sync(kernel, services, NODE)
            total = time.perf_counter() - started
            print(
                f"{count:>6} {reference:>10.3f}s {total:>9.3f}s {counting.seconds:>9.3f}s "
                f"{counting.seconds / reference:>12.2f}x {counting.messages:>7}"
            )
            if count == sizes[0]:
                rules_small = rule_count()
            assert result.writes > 0
            cleanup(kernel)

        sync(kernel, [service(0)], NODE)
        rules_one = rule_count()
        cleanup(kernel)

        print("\n## adding one service with 5 real servers (sync = read + plan + execute)")
        print(f"{'N':>6} {'sync':>9} {'read':>9} {'plan':>9} {'execute':>9} {'IPVS':>9} {'msgs':>5} {'writes':>7}")
        timings = {}
        for count in (args.small, args.large):
            services = [service(i) for i in range(count)]
            sync(kernel, services, NODE)
            counting.reset()
            started = time.perf_counter()
            result = sync(kernel, services + [service(count, backends=5)], NODE)
            seconds = time.perf_counter() - started
            timings[count] = result.execute_seconds
            print(
                f"{count:>6} {seconds:>8.3f}s {result.read_seconds:>8.3f}s {result.plan_seconds:>8.3f}s "
                f"{result.execute_seconds:>8.3f}s {counting.seconds:>8.3f}s {counting.messages:>5} {result.writes:>7}"
            )
            if count == args.large:
                counting.reset()
                started = time.perf_counter()
                noop = sync(kernel, services + [service(count, backends=5)], NODE)
                noop_seconds = time.perf_counter() - started
                rules_large = rule_count()
            cleanup(kernel)
        print(f"execute-time ratio N={args.large} / N={args.small}: {timings[args.large] / timings[args.small]:.2f}")

        print(f"\n## no-op sync at N={args.large}")
        print(
            f"time {noop_seconds:.3f}s (read {noop.read_seconds:.3f}s, plan {noop.plan_seconds:.3f}s), "
            f"writes {noop.writes}, operations {len(noop.plan.ops)}"
        )

        print("\n## iptables rules owned by vsop (nat + filter, jumps included)")
        print(f"N=1: {rules_one}   N={sizes[0]}: {rules_small}   N={args.large + 1}: {rules_large}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
