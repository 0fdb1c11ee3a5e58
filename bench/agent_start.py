"""The host agent's start over a folder of 1,010 objects, split in phases: where a restart's time goes.

A restart after a crash is this path: the process starts, imports, reads the folder, derives
and plans, reads the kernel and writes what is missing. The folder holds the objects of
tests/vm/test_crash_points.py: 1,000 VirtualServices (one VIP, one TCP port, two real servers
each) and 10 more, one file each. Each run starts `vsop agent --from FOLDER -v` as its own
process and splits its time by its log's klog stamps:

- `started`: from the process's spawn to its `agent started` line (interpreter, imports, flags,
  the agent's construction);
- `first write`: from there to `writing to the kernel` (the two first looks at the folder, each
  file read and validated, the desired state, the kernel read, the plan);
- `synced`: from there to its `synced` line (the writes), and the whole to the status file.

`cold` starts over an empty kernel (everything is written); `restart` starts again over the kernel
the cold start left (nothing to write: its `synced, nothing to change` line ends it). With
`--profile FILE` one more cold start runs under cProfile (`python -m cProfile`), its top functions
by cumulative time are printed and the stats kept in FILE. Prints figures, asserts nothing. It
programs IPVS, so it runs in the throwaway VM:

    flock /tmp/vsop-vm.lock vm/run --timeout 1500 -- .venv/bin/python bench/agent_start.py [--repeat 3] [--profile F]

`--in-process` splits the same starts further, in one process on the real kernel: the imports,
then per start (cold, restart) the agent's construction, its first look at the folder (each file
read and validated) and its first full sync, each under cProfile (the top functions printed).

`--native` measures what needs no kernel, on this machine: a fresh process's imports of the
agent, then in-process over the same folder the agent's construction, its first look at the
folder and its first sync against the in-memory fake kernel (whose own time is part of it).
`--objects N` sets how many objects (one file each) the folder holds besides the 10 (1,000 by
default; a big store is 10,000). With `--profile FILE` the native first look runs once more
under cProfile: its time split by area (stat and read, sha256, YAML, the loader's own
constructors and checks, pydantic validation, the folder's bookkeeping), per file. With
`--baseline DIR` (another checkout, e.g. `git worktree add --detach /tmp/before COMMIT`) the
first look at the same folder is timed in fresh processes, alternately with DIR's vsop and this
one's, so a change is read as a ratio in one run on a busy machine:

    .venv/bin/python bench/agent_start.py --native --objects 10000 --baseline /tmp/before [--profile F]

With `--formats` the same objects are written twice, as YAML by hand and as the store renders them
(`vsop apply`'s files: JSON, vsop.host.store.render), and the first look at each is timed in fresh
processes alternately.

`--parts N [N ...]` times the host agent's first sync in parts natively, over N store files (one
VIP, port 80, two real servers, a tcp check each; the fake kernel): per part, its steps (taking
the folder's changes, feeding the reconciler, deriving the part's objects, the plan, the verdicts,
the fake kernel's writes apart, the cache, the state file, the health targets, the status file
after the last part) and the collector's full passes, before (as at 7294db2, emulated in the same
process) and after, alternated `--repeat` times; `--profile-parts` profiles one more run at the
largest N. Asserts only that a quiet turn and a resync after the parts write nothing:

    .venv/bin/python bench/agent_start.py --parts 100 10000 --repeat 3

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
from typing import Any, Callable

VSOP = str(Path(sys.executable).parent / "vsop")
BACKENDS = ("10.200.1.2", "10.200.2.2")
BULK, SERVED = 1000, 10
PHASES = ("started", "first write", "synced", "status")


def write_objects(folder: Path, bulk: int = BULK, as_store: bool = False) -> None:
    """The objects, one file each, as a user writes YAML by hand; `as_store`: as the store renders
    them (`vsop apply`'s files, vsop.host.store.render)."""
    if as_store:
        from vsop.api.manifests import load_text
        from vsop.host.store import render
    backends = "".join(f"  - address: {address}\n" for address in BACKENDS)
    width = max(4, len(str(bulk - 1)))  # bulk-0000 .. bulk-0999 as before at 1,000
    vips = [(f"served-{i}", f"10.231.0.{i + 1}") for i in range(SERVED)]
    vips += [(f"bulk-{i:0{width}d}", f"10.{232 + i // 62500}.{i // 250 % 250}.{i % 250 + 1}") for i in range(bulk)]
    for name, vip in vips:
        text = ("apiVersion: vsop.dev/v1alpha1\nkind: VirtualService\n"
                f"metadata:\n  name: {name}\n  namespace: default\n"
                f"spec:\n  vip: {vip}\n  scheduler: rr\n  ports:\n  - name: http\n    port: 80\n    targetPort: 8080\n"
                f"  backends:\n{backends}")
        (folder / f"{name}.yaml").write_text(render(load_text(text).services[0]) if as_store else text)


def stamp(line: str, year: int) -> float:
    """A klog line's wall-clock time: `I1205 10:33:54.123456 ...`."""
    return datetime.datetime.strptime(f"{year}{line[1:21]}", "%Y%m%d %H:%M:%S.%f").timestamp()


def start_once(work: Path, folder: Path, profile: Path | None = None) -> dict[str, float]:
    """One agent started over `folder`, stopped (SIGTERM) once its first sync is in the status file."""
    status, log = work / "agent.json", work / "agent.log"
    status.unlink(missing_ok=True)
    prefix = [sys.executable, "-m", "cProfile", "-o", str(profile)] if profile else []
    spawned = time.time()
    process = subprocess.Popen(
        [*prefix, VSOP, "agent", "--from", str(folder), "--poll-seconds", "0.2", "--resync-seconds", "3600",
         "--status-file", str(status), "--state-file", str(work / "state.json"), "--lock", str(work / "lock"), "-v"],
        stdout=subprocess.DEVNULL, stderr=open(log, "w"), start_new_session=True)
    deadline = time.monotonic() + 600
    while True:
        try:
            if json.loads(status.read_text()).get("lastSync", {}).get("at"):
                break
        except (OSError, ValueError):
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"the agent exited or took too long; its log:\n{log.read_text()[-3000:]}")
        time.sleep(0.05)
    status_seen = time.time()
    process.send_signal(signal.SIGTERM)
    process.wait(120)
    year, marks = datetime.date.today().year, {"spawned": spawned}
    for line in log.read_text().splitlines():
        for key, text in (("started", "agent started"), ("first write", "writing to the kernel"), ("synced", "synced")):
            if text in line and key not in marks:
                marks[key] = stamp(line, year)
    marks["status"] = status_seen
    order = [key for key in ("spawned", *PHASES) if key in marks]
    return {b: marks[b] - marks[a] for a, b in zip(order, order[1:])} | {"total": status_seen - spawned}


