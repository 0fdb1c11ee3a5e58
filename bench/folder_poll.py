"""What the host agent's folder polls cost while a store sits still, natively: N store files.

The agent polls its folder every second (`--poll-seconds`) and sweeps it (a stat per file)
every `--sweep-seconds`; under the VM's emulation Python runs 10-30 times slower, so what a
poll costs natively at 10,000 files is a share of the emulated CPU there. Per N (--sizes), in
a fresh process per tree, after the first look took every file (vsop.host.folder.FolderSource,
settle 1 s, sweep 5 s as `vsop agent` runs it): CPU time of

  quiet    a poll with nothing changed, the folder's listing trusted (changed over a second ago);
  relist   a poll after the folder's mtime moved (a new name, a rename over one: `vsop apply`);
  sweep    a sweep, every file stat-ed.

The least of --repeat each (the one least disturbed by other work). With --baseline DIR
(another checkout, e.g. `git worktree add --detach /tmp/before COMMIT`) the same in fresh
processes of DIR's vsop, alternately, and the ratios:

    .venv/bin/python bench/folder_poll.py --sizes 100 10000 [--baseline /tmp/before]
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

sys.path.insert(0, str(Path(__file__).resolve().parent))

from agent_start import SERVED, write_objects  # noqa: E402

FIGURES = ("quiet", "relist", "sweep")


def measure(folder: Path, repeat: int) -> dict[str, float]:
    """In this process (this tree's vsop): the least CPU seconds of each kind of poll."""
    from vsop.host.folder import FolderSource

    source = FolderSource(folder, settle_seconds=1.0, sweep_seconds=5.0)
    past = time.time_ns() - 10 * 10**9
    os.utime(folder, ns=(past, past))  # changed long before the listings: trusted
    source.poll()
    time.sleep(1.05)
    source.poll()  # every file taken (stable over a second)
    source._poll(sweep=False)  # noqa: SLF001 - the kinds of poll are what is measured
    least = {name: float("inf") for name in FIGURES}
    for _ in range(repeat):
        for name in FIGURES:
            if name == "relist":
                moved = time.time_ns() - 5 * 10**9
                os.utime(folder, ns=(moved, moved))
            started = time.thread_time()
            source._poll(sweep=name == "sweep")  # noqa: SLF001
            least[name] = min(least[name], time.thread_time() - started)
            if name == "relist":
                source._poll(sweep=False)  # noqa: SLF001 - trusted again (its mtime is over a second old)
    return least


def fresh(folder: Path, repeat: int, tree: Path | None) -> dict[str, float]:
    env = dict(os.environ, PYTHONPATH=str(tree / "operator")) if tree is not None else None  # before the editable install's path
    done = subprocess.run([sys.executable, __file__, "--measure", str(folder), "--repeat", str(repeat)], env=env, check=True,
                          capture_output=True, text=True)
    return json.loads(done.stdout.splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 10000], help="store files besides the 10 (default 100 10000)")
    parser.add_argument("--repeat", type=int, default=7, help="polls of each kind per process (the least is kept)")
    parser.add_argument("--baseline", type=Path, help="another checkout: the same in its vsop, alternately")
    parser.add_argument("--measure", type=Path, help=argparse.SUPPRESS)  # one process's figures, as JSON
    args = parser.parse_args()
    if args.measure is not None:
        print(json.dumps(measure(args.measure, args.repeat)))
        return
    trees: dict[str, Path | None] = {"this tree": None}
    if args.baseline is not None:
        trees = {"baseline": args.baseline, **trees}
    print(f"# the folder's polls, natively, CPU ms, least of {args.repeat} each (a fresh process per tree and N)")
    print(f"{'N':>7}  {'tree':<10}" + "".join(f"{name:>10}" for name in FIGURES))
    for count in args.sizes:
        with tempfile.TemporaryDirectory() as name:
            folder = Path(name)
            write_objects(folder, count, as_store=True)
            results = {label: fresh(folder, args.repeat, tree) for label, tree in trees.items()}
        for label, figures in results.items():
            print(f"{count + SERVED:>7}  {label:<10}" + "".join(f"{figures[name] * 1e3:>10.2f}" for name in FIGURES))
        if args.baseline is not None:
            base, now = results["baseline"], results["this tree"]
            print(f"{count + SERVED:>7}  {'ratio':<10}" + "".join(f"{now[name] / base[name]:>10.2f}" for name in FIGURES), flush=True)


if __name__ == "__main__":
    main()
