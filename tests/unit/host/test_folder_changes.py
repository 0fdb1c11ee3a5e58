"""The folder source's changes (take_changes) keep a copy equal to what it declares whole.

Any sequence of writes, rewrites, invalid contents, duplicates across files and removals,
polled with a fake clock: the objects handed over as changes, applied to a mirror, equal
`services()` after every poll, in its order; `held()` is what the whole-folder rule gives;
the duplicate reports name the ignored copies. This is what lets the host agent hand the
node reconciler only what changed.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests.conftest import SEED
from vsop.host.folder import FolderSource, walk_folder

FILES = ["a.yaml", "b.yaml", "sub/c.yaml", "sub/d.yml", "sub-x.yaml"]  # "sub-x" sorts before "sub/" as text, after as a path


def document(name: str, vip: int) -> dict[str, Any]:
    data = json.loads(json.dumps(SEED))
    data["metadata"]["name"] = name
    data["spec"]["vip"] = f"169.254.11.{vip}"
    return data


content = st.one_of(
    st.lists(st.tuples(st.sampled_from(["web", "api", "db"]), st.integers(1, 3)), min_size=1, max_size=2).map(
        lambda docs: yaml.safe_dump_all([document(name, vip) for name, vip in docs])
    ),
    st.just("kind: VirtualService\nmetadata: {name: web}\nspec: {vip: nonsense}\n"),  # invalid, names web
    st.just("not: a virtual service\n"),
    st.just(""),
)
step = st.one_of(
    st.tuples(st.just("write"), st.sampled_from(FILES), content),
    st.tuples(st.just("remove"), st.sampled_from(FILES)),
    st.tuples(st.just("wait"), st.sampled_from([0.3, 1.0, 2.0])),
    st.tuples(st.just("recheck"), st.sampled_from([0.3, 1.0])),  # the files not yet stable only, a while later
)


def whole_held(source: FolderSource) -> tuple[frozenset[str], bool]:
    """The rule over every file, as the source applied it before it looked at problem paths only."""
    usable = {vs.ref for vs in source.services()}
    owners: set[str] = set()
    unknown = bool(source.folder_errors)
    for path, state in source.files.items():
        if state.pending or (state.error is not None and not state.services):
            owners |= {ref for ref in state.names if source.served.get(ref) == path}
            if state.pending or not state.names:
                unknown = True
    return frozenset(owners - usable), unknown


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@example(sweep=0.0, steps=[("write", "sub-x.yaml", yaml.safe_dump(document("web", 1))), ("write", "sub/c.yaml", yaml.safe_dump(document("api", 2))), ("wait", 2.0)])
@given(steps=st.lists(step, min_size=1, max_size=16), sweep=st.sampled_from([0.0, 3.0]))
def test_changes_keep_a_mirror_equal_to_the_whole_folder(steps: list[Any], sweep: float) -> None:
    folder = Path(tempfile.mkdtemp(prefix="vsop-folder-"))
    try:
        (folder / "sub").mkdir()
        now = [100.0]
        source = FolderSource(folder, settle_seconds=1.0, clock=lambda: now[0], sweep_seconds=sweep)
        mirror: dict[str, Any] = {}
        positions: dict[str, Any] = {}
        mtime = 1_000_000_000
        for action in steps:
            if action[0] == "write":
                path = folder / action[1]
                path.write_text(action[2])
                mtime += 1  # a distinct mtime per write, as a real clock would give
                os.utime(path, ns=(mtime * 10**9, mtime * 10**9))
            elif action[0] == "remove":
                (folder / action[1]).unlink(missing_ok=True)
            else:
                now[0] += action[1]
            if action[0] == "recheck":
                source.recheck()
            else:
                source.poll()
                # What the poll kept up to date is what a walk from nothing finds (between sweeps,
                # a write in place keeps its old stat key: the names, not the keys).
                fresh: dict[Path, Any] = {}
                walk_folder(folder, {}, set(), True, lambda: None, fresh)
                assert (fresh if sweep == 0 else fresh.keys()) == (source._found if sweep == 0 else source._found.keys())
            changed, order = source.take_changes()
            for ref, vs in changed.items():
                if vs is None:
                    mirror.pop(ref, None)
                    positions.pop(ref, None)
                else:
                    mirror[ref] = vs
                    positions[ref] = order[ref]
            whole: dict[str, Any] = {}
            for vs in source.services():
                whole.setdefault(vs.ref, vs)
            assert mirror == whole
            assert sorted(mirror, key=lambda ref: positions[ref]) == list(whole)
            held = source.held()
            assert (held.owners, held.unknown) == whole_held(source)
            if held.unknown:
                assert held.known >= {vs.ref for vs in source.services()}
            for path, message in source.duplicates.items():
                assert path in source.files and "is ignored" in message
            served = {ref: path for ref, path in source.served.items()}
            claims: dict[str, list[Path]] = {}
            for path, state in sorted(source.files.items()):
                for ref in state.names | {vs.ref for vs in state.services}:
                    claims.setdefault(ref, []).append(path)
            assert set(served) == set(claims) and all(served[ref] in paths for ref, paths in claims.items())
            assert set(source.duplicates) == {p for ref, paths in claims.items() for p in paths if p != served[ref]}
    finally:
        shutil.rmtree(folder)


def test_a_changed_file_is_taken_at_its_second_look_without_a_poll_of_everything(tmp_path: Path) -> None:
    now = [100.0]
    source = FolderSource(tmp_path, settle_seconds=1.0, clock=lambda: now[0])
    (tmp_path / "web.yaml").write_text(yaml.safe_dump(document("web", 1)))
    assert source.poll() and source.services() == [] and source.held().unknown
    assert source.settle_due() == 101.0
    now[0] = 100.5
    assert not source.recheck() and source.services() == []  # not yet stable for a second
    now[0] = 101.0
    assert source.recheck() and [vs.ref for vs in source.services()] == ["default/web"]
    assert source.settle_due() is None and not source.held()
    changed, _ = source.take_changes()
    assert list(changed) == ["default/web"]
    # Changed between the two looks: seen anew, taken a settle time after the new content.
    (tmp_path / "web.yaml").write_text(yaml.safe_dump(document("web", 2)))
    os.utime(tmp_path / "web.yaml", ns=(2 * 10**18, 2 * 10**18))
    assert source.poll() and source.settle_due() == 102.0
    (tmp_path / "web.yaml").write_text(yaml.safe_dump(document("web", 3)))
    now[0] = 102.0
    source.recheck()  # not what was seen a second ago: seen anew, still held as the kernel has it
    assert source.settle_due() == 103.0 and source.services() == [] and source.held().owners == {"default/web"}
    now[0] = 103.0
    assert source.recheck() and source.services()[0].spec.vip == "169.254.11.3"


def test_between_sweeps_a_poll_stats_only_what_a_folder_listing_says_is_new(tmp_path: Path) -> None:
    """With sweep_seconds, a folder whose mtime has not moved is not listed again and its files
    are not stat-ed (files not yet stable and symlinks are); a new name, a rename over a name
    and a symlink's target are seen at the next poll, a write in place at the next sweep."""
    now = [100.0]
    source = FolderSource(tmp_path, settle_seconds=1.0, clock=lambda: now[0], sweep_seconds=5.0)
    web = tmp_path / "web.yaml"
    web.write_text(yaml.safe_dump(document("web", 1)))
    (tmp_path / "target.yaml.txt").write_text(yaml.safe_dump(document("api", 2)))
    (tmp_path / "api.yaml").symlink_to(tmp_path / "target.yaml.txt")
    past = 1_000_000_000 * 10**9
    os.utime(tmp_path, ns=(past, past))  # changed long before the listing: its mtime can be trusted

    def vips() -> dict[str, str]:
        return {vs.ref: vs.spec.vip for vs in source.services()}

    source.poll()  # the first poll sweeps
    now[0] += 1.0
    source.poll()
    assert vips() == {"default/web": "169.254.11.1", "default/api": "169.254.11.2"}
    # In place: same inode, the folder untouched. Not seen until the sweep.
    web.write_text(yaml.safe_dump(document("web", 3)))
    os.utime(web, ns=(past + 10**9, past + 10**9))
    os.utime(tmp_path, ns=(past, past))
    for _ in range(3):
        now[0] += 1.0
        source.poll()
    assert vips()["default/web"] == "169.254.11.1"
    # A symlink's target changed: seen at the next poll (symlinks are always followed).
    (tmp_path / "target.yaml.txt").write_text(yaml.safe_dump(document("api", 1)))
    os.utime(tmp_path, ns=(past, past))
    now[0] += 1.0
    source.poll()
    now[0] += 1.0
    source.poll()
    assert vips()["default/api"] == "169.254.11.1"
    now[0] += 2.0
    source.poll()  # the sweep: the write in place is seen, and taken a settle time later
    now[0] += 1.0
    source.poll()
    assert vips()["default/web"] == "169.254.11.3"
    # A new name moves the folder's mtime: seen at the next poll, no sweep needed.
    (tmp_path / "db.yaml").write_text(yaml.safe_dump(document("db", 2)))
    now[0] += 1.0
    source.poll()
    now[0] += 1.0
    source.poll()
    assert vips()["default/db"] == "169.254.11.2"


