"""The agent's keepalived writer: render, validate with `keepalived -t`, swap in, SIGHUP.

Owns what the agent does in keepalived mode after each sync: render the configuration
for this node (vsop.keepalived.render), compare it with what is live in the
configuration folder, and only when it differs

1. write the complete candidate tree (main file, conf.d/, and any foreign conf.d files
   that the live `include` would also read) into a temporary folder beside the live one,
2. validate it with `keepalived -t -f CANDIDATE` (clean = exit 0 and nothing on stderr;
   2.2.7 exits 0 for a missing file, so stderr counts too),
3. swap it in file by file with rename(2) (each file atomic), remove vsop's stale
   conf.d files, and
4. send SIGHUP to the running keepalived (pidfile, checked to name a keepalived
   process), which reads the folder only then: it never sees a half-written set.

An invalid candidate leaves every live file as it was (keepalived goes on with the
old configuration) and is reported with keepalived's own message; the same candidate
is not validated again until it changes. A keepalived.conf that vsop did not write is
never overwritten. It lives outside the vsop.keepalived package because it runs a
process and sends signals, which that package's import contract forbids.
Must not import: kopf, kubernetes, pyroute2, socket, asyncio, vsop.adapters, vsop.cli.main.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Protocol

from vsop.core.desired import Endpoint, Node
from vsop.core.state import Names
from vsop.api.errors import InvalidInput
from vsop.keepalived.render import CONFD, MAIN_FILE, MARKER, Layout, read_auth_file, render_keepalived, section_filename, track_filename, write_files
from vsop.keepalived.notify import NotifyFifo
from vsop.keepalived.vrrp import TRACK_DIR, track_content
from vsop.api.model import VirtualService

log = logging.getLogger("vsop.keepalived")

DEFAULT_DIRECTORY = Path("/etc/keepalived")
DEFAULT_PIDFILE = Path("/run/keepalived.pid")
CHECK_TIMEOUT_SECONDS = 60.0  # keepalived -t takes well under a second; generous for slow machines


@dataclass(frozen=True)
class Check:
    ok: bool
    message: str  # keepalived's complaint (stderr, else stdout, else the exit code) when not ok


def keepalived_check(binary: str, main_file: Path) -> Check:
    """`keepalived -t -f main_file`: clean is exit 0 with an empty stderr."""
    try:
        proc = subprocess.run(
            [binary, "--config-test", "-f", str(main_file)],
            capture_output=True, text=True, timeout=CHECK_TIMEOUT_SECONDS, stdin=subprocess.DEVNULL,
        )
    except FileNotFoundError:
        return Check(False, f"cannot run {binary}: not found (install keepalived, or pass --keepalived-binary)")
    except (OSError, subprocess.TimeoutExpired) as exc:
        return Check(False, f"cannot run {binary} --config-test: {exc}")
    complaint = proc.stderr.strip()
    if proc.returncode == 0 and not complaint:
        return Check(True, "")
    text = complaint or proc.stdout.strip() or f"exit code {proc.returncode}"
    # Paths in keepalived's messages name the temporary candidate; show them relative.
    text = text.replace(str(main_file.parent) + "/", "")
    return Check(False, text)


class Signaller(Protocol):
    def reload(self, pidfile: Path) -> str:
        """SIGHUP the keepalived of pidfile; return what was done. Raises ReloadFailed."""

    def running(self, pidfile: Path) -> bool | None:
        """Whether the pidfile names a live keepalived (None: cannot tell, e.g. the pidfile is unreadable)."""


class ReloadFailed(Exception):
    pass


class NotKeepalived(ReloadFailed):
    """The pidfile names a live process that is not keepalived (a stale pidfile, its number reused)."""


class NotRunning(Exception):
    """No keepalived runs (no pidfile, or its process is gone): it reads the files when it starts."""


class ProcessSignaller:
    """SIGHUP through the pidfile, after checking the pid names a live keepalived process."""

    def __init__(self, kill: Callable[[int, int], None] = os.kill, proc: Path = Path("/proc")):
        self.kill = kill
        self.proc = proc

    def reload(self, pidfile: Path) -> str:
        pid = self._pid(pidfile)
        try:
            self.kill(pid, signal.SIGHUP)
        except ProcessLookupError:
            raise NotRunning(f"no keepalived is running (process {pid} of {pidfile} is gone)") from None
        except PermissionError as exc:
            raise ReloadFailed(f"cannot signal keepalived {pid}: {exc.strerror or exc}") from None
        return f"SIGHUP sent to keepalived {pid}"

    def running(self, pidfile: Path) -> bool | None:
        try:
            self._pid(pidfile)
        except NotRunning:
            return False
        except NotKeepalived:
            return False
        except ReloadFailed:  # an unreadable or garbled pidfile: cannot tell
            return None
        return True

    def _pid(self, pidfile: Path) -> int:
        """The pid of the live keepalived the pidfile names. Raises NotRunning, ReloadFailed."""
        try:
            text = pidfile.read_text().strip()
        except FileNotFoundError:
            raise NotRunning(f"no keepalived is running ({pidfile} does not exist)") from None
        except OSError as exc:
            raise ReloadFailed(f"cannot read {pidfile}: {exc.strerror or exc}") from None
        try:
            pid = int(text)
        except ValueError:
            raise ReloadFailed(f"{pidfile} does not hold a process id: {text[:40]!r}") from None
        gone = NotRunning(f"no keepalived is running (process {pid} of {pidfile} is gone)")
        try:
            name = (self.proc / str(pid) / "comm").read_text().strip()
            stat_line = (self.proc / str(pid) / "stat").read_text()
        except OSError:
            raise gone from None
        # A killed keepalived whose parent has not reaped it yet (a zombie, state Z; X while it is
        # being reaped) keeps its /proc entry and its comm: it is gone all the same. The state is
        # the first field after the comm's closing parenthesis (a comm may itself hold one).
        state = stat_line[stat_line.rfind(")") + 1:].split()[:1]
        if state and state[0] in ("Z", "X"):
            raise gone
        if name != "keepalived":
            # A stale pidfile whose number now belongs to something else: never signal it.
            raise NotKeepalived(f"process {pid} of {pidfile} is {name!r}, not keepalived; not signalled")
        return pid


@dataclass
class KeepalivedConfig:
    directory: Path = DEFAULT_DIRECTORY
    pidfile: Path = DEFAULT_PIDFILE
    layout: Layout = "confd"
    auth_file: Path | None = None
    binary: str = "keepalived"
    router_id: str = "vsop"
    track_dir: Path = Path(TRACK_DIR)


@dataclass
class Outcome:
    changed: bool  # the live files were replaced
    reloaded: bool  # keepalived was sent SIGHUP
    error: str = ""  # why the candidate was not swapped in, or the reload failed
    note: str = ""


@dataclass
class KeepalivedWriter:
    config: KeepalivedConfig
    check: Callable[[str, Path], Check] = keepalived_check
    signaller: Signaller = field(default_factory=ProcessSignaller)
    clock: Callable[[], float] = time.time
    active: bool = False  # wrote (or found) vsop's configuration: keep it true even when it becomes empty
    last_written: dict[str, Any] = field(default_factory=dict)
    last_error: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    tracks: dict[str, bool] = field(default_factory=dict)  # track file -> this node serves its object
    notify: NotifyFifo | None = None  # keepalived's VRRP transitions, once an ipvs-mode object is announced by VRRP
    instances: dict[str, tuple[str, ...]] = field(default_factory=dict)  # vrrp_instance -> its VIPs, as last rendered
    on_announce: Callable[[], None] | None = None  # called from the FIFO's thread after each transition (the agent wakes)
    running: bool | None = None  # the pidfile's keepalived was alive at the last turn (None: not asked, or cannot tell)
    _rejected: tuple[str, str] | None = None  # (digest of a rejected candidate, why)
    _reload_pending: bool = False  # the files are written but keepalived was not told

    def __post_init__(self) -> None:
        self.active = self.active or _is_vsops(self.config.directory / MAIN_FILE)

    def can_keep(self) -> bool:
        """Whether `update(keep=...)` can keep objects' sections as they are: one file per object (confd)."""
        return self.config.layout == "confd"

    def wanted(self, services: Iterable[VirtualService]) -> bool:
        """Whether this agent manages keepalived's files: a keepalived-mode object, or vsop's files already there."""
        return self.active or any(vs.spec.mode == "keepalived" or vs.spec.announce == "vrrp" for vs in services)

    def update(
        self,
        services: Iterable[VirtualService],
        node: Node | None = None,
        endpoints: Mapping[tuple[str, str], Iterable[Endpoint]] | None = None,
        names: Names = Names(),
        keep: Iterable[str] = (),
        node_addresses: Iterable[str] | None = None,
        serving: Mapping[str, bool] | None = None,
    ) -> Outcome:
        """Render; when the result differs from the live files, validate, swap in and reload.

        `keep`: refs ("namespace/name") declared but without a usable definition now
        (core.held): their live conf.d files stay as they are (confd layout only, see can_keep).
        `node_addresses`: this node's, to find it among vrrp.peers. `serving`: ref -> whether this
        node serves an ipvs-mode object announced by VRRP; its track file says so (first, so that a
        new configuration never names a missing file).
        """
        services = list(services)
        keep = sorted(set(keep) - {vs.ref for vs in services})
        if keep and not self.can_keep():
            raise ValueError("keeping objects' sections needs the confd layout")
        fifo = self._notify_fifo(services)
        self._look_alive()
        try:
            password = read_auth_file(self.config.auth_file) if self.config.auth_file is not None else None
            rendered = render_keepalived(
                services, layout=self.config.layout, endpoints=endpoints, auth_password=password,
                node=node, router_id=self.config.router_id, names=names,
                node_addresses=node_addresses, track_dir=str(self.config.track_dir), notify_fifo=fifo,
            )
        except InvalidInput as exc:
            return self._fail("; ".join(str(e) for e in exc.errors))
        tracked = {vs.ref: vs for vs in services if vs.ref in rendered.rendered and vs.spec.mode == "ipvs" and vs.spec.announce == "vrrp"}
        try:
            self.write_tracks({ref: bool((serving or {}).get(ref)) for ref in tracked}, tracked)
        except OSError as exc:
            return self._fail(f"cannot write the VRRP track files into {self.config.track_dir}: {exc}", stage="track")
        self.problems = [f"{p.obj}: {p.reason}: {p.message}" for p in rendered.problems]
        self.instances = dict(rendered.instances)
        for problem in self.problems:
            log.warning("VirtualService not rendered for keepalived: %s", problem)
        for warning in rendered.warnings:
            log.debug("keepalived: %s", warning)
        directory = self.config.directory
        main = directory / MAIN_FILE
        if main.exists() and not _is_vsops(main):
            return self._fail(f"{main} was not written by vsop; not overwritten (move it away, or pass another --keepalived-dir)")
        files = {**rendered.files, **self._kept_sections(keep)}
        if self._live(files) == files:
            self.active = True
            self._rejected = None
            if self._reload_pending:  # written earlier, but the SIGHUP failed: try again
                return self._reload(changed=False)
            if self.last_error.get("stage") == "check":
                self.last_error = {}  # the live files are what is wanted again
            return Outcome(changed=False, reloaded=False)
        digest = _digest(files)
        if self._rejected is not None and self._rejected[0] == digest:
            return Outcome(changed=False, reloaded=False, error=self._rejected[1])  # reported already
        try:
            verdict = self._validate(files, rendered.directories)
        except OSError as exc:
            return self._fail(f"cannot write a candidate into {directory}: {exc}", stage="write")
        if not verdict.ok:
            why = f"keepalived -t rejected the new configuration; the old one stays: {verdict.message}"
            self._rejected = (digest, why)
            return self._fail(why, stage="check")
        self._rejected = None
        try:
            written, removed = write_files(directory, files, rendered.directories)
        except OSError as exc:
            return self._fail(f"cannot write the configuration into {directory}: {exc}", stage="write")
        self.active = True
        self.last_written = {
            "at": self.clock(),
            "files": [str(p) for p in written],
            "removed": [str(p) for p in removed],
            "virtualServices": list(rendered.rendered),
        }
        log.info("keepalived configuration written directory=%s files=%d removed=%d", directory, len(written), len(removed))
        return self._reload(changed=True)

    def _kept_sections(self, keep: Iterable[str]) -> dict[str, str]:
        """The live conf.d files of objects held as they are (core.held)."""
        directory, files = self.config.directory, {}
        for ref in keep:
            namespace, _, name = ref.partition("/")
            relative = f"{CONFD}/{section_filename(namespace, name)}"
            try:
                if _is_vsops(directory / relative):
                    files[relative] = (directory / relative).read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                log.warning("keepalived: cannot read a held object's section, it is dropped object=%s error=%r", ref, str(exc))
        return files

    def _notify_fifo(self, services: Iterable[VirtualService]) -> str | None:
        """The FIFO keepalived tells VRRP transitions through, read from now on; None while no ipvs-mode
        object is announced by VRRP (or when it cannot be made: `vsop show` then says `unknown`)."""
        if self.notify is None:
            if not any(vs.spec.mode == "ipvs" and vs.spec.announce == "vrrp" for vs in services):
                return None
            self.notify = NotifyFifo(self.config.track_dir / "notify.fifo", on_change=self._announced_changed)
        return str(self.notify.path) if self.notify.start() else None

    def _look_alive(self) -> None:
        """Whether keepalived still runs, once a turn while VRRP states are read: a keepalived killed
        (SIGKILL, OOM) writes no STOP to the FIFO, and its last word (often MASTER) would stand for ever
        in `vsop show`, the status file, metrics and the NodeReport. Found gone, its instances are `stop`."""
        if self.notify is None:
            return
        seen = self.notify.lines
        running = self.signaller.running(self.config.pidfile)
        if running is False and self.running is not False:
            log.warning("keepalived is not running pidfile=%s: this node announces none of its VIPs", self.config.pidfile)
        if running is False:
            self.notify.forget(seen)
        self.running = running

    def _announced_changed(self, instance: str, state: str) -> None:
        if self.on_announce is not None:
            self.on_announce()

    def announced(self) -> dict[str, str]:
        """VIP -> this node's VRRP state for it (master, backup, fault, stop; unknown: keepalived said nothing yet).
        While keepalived is not running every VIP is `stop`, also those it never told of."""
        states = self.notify.states() if self.notify is not None else {}
        if self.running is False:
            return {vip: "stop" for _, vips in sorted(self.instances.items()) for vip in vips}
        return {vip: states.get(instance, "unknown") for instance, vips in sorted(self.instances.items()) for vip in vips}

    def write_tracks(self, serving: Mapping[str, bool], services: Mapping[str, VirtualService]) -> list[str]:
        """One track file per object (0: this node serves it, 1: it does not), each written only when it
        changes (write + rename); files of objects gone are removed. Returns the files written."""
        folder = self.config.track_dir
        wanted = {}
        for ref, vs in services.items():
            wanted[track_filename(vs.metadata.namespace, vs.metadata.name)] = track_content(serving.get(ref, False))
        if not wanted and not folder.is_dir():
            return []
        folder.mkdir(parents=True, exist_ok=True)
        written = []
        for name, content in sorted(wanted.items()):
            path = folder / name
            try:
                if path.read_text() == content:
                    continue
            except (OSError, UnicodeDecodeError):
                pass
            temporary = folder / f".{name}.tmp"
            temporary.write_text(content)
            os.replace(temporary, path)
            written.append(name)
            log.info("VRRP track file written file=%s serving=%s", path, content.strip() == "0")
        for path in folder.iterdir():
            if path.is_file() and not path.name.startswith(".") and path.name not in wanted:
                path.unlink()
                log.info("VRRP track file removed file=%s", path)
        self.tracks = {name: content.strip() == "0" for name, content in wanted.items()}
        return written

    def _reload(self, changed: bool) -> Outcome:
        try:
            note = self.signaller.reload(self.config.pidfile)
        except NotRunning as exc:
            note = f"{exc}; it reads the files when it starts"
            reloaded = False
        except ReloadFailed as exc:
            self._reload_pending = True
            self.last_written["reload"] = f"failed: {exc}"
            return self._fail(f"configuration written but keepalived not reloaded: {exc}", stage="reload", changed=changed)
        else:
            reloaded = True
        self._reload_pending = False
        self.last_written["reload"] = note
        self.last_error = {}
        log.info("keepalived: %s", note)
        return Outcome(changed=changed, reloaded=reloaded, note=note)

    def status(self) -> dict[str, Any]:
        return {
            "directory": str(self.config.directory),
            "pidfile": str(self.config.pidfile),
            "layout": self.config.layout,
            "active": self.active,
            "lastWritten": self.last_written,
            "lastError": self.last_error,
            "problems": self.problems,
            **({"vrrpTracks": {"directory": str(self.config.track_dir), "serving": dict(sorted(self.tracks.items()))}} if self.tracks else {}),
            **({"announced": self.announced()} if self.instances and self.notify is not None else {}),
            **({"running": self.running} if self.notify is not None and self.running is not None else {}),
        }

    # -- helpers -------------------------------------------------------------------

    def _fail(self, message: str, stage: str = "render", changed: bool = False) -> Outcome:
        log.error("keepalived configuration not applied stage=%s error=%r", stage, message)
        self.last_error = {"at": self.clock(), "stage": stage, "message": message}
        return Outcome(changed=changed, reloaded=False, error=message)

    def _live(self, files: Mapping[str, str]) -> dict[str, str]:
        """The live content of the files vsop would write, plus vsop's other conf.d files (stale ones)."""
        root = self.config.directory
        live: dict[str, str] = {}
        paths = {root / relative for relative in files}
        confd = root / CONFD
        if confd.is_dir():
            paths |= {path for path in confd.glob("*.conf") if path.is_file() and _is_vsops(path)}
        for path in paths:
            try:
                live[str(path.relative_to(root))] = path.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError):
                continue
        return live

    def _validate(self, files: Mapping[str, str], directories: Iterable[str]) -> Check:
        root = self.config.directory
        root.mkdir(parents=True, exist_ok=True)
        candidate = Path(tempfile.mkdtemp(prefix=".vsop-candidate-", dir=root))
        try:
            write_files(candidate, files, directories)
            confd = root / CONFD
            if confd.is_dir():  # the live `include conf.d/*.conf` reads foreign files too
                for path in confd.glob("*.conf"):
                    target = candidate / CONFD / path.name
                    if path.is_file() and not _is_vsops(path) and not target.exists():
                        target.parent.mkdir(parents=True, exist_ok=True)
                        shutil.copyfile(path, target)
            return self.check(self.config.binary, candidate / MAIN_FILE)
        finally:
            shutil.rmtree(candidate, ignore_errors=True)


def _is_vsops(path: Path) -> bool:
    try:
        with path.open(encoding="utf-8", errors="replace") as handle:
            return handle.readline().startswith(MARKER)
    except OSError:
        return False


def _digest(files: Mapping[str, str]) -> str:
    h = hashlib.sha256()
    for name, content in sorted(files.items()):
        h.update(name.encode() + b"\0" + content.encode() + b"\0")
    return h.hexdigest()
