"""Benchmark of the node reconciler's CPU cost on the in-memory fake kernel (natively, no VM).

The kernel work is what the fakes do in memory, so this isolates what vsop itself spends
per change as the node grows: N = 100 and N = 10,000 services x 2 real servers. Prints,
side by side in one run: adding one object (reconciler change path vs a full engine.sync
of every object, what each change cost before), one health result (weight edit), the
periodic no-op resync (full read, nothing of vsop's changed; with and without its audit of
a slice of VIPs), the cold first sync (all its parts),
and this process's peak RSS. --cold: the cold first sync alone, whole (one reconcile, the way
before) vs in parts (256 VIPs per reconcile), with vsop's own share and the longest turn. The real kernel's share is measured in the VM by
bench/agent_bench.py.

    .venv/bin/python bench/reconciler_bench.py
    .venv/bin/python bench/reconciler_bench.py --cold --repeat 3
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPOSITORY / "operator"))

from vsop.core.desired import Node  # noqa: E402
from vsop.core.state import RealServerKey, ServiceKey  # noqa: E402
from vsop.adapters.kernel import fake_kernel  # noqa: E402
from vsop.node.whole import sync  # noqa: E402
from vsop.api.model import VirtualService, parse_virtual_service  # noqa: E402
from vsop.node.reconciler import Reconciler  # noqa: E402

NODE = Node("bench")


def vip(index: int) -> str:
    return f"169.254.{index // 250 + 1}.{index % 250 + 1}"


def service(index: int) -> VirtualService:
    return parse_virtual_service({
        "apiVersion": "vsop.dev/v1alpha1", "kind": "VirtualService",
        "metadata": {"name": f"s{index}", "namespace": "bench", "creationTimestamp": "2026-01-01T00:00:00Z"},
        "spec": {"vip": vip(index), "ports": [{"port": 80, "targetPort": 8080}],
                 "backends": [{"address": "10.250.0.2"}, {"address": "10.250.0.3"}]},
    })


def cpu() -> float:
    return time.process_time()


def timed(fake) -> list[float]:  # type: ignore[no-untyped-def]
    """Seconds the fake kernel spends applying operations, in [0], added up from now (reset it at will).

    The fake kernel copies its whole state per operation (it is a checker, not a kernel):
    its time is counted apart, so vsop's own share of a change shows."""
    in_fake = [0.0]
    apply = fake.apply

    def timed_apply(operations):  # type: ignore[no-untyped-def]
        started = time.perf_counter()
        try:
            return apply(operations)
        finally:
            in_fake[0] += time.perf_counter() - started

    fake.apply = timed_apply
    return in_fake