def taken_and_trusted(source: FolderSource, now: list[float], *folders: Path) -> int:
    """Every file taken (two polls a settle time apart), the folders' mtimes long past (their listings
    trusted between sweeps); returns that mtime."""
    past = 1_000_000_000 * 10**9
    for folder in folders:
        os.utime(folder, ns=(past, past))
    source.poll()
    now[0] += 1.0
    source.poll()
    return past


def test_a_quiet_poll_visits_only_symlinks_subfolders_and_files_not_yet_taken(tmp_path: Path, monkeypatch: Any) -> None:
    """Between sweeps a trusted, unchanged folder's plain files are not visited at all (a store of
    10,000 cost 12 ms a poll when each was); a relisted folder reuses the entries of the same inodes."""
    import vsop.host.folder as folder_module

    now = [100.0]
    source = FolderSource(tmp_path, settle_seconds=1.0, clock=lambda: now[0], sweep_seconds=5.0)
    for index in range(50):
        (tmp_path / f"s{index}.yaml").write_text(yaml.safe_dump(document(f"s{index}", 1 + index % 200)))
    (tmp_path / "target.txt").write_text(yaml.safe_dump(document("api", 2)))
    (tmp_path / "api.yaml").symlink_to(tmp_path / "target.txt")
    (tmp_path / "sub").mkdir()
    taken_and_trusted(source, now, tmp_path, tmp_path / "sub")
    assert len(source.services()) == 51
    visited: list[str] = []
    real_found = folder_module._found

    def counting_found(path: Path, *args: Any) -> None:
        visited.append(path.name)
        real_found(path, *args)

    monkeypatch.setattr(folder_module, "_found", counting_found)
    now[0] += 1.0
    assert not source.poll()
    assert sorted(visited) == ["api.yaml", "sub"]
    visited.clear()
    (tmp_path / "new.yaml").write_text(yaml.safe_dump(document("new", 3)))  # the folder is listed again
    now[0] += 1.0
    assert source.poll() and sorted(visited) == ["api.yaml", "new.yaml", "sub"]