def show(label: str, runs: list[dict[str, float]], objects: int) -> None:
    for run in runs:
        print(f"{label}: " + "  ".join(f"{k} {v:.2f}s" for k, v in run.items()), flush=True)
    keys = [key for key in (*PHASES, "total") if key in runs[0]]
    print(f"AGENT START {label.upper()} ({objects} objects, median of {len(runs)}): "
          + ", ".join(f"{key} {statistics.median(r.get(key, 0.0) for r in runs):.2f}s" for key in keys), flush=True)


def in_vm(args: argparse.Namespace) -> None:
    cold: list[dict[str, float]] = []
    restart: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory() as name:
        work = Path(name)
        folder = work / "services"
        folder.mkdir()
        write_objects(folder, args.objects)
        for _ in range(args.repeat):
            subprocess.run([VSOP, "cleanup"], check=False, capture_output=True)
            cold.append(start_once(work, folder))
            restart.append(start_once(work, folder))
        show("cold", cold, args.objects + SERVED)
        show("restart", restart, args.objects + SERVED)
        if args.profile:
            subprocess.run([VSOP, "cleanup"], check=False, capture_output=True)
            profiled = start_once(work, folder, Path(args.profile))
            print("profiled cold start: " + "  ".join(f"{k} {v:.2f}s" for k, v in profiled.items()))
            import pstats

            pstats.Stats(args.profile).sort_stats("cumulative").print_stats(60)
        subprocess.run([VSOP, "cleanup"], check=False, capture_output=True)


