"""Benchmark of the node reconciler's cache of the kernel (vsop.core.memory), natively on the fakes,
this tree against another revision, printed side by side in one run.

The figures that the interpreter of accepted operations is on the path of: the cold first
reconcile of N services x 2 real servers (the cache is built from its 3N+ writes), adding
one object and one health result at N (the cache changed in place), and the interpreter
alone (`apply_accepted` of a cold sync's operations). Each is vsop's own time: what the
fake kernel spends applying operations (it copies its whole state per write: a checker, not
a kernel) is left out. The two revisions run alternately in fresh processes, `--repeat`
times each; the best run of each counts (the machine may be shared).

    .venv/bin/python bench/memory_bench.py --against main [-n 10000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPOSITORY = Path(__file__).resolve().parents[1]
CHANGES = 20  # changes timed per process (the median counts)


def measure(count: int) -> dict[str, float]:
    """Run in a child process whose sys.path holds the revision's `operator` folder."""
    import vsop

    assert Path(vsop.__file__).is_relative_to(os.environ["PYTHONPATH"]), f"{vsop.__file__} is not the revision's"
    from vsop.core.memory import apply_accepted
    from vsop.core.state import KernelState, RealServerKey, ServiceKey
    from vsop.adapters.kernel import fake_kernel
    from vsop.node.reconciler import Reconciler

    # reconciler_bench puts this tree's `operator` first on sys.path: imported after vsop
    # (everything it imports of vsop is loaded by now), it uses the revision's.
    sys.path.insert(0, str(REPOSITORY / "bench"))
    from reconciler_bench import NODE, service, timed, vip

    kernel, fake = fake_kernel()
    in_fake = timed(fake)
    reconciler = Reconciler(kernel, NODE)
    reconciler.set_objects([service(i) for i in range(count)])
    started = time.perf_counter()
    cold = reconciler.reconcile()
    assert cold.ok and cold.full
    figures = {"cold": time.perf_counter() - started - in_fake[0]}

    started = time.perf_counter()
    apply_accepted(KernelState(), cold.applied)
    figures["interpreter"] = time.perf_counter() - started

    def own(step: Any) -> float:
        in_fake[0] = 0.0
        started = time.perf_counter()
        outcome = step()
        assert outcome.ok and not outcome.full and outcome.writes
        return time.perf_counter() - started - in_fake[0]

    def median(samples: list[float]) -> float:
        return sorted(samples)[len(samples) // 2]

    adds = []
    for extra in range(count, count + CHANGES):
        new = service(extra)
        reconciler.update_objects({new.ref: new})
        adds.append(own(reconciler.reconcile))
    figures["change"] = median(adds)
    flips = []
    dead = RealServerKey(ServiceKey("tcp", vip(0), 80), "10.250.0.3", 8080)
    for flip in range(CHANGES):
        reconciler.set_out_of_service(frozenset({dead}) if flip % 2 == 0 else frozenset())
        flips.append(own(reconciler.reconcile))
    figures["health"] = median(flips)
    return figures


def run(operator: Path, count: int) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(operator)}
    out = subprocess.run([sys.executable, __file__, "--child", str(count)], env=env, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--against", default="main", help="the revision to compare this tree with (default main)")
    parser.add_argument("-n", type=int, default=10000, help="services on the node (default 10000)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(measure(args.child)))
        return 0
    revision = subprocess.run(["git", "-C", str(REPOSITORY), "rev-parse", "--short", args.against], check=True, capture_output=True, text=True).stdout.strip()
    with tempfile.TemporaryDirectory() as scratch:
        archive = subprocess.run(["git", "-C", str(REPOSITORY), "archive", revision, "operator"], check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", scratch], input=archive, check=True)
        trees = {f"{args.against} ({revision})": Path(scratch) / "operator", "this tree": REPOSITORY / "operator"}
        runs: dict[str, list[dict[str, float]]] = {name: [] for name in trees}
        for _ in range(args.repeat):
            for name, operator in trees.items():
                runs[name].append(run(operator, args.n))
    best = {name: {key: min(r[key] for r in results) for key in results[0]} for name, results in runs.items()}
    before, after = best.values()
    load = os.getloadavg()[0]
    print(f"# vsop's own time on the fake kernel, N = {args.n} services x 2 real servers, best of {args.repeat}, "
          f"python {sys.version.split()[0]}, load {load:.1f} on {os.cpu_count()} CPUs")
    print(f"{'figure':<44} {list(best)[0]:>18} {'this tree':>12} {'after/before':>13}")
    labels = {
        "cold": "cold first reconcile",
        "interpreter": "apply_accepted of the cold sync's writes",
        "change": f"add one object (median of {CHANGES})",
        "health": f"health flip (median of {CHANGES})",
    }
    for key, label in labels.items():
        scale, unit = (1, "s") if key == "cold" else (1000, "ms")
        print(f"{label:<44} {before[key] * scale:>15.3f} {unit:<2} {after[key] * scale:>9.3f} {unit:<2} {after[key] / before[key]:>12.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