def one_file_taken(folder: Path, now: list[float]) -> tuple[FolderSource, Path, int]:
    """A source sweeping every 5 s over web.yaml, taken (its folder's mtime long past, so trusted)."""
    source = FolderSource(folder, settle_seconds=1.0, clock=lambda: now[0], sweep_seconds=5.0)
    web = folder / "web.yaml"
    web.write_text(yaml.safe_dump(document("web", 1)))
    return source, web, taken_and_trusted(source, now, folder)  # the first poll sweeps


def test_sweeps_are_spaced_by_their_own_cpu_time_on_a_slow_machine(tmp_path: Path, monkeypatch: Any) -> None:
    """A sweep that cost 0.5 s of CPU is followed by the next one 10 s later at the soonest
    (SWEEP_SHARE times its cost), not at sweep_seconds (5 s)."""
    import vsop.host.folder as folder_module

    cpu = [0.0]

    def slow_thread_time() -> float:
        cpu[0] += 0.25  # each reading: a walk costs 0.25 s between its two
        return cpu[0]

    monkeypatch.setattr(folder_module.time, "thread_time", slow_thread_time)
    now = [100.0]
    source, web, past = one_file_taken(tmp_path, now)
    assert source._sweep_cpu == 0.25 and folder_module.SWEEP_SHARE * 0.25 == 5.0
    cpu_of_sweep = 0.5
    monkeypatch.setattr(source, "_sweep_cpu", cpu_of_sweep)
    web.write_text(yaml.safe_dump(document("web", 3)))  # in place: only a sweep sees it
    os.utime(web, ns=(past + 10**9, past + 10**9))
    os.utime(tmp_path, ns=(past, past))
    for _ in range(8):  # 9 s after the first sweep
        now[0] += 1.0
        source.poll()
        assert source.pending() == [] and source.services()[0].spec.vip == "169.254.11.1"
    now[0] += 1.0
    source.poll()  # 10 s: the sweep
    assert source.pending() == [str(web)]


