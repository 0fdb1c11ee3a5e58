"""The host store, the folder source's stability rule (fake clock), the keep-held rule and the writer lock.

The command-line tests run `vsop apply / delete / get / plan` in-process on the
in-memory fake kernel (vsop.adapters.real.real_kernel is swapped for it), with the store and
the lock in tmp_path.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import SEED, make_vs
from vsop.adapters import real as host
from vsop.cli.main import main as vsop
from vsop.core.desired import Node, desired_state
from vsop.core.held import Held, keep_held
from vsop.core.plan import plan
from vsop.core.state import ServiceKey
from vsop.adapters.kernel import fake_kernel
from vsop.adapters.fake import FakeIPVS
from vsop.node.whole import sync
from vsop.host.folder import FolderSource, ref_from_file_name
from vsop.node.lock import LockTimeout, holder, writer_lock
from vsop.api.manifests import load_text
from vsop.host.store import Store, file_name, render
from vsop.cli import store as store_cli
from vsop.core.health import Health
from vsop.core.state import RealServerKey
from vsop.node.remember import RememberFile

WEB = ServiceKey("tcp", "169.254.11.2", 80)
API = ServiceKey("tcp", "169.254.11.3", 80)
NODE = Node("n")


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def doc(name: str = "web", **spec: Any) -> dict[str, Any]:
    data = json.loads(json.dumps(SEED))
    data["metadata"]["name"] = name
    data["spec"].update(spec)
    return data


def write(folder: Path, file: str, *docs: dict[str, Any]) -> Path:
    path = folder / file
    path.write_text(yaml.safe_dump_all(list(docs)))
    return path


# -- the store --------------------------------------------------------------------------


def test_store_writes_one_file_per_object_atomically_and_reads_it_back(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    web, api = make_vs("web"), make_vs("api", namespace="prod", vip="169.254.11.3")
    assert store.write([web, api]) == ["default/web", "prod/api"]
    assert sorted(p.name for p in store.directory.iterdir()) == ["default_web.yaml", "prod_api.yaml"]  # no temp file left
    assert load_text(render(web)).services == [web]  # the stored text is the same object
    assert store.write([web, api]) == []  # unchanged content: nothing rewritten
    contents = store.read()
    assert {vs.ref for vs in contents.services} == {"default/web", "prod/api"}
    assert contents.files["prod/api"] == store.directory / "prod_api.yaml"
    assert store.remove([contents.files["prod/api"]]) == [store.directory / "prod_api.yaml"]
    assert [vs.ref for vs in store.read().services] == ["default/web"]


def test_store_files_are_json_and_a_yaml_file_of_the_same_object_is_no_change(tmp_path: Path) -> None:
    """The store writes JSON (the agent reads it with the C json module); a store an older vsop
    wrote as YAML, or a hand-placed file, holding the same object is neither rewritten nor reported."""
    store = Store(tmp_path / "store")
    web = make_vs("web")
    store.write([web])
    path = store.path_for(web.ref)
    assert json.loads(path.read_text()) == yaml.safe_load(path.read_text())  # JSON, and YAML too
    as_yaml = "# Written by vsop apply; the host agent follows this folder.\n" + yaml.safe_dump(json.loads(path.read_text()), sort_keys=False)
    path.write_text(as_yaml)
    assert store.write([web]) == [] and path.read_text() == as_yaml
    assert store.write([make_vs("web", scheduler="wlc")]) == ["default/web"]  # another object: rewritten, as JSON
    assert json.loads(path.read_text())["spec"]["scheduler"] == "wlc"
    path.write_text("kind: [not a VirtualService")
    assert store.write([web]) == ["default/web"] and load_text(path.read_text()).services == [web]


def test_store_names_map_back_to_objects() -> None:
    assert file_name("default/web") == "default_web.yaml"
    assert ref_from_file_name(Path("kube-system_my.app.yaml")) == "kube-system/my.app"
    assert ref_from_file_name(Path("WEB.YAML")) is None and ref_from_file_name(Path("web.yaml")) is None


def test_interrupted_write_leaves_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = Store(tmp_path)
    store.write([make_vs("web")])
    before = (tmp_path / "default_web.yaml").read_text()

    def crash(*args: Any) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError):
        store.write([make_vs("web", scheduler="wlc")])
    assert (tmp_path / "default_web.yaml").read_text() == before
    assert [p.name for p in tmp_path.iterdir()] == ["default_web.yaml"]  # the temp file is gone too


# -- the folder source: stability, errors, duplicates ----------------------------------------


def source_for(folder: Path, clock: Clock) -> FolderSource:
    return FolderSource(folder, settle_seconds=1.0, clock=clock)


def test_a_file_is_taken_only_once_stable_over_two_polls(tmp_path: Path) -> None:
    clock = Clock()
    source = source_for(tmp_path, clock)
    write(tmp_path, "web.yaml", doc())
    source.poll()
    assert source.services() == [] and source.pending() == [str(tmp_path / "web.yaml")]
    assert source.held().unknown  # what the new file declares is not known yet: the kernel keeps everything
    clock.now += 0.5
    source.poll()
    assert source.services() == []  # same content, but not yet a settle period later
    clock.now += 0.5
    source.poll()
    assert [vs.ref for vs in source.services()] == ["default/web"] and not source.held()


def settled(folder: Path, source: FolderSource, clock: Clock, name: str, document: dict[str, Any]) -> Path:
    """A file written and taken by the source: seen at one poll, stable at the next a settle period later."""
    path = write(folder, name, document)
    source.poll()
    clock.now += 1
    source.poll()
    return path


def test_truncated_then_rewritten_file_never_drops_its_objects(tmp_path: Path) -> None:
    clock = Clock()
    source = source_for(tmp_path, clock)
    path = settled(tmp_path, source, clock, "web.yaml", doc())
    path.write_text("")  # a writer that truncates, then writes
    clock.now += 1
    source.poll()
    held = source.held()
    assert source.services() == [] and held.owners == {"default/web"}  # being rewritten: kernel keeps it
    write(tmp_path, "web.yaml", doc(scheduler="wlc"))
    clock.now += 0.5
    source.poll()
    assert source.held().owners == {"default/web"}
    clock.now += 1
    source.poll()
    assert [vs.spec.scheduler for vs in source.services()] == ["wlc"]


def test_a_file_left_empty_or_cut_short_is_an_error_that_keeps_the_last_good_objects(tmp_path: Path) -> None:
    clock = Clock()
    source = source_for(tmp_path, clock)
    path = settled(tmp_path, source, clock, "web.yaml", doc())
    path.write_text("")
    source.poll()
    clock.now += 1
    source.poll()
    assert "no VirtualService found" in source.errors()[str(path)]
    assert [vs.ref for vs in source.services()] == ["default/web"]
    path.write_text(path.read_text() + "apiVersion: vsop.dev/v1alpha1\nkind: VirtualService\nmetadata: {name: web}\nspec: {vip: 169.254.11.2, po")
    source.poll()
    clock.now += 1
    source.poll()
    assert "not valid YAML" in source.errors()[str(path)]
    assert [vs.ref for vs in source.services()] == ["default/web"]


def test_missing_folder_unreadable_subfolder_and_dangling_symlink_keep_everything(tmp_path: Path) -> None:
    clock = Clock()
    folder = tmp_path / "vs"
    (folder / "team").mkdir(parents=True)
    write(folder, "web.yaml", doc())
    write(folder / "team", "api.yaml", doc("api", vip="169.254.11.3"))
    source = source_for(folder, clock)
    source.poll()
    clock.now += 1
    source.poll()
    assert {vs.ref for vs in source.services()} == {"default/web", "default/api"}

    folder.rename(tmp_path / "away")  # a folder swapped by mv
    clock.now += 1
    assert source.poll() is True
    assert {vs.ref for vs in source.services()} == {"default/web", "default/api"}
    assert "cannot be read" in source.errors()[str(folder)] and source.held().unknown
    (tmp_path / "away").rename(folder)
    clock.now += 1
    source.poll()
    assert source.errors() == {}

    (folder / "gone.yaml").symlink_to(tmp_path / "nowhere.yaml")
    clock.now += 1
    source.poll()
    assert source.errors()[str(folder / "gone.yaml")].startswith("dangling symlink")
    assert source.held().unknown and {vs.ref for vs in source.services()} == {"default/web", "default/api"}
    (folder / "gone.yaml").unlink()

    if os.geteuid() != 0:  # root reads anything; the vm tier proves this one with the capability dropped
        (folder / "team").chmod(0)
        try:
            clock.now += 1
            source.poll()
            assert {vs.ref for vs in source.services()} == {"default/web", "default/api"}
            assert str(folder / "team") in source.errors()
        finally:
            (folder / "team").chmod(0o755)

    (folder / "team" / "api.yaml").unlink()  # a real removal removes
    clock.now += 1
    source.poll()
    assert [vs.ref for vs in source.services()] == ["default/web"] and not source.held()


def test_extensions_match_case_insensitively_and_dot_files_are_ignored(tmp_path: Path) -> None:
    source = FolderSource(tmp_path, settle_seconds=0)
    write(tmp_path, "web.YAML", doc())
    write(tmp_path, "api.Yml", doc("api", vip="169.254.11.3"))
    write(tmp_path, ".web.yaml.swp", doc("swap", vip="169.254.11.4"))
    write(tmp_path, "notes.txt", doc("txt", vip="169.254.11.5"))
    source.poll()
    assert sorted(vs.ref for vs in source.services()) == ["default/api", "default/web"]


def test_duplicate_keeps_the_definition_being_served_and_reports_both_paths(tmp_path: Path) -> None:
    clock = Clock()
    source = source_for(tmp_path, clock)
    settled(tmp_path, source, clock, "web.yaml", doc())
    newcomer = write(tmp_path, "00-other.yaml", doc(backends=[{"address": "192.168.9.9"}]))  # sorts first
    source.poll()
    clock.now += 1
    source.poll()
    served = source.services()
    assert [vs.spec.backends[0].address for vs in served] == ["192.168.2.111"]
    message = source.errors()[str(newcomer)]
    assert str(tmp_path / "web.yaml") in message and str(newcomer) in message
    # Between newcomers (a fresh start), path order decides.
    fresh = FolderSource(tmp_path, settle_seconds=0)
    fresh.poll()
    assert [vs.spec.backends[0].address for vs in fresh.services()] == ["192.168.9.9"]


# -- keeping what the kernel has for declared-but-invalid objects ------------------------------


def test_restart_with_an_invalid_file_keeps_its_vip_and_a_gone_owner_is_removed(tmp_path: Path) -> None:
    kernel, fake = fake_kernel()
    sync(kernel, [make_vs("web"), make_vs("api", vip="169.254.11.3")], NODE)
    before = fake.state
    # A fresh agent: web's file is now invalid, api's file is gone.
    write(tmp_path, "web.yaml", {**doc(), "spec": {**doc()["spec"], "ports": [{"port": 0}]}})
    source = FolderSource(tmp_path, settle_seconds=0)
    source.poll()
    held = source.held()
    assert held.owners == {"default/web"} and not held.unknown
    result = sync(kernel, source.services(), NODE, held=held)
    assert WEB in fake.state.services and fake.state.real_servers == {k: v for k, v in before.real_servers.items() if k.service == WEB}
    assert API not in fake.state.services and "169.254.11.3/32" not in fake.state.addresses
    assert [p.obj for p in result.desired.warnings if p.reason == "KeptInvalid"] == ["default/web"]
    assert sync(kernel, source.services(), NODE, held=held).writes == 0  # and it stays so


def test_unknown_declarations_keep_every_owner_not_known_gone() -> None:
    kernel, fake = fake_kernel()
    sync(kernel, [make_vs("web"), make_vs("api", vip="169.254.11.3")], NODE)
    held = Held(unknown=True, known=frozenset({"default/api"}))  # api was seen removed; web unknown
    sync(kernel, [], NODE, held=held)
    assert WEB in fake.state.services and API not in fake.state.services


def test_a_newcomer_claiming_a_held_vip_port_is_refused_whole() -> None:
    kernel, fake = fake_kernel()
    sync(kernel, [make_vs("web")], NODE)
    observed = fake.state
    newcomer = make_vs("web2", ports=[{"port": 80}, {"port": 443}])
    desired = keep_held(desired_state([newcomer], NODE), observed, Held(frozenset({"default/web"})))
    assert [p.obj for p in desired.problems] == ["default/web2"] and desired.problems[0].reason == "Conflict"
    assert desired.state.services[WEB].owner == "default/web"
    assert ServiceKey("tcp", "169.254.11.2", 443) not in desired.state.services
    assert not plan(desired.state, observed).ops  # the kernel keeps serving web as it was


# -- the writer lock -----------------------------------------------------------------------


def test_second_writer_waits_then_names_the_holder(tmp_path: Path) -> None:
    lock = tmp_path / "lock"
    told: list[str] = []
    with writer_lock(lock, 1):
        assert holder(lock).startswith(f"pid {os.getpid()} (")
        with pytest.raises(LockTimeout, match=rf"pid {os.getpid()} \(.*gave up after waiting 0.2s"):
            with writer_lock(lock, 0.2, on_wait=told.append):
                pass
    assert len(told) == 1 and f"pid {os.getpid()}" in told[0]
    with writer_lock(lock, 0.2) as waited:  # released: taken at once
        assert waited < 0.2


def test_a_waiting_writer_gets_the_lock_when_the_holder_releases_it(tmp_path: Path) -> None:
    lock = tmp_path / "lock"
    release = threading.Event()
    taken = threading.Event()

    def hold() -> None:
        with writer_lock(lock, 1):
            taken.set()
            release.wait(5)

    thread = threading.Thread(target=hold)
    thread.start()
    taken.wait(5)
    threading.Timer(0.3, release.set).start()
    with writer_lock(lock, 5) as waited:
        assert waited >= 0.2
    thread.join()


# -- the command line over the store (fake kernel) ------------------------------------------


@pytest.fixture
def node(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    kernel, fake = fake_kernel()
    monkeypatch.setattr(host, "real_kernel", lambda *a, **k: kernel)
    monkeypatch.setenv("VSOP_STORE", str(tmp_path / "store"))
    monkeypatch.setenv("VSOP_LOCK", str(tmp_path / "lock"))
    monkeypatch.setenv("VSOP_STATE_FILE", str(tmp_path / "state.json"))  # the agent's --state-file
    return fake


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = vsop(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_apply_is_per_object_and_prune_replaces(node, tmp_path: Path, capsys) -> None:
    a = write(tmp_path, "a.yaml", doc("web"))
    b = write(tmp_path, "b.yaml", doc("api", vip="169.254.11.3"))
    assert run(capsys, "apply", "-f", str(a), "--node-name", "n")[0] == 0
    assert run(capsys, "apply", "-f", str(b), "--node-name", "n")[0] == 0
    assert {WEB, API} <= set(node.state.services)  # b did not remove a
    code, out, _ = run(capsys, "apply", "-f", str(b), "--node-name", "n", "-o", "json")
    assert code == 0 and json.loads(out)["writes"] == 0 and json.loads(out)["stored"] == []
    code, out, _ = run(capsys, "get", "--node-name", "n")
    assert code == 0 and "default/web" in out and "default/api" in out and out.count(" yes") == 2
    code, out, _ = run(capsys, "apply", "--prune", "-f", str(b), "--node-name", "n")
    assert code == 0 and WEB not in node.state.services and API in node.state.services
    assert sorted(p.name for p in (tmp_path / "store").iterdir()) == ["default_api.yaml"]


def test_delete_by_name_and_by_file(node, tmp_path: Path, capsys) -> None:
    a = write(tmp_path, "a.yaml", doc("web"))
    b = write(tmp_path, "b.yaml", doc("api", vip="169.254.11.3"))
    run(capsys, "apply", "-f", str(a), "-f", str(b), "--node-name", "n")
    code, out, _ = run(capsys, "delete", "default/web", "--node-name", "n")
    assert code == 0 and "deleted VirtualService default/web" in out
    assert WEB not in node.state.services and API in node.state.services
    assert run(capsys, "delete", "-f", str(b), "--node-name", "n")[0] == 0
    assert node.state.services == {} and not (tmp_path / "store" / "default_api.yaml").exists()
    code, _, err = run(capsys, "delete", "default/nope", "--node-name", "n")
    assert code == 1 and 'NotFound: virtualservice "default/nope" not found in the store' in err  # kubectl's exit code and word


@pytest.mark.parametrize("content", ["", "---\n", "---\n---\n", "apiVersion: v1\nkind: Service\nmetadata: {name: s}\n"])
def test_input_without_any_virtualservice_is_invalid_and_changes_nothing(node, tmp_path: Path, capsys, content: str) -> None:
    a = write(tmp_path, "a.yaml", doc("web"))
    run(capsys, "apply", "-f", str(a), "--node-name", "n")
    before, store_before = node.state, (tmp_path / "store" / "default_web.yaml").read_text()
    empty = tmp_path / "empty.yaml"
    empty.write_text(content)
    for argv in (["apply", "-f", str(empty)], ["apply", "--prune", "-f", str(empty)], ["plan", "-f", str(empty)]):
        code, _, err = run(capsys, *argv, "--node-name", "n")
        assert code == 2 and f"no VirtualService found in {empty}" in err, argv
    assert node.state == before and (tmp_path / "store" / "default_web.yaml").read_text() == store_before
    assert run(capsys, "apply", "--prune", "--allow-empty", "-f", str(empty), "--node-name", "n")[0] == 2  # still none found


def test_invalid_input_leaves_store_and_kernel_untouched(node, tmp_path: Path, capsys) -> None:
    good = write(tmp_path, "good.yaml", doc("web"))
    bad = write(tmp_path, "bad.yaml", doc("api", vip="169.254.11.3", ports=[{"port": 0}]))
    code, _, err = run(capsys, "apply", "-f", str(good), "-f", str(bad), "--node-name", "n")
    assert code == 2 and "spec.ports[0].port" in err
    assert node.state.services == {} and not (tmp_path / "store").exists()


def test_plan_shows_what_apply_of_the_files_would_change_on_top_of_the_store(node, tmp_path: Path, capsys) -> None:
    a = write(tmp_path, "a.yaml", doc("web"))
    b = write(tmp_path, "b.yaml", doc("api", vip="169.254.11.3"))
    run(capsys, "apply", "-f", str(a), "--node-name", "n")
    code, out, _ = run(capsys, "plan", "-f", str(b), "--node-name", "n")
    assert code == 0 and "169.254.11.3" in out and "ipvsadm -D" not in out  # web stays
    code, out, _ = run(capsys, "plan", "--from-empty", "-f", str(b), "--node-name", "n")
    assert code == 0 and "169.254.11.2" not in out  # the files alone against a clean node


def test_a_writer_holding_the_lock_makes_apply_wait_then_fail_naming_it(node, tmp_path: Path, capsys) -> None:
    a = write(tmp_path, "a.yaml", doc("web"))
    with writer_lock(tmp_path / "lock", 1):
        code, _, err = run(capsys, "apply", "-f", str(a), "--node-name", "n", "--wait", "0.2")
    assert code == 1 and f"pid {os.getpid()}" in err and "waiting for the writer lock" in err
    assert node.state.services == {} and not (tmp_path / "store").exists()


def test_render_keepalived_refuses_input_without_virtualservices(tmp_path: Path, capsys) -> None:
    empty = tmp_path / "empty.yaml"
    empty.write_text("---\n")
    code, out, err = run(capsys, "render", "keepalived", "-f", str(empty))
    assert code == 2 and out == "" and f"no VirtualService found in {empty}" in err


def test_a_file_being_rewritten_stands_in_with_its_last_good_objects_for_rendering(tmp_path: Path) -> None:
    clock = Clock()
    source = source_for(tmp_path, clock)
    path = settled(tmp_path, source, clock, "web.yaml", doc())
    assert source.held_services() == ([], True)
    write(tmp_path, "web.yaml", doc(scheduler="wlc"))
    path.touch()
    clock.now += 0.1
    source.poll()
    stand_ins, complete = source.held_services()
    assert [vs.spec.scheduler for vs in stand_ins] == ["rr"] and source.held().unknown and not complete


# -- all or nothing: an apply of several objects lands whole, or the store stays as it was ----


def test_a_failure_while_staging_leaves_the_store_as_it_was(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = Store(tmp_path)
    store.write([make_vs("web")])
    before = {p.name: p.read_text() for p in tmp_path.iterdir()}
    real_fsync, calls = os.fsync, []

    def full_on_the_third(fd: int) -> None:
        calls.append(fd)
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", full_on_the_third)
    with pytest.raises(OSError, match="No space left"):
        store.write([make_vs("web", scheduler="wlc"), make_vs("api", vip="169.254.11.3"), make_vs("db", vip="169.254.11.4")])
    assert {p.name: p.read_text() for p in tmp_path.iterdir()} == before  # no object of the three, no temp file


def test_apply_of_several_objects_on_a_full_disk_stores_none_and_programs_nothing(node, tmp_path: Path, capsys, monkeypatch) -> None:
    both = write(tmp_path, "both.yaml", doc("web"), doc("api", vip="169.254.11.3"))
    real_fsync, calls = os.fsync, []

    def full_on_the_second(fd: int) -> None:
        calls.append(fd)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", full_on_the_second)
    code, _, err = run(capsys, "apply", "-f", str(both), "--node-name", "n")
    assert code == 1 and "No space left on device" in err
    assert [p.name for p in (tmp_path / "store").iterdir()] == []
    assert WEB not in node.state.services and API not in node.state.services


def test_the_next_writer_removes_temp_files_a_dead_writer_left(tmp_path: Path) -> None:
    dead = _a_dead_pid()
    stale = tmp_path / f".default_web.yaml.{dead}.tmp"
    stale.write_text("half a file")
    alive = tmp_path / f".default_api.yaml.{os.getppid()}.tmp"  # a live writer's stage is not ours to take
    alive.write_text("being written")
    Store(tmp_path).write([make_vs("web")])
    assert not stale.exists() and alive.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["default_web.yaml", alive.name])


def _a_dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


# -- the command line and a running agent agree (its state file) ----------------------------------

BE1 = RealServerKey(WEB, "192.168.2.111", 8080)
BE2 = RealServerKey(WEB, "192.168.2.222", 8080)


def agent_kept(path: Path, out: tuple[RealServerKey, ...] = (), draining: dict[RealServerKey, float] | None = None) -> None:
    """The state file as the agent keeps it after a turn (vsop.node.remember): `out` failed their checks,
    `draining` started draining that many seconds ago."""
    now = time.monotonic()
    RememberFile(path).save({key: Health(False, 0, 3, "connection refused") for key in out},
                            {key: now - ago for key, ago in (draining or {}).items()}, time.time(), now)


def weights(fake) -> dict[RealServerKey, int]:  # type: ignore[no-untyped-def]
    return {key: rs.weight for key, rs in fake.state.real_servers.items() if key.service == WEB}


def set_real_server(fake, key: RealServerKey, **changes: Any) -> None:  # type: ignore[no-untyped-def]
    fake.state = replace(fake.state, real_servers={**fake.state.real_servers, key: replace(fake.state.real_servers[key], **changes)})


def test_apply_and_plan_keep_a_backend_the_agents_checks_took_out(node, tmp_path: Path, capsys) -> None:
    a = write(tmp_path, "a.yaml", doc("web"))
    b = write(tmp_path, "b.yaml", doc("api", vip="169.254.11.3"))
    assert run(capsys, "apply", "-f", str(a), "--node-name", "n")[0] == 0
    set_real_server(node, BE2, weight=0)  # the agent's checks took it out
    agent_kept(tmp_path / "state.json", out=(BE2,))
    code, out, err = run(capsys, "plan", "-f", str(b), "--node-name", "n", "-o", "json")
    assert code == 0 and not [op for op in json.loads(out)["operations"] if "169.254.11.2:80 -> 192.168.2.222" in op["description"]]
    code, _, err = run(capsys, "apply", "-f", str(b), "--node-name", "n")
    assert code == 0 and weights(node) == {BE1: 1, BE2: 0} and API in node.state.services
    assert "kept 1 real server(s) the agent's health checks took out at weight 0" in err and "TCP 169.254.11.2:80 -> 192.168.2.222:8080" in err
    code, _, err = run(capsys, "apply", "-f", str(a), "--node-name", "n")  # the object of the failed backend itself
    assert code == 0 and weights(node) == {BE1: 1, BE2: 0}
    # Without the agent's view (what apply did before) the failed backend came back at weight 1.
    assert run(capsys, "apply", "-f", str(a), "--node-name", "n", "--state-file", "")[0] == 0
    assert weights(node) == {BE1: 1, BE2: 1}


def test_apply_keeps_a_real_server_the_agent_drains_until_its_grace_ends(node, tmp_path: Path, capsys) -> None:
    a = write(tmp_path, "a.yaml", doc("web", drain={"timeoutSeconds": 60}))
    b = write(tmp_path, "b.yaml", doc("api", vip="169.254.11.3"))
    assert run(capsys, "apply", "-f", str(a), "--node-name", "n")[0] == 0
    # BE2 left web's file (the store now holds web without it) and the agent drains its connection.
    write(tmp_path, "a.yaml", doc("web", drain={"timeoutSeconds": 60}, backends=[{"address": "192.168.2.111"}]))
    (tmp_path / "store" / "default_web.yaml").write_text(render(load_text((tmp_path / "a.yaml").read_text()).services[0]))
    set_real_server(node, BE2, weight=0, active_connections=1)
    agent_kept(tmp_path / "state.json", draining={BE2: 10.0})
    code, _, err = run(capsys, "apply", "-f", str(b), "--node-name", "n")
    assert code == 0 and weights(node) == {BE1: 1, BE2: 0}  # its connection lives on
    assert "kept 1 real server(s) the agent is draining at weight 0" in err
    agent_kept(tmp_path / "state.json", draining={BE2: 61.0})  # its grace is over: the agent would delete it too
    assert run(capsys, "apply", "-f", str(b), "--node-name", "n")[0] == 0
    assert weights(node) == {BE1: 1}


def be1_connected(monkeypatch: pytest.MonkeyPatch, count: int) -> list[bool]:
    """The fake's reads report `count` connections on BE1 while the returned list is non-empty (the fake
    keeps no counters across a weight edit); clear it when the client closes."""
    connected = [True]
    fake_read = FakeIPVS.read

    def read(self):  # type: ignore[no-untyped-def]
        services, servers = fake_read(self)
        if connected and BE1 in servers:
            servers[BE1] = replace(servers[BE1], active_connections=count)
        return services, servers

    fake_read_real_servers = FakeIPVS.read_real_servers

    def read_real_servers(self, services):  # type: ignore[no-untyped-def]
        servers = fake_read_real_servers(self, services)
        if connected and BE1 in servers:
            servers[BE1] = replace(servers[BE1], active_connections=count)
        return servers

    monkeypatch.setattr(FakeIPVS, "read", read)
    monkeypatch.setattr(FakeIPVS, "read_real_servers", read_real_servers)
    return connected


def test_delete_drains_with_the_writer_lock_free_then_deletes_under_it(node, tmp_path: Path, capsys, monkeypatch) -> None:
    a = write(tmp_path, "a.yaml", doc("web", drain={"timeoutSeconds": 3600}))
    b = write(tmp_path, "b.yaml", doc("api", vip="169.254.11.3"))
    c = write(tmp_path, "c.yaml", doc("api", vip="169.254.11.3", backends=[{"address": "192.168.2.50"}]))
    assert run(capsys, "apply", "-f", str(a), "-f", str(b), "--node-name", "n")[0] == 0
    connected = be1_connected(monkeypatch, 2)
    during: list[dict[str, Any]] = []
    said: list[str] = []

    def meanwhile(seconds: float) -> None:
        """What delete's drain sees at each look: the lock is free, so another writer (the agent, an apply) writes."""
        with writer_lock(tmp_path / "lock", wait_seconds=0):  # LockTimeout if delete held it
            pass
        stored = yaml.safe_load((tmp_path / "store" / "default_web.yaml").read_text())
        during.append({"weights": weights(node), "stored": [b.get("weight") for b in stored["spec"]["backends"]],
                       "annotated": "vsop.dev/deleting" in stored["metadata"].get("annotations", {})})
        assert vsop(["apply", "-f", str(c), "--node-name", "n", "--wait", "0"]) == 0
        said.append(capsys.readouterr().err)  # delete's words so far (the apply's report goes)
        connected.clear()  # the client closes its connection

    monkeypatch.setattr(store_cli.time, "sleep", meanwhile)
    code, out, err = run(capsys, "delete", "web", "--node-name", "n", "-o", "json")
    assert code == 0, err
    assert during == [{"weights": {BE1: 0, BE2: 0}, "stored": [0, 0], "annotated": True}]
    assert "the writer lock is free meanwhile" in said[0]
    assert WEB not in node.state.services and not (tmp_path / "store" / "default_web.yaml").exists()
    assert RealServerKey(API, "192.168.2.50", 8080) in node.state.real_servers  # the apply made during the drain stays
    assert json.loads(out)["deleted"] == ["default/web"]