def in_process(args: argparse.Namespace) -> None:
    import cProfile
    import pstats

    started = time.perf_counter()
    from vsop.adapters.conntrack import ConntrackTool
    from vsop.adapters.real import real_kernel
    from vsop.core.desired import Node
    from vsop.host.agent import AgentConfig, HostAgent

    imported = time.perf_counter() - started
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        write_objects(folder, args.objects)
        subprocess.run([VSOP, "cleanup"], check=False, capture_output=True)
        for label in ("cold", "restart"):
            profile = cProfile.Profile()
            profile.enable()
            begun = time.perf_counter()
            agent = HostAgent(real_kernel(), AgentConfig(folder, Node("n"), status_file=None, poll_seconds=0.0), ConntrackTool())
            built = time.perf_counter()
            agent.poll()
            looked = time.perf_counter()
            outcome = agent.sync_once(full=True, status=False)
            synced = time.perf_counter()
            profile.disable()
            assert outcome is not None
            print(f"AGENT START IN-PROCESS {label.upper()} ({args.objects + SERVED} objects, under cProfile): imports {imported:.2f}s, "
                  f"agent built {built - begun:.2f}s, first look at the folder {looked - built:.2f}s, first sync {synced - looked:.2f}s "
                  f"(its kernel read {outcome.read_seconds:.2f}s, {outcome.writes} writes)", flush=True)
            pstats.Stats(profile).sort_stats("cumulative").print_stats(40)
        subprocess.run([VSOP, "cleanup"], check=False, capture_output=True)


def native(args: argparse.Namespace) -> None:
    imports = "import vsop.cli.main, vsop.cli.agents, vsop.host.agent, vsop.adapters.real, vsop.adapters.kernel, vsop.node.loop"
    samples: dict[str, list[float]] = {}
    for _ in range(args.repeat):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", imports], check=True)
        samples.setdefault("imports (a fresh process)", []).append(time.perf_counter() - started)
        from vsop.adapters.conntrack import FakeConntrack
        from vsop.adapters.kernel import fake_kernel
        from vsop.core.desired import Node
        from vsop.host.agent import AgentConfig, HostAgent

        with tempfile.TemporaryDirectory() as name:
            folder = Path(name)
            write_objects(folder, args.objects)
            started = time.perf_counter()
            agent = HostAgent(fake_kernel()[0], AgentConfig(folder, Node("n"), status_file=None, poll_seconds=0.0), FakeConntrack())
            built = time.perf_counter()
            agent.poll()
            looked = time.perf_counter()
            outcome = agent.sync_once(full=True, status=False)
            synced = time.perf_counter()
            assert outcome is not None and outcome.writes > 0
        for key, value in (("agent built", built - started), ("first look at the folder", looked - built),
                           ("first sync on the fake kernel", synced - looked)):
            samples.setdefault(key, []).append(value)
    files = args.objects + SERVED
    print(f"AGENT START NATIVE ({files} objects, median of {args.repeat}): "
          + ", ".join(f"{key} {statistics.median(values):.3f}s" for key, values in samples.items())
          + f"; the first look {statistics.median(samples['first look at the folder']) / files * 1e6:.0f} us a file", flush=True)
    if args.profile:
        profile_first_look(args, Path(args.profile))
    if args.baseline:
        against_baseline(args, Path(args.baseline))
    if args.formats:
        against_formats(args)


def agent_over(folder: Path) -> Any:
    """A host agent over folder, built as `vsop agent` builds it, on the fake kernel."""
    from vsop.adapters.conntrack import FakeConntrack
    from vsop.adapters.kernel import fake_kernel
    from vsop.core.desired import Node
    from vsop.host.agent import AgentConfig, HostAgent

    return HostAgent(fake_kernel()[0], AgentConfig(folder, Node("n"), status_file=None, poll_seconds=0.0), FakeConntrack())