def test_a_sweep_that_falls_due_waits_for_a_poll_that_finds_nothing_new(tmp_path: Path) -> None:
    """The poll that first sees a new file does not also stat every file (that would delay the
    file's settle time and the sync it wakes); the next poll that finds nothing does, and a
    sweep is put off for at most another sweep period."""
    now = [100.0]
    source, web, past = one_file_taken(tmp_path, now)
    web.write_text(yaml.safe_dump(document("web", 3)))  # in place: only a sweep sees it
    os.utime(web, ns=(past + 10**9, past + 10**9))
    now[0] += 4.0  # the sweep is due
    (tmp_path / "db.yaml").write_text(yaml.safe_dump(document("db", 2)))
    assert source.poll()  # the new name, seen through the folder's listing
    assert source.pending() == [str(tmp_path / "db.yaml")]  # and not the rewritten file: no sweep
    now[0] += 1.0
    assert source.poll()  # db taken: the sweep waits again
    assert source.pending() == []
    now[0] += 1.0
    assert source.poll()  # nothing new: the sweep sees the write in place
    assert source.pending() == [str(web)]
    now[0] += 1.0
    source.poll()
    assert source.pending() == []

    # Changes at every poll put the sweep off for one more sweep period at most.
    now[0] += 5.0
    web.write_text(yaml.safe_dump(document("web", 2)))
    os.utime(web, ns=(past + 2 * 10**9, past + 2 * 10**9))
    os.utime(tmp_path, ns=(past, past))
    for index in range(4):
        (tmp_path / f"n{index}.yaml").write_text(yaml.safe_dump(document(f"n{index}", 2)))
        source.poll()
        assert str(web) not in source.pending()
        now[0] += 1.0
    (tmp_path / "last.yaml").write_text(yaml.safe_dump(document("last", 2)))
    source.poll()  # 10 s since the last sweep: it happens, changes or not
    assert str(web) in source.pending()


def test_looping_folder_symlinks_are_walked_once_and_the_folder_is_served(tmp_path: Path, monkeypatch: Any) -> None:
    """`a -> .` and `b -> ..` in a followed folder: before, every poll walked a/a/b/store/a/...
    until ELOOP (over 60 s measured, and on the agent's event loop). Each folder is listed once."""
    import vsop.host.folder as folder_module

    store = tmp_path / "parent" / "store"
    store.mkdir(parents=True)
    (store / "web.yaml").write_text(yaml.safe_dump(document("web", 1)))
    (store / "a").symlink_to(".")
    (store / "b").symlink_to("..")
    listed: list[str] = []
    real_scandir = os.scandir

    def counting_scandir(path: Any) -> Any:
        listed.append(str(path))
        if len(listed) > 100:
            raise AssertionError(f"the walk does not end: {listed[:10]}...")
        return real_scandir(path)

    monkeypatch.setattr(folder_module.os, "scandir", counting_scandir)
    source = FolderSource(store, settle_seconds=0)
    source.poll()
    assert sorted(listed) == sorted([str(store), str(store / "b")])  # the store, and its parent once (through b)
    assert [vs.ref for vs in source.services()] == ["default/web"]
    assert source.errors() == {} and not source.duplicates


def test_a_look_that_takes_many_files_logs_one_line(caplog: Any) -> None:
    folder = Path(tempfile.mkdtemp())
    try:
        source = FolderSource(folder, settle_seconds=0)
        for index in range(3):
            (folder / f"few{index}.yaml").write_text(yaml.safe_dump(document(f"few{index}", index + 1)))
        with caplog.at_level("INFO", logger="vsop.host.folder"):
            source.poll()
        assert [r.getMessage().split()[1] for r in caplog.records] == ["loaded"] * 3  # "file loaded file=..." each
        caplog.clear()
        for index in range(12):
            (folder / f"many{index:02}.yaml").write_text(yaml.safe_dump(document(f"many{index}", 100 + index)))
        with caplog.at_level("INFO", logger="vsop.host.folder"):
            source.poll()
        assert len(source.services()) == 15
        assert [r.getMessage() for r in caplog.records] == [
            f"files loaded files=12 objects=12 first={folder / 'many00.yaml'} last={folder / 'many11.yaml'}"
        ]
    finally:
        shutil.rmtree(folder)


def test_a_folder_reached_by_two_paths_keeps_the_one_it_was_listed_by(tmp_path: Path) -> None:
    """`alias -> sub` beside `sub`: each walk lists the folder once, always by the same path, also
    while other files come and go unsettled, so its files keep their paths (none dropped and re-added)."""
    now = [100.0]
    source = FolderSource(tmp_path, settle_seconds=1.0, clock=lambda: now[0], sweep_seconds=5.0)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "web.yaml").write_text(yaml.safe_dump(document("web", 1)))
    (tmp_path / "alias").symlink_to(tmp_path / "sub")
    for name in ("a", "b", "c", "d", "e", "f"):
        (tmp_path / f"{name}.txt").write_text("not a VirtualService file name")
    past = taken_and_trusted(source, now, tmp_path, tmp_path / "sub")
    served = dict(source.served)
    assert list(served) == ["default/web"]
    for index in range(12):
        # A file not yet stable (a problem path, looked at on every poll), a new one each time.
        (tmp_path / f"n{index}.yaml").write_text("kind: [")
        os.utime(tmp_path, ns=(past, past))  # listed at the sweep only: its listing stays trusted
        now[0] += 1.0
        source.poll()
        assert dict(source.served) == served
        assert not any("web" in str(path) and path != served["default/web"] for path in source.files)