def test_the_drain_looks_at_the_deleted_services_real_servers_not_the_whole_node(node, tmp_path: Path, capsys, monkeypatch) -> None:
    """A drain may last an hour and looks twice a second: each look reads the real servers of the
    deleted object's services only (a whole read is seconds of work at 10k services)."""
    a = write(tmp_path, "a.yaml", doc("web", drain={"timeoutSeconds": 3600}))
    b = write(tmp_path, "b.yaml", doc("api", vip="169.254.11.3"))
    assert run(capsys, "apply", "-f", str(a), "-f", str(b), "--node-name", "n")[0] == 0
    connected = be1_connected(monkeypatch, 1)
    whole, looked = [], []
    partial_read, whole_read = FakeIPVS.read_real_servers, FakeIPVS.read
    monkeypatch.setattr(FakeIPVS, "read", lambda self: whole.append(1) or whole_read(self))
    monkeypatch.setattr(FakeIPVS, "read_real_servers", lambda self, services: looked.append(sorted(services)) or partial_read(self, services))
    sleeps: list[int] = []

    def meanwhile(seconds: float) -> None:
        sleeps.append(len(whole))
        if len(sleeps) == 3:
            connected.clear()

    monkeypatch.setattr(store_cli.time, "sleep", meanwhile)
    assert run(capsys, "delete", "web", "--node-name", "n")[0] == 0
    assert len(sleeps) == 3 and len(set(sleeps)) == 1  # no whole read between the looks
    assert looked == [[WEB]] * 4
    assert WEB not in node.state.services and API in node.state.services