def first_look(folder: Path) -> tuple[float, float]:
    """The agent's first look at folder (its first poll), in this process: wall-clock and CPU seconds."""
    agent = agent_over(folder)
    wall, cpu = time.perf_counter(), time.process_time()
    agent.poll()
    return time.perf_counter() - wall, time.process_time() - cpu


# Where a profiled first look's own time (cProfile's tottime) goes: the first area whose test
# matches a function (its file, its name) takes it. libyaml's parsing is C called from the
# loader's `_documents`, so it is counted there, with the Python callbacks it makes.
AREAS: tuple[tuple[str, Callable[[str, str], bool]], ...] = (
    ("sha256", lambda file, name: "sha256" in name or "_hashlib.HASH" in name),
    ("stat, list and read", lambda file, name: any(word in name for word in ("stat", "scandir", "open", "read", "inode", "is_symlink"))
     or file.endswith(("pathlib.py", "posixpath.py")) or name in ("walk_folder", "_list_folder", "_stat_entry", "_found")),
    ("YAML (libyaml, nodes, resolve)", lambda file, name: "/yaml/" in file or name in ("_documents", "resolve", "check_node", "get_node", "dispose")),
    ("loader's constructors and checks", lambda file, name: file.endswith("manifests.py")),
    ("pydantic validation (and vsop's validators)", lambda file, name: "pydantic" in file or "validate" in name or file.endswith(("model.py", "ipaddress.py", "functools.py"))),
    ("folder bookkeeping, logging", lambda file, name: file.endswith(("folder.py", "agent.py", "held.py")) or "/logging/" in file),
)


def profile_first_look(args: argparse.Namespace, stats_file: Path) -> None:
    import cProfile
    import pstats

    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        write_objects(folder, args.objects)
        agent = agent_over(folder)  # its imports are no part of the look
        profile = cProfile.Profile()
        profile.runcall(agent.poll)
    profile.dump_stats(stats_file)
    stats = pstats.Stats(str(stats_file))
    def area_of(file: str, function: str) -> str | None:
        return next((label for label, test in AREAS if test(file, function)), None)

    areas: dict[str, float] = {}
    for (file, _, function), (_, _, own, _, callers) in stats.stats.items():  # type: ignore[attr-defined]
        area = area_of(file, function)
        if area is None and file == "~":  # a builtin (dict.get, isinstance): its callers' areas, by their share
            for (caller_file, _, caller), (_, _, share, _) in callers.items():
                label = area_of(caller_file, caller) or "other"
                areas[label] = areas.get(label, 0.0) + share
            continue
        areas[area or "other"] = areas.get(area or "other", 0.0) + own
    files, total = args.objects + SERVED, sum(areas.values())
    print(f"FIRST LOOK UNDER cProfile ({files} files, {total:.2f}s, {total / files * 1e6:.0f} us a file with the profiler's cost), own time by area:")
    for area, seconds in sorted(areas.items(), key=lambda item: -item[1]):
        print(f"  {area:48s} {seconds:6.2f}s {seconds / total:6.1%} {seconds / files * 1e6:6.1f} us a file")
    stats.sort_stats("tottime").print_stats(25)


def fresh_looks(runs: dict[str, tuple[Path, dict[str, str] | None]], repeat: int) -> dict[str, list[tuple[float, float]]]:
    """The first look (wall, CPU) at each run's folder in fresh processes (its environment), the runs alternated."""
    samples: dict[str, list[tuple[float, float]]] = {label: [] for label in runs}
    for _ in range(repeat):
        for label, (folder, env) in runs.items():
            done = subprocess.run([sys.executable, __file__, "--first-look-of", str(folder)], env=env, check=True,
                                  capture_output=True, text=True)
            samples[label].append(tuple(json.loads(done.stdout.splitlines()[-1])))  # type: ignore[arg-type]
    return samples