def measure(count: int) -> dict[str, float]:
    objects = [service(i) for i in range(count)]
    kernel, fake = fake_kernel()
    in_fake = timed(fake)
    reconciler = Reconciler(kernel, NODE)
    reconciler.set_objects(objects)
    started = time.perf_counter()
    assert reconciler.reconcile().ok
    while reconciler.replanning:  # the first sync's parts (--cold: whole vs in parts)
        assert reconciler.reconcile().ok
    figures = {"cold": time.perf_counter() - started}

    # What a source hands over after one new object: the change alone (both agents), and the
    # whole list (set_objects, compared object by object), each timed to the end of its writes.
    samples, own = [], []
    for extra in range(count, count + 5):
        new = service(extra)
        in_fake[0] = 0.0
        started = time.perf_counter()
        reconciler.update_objects({new.ref: new})
        change = reconciler.reconcile()
        samples.append(time.perf_counter() - started)
        own.append(samples[-1] - in_fake[0])
        assert change.ok and not change.full
    figures["change"] = sorted(samples)[len(samples) // 2]
    figures["change_own"] = sorted(own)[len(own) // 2]
    figures["change_writes"] = change.writes
    objects += [service(extra) for extra in range(count, count + 5)]
    new = service(count + 5)
    started = time.perf_counter()
    reconciler.set_objects([*objects, new])
    assert reconciler.reconcile().ok
    figures["change_list"] = time.perf_counter() - started
    objects.append(new)
    count = len(objects)

    started = time.perf_counter()
    sync(kernel, [*objects, service(count), service(count + 1)], NODE)
    figures["full"] = time.perf_counter() - started
    reconciler.set_objects([*objects, service(count), service(count + 1)])
    assert reconciler.reconcile(full=True).writes == 0  # written behind its back: the resync takes it in

    dead = RealServerKey(ServiceKey("tcp", vip(0), 80), "10.250.0.3", 8080)
    started = time.perf_counter()
    reconciler.set_out_of_service(frozenset({dead}))
    health = reconciler.reconcile()
    figures["health"] = time.perf_counter() - started
    figures["health_writes"] = health.writes

    # Median of 5: one resync in ceil(VIPs / slice) also starts the audit's round (sorts the VIPs).
    samples = []
    for _ in range(5):
        started = time.perf_counter()
        resync = reconciler.reconcile(full=True)
        samples.append(time.perf_counter() - started)
    figures["resync"] = sorted(samples)[2]
    figures["resync_skipped"] = float(resync.skipped)
    figures["audited"] = resync.audited
    # The same resync without its audit (a slice of VIPs re-derived and planned from scratch).
    audit_chunk, reconciler.audit_chunk = reconciler.audit_chunk, 0
    samples = []
    for _ in range(5):
        started = time.perf_counter()
        assert reconciler.reconcile(full=True).skipped
        samples.append(time.perf_counter() - started)
    figures["resync_no_audit"] = sorted(samples)[2]
    reconciler.audit_chunk = audit_chunk
    figures["rss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return figures


def cold(count: int, chunk: int) -> dict[str, float]:
    """The first sync of `count` objects on an empty fake kernel, every part of it (`chunk` VIPs per
    reconcile after the first; 0: the whole node in one, the way before): its total, vsop's own share
    (less the fake kernel's copying), the longest reconcile (what a change written meanwhile waits
    for at most, besides its own turn) and the number of reconciles."""
    objects = [service(i) for i in range(count)]
    kernel, fake = fake_kernel()
    in_fake = timed(fake)
    reconciler = Reconciler(kernel, NODE, cold_chunk=chunk)
    reconciler.set_objects(objects)
    turns: list[float] = []
    started = time.perf_counter()
    while True:
        began = time.perf_counter()
        assert reconciler.reconcile().ok
        turns.append(time.perf_counter() - began)
        if not reconciler.replanning:
            break
    total = time.perf_counter() - started
    assert len(reconciler.programmed) == count and reconciler.reconcile(full=True).writes == 0
    return {"total": total, "own": total - in_fake[0], "longest": max(turns), "first": turns[0], "turns": len(turns)}


def print_cold(count: int, repeat: int) -> None:
    """The cold first sync whole (one reconcile) and in parts (256 VIPs each), alternated, median of `repeat`."""
    runs: dict[str, list[dict[str, float]]] = {"whole": [], "parts": []}
    for _ in range(repeat):
        runs["whole"].append(cold(count, 0))
        runs["parts"].append(cold(count, 256))

    def median(kind: str, key: str) -> float:
        return sorted(r[key] for r in runs[kind])[len(runs[kind]) // 2]

    print(f"\n## cold first sync of N={count} on the fake kernel, whole vs in parts of 256 VIPs (median of {repeat}, alternated)")
    print(f"{'':>6} {'total':>8} {'vsop own':>9} {'first turn':>11} {'longest turn':>13} {'turns':>6}")
    for kind in runs:
        print(f"{kind:>6} {median(kind, 'total'):>7.2f}s {median(kind, 'own'):>8.2f}s {median(kind, 'first'):>10.2f}s {median(kind, 'longest'):>12.2f}s "
              f"{median(kind, 'turns'):>6.0f}")
    print(f"COLD IN PARTS / WHOLE (goal <= 1.1): total {median('parts', 'total') / median('whole', 'total'):.2f}x, "
          f"vsop's own {median('parts', 'own') / median('whole', 'own'):.2f}x; longest turn {median('parts', 'longest'):.2f}s vs {median('whole', 'longest'):.2f}s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", type=int, default=100)
    parser.add_argument("--large", type=int, default=10000)
    parser.add_argument("--cold", action="store_true", help="only the cold first sync at --large, whole vs in parts")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each for --cold (median printed)")
    args = parser.parse_args()
    if args.cold:
        print(f"# node reconciler on the fake kernel, python {sys.version.split()[0]}, load {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
        print_cold(args.large, args.repeat)
        return 0
    print(f"# node reconciler on the fake kernel, python {sys.version.split()[0]}, load {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    results = {n: measure(n) for n in (args.small, args.large)}
    print(f"{'N':>6} {'add: change':>12} {'(vsop only)':>12} {'add: whole list':>16} {'add: full sync':>15} {'health flip':>12} {'no-op resync':>13} {'(no audit)':>11} {'cold':>8} {'peak RSS':>9}")
    for n, r in results.items():
        print(f"{n:>6} {r['change'] * 1000:>9.2f} ms {r['change_own'] * 1000:>9.2f} ms {r['change_list'] * 1000:>13.2f} ms {r['full'] * 1000:>12.1f} ms {r['health'] * 1000:>9.2f} ms "
              f"{r['resync'] * 1000:>10.1f} ms {r['resync_no_audit'] * 1000:>8.1f} ms {r['cold']:>7.2f}s {r['rss']:>6.0f} MB")
    small, large = results[args.small], results[args.large]
    print(f"ratio N={args.large} / N={args.small}: add (the change alone, median of 5) {large['change'] / small['change']:.2f}x, "
          f"without the fake kernel's own copying {large['change_own'] / small['change_own']:.2f}x, "
          f"add (whole list) {large['change_list'] / small['change_list']:.2f}x (full sync {large['full'] / small['full']:.0f}x), "
          f"health {large['health'] / small['health']:.2f}x; writes per add {large['change_writes']:.0f}, per health flip {large['health_writes']:.0f}; "
          f"no-op resync wrote nothing: {bool(large['resync_skipped'])}, its audit planned {large['audited']:.0f} VIPs from scratch")
    return 0


if __name__ == "__main__":
    sys.exit(main())