def test_delete_of_an_announced_object_withdraws_its_route_before_the_drain_and_the_services_after(node, tmp_path: Path, capsys, monkeypatch) -> None:
    a = write(tmp_path, "a.yaml", doc("web", announce="bgp", drain={"timeoutSeconds": 3600}))
    assert run(capsys, "apply", "-f", str(a), "--node-name", "n")[0] == 0
    assert node.state.routes == frozenset({"169.254.11.2/32"})
    connected = be1_connected(monkeypatch, 1)
    during: list[tuple[frozenset[str], bool]] = []

    def meanwhile(seconds: float) -> None:
        during.append((node.state.routes, WEB in node.state.services))
        connected.clear()

    monkeypatch.setattr(store_cli.time, "sleep", meanwhile)
    code, _, err = run(capsys, "delete", "web", "--node-name", "n")
    assert code == 0, err
    assert during == [(frozenset(), True)]  # withdrawn while the service still serves its connection
    assert WEB not in node.state.services and node.state.routes == frozenset()


@pytest.mark.parametrize("argv", [("delete", "web", "--now"), ("delete", "web"), ("cleanup",)])
def test_delete_and_cleanup_withdraw_the_route_by_a_kernel_write_and_never_ask_bird(node, tmp_path: Path, capsys, monkeypatch,
                                                                                     argv: tuple[str, ...]) -> None:
    """Withdrawing is a local kernel write: BIRD learns it from table 4242 on its own, so neither command runs
    bird or birdc nor waits for anything (BGP convergence is the routers' business). A delete without --now
    waits only for connections its real servers hold, and this object has none."""
    a = write(tmp_path, "a.yaml", doc("web", announce="bgp", drain={"timeoutSeconds": 3600}))
    assert run(capsys, "apply", "-f", str(a), "--node-name", "n")[0] == 0
    assert node.state.routes == frozenset({"169.254.11.2/32"})
    asked: list[Any] = []

    def no_bird(original: Any) -> Any:
        def call(args: Any, *rest: Any, **kwargs: Any) -> Any:
            if any("bird" in str(part) for part in ([args] if isinstance(args, str) else args)):
                asked.append(args)
                raise AssertionError(f"{argv[0]} ran {args}")
            return original(args, *rest, **kwargs)
        return call

    monkeypatch.setattr(subprocess, "run", no_bird(subprocess.run))
    monkeypatch.setattr(subprocess, "Popen", no_bird(subprocess.Popen))
    monkeypatch.setattr(store_cli.time, "sleep", lambda seconds: asked.append(f"sleep {seconds}"))
    code, _, err = run(capsys, *argv, "--node-name", "n") if argv[0] == "delete" else run(capsys, *argv)
    assert code == 0, err
    assert node.state.routes == frozenset() and WEB not in node.state.services
    assert asked == []