def show_looks(samples: dict[str, list[tuple[float, float]]], files: int, ratio: str) -> None:
    """Each run's CPU per look and the least, then `ratio`: the second run's least against the first's."""
    # The least CPU time is the one least disturbed by other work on the machine.
    least = {label: (min(w for w, _ in runs), min(c for _, c in runs)) for label, runs in samples.items()}
    for label, runs in samples.items():
        print(f"FIRST LOOK {label}: CPU " + " ".join(f"{c:.2f}s" for _, c in runs)
              + f", least {least[label][1]:.2f}s, {least[label][1] / files * 1e6:.0f} us CPU a file; wall least {least[label][0]:.2f}s"
              f" ({len(runs)} fresh processes)")
    (first_wall, first_cpu), (second_wall, second_cpu) = least.values()
    print(f"FIRST LOOK {ratio} ({files} files): CPU {second_cpu / first_cpu:.2f}, wall {second_wall / first_wall:.2f}", flush=True)


def against_baseline(args: argparse.Namespace, baseline: Path) -> None:
    """The first look at one folder in fresh processes, alternately with baseline's vsop and this one's."""
    trees = {"baseline": baseline / "operator", "this tree": Path(__file__).resolve().parent.parent / "operator"}
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        write_objects(folder, args.objects)
        # PYTHONPATH goes before the editable install's path.
        samples = fresh_looks({f"{label} ({tree.parent})": (folder, dict(os.environ, PYTHONPATH=str(tree))) for label, tree in trees.items()},
                              args.repeat)
    show_looks(samples, args.objects + SERVED, "this tree / baseline")


def against_formats(args: argparse.Namespace) -> None:
    """The first look at the same objects written as YAML by hand and as the store writes them (JSON),
    in fresh processes of this tree, alternately."""
    with tempfile.TemporaryDirectory() as yaml_name, tempfile.TemporaryDirectory() as store_name:
        write_objects(Path(yaml_name), args.objects)
        write_objects(Path(store_name), args.objects, as_store=True)
        samples = fresh_looks({"hand-written YAML": (Path(yaml_name), None), "the store's files (JSON)": (Path(store_name), None)}, args.repeat)
    show_looks(samples, args.objects + SERVED, "store files / hand-written YAML")


# --- the first sync's parts (--parts) ------------------------------------------------------------

# What a part's turn runs, timed per part by name: (module, class, attribute, label). The fake
# kernel's own time is apart: it copies its whole state per write (a model, not what a kernel costs).
PART_STEPS = (
    ("vsop.host.agent", "HostAgent", "_take", "take (the folder's changes)"),
    ("vsop.node.loop", "NodeLoop", "feed", "feed"),
    ("vsop.node.reconciler", "Reconciler", "_gather", "derive (the part's objects)"),
    ("vsop.node.reconciler", "Reconciler", "_plan", "plan (target, diff)"),
    ("vsop.node.reconciler", "Reconciler", "_judge_plan", "verdicts"),
    ("vsop.adapters.fake", "FakeKernel", "apply", "fake kernel (apart)"),
    ("vsop.node.cache", "Cache", "written", "cache (the part's writes)"),
    ("vsop.node.remember", "RememberFile", "save", "state file"),
    ("vsop.node.loop", "NodeLoop", "_follow_targets", "health targets"),
    ("vsop.host.agent", "HostAgent", "_judge", "judge (log lines)"),
    ("vsop.host.agent", "HostAgent", "write_status", "status file (after the last)"),
)
COLLECTOR = "collector's full passes (gen2)"


def cold_parts(count: int, before: bool, profile: bool = False, profile_from: int = 0) -> dict[str, Any]:
    """The first sync over `count` store files (one VIP, port 80, two real servers, a tcp check each),
    part by part as the running agent's loop takes them: each part a turn (NodeLoop.turn through
    HostAgent.sync_once), the checker taking the turn's target changes and each new real server's
    first (passing) result recorded, the state file kept after each part, the status file written
    after the last (the loop holds it while parts are left). Unless `before`, vsop.node.heap.freeze()
    after the first look (where HostAgent.run freezes) and after each part (HostAgent.keep_first_sync),
    unfrozen at the end. `before`: as at 7294db2, no freeze, the status file's health entries kept by
    the RealServerKey itself and each entry bisected into place as it is put. Returns seconds per step
    per part, and checks the parts left nothing to write (a quiet turn, then a resync, write nothing)."""
    import cProfile
    import gc
    import importlib
    import pstats
    import shutil

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from agent_bench import store_folder
    from vsop.adapters.conntrack import FakeConntrack
    from vsop.adapters.kernel import fake_kernel
    from vsop.core.desired import Node
    from vsop.core.health import Thresholds
    from vsop.host import status_file
    from vsop.host.agent import AgentConfig, HostAgent
    from vsop.node import heap

    in_order, put = status_file.in_order, status_file.Entries.put
    if before:
        status_file.in_order = lambda key: key  # type: ignore[assignment,return-value]

        def put_now(self: Any, key: Any, text: str | None) -> None:  # each entry bisected into place as it comes
            put(self, key, text)
            self._settle()

        status_file.Entries.put = put_now  # type: ignore[method-assign]
    spent: dict[str, float] = {}
    originals = []
    for module_name, class_name, attribute, label in PART_STEPS:
        owner = getattr(importlib.import_module(module_name), class_name)
        original = getattr(owner, attribute)
        originals.append((owner, attribute, original))

        def timed(*args: Any, _original: Any = original, _label: str = label, **kwargs: Any) -> Any:
            begun = time.perf_counter()
            try:
                return _original(*args, **kwargs)
            finally:
                spent[_label] = spent.get(_label, 0.0) + time.perf_counter() - begun

        setattr(owner, attribute, timed)
    collecting: list[float] = []

    def collector(phase: str, info: dict[str, int]) -> None:
        if info["generation"] != 2:
            return
        if phase == "start":
            collecting.append(time.perf_counter())
        elif collecting:
            spent[COLLECTOR] = spent.get(COLLECTOR, 0.0) + time.perf_counter() - collecting.pop()

    folder = store_folder(count, checked=True)
    work = Path(tempfile.mkdtemp(prefix="vsop-bench-parts-"))
    parts: list[dict[str, float]] = []
    profiler = cProfile.Profile() if profile else None
    gc.collect()  # what an earlier run left is not this one's to walk
    gc.callbacks.append(collector)
    try:
        config = AgentConfig(folder, Node("n"), status_file=work / "status.json", state_file=work / "state.json", poll_seconds=0.0)
        agent = HostAgent(fake_kernel()[0], config, FakeConntrack())
        agent.poll()
        if not before:
            heap.freeze()  # where HostAgent.run freezes, after the first looks
            agent.freeze_heap = True
        full = True
        while full or agent.reconciler.cold:
            spent.clear()
            if profiler is not None and len(parts) >= profile_from:
                profiler.enable()
            begun = time.perf_counter()
            outcome = agent.sync_once(full=full, status=False)
            assert outcome is not None, agent.last
            if not agent.reconciler.cold:  # the running agent's status file waits while parts are left
                agent.write_status()
            # The checker follows the turn's target changes; each new real server's first result.
            changes = agent.probe_changes()
            for target in (changes[0] if changes is not None else agent.probe_targets()):
                agent.tracker.record(target.key, True, Thresholds(target.check.failure_threshold, target.check.success_threshold))
            ended = time.perf_counter()
            if profiler is not None:
                profiler.disable()
            parts.append({**spent, "part": ended - begun, "writes": outcome.writes})
            agent.keep_first_sync(True)  # as HostAgent.turn does after each (a no-op without freeze_heap)
            full = False
        again = [agent.sync_once(full=False, status=True), agent.sync_once(full=True, status=True)]
        assert all(o is not None and o.writes == 0 for o in again), [o and o.writes for o in again]
        assert len(agent.reconciler.programmed) == count, len(agent.reconciler.programmed)
    finally:
        gc.callbacks.remove(collector)
        gc.unfreeze()
        status_file.in_order, status_file.Entries.put = in_order, put  # type: ignore[method-assign]
        for owner, attribute, original in originals:
            setattr(owner, attribute, original)
        shutil.rmtree(folder, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)
    return {"parts": parts, "profile": pstats.Stats(profiler) if profiler is not None else None}


def show_parts(count: int, runs: dict[str, list[dict[str, Any]]]) -> None:
    """Side by side (before: as at 7294db2; after: as the agent runs now), median over the runs of
    each: per step, the first part's seconds and the sum over the others; the whole less the fake
    kernel's own time."""
    labels = [label for *_, label in PART_STEPS] + [COLLECTOR]
    names = list(runs)
    print(f"FIRST SYNC IN PARTS N={count} ({len(runs[names[0]][0]['parts'])} parts; seconds, median of {len(runs[names[0]])}: "
          f"first part | the others summed)")
    print(f"  {'':34s}" + "".join(f"{name:>24s}" for name in names))

    def row(label: str, value: Callable[[dict[str, float]], float]) -> None:
        cells = []
        for name in names:
            first = statistics.median(value(run["parts"][0]) for run in runs[name])
            others = statistics.median(sum(value(p) for p in run["parts"][1:]) for run in runs[name])
            cells.append(f"{first:9.3f} | {others:9.3f}")
        print(f"  {label:34s}" + "".join(f"{cell:>24s}" for cell in cells))

    for label in labels:
        row(label, lambda p, _label=label: p.get(_label, 0.0))
    steps = [label for label in labels if label != COLLECTOR]  # the collector runs inside the steps
    row("the rest (turn, checker)", lambda p: p["part"] - sum(p.get(label, 0.0) for label in steps))
    row("whole, less the fake kernel", lambda p: p["part"] - p.get("fake kernel (apart)", 0.0))
    row("whole", lambda p: p["part"])


def parts(args: argparse.Namespace) -> None:
    """Before and after alternated, `--repeat` runs of each per N, in one process."""
    for count in args.parts:
        runs: dict[str, list[dict[str, Any]]] = {"before": [], "after": []}
        for index in range(args.repeat):
            for name in (("before", "after") if index % 2 == 0 else ("after", "before")):
                runs[name].append(cold_parts(count, before=name == "before"))
        show_parts(count, runs)
        if args.profile_parts and count == max(args.parts):
            profiled = cold_parts(count, before=False, profile=True)
            profiled["profile"].sort_stats("cumulative").print_stats(45)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--profile", metavar="FILE", help="one more cold start under cProfile, its stats kept here")
    parser.add_argument("--in-process", action="store_true", help="imports, first look and first sync in one process, profiled (VM)")
    parser.add_argument("--native", action="store_true", help="what needs no kernel, on this machine (fake kernel)")
    parser.add_argument("--objects", type=int, default=BULK, help="objects in the folder besides the 10 (one file each)")
    parser.add_argument("--baseline", metavar="DIR", help="with --native: the first look timed against DIR's vsop too")
    parser.add_argument("--formats", action="store_true",
                        help="with --native: the first look at hand-written YAML against the store's own files (JSON), same objects")
    parser.add_argument("--first-look-of", metavar="FOLDER", help=argparse.SUPPRESS)  # one timed look, for --baseline
    parser.add_argument("--parts", type=int, nargs="+", metavar="N",
                        help="the first sync in parts over N store files each (fake kernel), timed per part and step, before and after")
    parser.add_argument("--profile-parts", action="store_true", help="with --parts: cProfile of the parts at the largest N")
    args = parser.parse_args()
    if args.first_look_of:
        print(json.dumps(first_look(Path(args.first_look_of))))
    elif args.parts:
        parts(args)
    elif args.native:
        native(args)
    elif os.environ.get("VSOP_IN_VM") != "1":
        raise SystemExit("it programs IPVS: run it in the VM (see its docstring), or --native")
    elif args.in_process:
        in_process(args)
    else:
        in_vm(args)


if __name__ == "__main__":
    main()
